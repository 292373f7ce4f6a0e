"""The network guard: which base URLs a provider call may reach, enforced at connect time.

A user-supplied base URL is a request the server makes on the user's behalf, so it must not
reach the server's own network (SSRF): loopback, private ranges, cloud metadata, and the rest.
Three layers:

1. `canonical_base_url` - syntax. One canonical spelling per endpoint (the vault binds sealed
   keys to it); credentials, queries, fragments, odd IP spellings are refused.
2. `check_endpoint` - policy on the URL: https unless private endpoints are allowed, literal
   addresses classified, and (optionally) the host name resolved and every address classified.
3. `GuardedResolver` - the enforcement that matters. Every provider connection (there is one
   client, `providers.aio`) is resolved through it: the host is resolved once, the
   connection refused unless every address is allowed, and aiohttp connects to the vetted
   IP. There is no second lookup, so DNS rebinding between "check" and "connect" is
   impossible. The Host header and TLS SNI/certificate checks still use the original host
   name. Plain-text HTTP is refused unless the peer address is a private one that policy
   allows.

`allow_private_endpoints` (from BYOK_ALLOW_PRIVATE_ENDPOINTS; off in production) lets loopback,
RFC 1918, CGNAT and unique-local addresses through, for self-hosted models. Link-local (cloud
metadata), unspecified, multicast, broadcast, reserved and IPv6 transition addresses stay
blocked even then: no model server lives there, and a metadata service must never be reached.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import re
import socket
from collections.abc import Callable, Sequence

import httpx
from aiohttp.abc import AbstractResolver, ResolveResult

from providers.errors import InvalidEndpoint

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# (host, port) -> IP address strings, in the order to try them.
Resolver = Callable[[str, int], Sequence[str]]

_DEFAULT_PORTS = {"http": 80, "https": 443}

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _networks(*entries: tuple[str, str]) -> tuple[tuple[_Network, str], ...]:
    return tuple((ipaddress.ip_network(cidr), reason) for cidr, reason in entries)


# Never reachable, whatever the setting.
_ALWAYS_BLOCKED = _networks(
    ("0.0.0.0/8", "an unspecified address"),
    ("169.254.0.0/16", "a link-local address (cloud metadata lives here)"),
    ("100.100.100.200/32", "a cloud metadata address"),
    ("192.0.0.0/24", "a reserved address"),
    ("192.0.2.0/24", "a documentation address"),
    ("192.88.99.0/24", "a reserved address"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),
    ("255.255.255.255/32", "a broadcast address"),
    ("::/128", "an unspecified address"),
    ("::ffff:0:0/96", "an IPv4-mapped IPv6 address"),
    ("::ffff:0:0:0/96", "an IPv4-translated IPv6 address"),
    ("::/96", "an IPv4-compatible IPv6 address"),
    ("64:ff9b::/96", "a NAT64 address"),
    ("64:ff9b:1::/48", "a NAT64 address"),
    ("100::/64", "a discard address"),
    ("2001::/32", "a Teredo address"),
    ("2001:db8::/32", "a documentation address"),
    ("2002::/16", "a 6to4 address"),
    ("fd00:ec2::254/128", "a cloud metadata address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
)

_IPV6_LOOPBACK = ipaddress.IPv6Address("::1")

# IPv6 is reachable only inside global unicast (2000::/3, IANA), and there not in the
# special-purpose blocks the IANA registry marks not globally reachable (the sub-blocks of
# 2001::/23 it marks reachable are let through).
_GLOBAL_UNICAST_V6 = ipaddress.IPv6Network("2000::/3")
_NOT_GLOBAL_V6 = _networks(
    ("2001::/23", "an IETF protocol address"),
    ("2001:db8::/32", "a documentation address"),
    ("2002::/16", "a 6to4 address"),
    ("3fff::/20", "a documentation address"),
)
_GLOBAL_EXCEPTIONS_V6 = tuple(
    ipaddress.IPv6Network(cidr)
    for cidr in (
        "2001:1::1/128",
        "2001:1::2/128",
        "2001:1::3/128",
        "2001:3::/32",
        "2001:4:112::/48",
        "2001:20::/28",
        "2001:30::/28",
    )
)

# Reachable only with allow_private_endpoints.
_PRIVATE = _networks(
    ("10.0.0.0/8", "a private address"),
    ("100.64.0.0/10", "a carrier-grade NAT address"),
    ("127.0.0.0/8", "a loopback address"),
    ("172.16.0.0/12", "a private address"),
    ("192.168.0.0/16", "a private address"),
    ("::1/128", "a loopback address"),
    ("fc00::/7", "a unique-local address"),
)

# The WHATWG URL parser reads a host whose last label is a number (decimal, octal "0177",
# hex "0x7f") as an IPv4 address, and so does inet_aton behind getaddrinfo: "2130706433",
# "0x7f.1" and "127.1" all mean 127.0.0.1. We accept only the plain dotted-quad spelling.
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)


class BlockedEndpoint(InvalidEndpoint):
    """The endpoint resolves to an address the guard refuses.

    The message deliberately does not echo resolved addresses: telling a user what an internal
    host name resolves to would turn the guard into a way to map the internal network.
    """

    def __init__(self, message: str, *, reason: str, address: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.address = address


# The key would cross the internet in clear.
HTTPS_REQUIRED = "Use an https:// URL for a public host."
_BLOCKED_MESSAGE = "This server does not connect to private, local or reserved network addresses."


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve `host` with the system resolver; addresses in the system's preferred order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _canonname, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def address_block_reason(address: IPAddress, *, allow_private_endpoints: bool) -> str | None:
    """Why `address` may not be reached under this policy, or None if it may.

    Always-blocked ranges first, then private ranges (allowed by the flag); then anything
    the IANA special-purpose registries do not mark as globally reachable is refused, flag
    or not: an IPv6 address outside global unicast (the translated and mapped forms of
    IPv4 included), a special-purpose block inside it, an IPv4 address Python's registry
    copy does not call global.
    """
    for network, reason in _ALWAYS_BLOCKED:
        # ::/96 (IPv4-compatible) contains ::1, which is loopback and only private.
        if address in network and address != _IPV6_LOOPBACK:
            return reason
    for network, reason in _PRIVATE:
        if address in network:
            return None if allow_private_endpoints else reason
    if address.is_multicast or address.is_unspecified or address.is_link_local:
        return "a reserved address"
    if isinstance(address, ipaddress.IPv6Address):
        if address not in _GLOBAL_UNICAST_V6:
            return "a special-purpose IPv6 address"
        for network, reason in _NOT_GLOBAL_V6:
            if address in network and not any(address in ok for ok in _GLOBAL_EXCEPTIONS_V6):
                return reason
        return None
    if not address.is_global:
        return "a special-purpose address"
    return None


def is_public_address(address: IPAddress) -> bool:
    """Whether `address` is on the public internet (no policy applies to it)."""
    return address_block_reason(address, allow_private_endpoints=False) is None


def canonical_base_url(url: str) -> str:
    """The one canonical spelling of a provider base URL, or `InvalidEndpoint`.

    Lower-case scheme and host, IDNA host names in their ASCII form, IPv6 compressed, the
    default port dropped, trailing slashes stripped. Refused, with a message a user can act
    on: a missing scheme, schemes other than http/https, credentials, query strings,
    fragments, whitespace, ports out of range, and numeric hosts that are not plain dotted
    IPv4 (`http://2130706433/`, `http://0x7f.1/`).
    """
    if not isinstance(url, str) or not url.strip():
        raise InvalidEndpoint("Enter the provider's base URL, like https://api.example.com/v1.")
    url = url.strip()
    if any(ch.isspace() or ord(ch) < 0x20 or ch == "\x7f" or ch == "\\" for ch in url):
        raise InvalidEndpoint("The URL contains spaces, backslashes or control characters.")
    scheme, separator, _rest = url.partition("://")
    if not separator or not scheme:
        raise InvalidEndpoint("Start the URL with https://, like https://api.example.com/v1.")
    scheme = scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise InvalidEndpoint("Only http:// and https:// URLs can be used.")
    if "#" in url:
        raise InvalidEndpoint("Remove the #fragment from the URL.")
    if "?" in url:
        raise InvalidEndpoint("Remove the ?query from the URL; give only the base URL.")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise InvalidEndpoint("That URL is not valid.") from None
    if parsed.userinfo or "@" in url.split("://", 1)[1].split("/", 1)[0]:
        raise InvalidEndpoint(
            "Remove the user name or password from the URL; the key is stored separately."
        )
    host = _canonical_host(parsed.raw_host.decode("ascii"))
    port = parsed.port
    if port is not None and not 1 <= port <= 65535:
        raise InvalidEndpoint("The port number is out of range.")
    port_part = "" if port is None or port == _DEFAULT_PORTS[scheme] else f":{port}"
    path = parsed.raw_path.decode("ascii").rstrip("/")
    return f"{scheme}://{host}{port_part}{path}"


def _canonical_host(host: str) -> str:
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    if not host:
        raise InvalidEndpoint("The URL has no host name.")
    if ":" in host:
        try:
            address = ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidEndpoint("That IPv6 address is not valid.") from None
        return f"[{address.compressed}]"
    labels = host.split(".")
    if len(host) > 253 or any(not 1 <= len(label) <= 63 for label in labels):
        raise InvalidEndpoint("That host name is not valid.")
    try:
        host.encode("idna").decode("ascii")
    except UnicodeError:
        raise InvalidEndpoint("That host name is not valid.") from None
    last_label = labels[-1]
    if _NUMERIC_LABEL.match(last_label):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise InvalidEndpoint(
                "Write an IP address in the usual dotted form, like 203.0.113.7."
            ) from None
    return host


def literal_address(host: str) -> IPAddress | None:
    """The IP address a (canonical or httpx-parsed) host names literally, if it is one."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_endpoint(
    url: str,
    *,
    allow_private_endpoints: bool,
    resolver: Resolver | None = None,
) -> str:
    """Check a base URL against the policy and return its canonical form.

    Without `resolver`, checks what the URL itself says: https unless private endpoints are
    allowed, and literal IP addresses. With `resolver` (e.g. `system_resolver`, when a user
    saves an endpoint), the host name is resolved too and every address must be allowed.
    Raises `InvalidEndpoint` (or its subclass `BlockedEndpoint`). The connection itself is
    checked again by `GuardedResolver`, which is what actually keeps calls safe.
    """
    canonical = canonical_base_url(url)
    parsed = httpx.URL(canonical)
    if parsed.scheme == "http" and not allow_private_endpoints:
        raise InvalidEndpoint("Use an https:// URL.")
    try:
        host = parsed.host
    except UnicodeError:  # idna.IDNAError for labels such as "xn--"
        raise InvalidEndpoint("That host name is not valid.") from None
    address = literal_address(host)
    if address is not None:
        reason = address_block_reason(address, allow_private_endpoints=allow_private_endpoints)
        if reason is not None:
            raise BlockedEndpoint(
                f"{address} is {reason}. {_BLOCKED_MESSAGE}",
                reason=reason,
                address=str(address),
            )
        if parsed.scheme == "http" and is_public_address(address):
            raise InvalidEndpoint("Use an https:// URL for a public address.")
    elif resolver is not None:
        port = parsed.port or _DEFAULT_PORTS[parsed.scheme]
        try:
            addresses = vetted_addresses(
                host, port, allow_private_endpoints=allow_private_endpoints, resolver=resolver
            )
        except (OSError, UnicodeError):
            raise InvalidEndpoint(f"Could not find the host {host}.") from None
        if parsed.scheme == "http" and any(is_public_address(a) for a in addresses):
            raise InvalidEndpoint(HTTPS_REQUIRED)
    return canonical


