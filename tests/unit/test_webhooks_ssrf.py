"""SSRF guard of webhook URLs (shared/webhooks/ssrf.py): address classes, URLs, the resolver."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from shared.webhooks import ssrf


def ip(text: str):
    return ipaddress.ip_address(text)


@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("172.31.255.255", "private"), ("192.168.1.1", "private"),
    ("fc00::1", "private"), ("fd12:3456::1", "private"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
    ("240.0.0.1", "reserved"),
    ("100.64.0.1", "not a public"),      # carrier-grade NAT
    ("192.0.2.1", "private"),            # TEST-NET-1, documentation
    ("::ffff:127.0.0.1", "loopback"),    # IPv4-mapped
    ("::ffff:10.0.0.1", "private"),
    ("2002:7f00:1::", "loopback"),       # 6to4 of 127.0.0.1
])
def test_inside_addresses_are_refused(address, kind):
    refusal = ssrf.address_refusal(ip(address))
    assert refusal is not None and kind in refusal, refusal


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111",
                                     "172.32.0.1", "11.0.0.1"])
def test_public_addresses_are_allowed(address):
    assert ssrf.address_refusal(ip(address)) is None


def test_an_allow_list_opens_exactly_its_networks():
    allowed = ssrf.parse_networks("127.0.0.1, 10.0.0.0/8,::1")
    assert ssrf.address_refusal(ip("127.0.0.1"), allowed) is None
    assert ssrf.address_refusal(ip("::1"), allowed) is None
    assert ssrf.address_refusal(ip("::ffff:127.0.0.1"), allowed) is None
    assert ssrf.address_refusal(ip("10.200.0.1"), allowed) is None
    assert ssrf.address_refusal(ip("127.0.0.2"), allowed) is not None
    assert ssrf.address_refusal(ip("192.168.0.1"), allowed) is not None
    assert ssrf.address_refusal(ip("169.254.169.254"), allowed) is not None


def test_parse_networks():
    assert ssrf.parse_networks("") == ()
    assert ssrf.parse_networks(" , ") == ()
    assert ssrf.parse_networks("10.0.0.1/8") == (ipaddress.ip_network("10.0.0.0/8"),)
    with pytest.raises(ValueError, match="'example.com' is not an IP address"):
        ssrf.parse_networks("127.0.0.1,example.com")


@pytest.mark.parametrize("url", ["https://hooks.example.com/in", "http://hooks.example.com:8080/a?b=c",
                                 "http://127.0.0.1:9/x", "https://[2606:4700::1]/x"])
def test_good_urls(url):
    assert ssrf.check_url(url) == url


@pytest.mark.parametrize(("url", "says"), [
    ("ftp://example.com/x", "http:// or https://"), ("file:///etc/passwd", "http:// or https://"),
    ("https:///path", "with a host"), ("example.com/x", "http:// or https://"),
    ("https://user:pw@example.com/", "credentials"), ("https://example.com/#frag", "fragment"),
    ("https://example.com:99999/", "not a URL"), ("https://example.com:0/", "port 0"),
    ("https://example.com/" + "a" * 2048, "longer than"),
])
def test_bad_urls_say_why(url, says):
    with pytest.raises(ValueError) as caught:
        ssrf.check_url(url)
    assert says in str(caught.value)


def test_literal_hosts_are_checked_before_any_request():
    assert "loopback" in ssrf.refusal_for_url("http://127.0.0.1:8080/x", ())
    assert "loopback" in ssrf.refusal_for_url("http://[::1]/x", ())
    assert ssrf.refusal_for_url("http://127.0.0.1:8080/x", ssrf.parse_networks("127.0.0.0/8")) is None
    assert ssrf.refusal_for_url("https://hooks.example.com/x", ()) is None  # a name: the resolver checks it


class FakeResolver:
    def __init__(self, addresses):
        self.addresses = addresses
        self.closed = False

    async def resolve(self, host, port=0, family=socket.AF_INET):
        return [{"hostname": host, "host": a, "port": port, "family": family, "proto": 0, "flags": 0}
                for a in self.addresses]

    async def close(self):
        self.closed = True


async def test_the_resolver_refuses_a_name_that_resolves_inside():
    guarded = ssrf.GuardedResolver((), FakeResolver(["93.184.216.34", "127.0.0.1"]))
    with pytest.raises(ssrf.RefusedAddress, match="rebind.example resolves to 127.0.0.1 is a loopback"):
        await guarded.resolve("rebind.example", 443)


async def test_the_resolver_passes_public_and_allowed_addresses():
    public = ssrf.GuardedResolver((), FakeResolver(["93.184.216.34"]))
    assert [r["host"] for r in await public.resolve("ok.example", 443)] == ["93.184.216.34"]
    inner = FakeResolver(["127.0.0.1"])
    allowed = ssrf.GuardedResolver(ssrf.parse_networks("127.0.0.1"), inner)
    assert [r["host"] for r in await allowed.resolve("localhost", 80)] == ["127.0.0.1"]
    await allowed.close()
    assert inner.closed


async def test_resolve_refusal_of_localhost_and_of_a_name_that_does_not_resolve():
    assert "loopback" in await ssrf.resolve_refusal("http://localhost:1/x", ())
    assert await ssrf.resolve_refusal("http://localhost:1/x", ssrf.parse_networks("127.0.0.0/8,::1")) is None
    assert "does not resolve" in await ssrf.resolve_refusal("http://no-such-host.invalid/x", ())


def test_only_users_the_cluster_lacks_are_created():
    from shared.kafka_users import missing_users

    assert missing_users({"webhooks": "p1", "ingest": "p2"}, {"ingest", "admin"}) == {"webhooks": "p1"}
    assert missing_users({"ingest": "p2"}, {"ingest"}) == {}
