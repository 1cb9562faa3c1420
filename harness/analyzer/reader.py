"""Capture file reading: pcap and pcapng, record by record, from a memory map.

The file is memory-mapped and walked with `struct.unpack_from`; no record is copied here. Each
packet is handed to a sink chosen by its link type (`Sink(buf, start, end, time, frame)`, with
buf[start:end] the captured bytes), so the layers above decode headers in place. Frames are
numbered from 1 in file order (pcapng: packet blocks only, as Wireshark numbers them).

Formats: pcap in both byte orders with micro- or nanosecond timestamps (and the "modified"
pcap with 24-byte record headers); pcapng with several sections and interfaces (each its link
type, `if_tsresol` and `if_tsoffset`), Enhanced, Simple and obsolete Packet Blocks, Name
Resolution Blocks (kept as `names`), comments (section, interface and packet comments kept in
`comments`), and PCAPdroid's extensions (a custom block mapping UIDs to packages plus a `u-UID`
packet comment): a packet's sending app is passed to the sink's `tag()`.

Bad input: a missing, unreadable, empty or non-capture file raises `CaptureError` (one line).
A file cut short (a killed capture) is not an error: what is there is read and `truncated` is
set. A record whose length cannot be right (a corrupt file) ends the reading the same way, with
a note. Pages already read are released (`MADV_DONTNEED`), so the resident size stays small
whatever the file's size.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from struct import Struct
from typing import TYPE_CHECKING, Protocol

from harness.analyzer.packets import LINK_NAMES, SUPPORTED_LINKS, Buffer, address_text
from harness.errors import CaptureError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from harness.analyzer.flows import CaptureStream

__all__ = ["CaptureFile", "PacketSink", "Sink", "open_capture"]

Sink = Callable[[Buffer, int, int, float, int], None]

CHUNK = 1 << 20  # bytes of file read between two yields (units are handed on per chunk)
RELEASE = 16 << 20  # pages behind the read position are released every this many bytes
MIN_SNAP = 262144  # libpcap's largest default snapshot length: a longer record is corrupt...
MAX_BLOCK = 64 << 20  # ...and so is a pcapng block longer than this
MAX_COMMENTS = 1000
MAX_COMMENT_CHARS = 1000
MAX_NAMES = 100_000

_PCAP_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1e-6, 16), b"\xa1\xb2\xc3\xd4": (">", 1e-6, 16),
    b"\x4d\x3c\xb2\xa1": ("<", 1e-9, 16), b"\xa1\xb2\x3c\x4d": (">", 1e-9, 16),
    b"\x34\xcd\xb2\xa1": ("<", 1e-6, 24), b"\xa1\xb2\xcd\x34": (">", 1e-6, 24),  # "modified" pcap
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_PCAPDROID_PEN = 62652
_APP_COMMENT = re.compile(r"(?:app|package|pkg|uid|process)\s*[=:]\s*(\S[^\r\n]{0,199})", re.IGNORECASE)
_PCAPDROID_UID = re.compile(r"u-(-?\d{1,10})")


class PacketSink(Protocol):
    """What the reader feeds: a sink per link type, and the sending app of the next packet.

    A sink may also offer `pcap_records(buf, off, limit, unpack, rec_len, scale, max_len, link,
    frames, lo, hi) -> (off, frames, lo, hi)`, walking pcap records itself (see `flows`).
    """

    def sink_for(self, link: int) -> Sink: ...

    def tag(self, app: str | None) -> None: ...


class _Interface:
    __slots__ = ("divisor", "link", "multiplier", "offset", "sink", "snaplen")

    def __init__(self, link: int, snaplen: int, sink: Sink) -> None:
        self.link = link
        self.snaplen = snaplen
        self.sink = sink
        self.divisor = 1_000_000  # if_tsresol default: microseconds
        self.multiplier = 0.0  # for binary resolutions (2^-n)
        self.offset = 0


class CaptureFile:
    """One capture file, memory-mapped; `feed(sink)` walks its records."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.frames = 0
        self.bytes = 0
        self.first: float | None = None
        self.last: float | None = None
        self.truncated = False
        self.link_types: list[int] = []
        self.comments: list[str] = []
        self.notes: list[str] = []  # problems worth telling the user (corrupt records...)
        self.names: dict[str, list[str]] = {}  # pcapng name resolution: address -> names
        self.malformed = 0  # packets whose headers could not be decoded (lengths out of range)
        self._comments_dropped = 0
        self._apps: dict[int, str] = {}  # PCAPdroid uid -> package
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a FIFO must not block the open
        except FileNotFoundError:
            raise CaptureError(f"{path}: no such capture file") from None
        except IsADirectoryError:
            raise CaptureError(f"{path}: is a directory, not a capture file") from None
        except OSError as exc:
            raise CaptureError(f"{path}: cannot open the capture: {exc.strerror or exc}") from None
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise CaptureError(f"{path}: is a directory, not a capture file")
            if not stat.S_ISREG(info.st_mode):
                raise CaptureError(f"{path}: not a regular file (copy the capture to a file first)")
            self.size = info.st_size
            if self.size == 0:
                raise CaptureError(f"{path}: empty file, not a capture")
            try:
                self.buf = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError) as exc:
                raise CaptureError(f"{path}: cannot read the capture: {exc}") from None
        finally:
            os.close(fd)
        head = self.buf[:4]
        if head in _PCAP_MAGIC:
            self.format = "pcap"
            if self.size < 24:
                self.close()
                raise CaptureError(f"{path}: pcap file header cut short ({self.size} bytes): not a usable capture")
        elif head == _PCAPNG_SHB:
            self.format = "pcapng"
            if self.size < 28 or self.buf[8:12] not in (b"\x1a\x2b\x3c\x4d", b"\x4d\x3c\x2b\x1a"):
                self.close()
                raise CaptureError(f"{path}: pcapng section header cut short or damaged: not a usable capture")
        else:
            self.close()
            raise CaptureError(f"{path}: not a pcap or pcapng capture ({_describe(head)})")
        if hasattr(mmap, "MADV_SEQUENTIAL"):
            self.buf.madvise(mmap.MADV_SEQUENTIAL)

    def close(self) -> None:
        buf = getattr(self, "buf", None)
        if buf is not None and not buf.closed:
            buf.close()

    # --- bookkeeping shared by both formats ----------------------------------------------------

    def _link(self, link: int) -> None:
        if link not in self.link_types:
            self.link_types.append(link)
            if link not in SUPPORTED_LINKS:
                self.notes.append(f"link type {link} is not supported: its packets were counted, not analysed")

    def _comment(self, text: str) -> None:
        if len(self.comments) >= MAX_COMMENTS:
            self._comments_dropped += 1
            return
        self.comments.append(text[:MAX_COMMENT_CHARS])

    def _release(self, upto: int) -> None:
        """Drop the pages before `upto` from this process (they stay in the page cache)."""
        upto -= upto % mmap.PAGESIZE
        if upto > 0 and hasattr(mmap, "MADV_DONTNEED"):
            self.buf.madvise(mmap.MADV_DONTNEED, 0, upto)

    def _corrupt(self, offset: int, what: str) -> None:
        self.truncated = True
        self.notes.append(f"{what} at byte {offset} (after frame {self.frames}): the rest of the file was not read")

    def finish_notes(self) -> None:
        if self._comments_dropped:
            self.notes.append(f"{self._comments_dropped} more capture comments were not kept")

    def feed(self, sink: PacketSink) -> Iterator[None]:
        """Walk every record, calling the link type's sink; yield after every chunk of the file."""
        if self.format == "pcap":
            yield from self._pcap(sink)
        else:
            yield from self._pcapng(sink)
        self.finish_notes()

    # --- pcap ------------------------------------------------------------------------------------

    def _pcap(self, target: PacketSink) -> Iterator[None]:
        buf, size = self.buf, self.size
        order, scale, rec_len = _PCAP_MAGIC[buf[:4]]
        _major, _minor, _zone, _sigfigs, snaplen, network = Struct(order + "HHiIII").unpack_from(buf, 4)
        link = network & 0xFFFF  # upper bits: FCS length flags
        self._link(link)
        sink = target.sink_for(link)
        bulk = getattr(target, "pcap_records", None)
        unpack = Struct(order + "IIII").unpack_from
        max_len = max(snaplen, MIN_SNAP)
        safe_end = size - rec_len - max_len  # a record starting before this lies wholly in the file
        off = 24
        frames = 0
        cut = 0  # bytes after the last record that are not one (a partial record header, a corrupt record)
        lo = hi = 0.0
        if off + rec_len <= size:
            sec, frac, _caplen, _orig = unpack(buf, off)
            lo = hi = sec + frac * scale
        release_at = RELEASE
        while off < size:
            limit = min(safe_end, off + CHUNK)
            if bulk is not None and off < limit:  # the sink walks the records itself (fewer calls)
                off, frames, lo, hi = bulk(buf, off, limit, unpack, rec_len, scale, max_len, link, frames, lo, hi)
            elif off < limit:  # the hot loop: no bounds checks needed
                while off < limit:
                    sec, frac, caplen, _orig = unpack(buf, off)
                    if caplen > max_len:
                        break
                    start = off + rec_len
                    off = start + caplen
                    frames += 1
                    ts = sec + frac * scale
                    if ts > hi:
                        hi = ts
                    elif ts < lo:
                        lo = ts
                    try:
                        sink(buf, start, off, ts, frames)
                    except (IndexError, ValueError, OverflowError):
                        self.malformed += 1
            if off < limit or off >= safe_end:  # near the end of the file, or a bad record: one by one
                if off + rec_len > size:
                    if off < size:
                        self.truncated = True
                        cut += size - off  # a partial record header: not packet bytes
                    off = size
                else:
                    sec, frac, caplen, _orig = unpack(buf, off)
                    if caplen > max_len:
                        self._corrupt(off, f"a record of {caplen} bytes (snapshot length {snaplen})")
                        cut += size - off
                        off = size
                    else:
                        start = off + rec_len
                        end = start + caplen
                        if end > size:
                            self.truncated = True
                            end = size
                        frames += 1
                        ts = sec + frac * scale
                        if ts > hi:
                            hi = ts
                        elif ts < lo:
                            lo = ts
                        try:
                            sink(buf, start, end, ts, frames)
                        except (IndexError, ValueError, OverflowError):
                            self.malformed += 1
                        off = end
            self.frames = frames
            self.bytes = off - 24 - frames * rec_len - cut
            if frames:
                self.first, self.last = lo, hi
            if off >= release_at:
                self._release(off)
                release_at = off + RELEASE
            yield

    # --- pcapng ----------------------------------------------------------------------------------

    def _pcapng(self, target: PacketSink) -> Iterator[None]:
        buf, size = self.buf, self.size
        off = 0
        order = "<"
        block = Struct("<II").unpack_from
        epb = Struct("<IIIII").unpack_from
        u32 = Struct("<I").unpack_from
        ifaces: list[_Interface] = []
        frames = 0
        total = 0
        lo = hi = 0.0
        seen = False
        ts = 0.0
        release_at = RELEASE
        while off < size:
            limit = min(size, off + CHUNK)
            while off < limit:
                if off + 12 > size:
                    self.truncated = True
                    off = size
                    break
                if buf[off : off + 4] == _PCAPNG_SHB:  # a new section: byte order may change
                    bom = buf[off + 8 : off + 12]
                    if bom == b"\x4d\x3c\x2b\x1a":
                        order = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        order = ">"
                    else:
                        self._corrupt(off, "a damaged pcapng section header")
                        off = size
                        break
                    block = Struct(order + "II").unpack_from
                    epb = Struct(order + "IIIII").unpack_from
                    u32 = Struct(order + "I").unpack_from
                    ifaces = []
                btype, length = block(buf, off)
                if length < 12 or length % 4 or length > MAX_BLOCK:
                    self._corrupt(off, f"a pcapng block of impossible length {length}")
                    off = size
                    break
                end_block = off + length
                if end_block > size:
                    self.truncated = True
                    end_block = size
                    if btype not in (2, 3, 6):  # only a packet cut short is worth reading
                        off = size
                        break
                body = off + 8
                if btype == 6 or btype == 2:  # Enhanced Packet Block; obsolete Packet Block
                    if body + 20 > end_block:
                        self.truncated = True
                        off = size
                        break
                    ifid, ts_hi, ts_lo, caplen, _orig = epb(buf, body)
                    if btype == 2:  # a 16-bit interface id, then a 16-bit drop count
                        ifid = ifid & 0xFFFF if order == "<" else ifid >> 16
                    start = body + 20
                    end = min(start + caplen, end_block)
                    frames += 1
                    if ifid < len(ifaces):
                        iface = ifaces[ifid]
                        stamp = (ts_hi << 32) | ts_lo
                        ts = (stamp * iface.multiplier if iface.multiplier else stamp / iface.divisor) + iface.offset
                        app = None
                        opts = start + ((caplen + 3) & ~3)
                        if opts + 4 <= end_block - 4:
                            app = self._packet_options(buf, opts, end_block - 4, order, frames)
                        if app is not None:
                            target.tag(app)
                        try:
                            iface.sink(buf, start, end, ts, frames)
                        except (IndexError, ValueError, OverflowError):
                            self.malformed += 1
                        if app is not None:
                            target.tag(None)
                    else:
                        self.malformed += 1
                    total += end - start
                    if not seen:
                        lo = hi = ts
                        seen = True
                    elif ts > hi:
                        hi = ts
                    elif ts < lo:
                        lo = ts
                elif btype == 3:  # Simple Packet Block: interface 0, no timestamp
                    if body + 4 > end_block:
                        self.truncated = True
                        off = size
                        break
                    orig = u32(buf, body)[0]
                    start = body + 4
                    end = min(start + orig, end_block - 4 if off + length <= size else end_block)
                    if ifaces and ifaces[0].snaplen:
                        end = min(end, start + ifaces[0].snaplen)
                    frames += 1
                    total += end - start
                    if ifaces:
                        try:
                            ifaces[0].sink(buf, start, end, ts, frames)  # the previous packet's time
                        except (IndexError, ValueError, OverflowError):
                            self.malformed += 1
                    else:
                        self.malformed += 1
                elif btype == 1:  # Interface Description Block
                    if body + 8 > end_block:
                        self._corrupt(off, "a damaged interface description block")
                        off = size
                        break
                    raw = buf[body : body + 2]
                    link = int.from_bytes(raw, "little" if order == "<" else "big")
                    snaplen = u32(buf, body + 4)[0]
                    self._link(link)
                    iface = _Interface(link, snaplen, target.sink_for(link))
                    self._interface_options(iface, buf, body + 8, end_block - 4, order)
                    ifaces.append(iface)
                elif btype == 0x0A0D0D0A:
                    self._options(buf, body + 16, end_block - 4, order, "section")
                elif btype == 4:
                    self._name_records(buf, body, end_block - 4, order)
                elif (btype in (0x0BAD, 0x40000BAD) and body + 4 <= end_block
                      and u32(buf, body)[0] == _PCAPDROID_PEN):
                    self._pcapdroid_block(buf, body + 4, end_block - 4, order)
                off = off + length
            self.frames, self.bytes = frames, total
            if seen:
                self.first, self.last = lo, hi
            if off >= release_at:
                self._release(min(off, size))
                release_at = off + RELEASE
            yield

    def _option_list(self, buf: Buffer, pos: int, end: int, order: str) -> Iterator[tuple[int, bytes]]:
        head = Struct(order + "HH").unpack_from
        while pos + 4 <= end:
            code, length = head(buf, pos)
            if code == 0:
                return
            value = buf[pos + 4 : min(pos + 4 + length, end)]
            yield code, value
            pos += 4 + ((length + 3) & ~3)

    def _options(self, buf: Buffer, pos: int, end: int, order: str, where: str) -> None:
        for code, value in self._option_list(buf, pos, end, order):
            if code == 1:
                self._comment(f"{where}: {value.decode('utf-8', 'replace')}")

    def _interface_options(self, iface: _Interface, buf: Buffer, pos: int, end: int, order: str) -> None:
        for code, value in self._option_list(buf, pos, end, order):
            if code == 9 and value:  # if_tsresol
                exp = value[0]
                if exp & 0x80:
                    iface.multiplier = 2.0 ** -(exp & 0x7F)
                else:
                    iface.divisor = 10 ** min(exp, 30)
            elif code == 14 and len(value) == 8:  # if_tsoffset, seconds
                iface.offset = int.from_bytes(value, "little" if order == "<" else "big", signed=True)
            elif code == 1:
                self._comment(f"interface {LINK_NAMES.get(iface.link, iface.link)}: "
                              f"{value.decode('utf-8', 'replace')}")

    def _packet_options(self, buf: Buffer, pos: int, end: int, order: str, frame: int) -> str | None:
        """A packet's comments: an app attribution is returned, anything else kept as a comment."""
        app = None
        for code, value in self._option_list(buf, pos, end, order):
            if code != 1:
                continue
            text = value.decode("utf-8", "replace").strip("\x00 ")
            found = self._app_of(text)
            if found is not None:
                app = app or found
            else:
                self._comment(f"frame {frame}: {text}")
        return app

    def _app_of(self, text: str) -> str | None:
        match = _PCAPDROID_UID.fullmatch(text)
        if match:
            uid = int(match.group(1))
            return self._apps.get(uid, f"uid {uid}")
        match = _APP_COMMENT.match(text)
        return match.group(1).strip() if match else None

    def _pcapdroid_block(self, buf: Buffer, pos: int, end: int, order: str) -> None:
        """PCAPdroid's UID mapping block: version (2), type (1), pad, uid (4), two lengths, names."""
        if pos + 10 > end or buf[pos + 2] != 1:
            return
        uid = int.from_bytes(buf[pos + 4 : pos + 8], "little" if order == "<" else "big", signed=True)
        package_len, app_len = buf[pos + 8], buf[pos + 9]
        package = buf[pos + 10 : min(pos + 10 + package_len, end)].decode("utf-8", "replace")
        app = buf[pos + 10 + package_len : min(pos + 10 + package_len + app_len, end)].decode("utf-8", "replace")
        self._apps[uid] = package or app or f"uid {uid}"

    def _name_records(self, buf: Buffer, pos: int, end: int, order: str) -> None:
        head = Struct(order + "HH").unpack_from
        while pos + 4 <= end:
            rtype, length = head(buf, pos)
            if rtype == 0:
                break
            value = buf[pos + 4 : min(pos + 4 + length, end)]
            size = 4 if rtype == 1 else 16 if rtype == 2 else 0
            if size and len(value) > size and len(self.names) < MAX_NAMES:
                address = address_text(value[:size])
                for name in value[size:].split(b"\x00"):
                    if name:
                        names = self.names.setdefault(address, [])
                        text = name.decode("utf-8", "replace")
                        if text not in names:
                            names.append(text)
            pos += 4 + ((length + 3) & ~3)


def _describe(head: bytes) -> str:
    if head[:2] == b"\x1f\x8b":
        return "it is gzip-compressed: decompress it first"
    if head[:4] == b"PK\x03\x04":
        return "it is a zip archive: extract the capture first"
    if all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        return "it looks like text"
    return f"starts with bytes {head.hex()}"


def open_capture(path: Path, exclude: Sequence[str] = ()) -> CaptureStream:
    """Open a capture for analysis (see `harness.analyzer.flows.open_capture`)."""
    from harness.analyzer.flows import open_capture as _open

    return _open(path, exclude)
