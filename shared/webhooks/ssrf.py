"""Webhook URLs must not reach into the registry's own network (SSRF).

An address is refused when it is loopback, link-local, private, multicast, unspecified or
otherwise not public, unless an allow-listed network holds it
(`MODELREG_WEBHOOKS_ALLOW_NETWORKS`). The check runs when an endpoint is created and again
when each request connects: `GuardedResolver` checks every address a name resolves to, and
the connector connects only to those, so a name re-pointed at 127.0.0.1 after creation (DNS
rebinding) is refused then. Literal IP hosts never reach a resolver; `refusal_for_url` checks
them before each request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable
from typing import Any, cast
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MAX_URL_LENGTH = 2048


class RefusedAddress(OSError):
    """A webhook's host is, or resolves to, an address it may not reach."""


def parse_networks(text: str) -> tuple[Network, ...]:
    """`10.0.0.0/8,127.0.0.1,::1` as networks; ValueError naming a wrong entry."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network (CIDR)") from None
    return tuple(networks)


def address_refusal(address: Address, allowed: Iterable[Network] = ()) -> str | None:
    """Why a webhook may not connect to `address`, or None when it may."""
    mapped = getattr(address, "ipv4_mapped", None) or getattr(address, "sixtofour", None)
    if mapped is not None:  # ::ffff:127.0.0.1 is 127.0.0.1
        address = mapped
    if any(address.version == network.version and address in network for network in allowed):
        return None
    for kind, refused in (("unspecified", address.is_unspecified), ("loopback", address.is_loopback),
                          ("link-local", address.is_link_local), ("multicast", address.is_multicast),
                          ("reserved", address.is_reserved), ("private", address.is_private)):
        if refused:
            return f"{address} is a {kind} address"
    if not address.is_global:
        return f"{address} is not a public address"
    return None


def check_url(url: str) -> str:
    """An endpoint URL as given, or ValueError: http(s) with a host, no credentials, no fragment."""
    if len(url) > MAX_URL_LENGTH:
        raise ValueError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an http:// or https:// URL with a host")
    if parts.username is not None or parts.password is not None:
        raise ValueError("credentials do not belong in a webhook URL (the signature authenticates it)")
    if parts.fragment:
        raise ValueError("a webhook URL has no #fragment")
    if port == 0:
        raise ValueError("port 0 is not a port")
    return url


def literal_address(url: str) -> Address | None:
    host = urlsplit(url).hostname or ""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def refusal_for_url(url: str, allowed: Iterable[Network]) -> str | None:
    """For a URL whose host is an IP address: why it is refused (None: allowed, or a name)."""
    address = literal_address(url)
    return address_refusal(address, allowed) if address is not None else None


async def resolve_refusal(url: str, allowed: Iterable[Network]) -> str | None:
    """Why `url` may not be used now: its literal address, or any address its name resolves
    to, refused (a name that does not resolve is refused too: it cannot be checked)."""
    allowed = tuple(allowed)
    if (address := literal_address(url)) is not None:
        return address_refusal(address, allowed)
    host = urlsplit(url).hostname or ""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        return f"{host} does not resolve ({exc})"
    for info in infos:
        text = cast(str, info[4][0])  # an AF_INET/AF_INET6 sockaddr starts with the address as text
        problem = address_refusal(ipaddress.ip_address(text.split("%")[0]), allowed)
        if problem is not None:
            return f"{host} resolves to {problem}"
    return None


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp does, then refuses the name if any address it got is refused."""

    def __init__(self, allowed: Iterable[Network], inner: AbstractResolver | None = None) -> None:
        self._allowed = tuple(allowed)
        self._inner = inner or ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            problem = address_refusal(ipaddress.ip_address(str(result["host"]).split("%")[0]), self._allowed)
            if problem is not None:
                raise RefusedAddress(f"{host} resolves to {problem}")
        return results

    async def close(self) -> None:
        await self._inner.close()


def describe(exc: Any) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]
