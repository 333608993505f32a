"""Fleet discovery: an endpoint is an http(s):// URL, or `dns+http(s)://name:port`, every A and AAAA record
of which is one endpoint on that port (a Kubernetes headless service, Prometheus's dns_sd). Names are looked
up again each time a fleet is used, so pods that come and go are followed without a config change.
"""
from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

PREFIX = "dns+"


def is_dns(spec: str) -> bool:
    return spec.startswith(PREFIX)


def nameserver(value: str) -> tuple[str, int]:
    """`host` or `host:port` (`[v6]:port`) of a DNS server, as the config names it."""
    url = urlsplit(f"//{value}")
    if not url.hostname:
        raise ValueError(f"expected a DNS server as host or host:port, got {value!r}")
    return url.hostname, url.port or 53


def _resolver(nameservers: Sequence[str], timeout: float) -> dns.asyncresolver.Resolver:
    if nameservers:
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver(*nameserver(n)) for n in nameservers]
    else:  # the system's: resolv.conf's servers, search domains and ndots, as a pod's own lookups use them
        resolver = dns.asyncresolver.Resolver()
    resolver.lifetime = timeout
    return resolver


def endpoint_url(scheme: str, address: str, port: int) -> str:
    host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
    return f"{scheme}://{host}:{port}"


async def _addresses(resolver: dns.asyncresolver.Resolver, name: str, timeout: float) -> list[str]:
    """Every A and AAAA address of `name`; ValueError saying why there are none."""
    async def records(kind: str) -> list[str]:
        try:
            answer = await resolver.resolve(name, kind, search=True, lifetime=timeout)
        except dns.resolver.NoAnswer:
            return []
        return [r.address for r in answer]

    try:
        found = await asyncio.gather(records("A"), records("AAAA"))
    except dns.resolver.NXDOMAIN:
        raise ValueError(f"DNS name {name} does not exist (NXDOMAIN)") from None
    except dns.exception.Timeout:
        raise ValueError(f"no DNS answer for {name} within {timeout:g} s") from None
    except dns.resolver.NoNameservers as exc:
        raise ValueError(f"no DNS server could answer for {name} ({exc})") from None
    except dns.exception.DNSException as exc:
        raise ValueError(f"looking up {name} failed: {exc}") from None
    addresses = sorted(set(found[0] + found[1]), key=lambda a: (ipaddress.ip_address(a).version, ipaddress.ip_address(a)))
    if not addresses:
        raise ValueError(f"DNS name {name} has no A or AAAA records")
    return addresses


async def resolve(specs: Sequence[str], *, nameservers: Sequence[str] = (), timeout: float = 5.0
                  ) -> tuple[list[str], dict[str, str]]:
    """(the endpoints, in the order given, each name expanded to its records; each name that gave none → why)."""
    if not any(is_dns(s) for s in specs):
        return list(specs), {}
    try:
        resolver = _resolver(nameservers, timeout)
    except dns.resolver.NoResolverConfiguration:
        reason = "no DNS servers: /etc/resolv.conf names none and `fleet.nameservers` is not set"
        return [s for s in specs if not is_dns(s)], {s: reason for s in specs if is_dns(s)}

    async def expand(spec: str) -> list[str] | str:
        if not is_dns(spec):
            return [spec]
        url = urlsplit(spec.removeprefix(PREFIX))
        try:
            return [endpoint_url(url.scheme, a, url.port or 0) for a in await _addresses(resolver, url.hostname or "", timeout)]
        except ValueError as exc:
            return str(exc)

    endpoints: list[str] = []
    unresolved: dict[str, str] = {}
    for spec, found in zip(specs, await asyncio.gather(*(expand(s) for s in specs)), strict=True):
        if isinstance(found, str):
            unresolved[spec] = found
        else:
            endpoints += [e for e in found if e not in endpoints]
    return endpoints, unresolved
