"""The phone's own IPv6 address as an identifier: an interface ID made from its MAC (EUI-64).

A stack that forms its IPv6 address from the MAC (SLAAC without privacy addresses, RFC 4291
appendix A) writes that MAC, bits flipped and `ff:fe` in the middle, into the source address of
every packet it sends: every server it talks to reads it. Payload scanning never sees headers,
so each flow's addresses are checked here, once per address (link-local and multicast ones do
not leave the link and are left out).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable

from harness.analyzer.model import Encoding, Finding, Flow, Rule
from harness.identifiers import IdentifierSet, Kind, mask

MAC_KINDS = (Kind.WIFI_MAC, Kind.BT_MAC)


def eui64(mac: str) -> int:
    """The modified EUI-64 interface ID of a MAC (any separators): U/L bit flipped, ff:fe inserted."""
    octets = bytes.fromhex("".join(ch for ch in mac if ch in "0123456789abcdefABCDEF"))
    return int.from_bytes(bytes([octets[0] ^ 0x02]) + octets[1:3] + b"\xff\xfe" + octets[3:6], "big")


def _global(address: str) -> ipaddress.IPv6Address | None:
    """An IPv6 address a router forwards (not link-local, not multicast); None otherwise, and for IPv4."""
    try:
        ip = ipaddress.IPv6Address(address)
    except ValueError:
        return None
    return None if ip.is_link_local or ip.is_multicast else ip


def address_findings(flows: Iterable[tuple[Flow, int, float | None]], identifiers: IdentifierSet | None,
                     host_of: Callable[[Flow, int, float | None], str | None]) -> list[Finding]:
    """One finding per (MAC, address) for addresses of (flow, first frame, first time) that embed a
    known MAC; its first flow (in capture order) names the destination."""
    wanted: dict[int, tuple[Kind, str]] = {}
    for kind in MAC_KINDS:
        for value in (identifiers.values.get(kind, []) if identifiers else []):
            if value:
                wanted[eui64(value)] = (kind, value)
    if not wanted:
        return []
    firsts: dict[tuple[Kind, str, str], tuple[Flow, int, float | None, int]] = {}
    for flow, frame, time in sorted(flows, key=lambda f: f[1]):
        src, dst = _global(flow.src), _global(flow.dst)
        if src is None or dst is None:  # IPv4; neighbour discovery, multicast: never leaves the link
            continue
        for address, ip in ((flow.src, src), (flow.dst, dst)):
            match = wanted.get(int(ip) & 0xFFFF_FFFF_FFFF_FFFF)
            if match is not None:
                key = (match[0], match[1], address)
                first = firsts.get(key)
                firsts[key] = (flow, frame, time, 1) if first is None else (*first[:3], first[3] + 1)
    findings = []
    for (kind, value, address), (flow, frame, time, count) in firsts.items():
        host = host_of(flow, frame, time)
        peer, port = (flow.dst, flow.dport) if address == flow.src else (flow.src, flow.sport)
        findings.append(Finding(
            rule=Rule.PLAINTEXT_IDENTIFIER, identifier=kind, slot=None, host=host, dst=flow.dst,
            dport=flow.dport, proto=flow.proto, frames=[frame], encoding=[Encoding.IPV6_ADDRESS, Encoding.EUI64],
            time=time, src=flow.src, sport=flow.sport,
            evidence=f"{mask(kind, None, value)} in ipv6-address > eui64 (the phone's address on {count} "
                     f"flow{'s' if count > 1 else ''}; first to {host or peer}:{port})"))
    return findings
