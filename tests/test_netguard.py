"""The network guard: which base URLs are refused, and proof that calls connect only to the
address that was checked."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from providers import (
    BlockedEndpoint,
    ChatMessage,
    ChatRequest,
    ConnectionConfig,
    InvalidEndpoint,
    ProviderError,
    ProviderErrorKind,
    Role,
    build_adapter,
    canonical_base_url,
    check_endpoint,
    get_preset,
)
from providers import loop as relay
from providers.netguard import GuardedResolver, address_block_reason, system_resolver
from tests.fakes.helpers import FAKE_CONFIG, stream, stream_events
from tests.fakes.provider import FakeProvider

pytest_plugins = ["tests.fakes.fixtures"]

KEY = "sk-guard-test-0007"


# -- canonical_base_url -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("HTTPS://API.OpenAI.COM:443/v1/", "https://api.openai.com/v1"),
        ("  https://api.example.com/v1//  ", "https://api.example.com/v1"),
        ("http://localhost:80/v1", "http://localhost/v1"),
        ("http://localhost:11434/v1", "http://localhost:11434/v1"),
        ("https://example.com:8443", "https://example.com:8443"),
        ("https://example.com/", "https://example.com"),
        ("https://example.com./v1", "https://example.com/v1"),
        ("https://bücher.example/v1", "https://xn--bcher-kva.example/v1"),
        ("http://[0:0:0:0:0:0:0:1]:8080/", "http://[::1]:8080"),
        ("https://203.0.113.7/v1", "https://203.0.113.7/v1"),
    ],
)
def test_it_canonicalises_base_urls(given: str, canonical: str) -> None:
    assert canonical_base_url(given) == canonical


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ("", "Enter"),
        ("api.openai.com/v1", "https://"),
        ("localhost:11434", "https://"),
        ("ftp://files.example/v1", "http:// and https://"),
        ("file:///etc/passwd", "http:// and https://"),
        ("https://user:secret@api.example.com/v1", "password"),
        ("https://sk-key@api.example.com/v1", "password"),
        ("https://api.example.com/v1#frag", "fragment"),
        ("https://api.example.com/v1?key=abc", "query"),
        ("https://api.example.com/v1?", "query"),
        ("https://api.example.com/v 1", "spaces"),
        ("https://api.example.com\\@evil.example/", "backslash"),
        ("https://:443/v1", "not valid|no host"),
        ("https://example.com:99999/", "port"),
        ("http://2130706433/", "dotted"),
        ("http://0x7f.1/", "dotted"),
        ("http://0x7f000001/", "dotted"),
        ("http://127.1/", "dotted"),
        ("http://0177.0.0.1/", "dotted|not valid"),
        ("http://1.2.3.04/", "dotted|not valid"),
    ],
)
def test_it_refuses_malformed_or_ambiguous_base_urls(given: str, complaint: str) -> None:
    with pytest.raises(InvalidEndpoint, match=complaint):
        canonical_base_url(given)


# -- the policy on addresses ------------------------------------------------------------------

BLOCKED_ALWAYS = [
    "0.0.0.0",  # noqa: S104 - a value under test, not a bind address
    "169.254.169.254",  # cloud metadata
    "169.254.0.1",
    "100.100.100.200",  # Alibaba Cloud metadata
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "240.0.0.1",
    "192.0.2.1",
    "::",
    "::ffff:127.0.0.1",
    "::ffff:8.8.8.8",
    "64:ff9b::7f00:1",
    "2002:7f00:1::",
    "fe80::1",
    "ff02::1",
    "fd00:ec2::254",
]
BLOCKED_UNLESS_PRIVATE_ALLOWED = [
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.1",
    "100.64.0.1",  # CGNAT
    "::1",
    "fd12:3456::1",  # unique-local
]
PUBLIC = ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "104.18.0.1"]

# Every special-purpose block of the IANA registries (IPv4 and IPv6) that is not globally
# reachable, by an address inside it: refused with or without private endpoints allowed.
SPECIAL_PURPOSE = [
    "0.1.2.3",  # 0.0.0.0/8 "this network"
    "192.0.0.8",  # 192.0.0.0/24 IETF protocol assignments
    "192.0.2.44",  # TEST-NET-1
    "192.88.99.1",  # 6to4 relay anycast
    "198.18.3.4",  # benchmarking
    "198.51.100.7",  # TEST-NET-2
    "203.0.113.9",  # TEST-NET-3
    "240.1.2.3",  # reserved
    "255.255.255.255",  # limited broadcast
    "::ffff:0:a9fe:a9fe",  # IPv4-translated (::ffff:0:0:0/96) of 169.254.169.254
    "::ffff:0:7f00:1",  # IPv4-translated of 127.0.0.1
    "::a9fe:a9fe",  # IPv4-compatible (::/96)
    "64:ff9b::a9fe:a9fe",  # NAT64 well-known prefix
    "64:ff9b:1::1",  # local-use NAT64
    "100::1",  # discard-only
    "2001::1",  # Teredo
    "2001:2::1",  # benchmarking
    "2001:10::1",  # ORCHID (deprecated)
    "2001:db8::1",  # documentation
    "3fff::1",  # documentation (RFC 9637)
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "5f00::1",  # SRv6 SIDs, outside global unicast
    "4000::1",  # unassigned, outside global unicast
    "fec0::1",  # site-local (deprecated)
    "fe80::1",  # link-local
    "ff0e::1",  # multicast
]
# Inside special-purpose blocks but marked globally reachable by the registry.
GLOBALLY_REACHABLE_SPECIAL = ["2001:3::1", "2001:20::1", "2001:4:112::1", "192.31.196.1"]


@pytest.mark.parametrize("address", BLOCKED_ALWAYS)
def test_it_always_blocks_metadata_link_local_multicast_reserved_and_mapped_addresses(
    address: str,
) -> None:
    ip = ipaddress.ip_address(address)
    assert address_block_reason(ip, allow_private_endpoints=False) is not None
    assert address_block_reason(ip, allow_private_endpoints=True) is not None


@pytest.mark.parametrize("address", BLOCKED_UNLESS_PRIVATE_ALLOWED)
def test_it_blocks_private_addresses_unless_private_endpoints_are_allowed(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert address_block_reason(ip, allow_private_endpoints=False) is not None
    assert address_block_reason(ip, allow_private_endpoints=True) is None


@pytest.mark.parametrize("address", SPECIAL_PURPOSE)
def test_it_refuses_every_special_purpose_range_flag_or_not(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert address_block_reason(ip, allow_private_endpoints=False) is not None
    assert address_block_reason(ip, allow_private_endpoints=True) is not None


def test_it_refuses_the_translated_metadata_address_in_a_url() -> None:
    with pytest.raises(BlockedEndpoint):
        check_endpoint("https://[::ffff:0:169.254.169.254]/v1", allow_private_endpoints=True)


@pytest.mark.parametrize("address", [*PUBLIC, *GLOBALLY_REACHABLE_SPECIAL])
def test_it_allows_public_addresses(address: str) -> None:
    assert (
        address_block_reason(ipaddress.ip_address(address), allow_private_endpoints=False) is None
    )


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/v1",
        "https://10.1.2.3:8000/v1",
        "https://169.254.169.254/latest",
        "https://[::1]/v1",
        "https://[::ffff:127.0.0.1]/v1",
        "https://[::ffff:a9fe:a9fe]/",
        "https://0.0.0.0/",
        "https://100.64.1.1/",
    ],
)
def test_it_refuses_urls_naming_a_blocked_address(url: str) -> None:
    with pytest.raises(BlockedEndpoint):
        check_endpoint(url, allow_private_endpoints=False)


def test_it_requires_https_unless_private_endpoints_are_allowed() -> None:
    with pytest.raises(InvalidEndpoint, match="https"):
        check_endpoint("http://api.example.com/v1", allow_private_endpoints=False)
    assert check_endpoint("http://127.0.0.1:11434/v1", allow_private_endpoints=True)
    with pytest.raises(InvalidEndpoint, match="https"):
        check_endpoint("http://8.8.8.8/v1", allow_private_endpoints=True)


def resolver_for(table: Mapping[str, Sequence[str]]) -> Callable[[str, int], Sequence[str]]:
    def resolve(host: str, port: int) -> Sequence[str]:
        if host not in table:
            raise OSError(f"unknown host {host}")
        return table[host]

    return resolve


def test_it_refuses_a_host_name_that_resolves_to_a_private_address() -> None:
    resolver = resolver_for({"innocent.example": ["10.0.0.5"]})

    with pytest.raises(BlockedEndpoint) as caught:
        check_endpoint(
            "https://innocent.example/v1", allow_private_endpoints=False, resolver=resolver
        )

    # The message does not tell the user what the internal name resolved to.
    assert "10.0.0.5" not in str(caught.value)
    assert caught.value.address == "10.0.0.5"


def test_it_refuses_localhost_through_the_system_resolver() -> None:
    with pytest.raises(BlockedEndpoint):
        check_endpoint(
            "https://localhost/v1", allow_private_endpoints=False, resolver=system_resolver
        )


def test_it_refuses_a_host_with_any_blocked_address_among_public_ones() -> None:
    resolver = resolver_for({"mixed.example": ["8.8.8.8", "127.0.0.1"]})
    with pytest.raises(BlockedEndpoint):
        check_endpoint("https://mixed.example", allow_private_endpoints=False, resolver=resolver)


def test_it_still_refuses_metadata_when_private_endpoints_are_allowed() -> None:
    resolver = resolver_for({"metadata.example": ["169.254.169.254"]})
    with pytest.raises(BlockedEndpoint):
        check_endpoint("http://metadata.example", allow_private_endpoints=True, resolver=resolver)


def test_it_accepts_a_public_host() -> None:
    resolver = resolver_for({"api.example.com": ["93.184.216.34", "2606:2800:220:1::"]})
    assert (
        check_endpoint(
            "https://API.example.com/v1/", allow_private_endpoints=False, resolver=resolver
        )
        == "https://api.example.com/v1"
    )


def test_it_reports_a_host_that_does_not_resolve() -> None:
    with pytest.raises(InvalidEndpoint, match="Could not find"):
        check_endpoint(
            "https://nowhere.example", allow_private_endpoints=False, resolver=resolver_for({})
        )


# -- enforcement on real calls ------------------------------------------------------------------


def hello() -> ChatRequest:
    return ChatRequest(model="m", messages=[ChatMessage(Role.USER, "hi")], api_key=KEY)


def test_with_the_flag_off_it_refuses_to_call_the_fake_on_127_0_0_1(
    fake_provider: FakeProvider,
) -> None:
    config = dataclasses.replace(FAKE_CONFIG, allow_private_endpoints=False)
    adapter = build_adapter(
        get_preset("custom"), config=config, base_url=fake_provider.base_url("custom")
    )

    with pytest.raises(InvalidEndpoint):
        stream_events(adapter, hello())
    with pytest.raises(InvalidEndpoint):
        adapter.verify(KEY)

    assert fake_provider.requests == []


def test_with_the_flag_off_it_refuses_a_name_that_resolves_to_127_0_0_1_at_connect_time(
    fake_provider: FakeProvider,
) -> None:
    # The URL looks public and is https, so only the connect-time check can catch it.
    config = dataclasses.replace(
        FAKE_CONFIG,
        allow_private_endpoints=False,
        resolver=resolver_for({"sneaky.example": ["127.0.0.1"]}),
    )
    adapter = build_adapter(
        get_preset("custom"), config=config, base_url=f"https://sneaky.example:{fake_provider.port}"
    )

    with pytest.raises(BlockedEndpoint):
        adapter.verify(KEY)
    assert fake_provider.requests == []


class CountingResolver:
    """Answers from a script of answers, one per lookup; counts lookups."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.lookups: list[tuple[str, int]] = []
        self._lock = threading.Lock()

    def __call__(self, host: str, port: int) -> Sequence[str]:
        with self._lock:
            self.lookups.append((host, port))
            return self.answers[min(len(self.lookups), len(self.answers)) - 1]


