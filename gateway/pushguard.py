"""Where the gateway may send Web Push: push services only, never into its own network.

A push subscription's endpoint is a URL the browser got from its push service, and the
gateway POSTs to it on every routed alarm. Anyone with a staff login can register one, so an
unchecked endpoint is a server-side request forgery: ``https://169.254.169.254/...``, a
printer on the office network, an internal admin page. The rules (docs/security.md):

- ``https`` on port 443, no user info in the URL, no IP literal;
- the host is on the allowed list (``PushSettings.allowed_hosts``; by default the push
  services of the major browsers, ``DEFAULT_PUSH_HOSTS``);
- every address the host resolves to is a public unicast address (no loopback, private,
  link-local, shared, multicast or reserved ranges, also inside IPv4-mapped IPv6), checked
  when the endpoint is registered (in a thread) and again by the sender's resolver on every
  connection (``gateway.push.PublicResolver``), so a DNS answer that changes later is caught
  too;
- the sender does not follow redirects (``gateway.push.no_redirects``).

No asyncio loop objects and no HTTP client here (the settings import this module at start).

``url_problem`` is pure; ``EndpointPolicy`` bundles the list with the one test-only escape:
``EndpointPolicy.loopback_for_tests()`` accepts plain-http endpoints on loopback (the test
suite's fake push service) and nothing else. It is set in code only (``Gateway``'s
``overrides["push_endpoints"]``), never from settings.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

# The push services of the browsers a phone or desktop runs (their endpoint hosts):
# Chrome, Chromium-based Edge on Android, Opera, Samsung Internet: Firebase Cloud Messaging;
# Firefox: Mozilla's autopush; Safari (macOS, iOS 16.4+): Apple; Edge on Windows: WNS.
# "*." matches any subdomain (WNS and Apple use several), never the bare domain.
DEFAULT_PUSH_HOSTS = (
    "fcm.googleapis.com",
    "updates.push.services.mozilla.com",
    "*.push.apple.com",
    "*.notify.windows.com",
)
HTTPS_PORT = 443

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class EndpointRefused(Exception):
    """An endpoint the gateway will not send to; the message is the reason."""


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    """Whether ``host`` (lower case, no trailing dot) matches the allowed list."""
    for pattern in allowed:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("*."):
            if host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
                return True
        elif host == pattern:
            return True
    return False


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def url_problem(endpoint: str, allowed_hosts: Iterable[str]) -> str | None:
    """Why the gateway must not send to ``endpoint`` (before resolving), or None."""
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        return "endpoint is not a URL"
    host = (parts.hostname or "").rstrip(".")
    if parts.scheme != "https" or not host:
        return "endpoint must be an https URL"
    if parts.username is not None or parts.password is not None:
        return "endpoint must not carry user information"
    if port not in (None, HTTPS_PORT):
        return "endpoint must use the https port 443"
    if _ip_literal(host):
        return "endpoint must name a push service, not an IP address"
    if not host_allowed(host, allowed_hosts):
        return f"endpoint host {host} is not an allowed push service"
    return None


def public(address: Address) -> bool:
    """A public unicast address (IPv4-mapped IPv6 judged as the IPv4 address it carries)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def addresses_problem(host: str, addresses: Iterable[str]) -> str | None:
    """Why the resolved ``addresses`` of ``host`` must not be sent to, or None."""
    found = [ipaddress.ip_address(a.split("%", 1)[0]) for a in addresses]
    if not found:
        return f"endpoint host {host} has no address"
    inside = sorted({str(a) for a in found if not public(a)})
    if inside:
        return f"endpoint host {host} resolves to a non-public address ({', '.join(inside)})"
    return None


async def resolve_addresses(host: str) -> list[str]:
    """Every address of ``host`` (DNS, in a thread: getaddrinfo blocks); OSError if none."""
    infos = await asyncio.to_thread(socket.getaddrinfo, host, HTTPS_PORT,
                                    type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


Resolve = Callable[[str], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class EndpointPolicy:
    """The allowed push-service hosts, plus the test suite's loopback escape."""

    allowed_hosts: tuple[str, ...] = DEFAULT_PUSH_HOSTS
    # Test only (set in code, never from settings): plain-http endpoints on a loopback
    # address, where the suite's fake push service listens. Nothing else is let through.
    loopback_http: bool = False
    # How a host name is resolved at registration: DNS (tests give a table of their own).
    resolve: Resolve = resolve_addresses

    @classmethod
    def loopback_for_tests(cls) -> EndpointPolicy:
        """The test suite's policy: its fake push service on 127.0.0.1 over http."""
        return cls(allowed_hosts=(), loopback_http=True)

    def _loopback_test_endpoint(self, endpoint: str) -> bool:
        if not self.loopback_http:
            return False
        parts = urlsplit(endpoint)
        try:
            return parts.scheme == "http" and ipaddress.ip_address(
                parts.hostname or "").is_loopback
        except ValueError:
            return False

    def url_problem(self, endpoint: str) -> str | None:
        """The reason to refuse ``endpoint`` from its text alone, or None."""
        if self._loopback_test_endpoint(endpoint):
            return None
        return url_problem(endpoint, self.allowed_hosts)

    async def check(self, endpoint: str) -> None:
        """Raise ``EndpointRefused`` unless the gateway may send to ``endpoint``."""
        problem = self.url_problem(endpoint)
        if problem is None and not self._loopback_test_endpoint(endpoint):
            host = (urlsplit(endpoint).hostname or "").rstrip(".")
            try:
                problem = addresses_problem(host, await self.resolve(host))
            except OSError as exc:
                problem = f"endpoint host {host} cannot be resolved ({exc.strerror or exc})"
        if problem is not None:
            raise EndpointRefused(problem)
