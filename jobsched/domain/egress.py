"""Which addresses an http job or a webhook may connect to (DESIGN.md "Egress").

By default never loopback, link-local (which holds 169.254.169.254 and the other cloud
metadata addresses), unspecified or multicast addresses, nor the few metadata endpoints
outside those ranges; ``allow`` (``JOBSCHED_HTTP_ALLOW_CIDRS``) lifts that for the ranges it
names and ``deny`` (``JOBSCHED_HTTP_DENY_CIDRS``) adds ranges to refuse. A range in both
is refused: an operator's deny always wins. The rule applies to the address actually
connected to, after DNS resolution (jobsched.worker.egress). Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: (range, the rule's name in the error an attempt or a 422 shows)
DEFAULT_REFUSED: tuple[tuple[Network, str], ...] = tuple(
    (ipaddress.ip_network(cidr), name) for cidr, name in (
        ("127.0.0.0/8", "loopback"), ("::1/128", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata)"), ("fe80::/10", "link-local"),
        ("0.0.0.0/8", "unspecified"), ("::/128", "unspecified"),
        ("224.0.0.0/4", "multicast"), ("ff00::/8", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        # metadata services that live outside link-local
        ("fd00:ec2::254/128", "cloud metadata (AWS IPv6)"),
        ("100.100.100.200/32", "cloud metadata (Alibaba)"),
        ("168.63.129.16/32", "cloud metadata (Azure wire server)"),
    ))


class EgressError(ValueError):
    """A CIDR list that does not parse (the message names the entry)."""


def parse_cidrs(values: Iterable[str]) -> tuple[Network, ...]:
    networks = []
    for value in values:
        text = value.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise EgressError(f"{text!r} is not an IP range (CIDR): {exc}") from None
    return tuple(networks)


@dataclass(frozen=True)
class EgressPolicy:
    allow: tuple[Network, ...] = ()
    deny: tuple[Network, ...] = ()

    @classmethod
    def from_lists(cls, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> EgressPolicy:
        return cls(parse_cidrs(allow), parse_cidrs(deny))

    def refusal(self, address: str | Address) -> str | None:
        """Why a connection to ``address`` is refused (naming the rule), or None."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
        for network in self.deny:
            if ip.version == network.version and ip in network:
                return f"{ip} is in {network}, refused by JOBSCHED_HTTP_DENY_CIDRS"
        if any(ip.version == n.version and ip in n for n in self.allow):
            return None
        for network, name in DEFAULT_REFUSED:
            if ip.version == network.version and ip in network:
                return (f"{ip} is a {name} address ({network}), refused by default; "
                        "JOBSCHED_HTTP_ALLOW_CIDRS can allow it")
        return None

    def literal_refusal(self, url: str) -> str | None:
        """For a URL whose host is a literal IP address: why it is refused, or None (a host
        name is checked when it is resolved, at run time)."""
        try:
            host = urlsplit(url).hostname
        except ValueError as exc:  # e.g. an unbalanced "[" or "]": no host to connect to
            return f"the URL's host cannot be read ({exc})"
        if host is None:
            return None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return None
        return self.refusal(ip)