def test_it_connects_to_the_checked_address_keeping_the_host_name_in_the_host_header(
    fake_provider: FakeProvider,
) -> None:
    resolver = CountingResolver(["127.0.0.1"])
    config = dataclasses.replace(FAKE_CONFIG, resolver=resolver)
    base_url = f"http://api.provider.test:{fake_provider.port}/v1"
    adapter = build_adapter(get_preset("custom"), config=config, base_url=base_url)

    adapter.verify(KEY)
    result = stream(adapter, hello())

    assert result.error is None
    # "api.provider.test" is not in any DNS: the call only worked because the guard's own
    # lookup was used, once, for the one connection both requests shared.
    assert resolver.lookups == [("api.provider.test", fake_provider.port)]
    hosts = {request.headers["host"] for request in fake_provider.requests}
    assert hosts == {f"api.provider.test:{fake_provider.port}"}


def resolve(resolver: GuardedResolver, host: str, port: int) -> list[Any]:
    return relay.call(resolver.resolve(host, port))


def test_the_connection_goes_to_the_vetted_ip_not_the_host_name() -> None:
    guard = GuardedResolver(
        allow_private_endpoints=True,
        resolver=resolver_for({"api.provider.test": ["127.0.0.1", "::1"]}),
        public_allowed=True,
    )
    answers = resolve(guard, "api.provider.test", 8080)
    assert [(a["host"], a["port"], a["hostname"]) for a in answers] == [
        ("127.0.0.1", 8080, "api.provider.test"),
        ("::1", 8080, "api.provider.test"),
    ]
    assert all(a["flags"] & socket.AI_NUMERICHOST for a in answers), "nothing resolves again"