def vetted_addresses(
    host: str,
    port: int,
    *,
    allow_private_endpoints: bool,
    resolver: Resolver,
) -> list[IPAddress]:
    """Resolve `host` once and return its addresses, if every one of them is allowed.

    One disallowed address refuses the whole host: an attacker-controlled name could
    otherwise mix a public address with an internal one and win whichever is tried first.
    Raises `BlockedEndpoint`, or `OSError` when the name does not resolve.
    """
    literal = literal_address(host)
    raw_addresses: Sequence[str] = [str(literal)] if literal is not None else resolver(host, port)
    addresses: list[IPAddress] = []
    for raw in raw_addresses:
        try:
            # Zone ids ("fe80::1%eth0") are only meaningful for link-local addresses, which
            # are blocked anyway; dropping them keeps the classification simple.
            address = ipaddress.ip_address(raw.split("%", 1)[0])
        except ValueError:
            raise BlockedEndpoint(
                _BLOCKED_MESSAGE, reason="an unparseable resolver answer", address=raw
            ) from None
        reason = address_block_reason(address, allow_private_endpoints=allow_private_endpoints)
        if reason is not None:
            raise BlockedEndpoint(_BLOCKED_MESSAGE, reason=reason, address=str(address))
        addresses.append(address)
    if not addresses:
        raise OSError(f"no addresses for {host}")
    return addresses


class GuardedResolver(AbstractResolver):
    """The connect-time guard: aiohttp resolves every new connection through it.

    It resolves the host once with `resolver` (off the event loop), refuses the connection
    unless every address is allowed (`vetted_addresses`), and hands aiohttp the vetted
    addresses as numeric hosts, so nothing re-resolves the name and DNS rebinding between
    "check" and "connect" is impossible; the Host header and TLS SNI and certificate checks
    still use the name. `public_allowed` is False for plain-http URLs: such a URL may reach
    a private endpoint (when policy allows those) but never a public address, where the key
    would cross the internet in clear.
    """

    def __init__(
        self, *, allow_private_endpoints: bool, resolver: Resolver, public_allowed: bool
    ) -> None:
        self.allow_private_endpoints = allow_private_endpoints
        self.resolver = resolver
        self.public_allowed = public_allowed

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        lookup = functools.partial(
            vetted_addresses,
            host,
            port,
            allow_private_endpoints=self.allow_private_endpoints,
            resolver=self.resolver,
        )
        addresses = await asyncio.get_running_loop().run_in_executor(None, lookup)
        if not self.public_allowed and any(is_public_address(a) for a in addresses):
            raise InvalidEndpoint(HTTPS_REQUIRED)
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        return None
