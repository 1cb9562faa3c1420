"""Link-layer and IP header decoding: where a frame's IP packet starts, and what it carries.

Everything works on offsets into one buffer (the capture's memory map, or a reassembled
fragment) so that no payload byte is copied here. `flows` inlines the common case (IPv4 with a
20-byte header) for speed and falls back to `decode_ip` for everything else: IPv4 options and
fragments, IPv6 extension headers and fragments.

Link types (the pcap LINKTYPE_ numbers): Ethernet (1) with 802.1Q/802.1ad/QinQ VLAN tags,
PPPoE sessions and MPLS labels; Linux cooked capture SLL (113, `tcpdump -i any` with older
libpcap) and SLL2 (276, newer libpcap); raw IP (101, and the BSD DLT_RAW values 12 and 14;
228/229 IPv4/IPv6 only); BSD loopback NULL (0, host byte order) and LOOP (108, network byte
order), where the IP version nibble decides rather than the address-family number (which
differs between BSDs).
"""

from __future__ import annotations

import mmap
import socket
from struct import Struct
from typing import TypeAlias

Buffer: TypeAlias = bytes | mmap.mmap  # a capture's memory map, or bytes (a reassembled datagram)

NULL = 0
ETHERNET = 1
RAW_BSD12 = 12
RAW_BSD14 = 14
RAW = 101
LOOP = 108
LINUX_SLL = 113
IPV4 = 228
IPV6 = 229
LINUX_SLL2 = 276

LINK_NAMES = {
    NULL: "BSD loopback (NULL)", ETHERNET: "Ethernet", RAW_BSD12: "raw IP", RAW_BSD14: "raw IP", RAW: "raw IP",
    LOOP: "OpenBSD loopback", LINUX_SLL: "Linux cooked (SLL)", IPV4: "raw IPv4", IPV6: "raw IPv6",
    LINUX_SLL2: "Linux cooked v2 (SLL2)",
}
SUPPORTED_LINKS = frozenset(LINK_NAMES)

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
_VLAN_TAGS = frozenset({0x8100, 0x88A8, 0x9100, 0x9200})
_PPPOE_SESSION = 0x8864
_MPLS = frozenset({0x8847, 0x8848})
_PPP_IPV4, _PPP_IPV6 = 0x0021, 0x0057

PROTO_TCP = 6
PROTO_UDP = 17
PROTO_UDPLITE = 136
PROTO_IPIP = 4
PROTO_IPV6_IN_IP = 41
PROTO_GRE = 47
# IPv6 extension headers that may precede the transport header (RFC 8200 and the registry)
_V6_EXT = frozenset({0, 43, 60, 135, 139, 140, 253, 254})
_V6_FRAGMENT = 44
_V6_AH = 51
_V6_NONE = 59

_H = Struct("!H")
_IPV4 = Struct("!BxHHHBB")  # ver/ihl, total length, id, flags/fragment offset, ttl, protocol
_IPV6 = Struct("!IHBB")  # version/class/label, payload length, next header, hop limit
_FRAG6 = Struct("!BxHI")  # next header, offset/flags, identification
_GRE = Struct("!HH")


def ethertype_ip(buf: Buffer, pos: int, end: int, ethertype: int) -> int:
    """Offset of the IP header after an ethertype field (VLAN tags, PPPoE, MPLS followed), or -1."""
    for _ in range(8):
        if ethertype in (ETH_IPV4, ETH_IPV6):
            return pos if pos < end else -1
        if ethertype in _VLAN_TAGS:
            if pos + 4 > end:
                return -1
            ethertype = _H.unpack_from(buf, pos + 2)[0]
            pos += 4
        elif ethertype == _PPPOE_SESSION:
            if pos + 8 > end:
                return -1
            ppp = _H.unpack_from(buf, pos + 6)[0]
            pos += 8
            ethertype = ETH_IPV4 if ppp == _PPP_IPV4 else ETH_IPV6 if ppp == _PPP_IPV6 else -1
        elif ethertype in _MPLS:
            while pos + 4 <= end and not buf[pos + 2] & 1:  # labels until bottom of stack
                pos += 4
            pos += 4
            if pos >= end:
                return -1
            version = buf[pos] >> 4
            ethertype = ETH_IPV4 if version == 4 else ETH_IPV6 if version == 6 else -1
        else:
            return -1
    return -1