def test_a_rebinding_answer_on_a_later_lookup_is_refused(fake_provider: FakeProvider) -> None:
    # First lookup (when the key is saved) says loopback, allowed in development; the next
    # lookup, at connect time, says the metadata service. The connection is refused.
    resolver = CountingResolver(["127.0.0.1"], ["169.254.169.254"])
    base_url = f"http://rebind.test:{fake_provider.port}/v1"
    check_endpoint(base_url, allow_private_endpoints=True, resolver=resolver)
    config = dataclasses.replace(FAKE_CONFIG, resolver=resolver)
    adapter = build_adapter(get_preset("custom"), config=config, base_url=base_url)

    with pytest.raises(BlockedEndpoint):
        adapter.verify(KEY)
    assert fake_provider.requests == []


def test_plain_http_may_reach_a_private_endpoint_but_never_a_public_address() -> None:
    answers = {"public.example": ["93.184.216.34"], "lan.example": ["10.0.0.7"]}
    plain_http = GuardedResolver(
        allow_private_endpoints=True, resolver=resolver_for(answers), public_allowed=False
    )
    assert resolve(plain_http, "lan.example", 80)[0]["host"] == "10.0.0.7"
    with pytest.raises(InvalidEndpoint, match="https"):
        resolve(plain_http, "public.example", 80)


