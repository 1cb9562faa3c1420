"""Capture-building helpers for the reader and flow tests.

Packets are built with scapy; file containers are written by scapy where it can (`wrpcap`,
`PcapNgWriter`) and by hand where a test needs what scapy cannot write (big-endian pcap,
nanosecond pcapng resolutions, Simple Packet and Name Resolution Blocks, PCAPdroid blocks).
Every hand-built file is cross-checked against scapy's own reader by the tests. Addresses only
ever exist inside these files: nothing is sent anywhere.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from harness.analyzer.flows import CaptureStream, open_capture
from harness.analyzer.model import StreamUnit

PHONE, SERVER = "10.1.0.2", "203.0.113.5"
SRC_MAC, DST_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"  # explicit: scapy would resolve them otherwise
PHONE6, SERVER6 = "fd00::2", "2001:db8::5"


def pcap_bytes(frames: list[tuple[float, bytes]], link: int = 1, order: str = "<", nano: bool = False,
               snaplen: int = 262144, modified: bool = False) -> bytes:
    """A pcap file: either byte order, micro- or nanosecond stamps, or the 'modified' 24-byte records."""
    magic = 0xA1B2CD34 if modified else 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, link)]
    scale = 1_000_000_000 if nano else 1_000_000
    for ts, data in frames:
        sec = int(ts)
        frac = round((ts - sec) * scale)
        out.append(struct.pack(order + "IIII", sec, frac, len(data), len(data)))
        if modified:
            out.append(struct.pack(order + "IHBx", 1, 0x0800, 0))
        out.append(data)
    return b"".join(out)


def _pad(data: bytes) -> bytes:
    return data + b"\x00" * (-len(data) % 4)


class Ng:
    """A hand-built pcapng file, block by block."""

    def __init__(self, order: str = "<") -> None:
        self.order = order
        self.blocks: list[bytes] = []

    def _options(self, options: list[tuple[int, bytes]]) -> bytes:
        if not options:
            return b""
        out = b"".join(struct.pack(self.order + "HH", code, len(value)) + _pad(value) for code, value in options)
        return out + b"\x00\x00\x00\x00"

    def block(self, btype: int, body: bytes) -> Ng:
        length = 12 + len(_pad(body))
        self.blocks.append(struct.pack(self.order + "II", btype, length) + _pad(body)
                           + struct.pack(self.order + "I", length))
        return self

    def shb(self, comment: str | None = None) -> Ng:
        body = struct.pack(self.order + "IHHq", 0x1A2B3C4D, 1, 0, -1)
        body += self._options([(1, comment.encode())] if comment else [])
        return self.block(0x0A0D0D0A, body)

    def idb(self, link: int, tsresol: int | None = None, tsoffset: int | None = None, comment: str | None = None,
            snaplen: int = 0) -> Ng:
        options = []
        if tsresol is not None:
            options.append((9, bytes([tsresol])))
        if tsoffset is not None:
            options.append((14, struct.pack(self.order + "q", tsoffset)))
        if comment:
            options.append((1, comment.encode()))
        return self.block(1, struct.pack(self.order + "HHI", link, 0, snaplen) + self._options(options))

    def epb(self, iface: int, ticks: int, data: bytes, comments: tuple[str, ...] = ()) -> Ng:
        body = struct.pack(self.order + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data))
        body += _pad(data) + self._options([(1, c.encode()) for c in comments])
        return self.block(6, body)

    def spb(self, data: bytes) -> Ng:
        return self.block(3, struct.pack(self.order + "I", len(data)) + _pad(data))

    def nrb(self, entries: list[tuple[bytes, list[str]]]) -> Ng:
        body = b""
        for address, names in entries:
            value = address + b"".join(n.encode() + b"\x00" for n in names)
            body += struct.pack(self.order + "HH", 1 if len(address) == 4 else 2, len(value)) + _pad(value)
        return self.block(4, body + b"\x00\x00\x00\x00")

    def pcapdroid_uid(self, uid: int, package: str, app: str) -> Ng:
        body = struct.pack(self.order + "IHBxiBB", 62652, 1, 1, uid, len(package), len(app))
        return self.block(0x0BAD, body + package.encode() + app.encode())

    def isb(self) -> Ng:
        return self.block(5, struct.pack(self.order + "IIIII", 0, 0, 0, 0, 0))

    def bytes(self) -> bytes:
        return b"".join(self.blocks)


def eth() -> Any:
    """An Ethernet header with fixed addresses (nothing looked up, nothing sent)."""
    return Ether(src=SRC_MAC, dst=DST_MAC)


def tcp(src: str, dst: str, sport: int, dport: int, seq: int, flags: str = "PA", payload: bytes = b"",
        ack: int = 0) -> Any:
    """One TCP segment over Ethernet (IPv6 when the addresses are)."""
    layer = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    packet = eth() / layer / TCP(sport=sport, dport=dport, seq=seq & 0xFFFFFFFF, ack=ack, flags=flags)
    return packet / payload if payload else packet


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes) -> Any:
    layer = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return eth() / layer / UDP(sport=sport, dport=dport) / payload


class Conv:
    """A TCP conversation with explicit control over every segment's sequence number."""

    def __init__(self, client: tuple[str, int] = (PHONE, 40000), server: tuple[str, int] = (SERVER, 80),
                 isn: tuple[int, int] = (1000, 900000)) -> None:
        self.client, self.server = client, server
        self.isn = isn

    def syn(self) -> list[Any]:
        (c, cp), (s, sp) = self.client, self.server
        return [tcp(c, s, cp, sp, self.isn[0], "S"), tcp(s, c, sp, cp, self.isn[1], "SA", ack=self.isn[0] + 1),
                tcp(c, s, cp, sp, self.isn[0] + 1, "A")]

    def data(self, from_client: bool, offset: int, payload: bytes, flags: str = "PA") -> Any:
        """A segment carrying stream bytes from `offset` (0 = the first byte after the SYN)."""
        (a, ap), (b, bp) = (self.client, self.server) if from_client else (self.server, self.client)
        isn = self.isn[0] if from_client else self.isn[1]
        return tcp(a, b, ap, bp, isn + 1 + offset, flags, payload)

    def stream(self, from_client: bool, payload: bytes, size: int = 100, start: int = 0) -> list[Any]:
        return [self.data(from_client, start + i, payload[i : i + size]) for i in range(0, len(payload), size)]


def write(path: Path, packets: list[Any], start: float = 1_700_000_000.0) -> Path:
    """Write scapy packets (or raw Ethernet frames) to a pcap, 1 ms apart, in the given order."""
    frames = [(start + i * 0.001, bytes(p)) for i, p in enumerate(packets)]
    path.write_bytes(pcap_bytes(frames))
    return path


def read(path: Path, exclude: tuple[str, ...] = ()) -> tuple[list[StreamUnit], CaptureStream]:
    stream = open_capture(path, exclude)
    try:
        units = list(stream.units())
    finally:
        stream.close()
    return units, stream


def joined(units: list[StreamUnit], from_client: bool | None = None, proto: str | None = None) -> bytes:
    """The main-run bytes of the matching units, with cut overlaps removed (by stream_offset)."""
    out = bytearray()
    for unit in units:
        if (from_client is not None and unit.from_client != from_client) or (proto and unit.flow.proto != proto):
            continue
        if unit.gap_before and unit.frames and unit.stream_offset < len(out):
            continue  # an extra unit (conflicting retransmission): not part of the main run
        overlap = len(out) - unit.stream_offset if unit.stream_offset < len(out) else 0
        out += unit.data[overlap:]
    return bytes(out)