def link_ip(link: int, buf: Buffer, start: int, end: int) -> int:
    """Offset of the IP header in the frame buf[start:end] of link type `link`, or -1 (not IP)."""
    if link == ETHERNET:
        if end - start < 14:
            return -1
        ethertype = _H.unpack_from(buf, start + 12)[0]
        if ethertype <= 1500:  # 802.3 length field (LLC): not IP in practice
            return -1
        return ethertype_ip(buf, start + 14, end, ethertype)
    if link == LINUX_SLL2:
        if end - start < 20:
            return -1
        return ethertype_ip(buf, start + 20, end, _H.unpack_from(buf, start)[0])
    if link == LINUX_SLL:
        if end - start < 16:
            return -1
        return ethertype_ip(buf, start + 16, end, _H.unpack_from(buf, start + 14)[0])
    if link in (RAW, RAW_BSD12, RAW_BSD14, IPV4, IPV6):
        return start if start < end else -1
    if link in (NULL, LOOP):
        return start + 4 if end - start > 4 else -1
    return -1


class IPPacket:
    """One decoded IP header (the general path: options, extension headers, fragments)."""

    __slots__ = ("dst", "frag_id", "frag_more", "frag_offset", "l4", "l4_end", "proto", "size", "src", "version")

    def __init__(self, version: int, proto: int, src: bytes, dst: bytes, l4: int, l4_end: int, size: int) -> None:
        self.size = size  # the IP packet's bytes (header included)
        self.version = version
        self.proto = proto
        self.src = src
        self.dst = dst
        self.l4 = l4
        self.l4_end = l4_end
        self.frag_id = -1  # >= 0 for a fragment
        self.frag_offset = 0
        self.frag_more = False


def decode_ip(buf: Buffer, ip: int, end: int) -> IPPacket | None:
    """Decode the IPv4 or IPv6 header at `ip` (payload bounded by the header's length and `end`)."""
    if ip >= end:
        return None
    version = buf[ip] >> 4
    if version == 4:
        if ip + 20 > end:
            return None
        ver_ihl, total, ident, frag, _ttl, proto = _IPV4.unpack_from(buf, ip)
        ihl = (ver_ihl & 15) * 4
        if ihl < 20 or ip + ihl > end:
            return None
        # total 0: TCP segmentation offload wrote the frame before the length was filled in
        l4_end = end if total == 0 else min(end, ip + total)
        if l4_end < ip + ihl:
            return None
        packet = IPPacket(4, proto, buf[ip + 12 : ip + 16], buf[ip + 16 : ip + 20], ip + ihl, l4_end, l4_end - ip)
        if frag & 0x3FFF:
            packet.frag_id = ident
            packet.frag_offset = (frag & 0x1FFF) * 8
            packet.frag_more = bool(frag & 0x2000)
        return packet
    if version == 6:
        if ip + 40 > end:
            return None
        _, length, proto, _hops = _IPV6.unpack_from(buf, ip)
        l4_end = end if length == 0 else min(end, ip + 40 + length)  # 0: jumbogram
        packet = IPPacket(6, proto, buf[ip + 8 : ip + 24], buf[ip + 24 : ip + 40], ip + 40, l4_end, l4_end - ip)
        pos = ip + 40
        for _ in range(16):
            if proto in _V6_EXT:
                if pos + 8 > l4_end:
                    return None
                proto, size = buf[pos], (buf[pos + 1] + 1) * 8
            elif proto == _V6_AH:
                if pos + 8 > l4_end:
                    return None
                proto, size = buf[pos], (buf[pos + 1] + 2) * 4
            elif proto == _V6_FRAGMENT:
                if pos + 8 > l4_end:
                    return None
                proto, offset_flags, ident = _FRAG6.unpack_from(buf, pos)
                size = 8
                if offset_flags & 0xFFF9:  # offset or more-fragments set: a real fragment
                    packet.frag_id = ident
                    packet.frag_offset = offset_flags & 0xFFF8
                    packet.frag_more = bool(offset_flags & 1)
            else:
                break
            pos += size
        else:
            return None
        if pos > l4_end:
            return None
        packet.proto = proto
        packet.l4 = pos
        return packet if proto != _V6_NONE else None
    return None


def gre_inner(buf: Buffer, pos: int, end: int) -> int:
    """Offset of the IP packet inside a GRE header (RFC 2784/2890, version 0), or -1."""
    if pos + 4 > end:
        return -1
    flags, ptype = _GRE.unpack_from(buf, pos)
    if flags & 0x0007:  # version 1 (PPTP) carries PPP, not handled
        return -1
    pos += 4 + (4 if flags & 0x8000 else 0) + (4 if flags & 0x2000 else 0) + (4 if flags & 0x1000 else 0)
    if ptype in (ETH_IPV4, ETH_IPV6):
        return pos if pos < end else -1
    return -1


def address_text(raw: bytes) -> str:
    """The text form of a 4- or 16-byte address."""
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