# -- TLS: the vetted IP on the wire, the host name for SNI and the certificate ------------------


@dataclasses.dataclass
class Pki:
    ca_path: Path
    server_context: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "BYOK test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api.provider.test")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("api.provider.test")]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_path = directory / "server.pem"
    cert_path.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    key_path = directory / "server.key"
    key_path.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert_path, key_path)
    return Pki(ca_path=ca_path, server_context=server_context)


@pytest.fixture
def tls_fake(pki: Pki) -> Iterator[FakeProvider]:
    with FakeProvider("127.0.0.1", 0, ssl_context=pki.server_context) as fake:
        yield fake


def tls_config(pki: Pki, *, allow_private_endpoints: bool = True) -> ConnectionConfig:
    return dataclasses.replace(
        FAKE_CONFIG,
        allow_private_endpoints=allow_private_endpoints,
        resolver=resolver_for({"api.provider.test": ["127.0.0.1"]}),
        ssl_context=ssl.create_default_context(cafile=str(pki.ca_path)),
    )


def test_tls_goes_to_the_vetted_ip_with_sni_and_certificate_checks_for_the_host_name(
    pki: Pki, tls_fake: FakeProvider
) -> None:
    adapter = build_adapter(
        get_preset("custom"),
        config=tls_config(pki),
        base_url=f"https://api.provider.test:{tls_fake.port}/v1",
    )

    result = stream(adapter, hello())

    assert result.error is None
    assert tls_fake.requests[0].headers["host"] == f"api.provider.test:{tls_fake.port}"


def test_tls_to_the_bare_ip_fails_the_certificate_check(pki: Pki, tls_fake: FakeProvider) -> None:
    # Same socket address, but the certificate is for the name: verification is real.
    adapter = build_adapter(
        get_preset("custom"),
        config=tls_config(pki),
        base_url=f"https://127.0.0.1:{tls_fake.port}/v1",
    )

    with pytest.raises(ProviderError) as caught:
        adapter.verify(KEY)

    assert caught.value.kind is ProviderErrorKind.NETWORK
    assert tls_fake.requests == []


def test_tls_to_a_name_resolving_to_loopback_is_refused_with_the_flag_off(
    pki: Pki, tls_fake: FakeProvider
) -> None:
    adapter = build_adapter(
        get_preset("custom"),
        config=tls_config(pki, allow_private_endpoints=False),
        base_url=f"https://api.provider.test:{tls_fake.port}/v1",
    )
    with pytest.raises(BlockedEndpoint):
        adapter.verify(KEY)
    assert tls_fake.requests == []
