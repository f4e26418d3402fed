"""The ``trygg`` command: demo, run, sim, audit and technician commands."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import logging
import secrets
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gateway import heap
from gateway.buildinfo import build_info
from gateway.files import private_umask
from gateway.logformat import LOG_FORMATS
from gateway.logformat import configure as configure_logging

_LOGGER = logging.getLogger("trygg")

# The demo's preferred ports; a port already taken (a Mosquitto on 1883, say) is replaced by a
# free one unless the user asked for it by flag.
DEMO_MQTT_PORT = 1883
DEMO_HTTP_PORT = 8080


class PortBusyError(Exception):
    """A port the user asked for is taken; the message is one line that names the flag."""


def _port_free(host: str, port: int) -> bool:
    # SO_REUSEADDR as asyncio's servers set it: a port in TIME_WAIT is usable, a listening
    # one (on this address or the wildcard) is not.
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def choose_port(requested: int | None, default: int, flag: str, host: str = "127.0.0.1") -> int:
    """The port to use: the requested one (it must be free), else the default or a free one."""
    if requested is not None:
        if requested and not _port_free(host, requested):
            raise PortBusyError(
                f"trygg demo: port {requested} on {host} is already in use; "
                f"choose another with {flag} N"
            )
        return requested
    if _port_free(host, default):
        return default
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    print(f"Port {default} is in use; using {port} instead ({flag} N chooses one).", flush=True)
    return port


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``trygg`` console script."""
    parser = argparse.ArgumentParser(prog="trygg", description="trygg welfare-technology gateway")
    parser.add_argument("--version", action="version", version=build_info().line())
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default=None,
        help="text (default) or json: one JSON object per line (overrides log_format)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run everything embedded with a simulated fleet")
    demo.add_argument("--data-dir", type=Path, default=Path("trygg-data"))
    demo.add_argument(
        "--mqtt-port", type=int, default=None,
        help=f"embedded broker port (default {DEMO_MQTT_PORT}, or a free one if that is taken)",
    )
    demo.add_argument(
        "--http-port", type=int, default=None,
        help=f"web app and API port (default {DEMO_HTTP_PORT}, or a free one if that is taken)",
    )
    demo.add_argument(
        "--fleet", type=int, default=None,
        help="simulated devices sending traffic (default: every provisioned device; 0 = none)",
    )
    demo.add_argument("--duration", type=float, default=None, help="stop after S seconds")

    run = commands.add_parser("run", help="run the gateway against an external broker")
    run.add_argument("--config", type=Path, default=None, help="TOML settings file")

    commands.add_parser(
        "sim", help="run a simulated fleet (see `trygg sim --help`)", add_help=False
    )

    org = commands.add_parser("org", help="organisation data")
    org_cmd = org.add_subparsers(dest="org_command", required=True)
    org_import = org_cmd.add_parser(
        "import", help="load teams, staff, recipients, devices and rosters from a TOML file"
    )
    org_import.add_argument("file", type=Path)
    org_import.add_argument("--data-dir", type=Path, default=Path("trygg-data"))
    org_import.add_argument("--config", type=Path, default=None,
                            help="settings file; with [cluster], import once into the cluster's"
                                 " database (every gateway sees it)")
    org_import.add_argument("--dsn", default=None, help="the cluster's PostgreSQL database")
    _add_erase_parser(org_cmd)

    _add_config_parser(commands)

    audit = commands.add_parser("audit", help="audit log tools")
    audit_cmd = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_cmd.add_parser("verify", help="verify the hash chain of the audit log")
    head = audit_cmd.add_parser("head", help="print the chain's head (seq and hash) as JSON")
    for sub in (verify, head):
        sub.add_argument("--data-dir", type=Path, default=None)
        sub.add_argument("--config", type=Path, default=None,
                         help="settings file; with [cluster], the cluster's chain in journal_dsn")
        sub.add_argument("--dsn", default=None, help="the cluster's PostgreSQL database")
    verify.add_argument("--anchor", default=None,
                        help="a head exported earlier (JSON, SEQ:HASH, or a file): it must"
                             " still be in the chain")

    commands.add_parser(
        "devices", help="technician commands (see `trygg devices --help`)", add_help=False
    )

    # Every file trygg writes (data, keys, broker files, demo.json) is private to its user.
    private_umask()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["devices"]:
        from gateway.provisioning import main_devices

        return int(main_devices(argv[1:]))
    if argv[:1] == ["sim"]:
        from firmware_sim.cli import main as sim_main

        return int(sim_main(argv[1:]))
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format or "text")
    # The embedded broker narrates every state transition at INFO; keep its warnings only.
    for noisy in ("amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    if args.command == "demo":
        try:
            args.mqtt_port = choose_port(args.mqtt_port, DEMO_MQTT_PORT, "--mqtt-port")
            args.http_port = choose_port(args.http_port, DEMO_HTTP_PORT, "--http-port")
        except PortBusyError as exc:
            print(exc, file=sys.stderr)
            return 2
        return _run_async(_demo(args))
    if args.command == "run":
        return _run_async(_run(args.config, log_flags=(args.log_level, args.log_format)))
    if args.command == "config":
        return _config_check(args.config)
    if args.command == "org" and args.org_command == "erase":
        return _org_erase(args.data_dir, args.recipient_ids, args.actor)
    if args.command == "org":
        return _org_import(args.file, args.data_dir, args.config, args.dsn)
    if args.command == "audit":
        return _audit(args)
    parser.error(f"unknown command {args.command}")
    return 2


def _run_async(coro: Any) -> int:
    try:
        return int(asyncio.run(coro))
    except KeyboardInterrupt:
        return 130
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        # Taken between the check and the bind, or a port from the settings file: one line,
        # not a traceback.
        print(f"trygg: a port is already in use: {exc.strerror} ({exc})", file=sys.stderr)
        return 2


@contextlib.asynccontextmanager
async def _stop_on_signals() -> AsyncIterator[asyncio.Event]:
    """An event set by SIGINT/SIGTERM, so shutdown runs in order instead of unwinding."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _wait(stop: asyncio.Event, duration: float | None, gateway: Any) -> None:
    waiter = asyncio.create_task(stop.wait(), name="stop signal")
    runner = asyncio.create_task(gateway.wait(), name="gateway watch")
    try:
        await asyncio.wait((waiter, runner), timeout=duration, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiter, runner):
            task.cancel()
        await asyncio.gather(waiter, runner, return_exceptions=True)


async def _run(config: Path | None, log_flags: tuple[str, str | None] = ("INFO", None)) -> int:
    from gateway.config import load
    from gateway.runtime import Gateway

    settings = load(config)
    level, log_format = log_flags
    if log_format is None and settings.log_format != "text":
        configure_logging(level, settings.log_format)  # the file's log_format; a flag wins
    async with _stop_on_signals() as stop, Gateway(settings) as gateway:
        heap.settle()
        _LOGGER.info(
            "gateway %s up: http://%s:%d, broker %s:%d",
            settings.gateway_id,
            settings.http.host,
            gateway.http_port,
            settings.mqtt.host,
            settings.mqtt.port,
        )
        await _wait(stop, None, gateway)
    return 0


async def _demo(args: argparse.Namespace) -> int:
    from gateway.broker import EmbeddedBroker
    from gateway.config import load
    from gateway.demo import describe, print_summary
    from gateway.runtime import Gateway

    data_dir: Path = args.data_dir
    org, passwords, secret = _prepare_demo(data_dir)
    demo_json = data_dir / "demo.json"
    settings = load(
        None,
        demo=True,
        data_dir=data_dir,
        secret_key=secret,
        mqtt={"host": "127.0.0.1", "port": args.mqtt_port},
        http={"host": "127.0.0.1", "port": args.http_port},
    )
    try:
        async with (
            _stop_on_signals() as stop,
            EmbeddedBroker("127.0.0.1", args.mqtt_port),
            Gateway(settings, org=org) as gateway,
        ):
            heap.settle()
            base = f"http://127.0.0.1:{gateway.http_port}"
            info = describe(
                org,
                passwords,
                {
                    "app": f"{base}/app/",
                    "console": f"{base}/console/",
                    "ops": f"{base}/ops/",
                    "api": f"{base}/api/v1",
                    "docs": f"{base}/docs",
                    "redoc": f"{base}/redoc",
                    "metrics": f"{base}/metrics",
                    "healthz": f"{base}/healthz",
                    "mqtt": f"mqtt://127.0.0.1:{args.mqtt_port}",
                },
                {"host": "127.0.0.1", "port": args.mqtt_port, "prefix": settings.mqtt.prefix},
            )
            demo_json.write_text(json.dumps(info, indent=2, ensure_ascii=False))
            print(print_summary(info), flush=True)
            print(f"\n  Written to {demo_json}", flush=True)
            size = len(info["devices"]) if args.fleet is None else args.fleet
            async with _fleet(size, info):
                await _wait(stop, args.duration, gateway)
    finally:
        org.close()
    return 0


def _prepare_demo(data_dir: Path) -> tuple[Any, dict[str, str], str]:
    """Open (and on first use seed) the demo organisation; returns org, passwords, secret."""
    from gateway.demo import load_passwords, seed
    from gateway.org import OrgStore

    data_dir.mkdir(parents=True, exist_ok=True)
    secret_file = data_dir / "demo-secret.key"
    if not secret_file.exists():
        secret_file.write_text(secrets.token_urlsafe(48))
        secret_file.chmod(0o600)
    org = OrgStore(data_dir / "org.sqlite3")
    passwords = seed(org) if org.is_empty() else load_passwords(data_dir / "demo.json")
    return org, passwords, secret_file.read_text().strip()


@contextlib.asynccontextmanager
async def _fleet(size: int, info: dict[str, Any]) -> AsyncIterator[None]:
    """The demo's simulated fleet: the first ``size`` provisioned devices."""
    if size <= 0:
        yield
        return
    from firmware_sim.demo import demo_fleet

    async with demo_fleet(info, size):
        yield


def _org_import(file: Path, data_dir: Path, config: Path | None, dsn: str | None) -> int:
    from gateway.org import OrgStore
    from gateway.orgfile import OrgFileError, RosterStore, parse, rows, write
    from gateway.progress import progress

    if config is not None and dsn is None:
        from gateway.config import load

        settings = load(config, demo=True)
        if settings.cluster is not None:
            dsn = settings.journal_dsn
        else:
            data_dir = settings.data_dir
    if dsn is not None:
        from gateway.stores.shared_org import import_shared

        try:
            counts = import_shared(file, dsn)
        except OrgFileError as exc:
            print(f"import refused, nothing written: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(counts))
        return 0
    data_dir.mkdir(parents=True, exist_ok=True)
    org = OrgStore(data_dir / "org.sqlite3")
    try:
        data = parse(file)
        with progress(f"import {file.name}", rows(data)) as tracker:
            counts = write(data, org, RosterStore(data_dir / "rosters.sqlite3"), tracker)
    except OrgFileError as exc:
        print(f"import refused, nothing written: {exc}", file=sys.stderr)
        return 1
    finally:
        org.close()
    print(json.dumps(counts))
    return 0


def _add_erase_parser(org_cmd: Any) -> None:
    erase = org_cmd.add_parser(
        "erase", help="GDPR erasure of recipients whose care ended (gateway stopped)"
    )
    erase.add_argument("recipient_ids", nargs="+", metavar="RECIPIENT_ID")
    erase.add_argument("--data-dir", type=Path, default=Path("trygg-data"))
    erase.add_argument("--actor", default="cli", help="who is erasing (audited)")


def _org_erase(data_dir: Path, recipient_ids: list[str], actor: str) -> int:
    from gateway.erasure import main as erase_main

    return erase_main(data_dir, recipient_ids, actor)


def _add_config_parser(commands: Any) -> None:
    config = commands.add_parser("config", help="settings tools")
    config_cmd = config.add_subparsers(dest="config_command", required=True)
    check = config_cmd.add_parser(
        "check", help="validate a settings file and the environment; print them, secrets masked"
    )
    check.add_argument("--config", type=Path, required=True, help="TOML settings file")


def _config_check(config: Path) -> int:
    from gateway.configcheck import main as check_main

    return check_main(config)


def _audit(args: argparse.Namespace) -> int:
    from gateway.audit_target import (
        PostgresAudit,
        SqliteAudit,
        audit_target,
        head_main,
        parse_anchor,
        verify_main,
    )

    target: SqliteAudit | PostgresAudit
    if args.dsn is not None:
        target = PostgresAudit(args.dsn)
    elif args.data_dir is not None:
        target = SqliteAudit(args.data_dir / "audit.sqlite3")
    elif args.config is not None:
        from gateway.config import load

        target = audit_target(load(args.config, demo=True))
    else:
        target = SqliteAudit(Path("trygg-data") / "audit.sqlite3")
    if args.audit_command == "head":
        return head_main(target)
    anchor = None
    if args.anchor is not None:
        try:
            anchor = parse_anchor(args.anchor)
        except ValueError as exc:
            print(f"--anchor: {exc}", file=sys.stderr)
            return 2
    return verify_main(target, anchor=anchor)


if __name__ == "__main__":
    sys.exit(main())
