"""Flows: the flow table, TCP reassembly, UDP datagrams and other IP packets -> `StreamUnit`s.

`open_capture(path, exclude)` returns a `CaptureStream`; iterating `units()` reads the file once
and yields units as they complete; `summary` and `flows` are complete once it is exhausted.

Orientation. A flow is oriented client -> server: the client is the side that sent the SYN (or
received the SYN/ACK); without one (a capture that started mid-stream, UDP, other protocols)
the side with the higher port (the ephemeral one); with equal ports, the first sender.

TCP reassembly, per direction. Sequence numbers are compared modulo 2^32 relative to the next
expected byte, so wraparound needs no special case. In-order data is appended; segments ahead
of it wait (up to `OOO_LIMIT` bytes) for the hole to fill; when it does not (a capture that
lost packets), the hole is skipped and the next unit says `gap_before`. Retransmitted bytes are
compared with what was kept: when they differ (overlapping segments with conflicting data, which
receivers resolve differently), the new version is handed on as a unit of its own, so an
identifier in either version is found. A segment whose bytes fall into a hole that was already
skipped is handed on the same way. A direction without a SYN starts at its first segment.

Bounded memory. A direction buffers at most `WINDOW` contiguous bytes: then a unit is cut and
the last `OVERLAP` bytes are kept as the start of the next one (an identifier spanning the cut
is still found whole; `stream_offset` lets consumers drop the duplicate hits). Across all flows
at most `BUDGET` bytes are buffered: beyond it the largest buffers are flushed. Out-of-order
data that cannot be placed (more than `REORDER_SPAN` beyond the expected byte) is dropped and
counted in `summary.evicted_bytes`, never silently. Idle connections are retired; past
`MAX_RECORDS` flow records, new flows to a destination already recorded are folded into its
record (units still name their exact flow; a note says so).

Speed. The reader's pcap loop runs here (`pcap_records`): a pure ACK, a segment inside an
encrypted record body, or the next in-order segment of a plaintext stream is decided inline,
without a call; buffers hold zero-copy views of the capture's memory map, and bytes are copied
once, when a unit is cut.

TLS speed-up. A direction whose first bytes are a TLS record header is followed record by
record: bodies of application-data records (type 23, encrypted) are not buffered, only their
5-byte headers (the count of left-out bytes is `StreamUnit.tls_elided`); other records
(handshake, alerts, change-cipher-spec) are kept whole, so decoders read the SNI and
certificates. Units of such a direction are cut only at record boundaries. When the stream
stops parsing as TLS records, it is kept raw from there on. A lost segment inside an encrypted
body does not matter; one that breaks the record alignment makes the direction raw. So
`stream_offset` counts kept bytes (the stream offset itself when nothing was left out).

UDP: one unit per datagram (DNS and CoAP need datagram boundaries). Other IP protocols: one
unit per packet, `proto` the protocol number as text and ports 0. IPv4 and IPv6 fragments
are reassembled (bounded; what cannot be is noted). IP-in-IP, 6in4 and GRE are unwrapped.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from struct import Struct

from harness.analyzer import packets as pk
from harness.analyzer.model import CaptureSummary, Flow, StreamUnit
from harness.analyzer.packets import Buffer
from harness.analyzer.reader import CaptureFile, Sink
from harness.errors import PhonehomeError

__all__ = ["BUDGET", "OVERLAP", "WINDOW", "CaptureStream", "FlowRecord", "open_capture", "parse_exclude"]

WINDOW = 1 << 20  # contiguous bytes buffered per direction before a unit is cut
OVERLAP = 64 << 10  # bytes a cut unit shares with the next one
PRESSURE_OVERLAP = 4 << 10  # ... when it is cut because the global budget ran out
BUDGET = 48 << 20  # bytes buffered across all flows (in-order buffers and waiting segments)
OOO_LIMIT = 256 << 10  # bytes waiting for a hole to fill, per direction, before the hole is skipped
OOO_SEGMENTS = 1024  # segments waiting, per direction
REORDER_SPAN = 1 << 20  # a segment further ahead than this cannot be placed (dropped, counted)
RESYNC_AFTER = 8  # ... unless this many in a row are: then the stream jumps there
MAX_HOLES = 16  # skipped holes remembered per direction (late segments for them are still read)
MAX_CONNS = 200_000  # live table entries (two per connection) before the oldest are retired
MAX_RECORDS = 50_000  # flow records kept one per flow; beyond, folded per destination service...
MAX_SERVICES = 100_000  # ...of which this many are remembered; past both, into the latest record (noted)
IDLE = {6: 600.0, 17: 120.0}  # seconds of capture time before an idle connection is retired
IDLE_OTHER = 120.0
IDLE_CLOSED = 30.0
SWEEP_EVERY = 30.0  # capture seconds between two idle sweeps
TLS_MAX_RECORD = (1 << 14) + 2048  # TLSCiphertext.length limit (RFC 5246 6.2.3)
FRAG_BUDGET = 4 << 20  # bytes of IP fragments waiting for their datagram
FRAG_DATAGRAMS = 1024
FRAG_TIMEOUT = 30.0
MAX_DEPTH = 4  # tunnels inside tunnels

_M = 0xFFFFFFFF
_HALF = 1 << 31
_SYN, _FIN, _RST, _ACK = 0x02, 0x01, 0x04, 0x10
_PCAPDROID_MAGIC = b"\x01\x07\x20\x21"
_PCAPDROID_TRAILER = 32

_V4 = Struct("!BxHxxHxB")  # ver/ihl, total length, flags/fragment offset, protocol
_ETH_FAST = Struct("!HBxHxxHxB14xIxxxxBB")  # from the ethertype: IPv4 ver/ihl, length, fragment, protocol; TCP
_TCP_SEQ = Struct("!IxxxxBB")  # seq, data offset, flags (after the ports)
_PORTS = Struct("!HH")
_UDP_LEN = Struct("!H")


@dataclass(slots=True)
class FlowRecord:
    """A flow seen in the capture, for policy (destinations) and reports."""

    flow: Flow
    first_frame: int
    first_time: float
    packets: int = 0
    bytes: int = 0
    excluded: bool = False


class _Conn:
    """A connection (or UDP/other flow): its record and its two directions."""

    __slots__ = ("active", "app", "closed", "dirs", "excluded", "flow", "keys", "proto", "record", "seen", "table")

    def __init__(self, flow: Flow, record: FlowRecord, proto: int, excluded: bool, app: str | None,
                 now: float) -> None:
        self.flow = flow
        self.record = record
        self.proto = proto
        self.excluded = excluded
        self.app = app
        self.closed = False
        self.seen = 0  # packets counted at the last sweep...
        self.active = now  # ...and when that count last changed (idle detection without per-packet clocks)
        self.keys: tuple[bytes, bytes] = (b"", b"")
        self.table: dict[bytes, _Dir] = {}
        self.dirs: tuple[_Dir, _Dir] = (_Dir(self, True), _Dir(self, False))


_SLOW, _SKIP, _RAW = 0, 1, 2  # what the fast path may do with the next in-order segment


class _Dir:
    """One direction of a connection: counters and (TCP) reassembly state.

    Positions are sequence numbers (mod 2^32) relative to `nseq`, the next expected one.
    """

    __slots__ = (
        "by", "conn", "done", "elided", "fin", "flow", "fo", "fr", "from_client", "ft", "gap", "hdr",
        "holes", "kept", "known", "mode", "nseq", "ooo", "ooo_bytes", "parts", "pk", "raw_at", "rec_left", "size",
        "skip", "stray", "tls",
    )

    def __init__(self, conn: _Conn, from_client: bool) -> None:
        self.conn = conn
        self.flow = conn.flow
        self.from_client = from_client
        self.pk = 0  # packets
        self.by = 0  # IP bytes
        self.known = False  # sequence numbers known (SYN or first segment seen)
        self.done = False
        self.mode = _SLOW
        self.nseq = -1 if conn.excluded else 0  # next expected sequence number; -1 never matches one
        self.fin = -1  # the FIN's sequence number
        # the buffered bytes: parts[i] (a zero-copy view of the capture where it can be) starts at fo[i]
        # and came in frame fr[i] at time ft[i]; they are joined once, when a unit is cut
        self.parts: list[bytes | memoryview] = []
        self.size = 0
        self.fo: list[int] = []
        self.fr: list[int] = []
        self.ft: list[float] = []
        self.kept = 0  # kept-byte offset of the buffer's first byte
        self.raw_at = 0  # buffer[raw_at:] maps linearly onto the stream (for retransmission checks)
        self.gap = False
        self.elided = 0
        self.tls = 0  # 0 undecided, 1 following TLS records, 2 raw
        self.rec_left = 0  # bytes left of a kept TLS record body
        self.skip = 0  # bytes left of an application-data record body (not kept)
        self.hdr = b""  # a TLS record header split across segments
        self.ooo: dict[int, tuple[bytes | None, int, int, float]] = {}  # seq -> (data, length, frame, time)
        self.ooo_bytes = 0
        self.holes: list[tuple[int, int]] = []  # skipped (seq, length) ranges
        self.stray = 0  # far-ahead segments dropped in a row


class _Datagram:
    """Fragments of one IP datagram waiting for the rest."""

    __slots__ = ("frame", "parts", "proto", "size", "time", "total")

    def __init__(self, frame: int, time: float, proto: int) -> None:
        self.parts: list[tuple[int, bytes]] = []
        self.total = -1  # known once the last fragment arrived
        self.size = 0
        self.frame = frame
        self.time = time
        self.proto = proto


def parse_exclude(specs: Sequence[str]) -> list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None]]:
    """`ADDR`, `ADDR:PORT`, `[V6ADDR]:PORT`, or a network `ADDR/PREFIX` (optionally `:PORT`)."""
    out: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, int | None]] = []
    for spec in specs:
        text = spec.strip()
        host, port_text = text, None
        if text.startswith("["):
            close = text.find("]")
            if close < 0:
                raise PhonehomeError(f"--exclude {spec!r}: missing ']' (use [IPV6]:PORT)")
            host, rest = text[1:close], text[close + 1 :]
            if rest:
                if not rest.startswith(":"):
                    raise PhonehomeError(f"--exclude {spec!r}: expected ':PORT' after ']'")
                port_text = rest[1:]
        elif text.count(":") == 1:
            host, port_text = text.split(":")
        port = None
        if port_text is not None:
            if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
                raise PhonehomeError(f"--exclude {spec!r}: port must be a number 0-65535")
            port = int(port_text)
        try:
            network = ipaddress.ip_network(host, strict=False)
        except ValueError:
            raise PhonehomeError(f"--exclude {spec!r}: expected ADDR, ADDR:PORT, [IPV6]:PORT or ADDR/PREFIX "
                                 "(an IP address, not a host name)") from None
        out.append((network, port))
    return out


class _Engine:
    """Turns packets into units. Implements the reader's `PacketSink`."""

    def __init__(self, exclude: Sequence[str]) -> None:
        self.exclude = parse_exclude(exclude)
        self.out: list[StreamUnit] = []
        self.tcp: dict[bytes, _Dir] = {}
        self.udp: dict[bytes, _Dir] = {}
        self.other: dict[bytes, _Dir] = {}
        self.records: list[FlowRecord] = []
        self.services: dict[tuple[str, str, int], FlowRecord] = {}
        self.folded = 0
        self.names: dict[bytes, str] = {}
        self.buffered = 0
        self.evicted = 0
        self.analysable = 0
        self.excluded_flows = 0
        self.app: str | None = None
        self.now = 0.0
        self.swept = 0.0
        self.pcapdroid = 0  # >0: trailers seen; <0: Ethernet frames seen without one
        self.frags: dict[tuple[bytes, bytes, int, int], _Datagram] = {}
        self.frag_bytes = 0
        self.frag_lost = 0
        self.holes_skipped = 0
        self.conflicts = 0
        self.relieving = False
        self.malformed = 0  # packets whose headers made the decoder fail (lengths out of range)
        self.mm: object = None  # the capture's memory map, and a view of it: buffers hold slices of the view
        self.view = memoryview(b"")

    # --- the reader's side ---------------------------------------------------------------------

    def tag(self, app: str | None) -> None:
        self.app = app

    def sink_for(self, link: int) -> Sink:
        if link == pk.ETHERNET:
            return self.ether
        if link in (pk.RAW, pk.RAW_BSD12, pk.RAW_BSD14, pk.IPV4, pk.IPV6):
            return self.raw
        if link not in pk.SUPPORTED_LINKS:
            return self.ignore

        def sink(buf: Buffer, start: int, end: int, ts: float, frame: int) -> None:
            ip = pk.link_ip(link, buf, start, end)
            if ip >= 0:
                self.ip(buf, ip, end, ts, frame, 0)

        return sink

    def ignore(self, buf: Buffer, start: int, end: int, ts: float, frame: int) -> None:
        """A frame of an unsupported link type: counted by the reader, not analysed."""

    def raw(self, buf: Buffer, start: int, end: int, ts: float, frame: int) -> None:
        if start < end:
            if buf[start] >> 4 == 4:
                self.ip4(buf, start, end, ts, frame)
            else:
                self.ip(buf, start, end, ts, frame, 0)

    def ether(self, buf: Buffer, start: int, end: int, ts: float, frame: int) -> None:
        """Ethernet. Inline fast path: IPv4/TCP segments of a known direction that need no decision."""
        if end - start >= 54:
            ethertype, vihl, total, frag, proto, seq, doff, flags = _ETH_FAST.unpack_from(buf, start + 12)
            if ethertype == 0x0800 and vihl == 0x45 and proto == 6 and not flags & 7 and not frag & 0x3FFF:
                d = self.tcp.get(buf[start + 26 : start + 38])
                if d is not None:
                    claimed = start + 14 + total
                    if claimed <= end:
                        n = claimed - start - 34 - ((doff >> 4) << 2)
                        if n <= 0:  # a pure ACK
                            d.pk += 1
                            d.by += total
                            return
                        if seq == d.nseq and d.mode and self._fast(d, buf, claimed - n, claimed, seq, ts, frame):
                            d.pk += 1
                            d.by += total
                            return
        self._ether_slow(buf, start, end, ts, frame)

    def _fast(self, d: _Dir, buf: Buffer, p0: int, p1: int, seq: int, ts: float, frame: int) -> bool:
        """The next in-order segment of a direction in a fast mode: handled unless it needs a decision."""
        n = p1 - p0
        if d.mode == _SKIP:
            d.nseq = (seq + n) & _M
            if d.skip >= n:  # inside an encrypted record body: nothing to keep
                d.skip -= n
            else:  # record boundaries: follow them
                d.stray = 0
                self._tls(d, buf, p0, p1, ts, frame)
                if d.tls != 1:
                    self._set_mode(d)
            return True
        size = d.size
        if size + n >= WINDOW or self.buffered + n > BUDGET or buf is not self.mm:
            return False
        d.nseq = (seq + n) & _M
        d.fo.append(size)
        d.fr.append(frame)
        d.ft.append(ts)
        d.parts.append(self.view[p0:p1])
        d.size = size + n
        self.buffered += n
        return True

    def pcap_records(self, buf: Buffer, off: int, limit: int, unpack: Callable[[Buffer, int], tuple[int, ...]],
                     rec_len: int, scale: float, max_len: int, link: int, frames: int, lo: float,
                     hi: float) -> tuple[int, int, float, float]:
        """Walk pcap records from `off` while they start before `limit` (each lies wholly in the file).

        The reader's hot loop, here so that a TLS body segment or a pure ACK costs no call: the
        common Ethernet/IPv4/TCP case is decided inline, anything else goes to the link's sink.
        Stops early at a record longer than `max_len` (corrupt), leaving `off` on it.
        Returns (offset, frames, lowest time, highest time); the times of records decided inline
        are not compared one by one (only the last's), which is exact for a capture in time order.
        """
        sink = self.sink_for(link)
        slow = self._ether_slow if link == pk.ETHERNET else sink
        ether = link == pk.ETHERNET
        tcp_get = self.tcp.get
        fields = _ETH_FAST.unpack_from
        fast = self._fast
        start = -1
        while off < limit:
            sec, frac, caplen, _orig = unpack(buf, off)
            if caplen > max_len:
                break
            start = off + rec_len
            off = start + caplen
            frames += 1
            if ether and caplen >= 54:
                ethertype, vihl, total, frag, proto, seq, doff, flags = fields(buf, start + 12)
                if ethertype == 0x0800 and vihl == 0x45 and proto == 6 and not flags & 7 and not frag & 0x3FFF:
                    d = tcp_get(buf[start + 26 : start + 38])
                    if d is not None and total <= caplen - 14:
                        n = total - 20 - ((doff >> 4) << 2)
                        if n <= 0:  # a pure ACK
                            d.pk += 1
                            d.by += total
                            continue
                        if seq == d.nseq:
                            if d.mode == _SKIP and d.skip >= n:  # inside an encrypted record body
                                d.pk += 1
                                d.by += total
                                d.skip -= n
                                d.nseq = (seq + n) & _M
                                continue
                            ts = sec + frac * scale
                            if d.mode and fast(d, buf, start + 14 + total - n, start + 14 + total, seq, ts, frames):
                                d.pk += 1
                                d.by += total
                                continue
            ts = sec + frac * scale
            if ts > hi:
                hi = ts
            elif ts < lo:
                lo = ts
            try:
                slow(buf, start, off, ts, frames)
            except (IndexError, ValueError, OverflowError):
                self.malformed += 1
        if start >= 0:  # the last record's time (records decided inline are not compared one by one)
            sec, frac, _caplen, _orig = unpack(buf, start - rec_len)
            ts = sec + frac * scale
            hi, lo = max(hi, ts), min(lo, ts)
        return off, frames, lo, hi

    def _ether_slow(self, buf: Buffer, start: int, end: int, ts: float, frame: int) -> None:
        if self.pcapdroid >= 0 and end - start > 14 + _PCAPDROID_TRAILER:
            app = self._pcapdroid_trailer(buf, end)
            if app is not None:
                saved, self.app = self.app, app
                try:
                    self._ether(buf, start, end, ts, frame)
                finally:
                    self.app = saved
                return
        self._ether(buf, start, end, ts, frame)

    def _ether(self, buf: Buffer, start: int, end: int, ts: float, frame: int) -> None:
        if buf[start + 12 : start + 14] == b"\x08\x00":
            self.ip4(buf, start + 14, end, ts, frame)
            return
        ip = pk.link_ip(pk.ETHERNET, buf, start, end)
        if ip >= 0:
            self.ip(buf, ip, end, ts, frame, 0)

    def _pcapdroid_trailer(self, buf: Buffer, end: int) -> str | None:
        """PCAPdroid's trailer (magic, uid, app name, FCS) after the IP packet, behind a bogus Ethernet header."""
        at = end - _PCAPDROID_TRAILER
        if buf[at : at + 4] == _PCAPDROID_MAGIC:
            uid = int.from_bytes(buf[at + 4 : at + 8], "big", signed=True)
            name = buf[at + 8 : at + 28].split(b"\x00", 1)[0].decode("utf-8", "replace")
            self.pcapdroid = 1
            return name or f"uid {uid}"
        if self.pcapdroid <= 0:
            self.pcapdroid -= 1
            if self.pcapdroid < -64:  # not a PCAPdroid capture: stop looking
                self.pcapdroid = -1_000_000
        return None

    # --- IP ----------------------------------------------------------------------------------------

    def ip4(self, buf: Buffer, ip: int, end: int, ts: float, frame: int) -> None:
        """IPv4 with a 20-byte header, not a fragment: TCP and UDP inline; anything else -> `ip`."""
        if end - ip < 28:
            self.ip(buf, ip, end, ts, frame, 0)
            return
        vihl, total, frag, proto = _V4.unpack_from(buf, ip)
        if vihl != 0x45 or frag & 0x3FFF or total < 28:
            self.ip(buf, ip, end, ts, frame, 0)
            return
        claimed = ip + total
        stop = claimed if claimed <= end else end
        if proto == 6:
            if stop - ip < 40:
                self.ip(buf, ip, end, ts, frame, 0)
                return
            key = buf[ip + 12 : ip + 24]
            d = self.tcp.get(key)
            seq, doff, flags = _TCP_SEQ.unpack_from(buf, ip + 24)
            if d is None:
                d = self._new_tcp(key, 4, buf[ip + 12 : ip + 16], buf[ip + 16 : ip + 20], buf, ip + 20, flags, ts,
                                  frame)
            p0 = ip + 20 + ((doff >> 4) << 2)
            if not flags & 7 and (p0 >= claimed or (  # a pure ACK, or inside an encrypted record body
                    seq == d.nseq and stop == claimed and d.mode == _SKIP and d.skip >= claimed - p0)):
                if p0 < claimed:
                    d.skip -= claimed - p0
                    d.nseq = (seq + claimed - p0) & _M
            else:
                d = self._segment(d, seq, flags, buf, p0, stop, claimed, ts, frame)
            d.pk += 1
            d.by += total
        elif proto == 17:
            key = buf[ip + 12 : ip + 24]
            d = self.udp.get(key)
            if d is None:
                sport, dport = _PORTS.unpack_from(buf, ip + 20)
                d = self._new_conn(self.udp, 17, "udp", key, 4, buf[ip + 12 : ip + 16], buf[ip + 16 : ip + 20],
                                   sport, dport, ts, frame)
            d.pk += 1
            d.by += total
            self._datagram(d, buf, ip + 20, stop, ts, frame)
        else:
            self.ip(buf, ip, end, ts, frame, 0)

    def ip(self, buf: Buffer, ip: int, end: int, ts: float, frame: int, depth: int) -> None:
        """The general path: any IPv4 or IPv6 header, fragments, tunnels, other protocols."""
        packet = pk.decode_ip(buf, ip, end)
        if packet is None:
            return
        if packet.frag_id >= 0:
            self._fragment(packet, buf, ts, frame, depth)
            return
        self.transport(packet, buf, packet.l4, packet.l4_end, ts, frame, depth)

    def transport(self, packet: pk.IPPacket, buf: Buffer, l4: int, stop: int, ts: float, frame: int,
                  depth: int) -> None:
        proto = packet.proto
        size = packet.size
        if proto in (pk.PROTO_IPIP, pk.PROTO_IPV6_IN_IP) and depth < MAX_DEPTH:
            self.ip(buf, l4, stop, ts, frame, depth + 1)
            return
        if proto == pk.PROTO_GRE and depth < MAX_DEPTH:
            inner = pk.gre_inner(buf, l4, stop)
            if inner >= 0:
                self.ip(buf, inner, stop, ts, frame, depth + 1)
                return
        src, dst = packet.src, packet.dst
        if (proto == 6 and stop - l4 < 20) or (proto in (17, pk.PROTO_UDPLITE) and stop - l4 < 8):
            return  # the capture cut the transport header: nothing to read
        if proto == 6:
            key = src + dst + buf[l4 : l4 + 4]
            seq, doff, flags = _TCP_SEQ.unpack_from(buf, l4 + 4)
            d = self.tcp.get(key)
            if d is None:
                d = self._new_tcp(key, len(src), src, dst, buf, l4, flags, ts, frame)
            p0 = min(l4 + ((doff >> 4) << 2), stop)
            d = self._segment(d, seq, flags, buf, p0, stop, stop, ts, frame)
            d.pk += 1
            d.by += size
        elif proto in (17, pk.PROTO_UDPLITE):
            key = src + dst + buf[l4 : l4 + 4]
            d = self.udp.get(key)
            if d is None:
                sport, dport = _PORTS.unpack_from(buf, l4)
                d = self._new_conn(self.udp, 17, "udp", key, len(src), src, dst, sport, dport, ts, frame)
            d.pk += 1
            d.by += size
            self._datagram(d, buf, l4, stop, ts, frame)
        else:
            key = bytes((proto,)) + src + dst
            d = self.other.get(key)
            if d is None:
                d = self._new_conn(self.other, proto, str(proto), key, len(src), src, dst, 0, 0, ts, frame)
            d.pk += 1
            d.by += size
            conn = d.conn
            if conn.excluded or stop <= l4:
                return
            if self.app is not None and conn.app is None:
                conn.app = self.app
            self.out.append(StreamUnit(d.flow, d.from_client, buf[l4:stop], [0], [frame], [ts], False, 0, 0,
                                       conn.app))

    def _datagram(self, d: _Dir, buf: Buffer, l4: int, stop: int, ts: float, frame: int) -> None:
        conn = d.conn
        if conn.excluded:
            return
        length = _UDP_LEN.unpack_from(buf, l4 + 4)[0]
        if 8 <= length < stop - l4:
            stop = l4 + length  # Ethernet padding after a short datagram
        if stop <= l4 + 8:
            return
        if self.app is not None and conn.app is None:
            conn.app = self.app
        self.out.append(StreamUnit(d.flow, d.from_client, buf[l4 + 8 : stop], [0], [frame], [ts], False, 0, 0,
                                   conn.app))

    def _fragment(self, packet: pk.IPPacket, buf: Buffer, ts: float, frame: int, depth: int) -> None:
        """Collect a fragment; when its datagram is whole, decode the datagram."""
        key = (packet.src, packet.dst, packet.frag_id, packet.proto if packet.version == 4 else 0)
        data = buf[packet.l4 : packet.l4_end]
        entry = self.frags.get(key)
        if entry is None:
            if len(self.frags) >= FRAG_DATAGRAMS:
                self._drop_fragments(next(iter(self.frags)))
            entry = self.frags[key] = _Datagram(frame, ts, packet.proto)
        entry.parts.append((packet.frag_offset, data))
        entry.size += len(data)
        self.frag_bytes += len(data)
        if packet.frag_offset == 0:  # IPv6: the first fragment names the transport
            entry.frame, entry.proto = frame, packet.proto
        if not packet.frag_more:
            entry.total = packet.frag_offset + len(data)
        while self.frag_bytes > FRAG_BUDGET and self.frags:
            self._drop_fragments(next(iter(self.frags)))
        if entry.total < 0 or key not in self.frags:
            return
        entry.parts.sort(key=lambda p: p[0])
        covered = 0
        for offset, piece in entry.parts:
            if offset > covered:
                return  # still a hole
            covered = max(covered, offset + len(piece))
        whole = bytearray(entry.total)
        for offset, piece in entry.parts:
            whole[offset : offset + len(piece)] = piece[: max(0, entry.total - offset)]
        del self.frags[key]
        self.frag_bytes -= entry.size
        datagram = bytes(whole)
        inner = pk.IPPacket(packet.version, entry.proto, packet.src, packet.dst, 0, len(datagram), len(datagram))
        self.transport(inner, datagram, 0, len(datagram), ts, entry.frame, depth)

    def _drop_fragments(self, key: tuple[bytes, bytes, int, int]) -> None:
        entry = self.frags.pop(key)
        self.frag_bytes -= entry.size
        self.frag_lost += entry.size
        self.evicted += entry.size

    # --- connections -----------------------------------------------------------------------------

    def _text(self, raw: bytes) -> str:
        text = self.names.get(raw)
        if text is None:
            if len(self.names) > 65536:
                self.names.clear()
            text = self.names[raw] = pk.address_text(raw)
        return text

    def _excluded(self, a: str, ap: int, b: str, bp: int) -> bool:
        for network, port in self.exclude:
            for addr, p in ((a, ap), (b, bp)):
                if (port is None or port == p) and ipaddress.ip_address(addr) in network:
                    return True
        return False

    def _new_tcp(self, key: bytes, alen: int, src: bytes, dst: bytes, buf: Buffer, l4: int, flags: int, ts: float,
                 frame: int) -> _Dir:
        sport, dport = _PORTS.unpack_from(buf, l4)
        client_first = not flags & _ACK if flags & _SYN else sport >= dport
        return self._new_conn(self.tcp, 6, "tcp", key, alen, src, dst, sport, dport, ts, frame, client_first)

    def _new_conn(self, table: dict[bytes, _Dir], proto: int, name: str, key: bytes, alen: int, src: bytes,
                  dst: bytes, sport: int, dport: int, ts: float, frame: int, client_first: bool | None = None) -> _Dir:
        """A new connection whose first packet has `key` (sent by src:sport)."""
        if client_first is None:
            client_first = sport >= dport
        a, b = self._text(src), self._text(dst)
        flow = Flow(name, a, sport, b, dport) if client_first else Flow(name, b, dport, a, sport)
        excluded = bool(self.exclude) and self._excluded(a, sport, b, dport)
        if excluded:
            self.excluded_flows += 1
        service = (name, flow.dst, flow.dport)
        record = None
        if len(self.records) >= MAX_RECORDS:  # bounded memory: fold into a record of the same service
            record = self.services.get(service)
            if record is None and len(self.services) >= MAX_SERVICES:
                record = self.records[-1]
            if record is not None:
                self.folded += 1
        if record is None:
            record = FlowRecord(flow, frame, ts, excluded=excluded)
            self.records.append(record)
            if len(self.services) < MAX_SERVICES:
                self.services.setdefault(service, record)
        conn = _Conn(flow, record, proto, excluded, self.app, ts)
        if proto in (6, 17, pk.PROTO_UDPLITE):
            ports = 2 * alen
            reverse = key[alen:ports] + key[:alen] + key[ports + 2 : ports + 4] + key[ports : ports + 2]
        else:
            reverse = key[:1] + key[1 + alen :] + key[1 : 1 + alen]
        sender, receiver = (conn.dirs[0], conn.dirs[1]) if client_first else (conn.dirs[1], conn.dirs[0])
        table[key] = sender
        table[reverse] = receiver
        conn.keys = (key, reverse)
        conn.table = table
        return sender

    def _retire(self, conn: _Conn) -> None:
        """Flush a connection's buffers, settle its record, drop it from the table."""
        for d in conn.dirs:
            if conn.proto == 6:
                self._flush(d, 0)
            record = conn.record
            record.packets += d.pk
            record.bytes += d.by
            if not conn.excluded:
                self.analysable += d.pk
            d.pk = d.by = 0
            d.mode = _SLOW
        conn.closed = True
        for key in conn.keys:
            if conn.table.get(key) in conn.dirs:
                del conn.table[key]

    def _conns(self) -> list[_Conn]:
        return list({id(d.conn): d.conn for table in (self.tcp, self.udp, self.other) for d in table.values()}.values())

    def maintain(self, now: float | None) -> None:
        """Between chunks: retire idle connections, and the oldest when the table is too big."""
        if now is not None:
            self.now = now
        size = len(self.tcp) + len(self.udp) + len(self.other)
        if size <= MAX_CONNS and self.now - self.swept < SWEEP_EVERY:
            return
        self.swept = self.now
        for conn in self._conns():
            count = conn.dirs[0].pk + conn.dirs[1].pk
            if count != conn.seen:
                conn.seen, conn.active = count, self.now
            elif self.now - conn.active > (IDLE_CLOSED if conn.closed else IDLE.get(conn.proto, IDLE_OTHER)):
                self._retire(conn)
        for key in [key for key, entry in self.frags.items() if self.now - entry.time > FRAG_TIMEOUT]:
            self._drop_fragments(key)  # the rest of that datagram is not coming
        if len(self.tcp) + len(self.udp) + len(self.other) > MAX_CONNS:
            rest = sorted(self._conns(), key=lambda c: c.active)
            for conn in rest[: len(rest) // 4 + 1]:
                self._retire(conn)

    def drop(self) -> None:
        """Forget every buffered byte (a read abandoned half-way), so the capture can be closed."""
        for table in (self.tcp, self.udp, self.other):
            for d in table.values():
                d.parts, d.size, d.ooo = [], 0, {}
        self.tcp, self.udp, self.other = {}, {}, {}

    def finish(self) -> None:
        for conn in self._conns():
            self._retire(conn)
        for key in list(self.frags):
            self._drop_fragments(key)

    # --- TCP ---------------------------------------------------------------------------------------

    def _segment(self, d: _Dir, seq: int, flags: int, buf: Buffer, p0: int, stop: int, claimed: int, ts: float,
                 frame: int) -> _Dir:
        """One TCP segment: payload buf[p0:stop], of which the IP header says it runs to `claimed`.

        Returns the direction it belongs to (a new one when a SYN reopened the connection).
        """
        conn = d.conn
        if conn.excluded:
            return d
        if stop < p0:
            stop = p0
        if claimed < stop:
            claimed = stop
        if flags & _SYN:
            if d.known and (conn.closed or d.tls or d.holes or ((seq + 1) & _M) != d.nseq
                            or d.from_client == bool(flags & _ACK)):
                d = self._reopen(d, flags, ts, frame)
                conn = d.conn
            if not d.known:
                d.known = True
                d.nseq = (seq + 1) & _M
            seq = (seq + 1) & _M
        elif conn.closed:
            return d
        if self.app is not None and conn.app is None:
            conn.app = self.app
        if claimed > p0:
            if not d.known:  # no SYN seen: the stream starts here
                d.known = True
                d.nseq = seq
                d.gap = True
            rel = (seq - d.nseq) & _M
            if rel == 0:
                self._deliver(d, buf, p0, stop, ts, frame)
                if claimed > stop:  # the capture cut the packet short (snapshot length)
                    self._hole(d, claimed - stop)
            elif rel < _HALF:
                self._ahead(d, seq, rel, buf, p0, stop, claimed, ts, frame)
            else:
                self._behind(d, (_M + 1) - rel, buf, p0, stop, ts, frame)
            if d.ooo:
                self._drain(d)
        if flags & _FIN and d.known:
            d.fin = (seq + claimed - p0) & _M
        if flags & _RST:
            for side in conn.dirs:
                self._flush(side, 0)
            conn.closed = True
            for side in conn.dirs:
                side.mode = _SLOW
            return d
        if d.fin >= 0 and not d.done and ((d.nseq - d.fin) & _M) < _HALF:  # every byte before the FIN is in
            self._flush(d, 0)
            d.done = True
            if conn.dirs[0].done and conn.dirs[1].done:
                conn.closed = True
        self._set_mode(d)
        return d

    @staticmethod
    def _set_mode(d: _Dir) -> None:
        conn = d.conn
        if conn.excluded or conn.closed or d.ooo or d.done or not d.known:
            d.mode = _SLOW
        else:
            d.mode = _SKIP if d.tls == 1 else _RAW if d.tls == 2 else _SLOW

    def _reopen(self, d: _Dir, flags: int, ts: float, frame: int) -> _Dir:
        """A SYN on a known connection: port reuse. Retire the old one, start a new one."""
        old = d.conn
        key = old.keys[0] if d is old.table.get(old.keys[0]) else old.keys[1]
        self._retire(old)
        alen = (len(key) - 4) // 2
        sport, dport = _PORTS.unpack_from(key, 2 * alen)
        return self._new_conn(self.tcp, 6, "tcp", key, alen, key[:alen], key[alen : 2 * alen], sport, dport, ts, frame,
                              not flags & _ACK)

    def _deliver(self, d: _Dir, buf: Buffer, p0: int, p1: int, ts: float, frame: int) -> None:
        """In-order bytes buf[p0:p1]."""
        n = p1 - p0
        if n <= 0:
            return
        d.nseq = (d.nseq + n) & _M
        d.stray = 0
        tls = d.tls
        if tls == 1:
            self._tls(d, buf, p0, p1, ts, frame)
        elif tls == 2:
            self._append(d, buf, p0, p1, ts, frame)
        elif n >= 5 and _tls_header(buf, p0):
            d.tls = 1
            self._tls(d, buf, p0, p1, ts, frame)
        else:
            d.tls = 2
            d.raw_at = d.size
            self._append(d, buf, p0, p1, ts, frame)

    def _append(self, d: _Dir, buf: Buffer, p0: int, p1: int, ts: float, frame: int) -> None:
        d.fo.append(d.size)
        d.fr.append(frame)
        d.ft.append(ts)
        d.parts.append(self.view[p0:p1] if buf is self.mm else buf[p0:p1])
        d.size += p1 - p0
        self.buffered += p1 - p0
        if d.size >= WINDOW and d.tls != 1:
            self._cut(d, OVERLAP)
        if self.buffered > BUDGET:
            self._relieve()

    def _tls(self, d: _Dir, buf: Buffer, pos: int, p1: int, ts: float, frame: int) -> None:
        """Follow TLS records through buf[pos:p1]: keep headers and non-application-data bodies."""
        while pos < p1:
            if d.skip:
                take = min(d.skip, p1 - pos)
                d.skip -= take
                pos += take
                continue
            left = d.rec_left
            if left:
                take = min(left, p1 - pos)
                self._append(d, buf, pos, pos + take, ts, frame)
                d.rec_left = left - take
                pos += take
                continue
            if d.size >= WINDOW:  # a record boundary: cut here, no overlap needed
                self._cut(d, 0)
            hdr = d.hdr
            need = 5 - len(hdr)
            if p1 - pos < need:
                d.hdr = hdr + buf[pos:p1]
                return
            head = hdr + buf[pos : pos + need] if hdr else buf[pos : pos + 5]
            if not _tls_header(head, 0):  # no longer TLS: raw from here on
                d.tls = 2
                d.hdr = b""
                d.raw_at = d.size
                if hdr:
                    self._append(d, hdr, 0, len(hdr), ts, frame)
                self._append(d, buf, pos, p1, ts, frame)
                return
            d.hdr = b""
            self._append(d, head, 0, 5, ts, frame)
            pos += need
            length = (head[3] << 8) | head[4]
            if head[0] == 23:
                d.skip = length
                d.elided += length
            else:
                d.rec_left = length

    def _cut(self, d: _Dir, keep: int) -> None:
        """Hand on the buffered bytes as a unit; keep the last `keep` as the start of the next."""
        size = d.size
        if not size:
            return
        data = b"".join(d.parts)
        self.out.append(StreamUnit(d.flow, d.from_client, data, d.fo, d.fr, d.ft, d.gap, d.kept, d.elided,
                                   d.conn.app))
        keep = min(keep, size - d.raw_at) if d.tls != 1 else 0
        if keep > 0:
            cut = size - keep
            i = bisect_right(d.fo, cut) - 1
            fo = [0] + [x - cut for x in d.fo[i + 1 :]]
            d.parts = [data[cut + a : cut + b] for a, b in zip(fo, [*fo[1:], keep], strict=True)]
            d.fo, d.fr, d.ft = fo, d.fr[i:], d.ft[i:]
        else:
            cut = size
            d.parts, d.fo, d.fr, d.ft = [], [], [], []
        d.size = size - cut
        d.raw_at = 0
        d.kept += cut
        self.buffered -= cut
        d.gap = False
        d.elided = 0

    def _flush(self, d: _Dir, keep: int) -> None:
        """Hand on everything of a direction (waiting segments after skipping their holes)."""
        while d.ooo:
            self._skip_hole(d)
            self._drain(d)
        self._cut(d, keep)
        self._set_mode(d)

    def _relieve(self) -> None:
        """Over the global budget: flush the directions holding most until half of it is left."""
        if self.relieving:
            return
        self.relieving = True
        try:
            dirs = sorted({id(d): d for d in self.tcp.values() if d.size or d.ooo}.values(),
                          key=lambda d: d.size + d.ooo_bytes, reverse=True)
            for d in dirs:
                if self.buffered <= BUDGET // 2:
                    break
                self._flush(d, PRESSURE_OVERLAP)
        finally:
            self.relieving = False

    def _hole(self, d: _Dir, size: int) -> None:
        """`size` stream bytes at the next expected one are missing from the capture: skip them."""
        if d.tls == 1 and d.skip >= size and not d.hdr:
            d.skip -= size  # inside an encrypted body: the record alignment survives
        else:
            self._cut(d, 0)
            d.gap = True
            if d.tls == 1:
                d.tls = 0
            d.rec_left = d.skip = 0
            d.hdr = b""
            if len(d.holes) >= MAX_HOLES:
                del d.holes[0]
            d.holes.append((d.nseq, size))
            self.holes_skipped += 1
        d.nseq = (d.nseq + size) & _M

    def _distance(self, d: _Dir, seq: int) -> int:
        """How far `seq` lies beyond the next expected sequence number (negative: behind)."""
        return ((seq - d.nseq + _HALF) & _M) - _HALF

    def _skip_hole(self, d: _Dir) -> None:
        """Give up waiting: jump to the first waiting segment."""
        first = min(self._distance(d, seq) for seq in d.ooo)
        if first > 0:
            self._hole(d, first)

    def _ahead(self, d: _Dir, seq: int, rel: int, buf: Buffer, p0: int, stop: int, claimed: int, ts: float,
               frame: int) -> None:
        """A segment `rel` bytes beyond the next expected byte."""
        n = stop - p0
        length = claimed - p0
        if rel > REORDER_SPAN:
            d.stray += 1
            if d.stray < RESYNC_AFTER:
                self.evicted += n
                return
            self._flush(d, 0)  # the stream really went on there: follow it
            self._hole(d, rel)
            self._deliver(d, buf, p0, stop, ts, frame)
            if claimed > stop:
                self._hole(d, claimed - stop)
            return
        old = d.ooo.get(seq)
        if old is not None:
            if old[1] >= length:
                return  # the same segment again
            if old[0] is not None:
                d.ooo_bytes -= len(old[0])
                self.buffered -= len(old[0])
        if d.tls == 1 and not d.hdr and rel + length <= d.skip:
            d.ooo[seq] = (None, length, frame, ts)  # encrypted: its length will do
        else:
            d.ooo[seq] = (buf[p0:stop], length, frame, ts)
            d.ooo_bytes += n
            self.buffered += n
        if d.ooo_bytes > OOO_LIMIT or len(d.ooo) > OOO_SEGMENTS:
            self._skip_hole(d)
        if self.buffered > BUDGET:
            self._relieve()

    def _drain(self, d: _Dir) -> None:
        """Deliver waiting segments that now join the stream."""
        ooo = d.ooo
        while ooo:
            first = min(ooo, key=lambda seq: self._distance(d, seq))
            dist = self._distance(d, first)
            if dist > 0:
                return
            data, length, frame, ts = ooo.pop(first)
            if data is not None:
                d.ooo_bytes -= len(data)
                self.buffered -= len(data)
            back = -dist
            if length <= back:
                if data is not None:
                    self._old(d, back, data, 0, len(data), ts, frame)
                continue
            if data is None:
                size = length - back
                if d.tls == 1 and d.skip >= size and not d.hdr:
                    d.skip -= size
                    d.nseq = (d.nseq + size) & _M
                else:
                    self._hole(d, size)
                continue
            if back >= len(data):
                self._hole(d, length - back)
                continue
            if back:
                self._old(d, back, data, 0, back, ts, frame)
            self._deliver(d, data, back, len(data), ts, frame)
            if length > len(data):
                self._hole(d, length - len(data))

    def _behind(self, d: _Dir, back: int, buf: Buffer, p0: int, stop: int, ts: float, frame: int) -> None:
        """A segment starting `back` bytes before the next expected byte (retransmission, overlap)."""
        if back < stop - p0:
            self._old(d, back, buf, p0, p0 + back, ts, frame)
            self._deliver(d, buf, p0 + back, stop, ts, frame)
        else:
            self._old(d, back, buf, p0, stop, ts, frame)

    def _old(self, d: _Dir, back: int, buf: Buffer, q0: int, q1: int, ts: float, frame: int) -> None:
        """Bytes buf[q0:q1] for sequence numbers already passed (from `back` before the next expected)."""
        size = q1 - q0
        if size <= 0:
            return
        start = (d.nseq - back) & _M
        for hole, length in d.holes:
            rel = ((start - hole + _HALF) & _M) - _HALF
            if rel < length and rel + size > 0:  # late bytes of a skipped hole: read them now
                self._cut(d, 0)  # their own stretch of kept offsets, after what was kept so far
                self._extra(d, buf[q0:q1], ts, frame, d.kept)
                d.kept += size
                return
        if d.tls == 1:
            return  # a retransmitted TLS record: nothing new to read
        at = d.size - back
        if at < d.raw_at:
            return  # already handed on
        i = bisect_right(d.fo, at) - 1
        kept = b"".join(d.parts[i : bisect_right(d.fo, at + size)])[at - d.fo[i] : at - d.fo[i] + size]
        if kept != buf[q0 : q0 + len(kept)]:
            self.conflicts += 1
            self._extra(d, buf[q0:q1], ts, frame, d.kept + at)

    def _extra(self, d: _Dir, data: bytes, ts: float, frame: int, offset: int) -> None:
        """A unit outside the direction's main run (conflicting retransmission, late hole filler)."""
        if data:
            self.out.append(StreamUnit(d.flow, d.from_client, data, [0], [frame], [ts], True, offset, 0, d.conn.app,
                                       extra=True))


def _tls_header(buf: Buffer, pos: int) -> bool:
    """Is buf[pos:pos+5] a plausible TLS record header?"""
    return (20 <= buf[pos] <= 24 and buf[pos + 1] == 3 and buf[pos + 2] <= 4
            and 0 < ((buf[pos + 3] << 8) | buf[pos + 4]) <= TLS_MAX_RECORD)


class CaptureStream:
    """A capture being read: `units()` yields; `summary` and `flows` are complete once it is exhausted."""

    def __init__(self, path: Path, exclude: Sequence[str] = ()) -> None:
        self._engine = _Engine(exclude)  # a bad --exclude is reported before the file is opened
        self._file = CaptureFile(path)
        self._engine.mm = self._file.buf
        self._engine.view = memoryview(self._file.buf)
        self.path = path
        self.summary = CaptureSummary(path=str(path))
        self.flows: list[FlowRecord] = self._engine.records
        self.notes: list[str] = []  # what the user should know about this read (corrupt records...)
        self.names: dict[str, list[str]] = {}  # pcapng name resolution blocks: address -> names
        self._used = False

    def units(self) -> Iterator[StreamUnit]:
        if self._used:
            raise RuntimeError("a CaptureStream is read once")
        self._used = True
        engine, reader = self._engine, self._file
        out = engine.out
        try:
            for _ in reader.feed(engine):
                if out:
                    batch = out[:]
                    out.clear()
                    yield from batch
                engine.maintain(reader.last)
            engine.finish()
            if out:
                batch = out[:]
                out.clear()
                yield from batch
        finally:
            self._summarise()

    def _summarise(self) -> None:
        engine, reader = self._engine, self._file
        summary = self.summary
        summary.frames = reader.frames
        summary.bytes = reader.bytes
        summary.first = reader.first
        summary.last = reader.last
        summary.truncated = reader.truncated
        summary.analysable_packets = engine.analysable
        summary.excluded_flows = engine.excluded_flows
        summary.evicted_bytes = engine.evicted
        summary.link_types = list(reader.link_types)
        summary.comments = list(reader.comments)
        self.names = reader.names
        notes = list(reader.notes)
        if reader.malformed + engine.malformed:
            notes.append(f"{reader.malformed + engine.malformed} packets had headers that could not be decoded")
        if engine.frag_lost:
            notes.append(f"{engine.frag_lost} bytes of IP fragments never made a whole datagram (not analysed)")
        if engine.holes_skipped:
            notes.append(f"{engine.holes_skipped} gaps in TCP streams (packets the capture missed)")
        if engine.conflicts:
            notes.append(f"{engine.conflicts} retransmitted segments carried other bytes than the first copy "
                         "(both versions were analysed)")
        if engine.folded:
            notes.append(f"{engine.folded} flows beyond {MAX_RECORDS} were folded into the records of others "
                         "(memory cap): the flow list is not complete")
        self.notes = notes

    def close(self) -> None:
        """Release the capture. Buffers of a read left unfinished hold views of it: drop them first."""
        self._engine.drop()
        self._engine.view.release()
        self._file.close()

    def __enter__(self) -> CaptureStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_capture(path: Path, exclude: Sequence[str] = ()) -> CaptureStream:
    """Open a capture for one streaming pass.

    Raises `CaptureError` (one line) for a missing, unreadable or non-capture file, and
    `PhonehomeError` for a bad `exclude` spec. `exclude` holds `ADDR`, `ADDR:PORT`,
    `[V6ADDR]:PORT` or `ADDR/PREFIX`: flows with a matching endpoint are dropped and counted.
    """
    return CaptureStream(Path(path), exclude)
