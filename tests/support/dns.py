"""A real DNS server on loopback (dnslib's), whose A and AAAA records a test sets and changes as it goes,
as a Kubernetes headless service's records follow its pods."""
from __future__ import annotations

import ipaddress
import socket

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer


class Records(BaseResolver):
    """name → its addresses; a name not here is NXDOMAIN, a name with an empty list has no records."""

    def __init__(self) -> None:
        self.names: dict[str, list[str]] = {}
        self.queries = 0

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        self.queries += 1
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        if name not in self.names:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for address in self.names[name]:
            v6 = ipaddress.ip_address(address).version == 6
            if request.q.qtype == (QTYPE.AAAA if v6 else QTYPE.A):
                reply.add_answer(RR(name, request.q.qtype, rdata=AAAA(address) if v6 else A(address), ttl=1))
        return reply


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LoopbackDNS:
    """`with LoopbackDNS() as dns: dns.records.names["triton.test"] = [...]`; `dns.nameserver` goes in the config."""

    def __init__(self) -> None:
        self.records = Records()
        self.port = free_udp_port()
        quiet = DNSLogger("-recv,-send,-request,-reply,-truncated,-data")  # errors only
        self.server = DNSServer(self.records, address="127.0.0.1", port=self.port, logger=quiet)

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> LoopbackDNS:
        self.server.start_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
