"""A real Kannel for the tests: bearerbox and smsbox from Debian, on free loopback ports.

The configuration is the one docs/sms.md shows for tests: one ``smsc = fake`` group (the
phones are ``fakesmsc``, see ``firmware_sim.smsphone``), internal DLR storage, one
``sendsms-user`` for the gateway and one catch-all ``sms-service`` that hands every reply
to the gateway's callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import httpx

from gateway.smscodec import KannelStatus, mo_url, parse_status
from tests.conftest import free_port

BEARERBOX = Path("/usr/sbin/bearerbox")
SMSBOX = Path("/usr/sbin/smsbox")
USERNAME = "trygg"
PASSWORD = "sendsms-password-for-tests"
STATUS_PASSWORD = "status-password-for-tests"
SENDER = "+46700999000"

CONF = """\
group = core
admin-port = {admin_port}
admin-interface = 127.0.0.1
admin-password = admin-password-for-tests
status-password = {status_password}
admin-allow-ip = "127.0.0.1"
smsbox-port = {smsbox_port}
box-allow-ip = "127.0.0.1"
log-file = "{dir}/bearerbox.log"
log-level = 1
dlr-storage = internal
sms-resend-freq = 1

group = smsc
smsc = fake
smsc-id = fake
port = {fake_port}
connect-allow-ip = "127.0.0.1"

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {smsbox_port}
sendsms-port = {sendsms_port}
sendsms-interface = 127.0.0.1
log-file = "{dir}/smsbox.log"
log-level = 1

group = sendsms-user
username = {username}
password = {password}
max-messages = 3
concatenation = true

group = sms-service
keyword = default
catch-all = true
max-messages = 0
get-url = "{mo_url}"
"""


def available() -> bool:
    """Whether Debian's kannel and kannel-extras are installed."""
    from firmware_sim.smsphone import FAKESMSC

    return BEARERBOX.exists() and SMSBOX.exists() and FAKESMSC.exists()


class Kannel:
    """bearerbox + smsbox as real processes; ``start``/``stop`` may be called repeatedly."""

    def __init__(self, workdir: Path, *, gateway_url: str, secret: str) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.admin_port = free_port()
        self.smsbox_port = free_port()
        self.fake_port = free_port()
        self.sendsms_port = free_port()
        self.conf = self.dir / "kannel.conf"
        self.conf.write_text(CONF.format(
            admin_port=self.admin_port, smsbox_port=self.smsbox_port, fake_port=self.fake_port,
            sendsms_port=self.sendsms_port, dir=self.dir, status_password=STATUS_PASSWORD,
            username=USERNAME, password=PASSWORD, mo_url=mo_url(gateway_url, secret),
        ))
        self._processes: list[asyncio.subprocess.Process] = []

    @property
    def status_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}/status.xml"

    @property
    def sendsms_url(self) -> str:
        return f"http://127.0.0.1:{self.sendsms_port}/cgi-bin/sendsms"

    def settings(self, secret: str, **extra: object) -> dict[str, object]:
        """The gateway's ``[sms]`` for this Kannel."""
        return {"sendsms_url": self.sendsms_url, "username": USERNAME, "password": PASSWORD,
                "sender": SENDER, "status_url": self.status_url,
                "status_password": STATUS_PASSWORD, "callback_secret": secret, **extra}

    async def _spawn(self, binary: Path, name: str) -> None:
        log = (self.dir / f"{name}.out").open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                str(binary), str(self.conf), stdout=log, stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            log.close()
        self._processes.append(process)

    async def status(self) -> KannelStatus | None:
        try:
            async with httpx.AsyncClient(timeout=2) as client:
                response = await client.get(self.status_url,
                                            params={"password": STATUS_PASSWORD})
        except httpx.HTTPError:
            return None
        found = parse_status(response.content)
        return found if isinstance(found, KannelStatus) else None

    async def start(self) -> None:
        """Start bearerbox, then smsbox; return once smsbox is connected to bearerbox."""
        await self._spawn(BEARERBOX, "bearerbox")
        async with asyncio.timeout(15):
            while await self.status() is None:
                await asyncio.sleep(0.1)
        await self._spawn(SMSBOX, "smsbox")
        async with asyncio.timeout(15):
            while True:
                status = await self.status()
                if status is not None and any(t == "smsbox" and s.startswith("on-line")
                                              for t, s in status.boxes):
                    break
                await asyncio.sleep(0.1)

    async def wait_smsc_online(self) -> None:
        """Until the fake SMSC link has a fakesmsc connected."""
        async with asyncio.timeout(15):
            while True:
                status = await self.status()
                if status is not None and status.fault() is None:
                    return
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """Stop smsbox and bearerbox (SIGTERM: both shut down cleanly), newest first."""
        processes, self._processes = self._processes, []
        for process in reversed(processes):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()

    def logs(self) -> str:
        """Kannel's logs (for a failing test's message)."""
        return "\n".join(p.read_text(errors="replace")[-3000:]
                         for p in sorted(self.dir.glob("*.log")))

