"""Pcap plumbing the capture backends share: owner-only files written record by record.

Every backend that runs a capture engine reads its `-w -` byte stream (a pipe from tcpdump, an
`adb exec-out` socket) through `StreamPump` into a `PcapSink`. The sink writes whole records and
flushes after every read, so a killed run leaves a readable file whose last record is at worst
cut short; it counts packets and bytes as they arrive (health without re-reading the file);
it takes a second stream after a restart (a reboot) into the same file, checking the link type
and converting byte order and time precision; and it enforces an optional size cap, recording
when the cap was hit instead of silently losing the rest.
"""

from __future__ import annotations

import heapq
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from harness.errors import CaptureError

log = logging.getLogger("phonehome.capture")

HEADER_LEN = 24
RECORD_LEN = 16
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_SLL = 113
LINKTYPE_SLL2 = 276
_MAGICS = {  # first four bytes -> (struct byte order, nanosecond timestamps)
    b"\xd4\xc3\xb2\xa1": ("<", False), b"\xa1\xb2\xc3\xd4": (">", False),
    b"\x4d\x3c\xb2\xa1": ("<", True), b"\xa1\xb2\x3c\x4d": (">", True),
}
_PCAPNG = b"\x0a\x0d\x0d\x0a"
READ_SIZE = 256 * 1024


@dataclass(frozen=True, slots=True)
class PcapFormat:
    """A classic pcap file's global header: byte order, time precision, snap length, link type."""

    endian: str
    nano: bool
    snaplen: int
    linktype: int

    @classmethod
    def parse(cls, header: bytes) -> PcapFormat:
        if len(header) < HEADER_LEN:
            raise ValueError(f"{len(header)} bytes, not a pcap header")
        magic = bytes(header[:4])
        if magic not in _MAGICS:
            raise ValueError("pcapng, not a pcap stream" if magic == _PCAPNG else "no pcap magic number")
        endian, nano = _MAGICS[magic]
        _major, _minor, _zone, _sigfigs, snaplen, linktype = struct.unpack(endian + "HHiIII", header[4:HEADER_LEN])
        return cls(endian, nano, snaplen, linktype & 0x0FFFFFFF)

    def header(self) -> bytes:
        magic = 0xA1B23C4D if self.nano else 0xA1B2C3D4
        return struct.pack(self.endian + "IHHiIII", magic, 2, 4, 0, 0, self.snaplen, self.linktype)

    def seconds(self, sec: int, frac: int) -> float:
        return sec + frac / (1e9 if self.nano else 1e6)


def open_private(path: Path, *, append: bool = False) -> BinaryIO:
    """Open for writing, owner-only (0600) from the first byte on; refuses to follow a symlink."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC) | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT: fix it
    return os.fdopen(fd, "ab" if append else "wb", buffering=0)


class LinkTypeChanged(CaptureError):
    """A restarted capture produced another link type: its records cannot join the same pcap file."""


class PcapSink:
    """One pcap file, written incrementally from one or more streams; counts what it holds.

    `max_bytes` caps the file size: records past it are counted in `over_cap` and `capped_at`
    holds the host time the cap was hit (the backend records a blind window from then).
    Thread-safe: counters may be read while a pump writes.
    """

    def __init__(self, path: Path, *, max_bytes: int | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.format: PcapFormat | None = None
        self.packets = 0
        self.bytes = 0  # captured bytes of the packets kept (record payloads)
        self.size = 0  # bytes in the file
        self.first: float | None = None  # packet timestamps (capture clock)
        self.last: float | None = None
        self.capped_at: float | None = None  # host time the size cap was hit
        self.over_cap = 0
        self._lock = threading.Lock()
        self._file: BinaryIO | None = None

    def begin(self, fmt: PcapFormat) -> None:
        """A stream starts: the first one writes the file header; later ones must share its link type."""
        with self._lock:
            if self.format is None:
                self.format = PcapFormat(fmt.endian, fmt.nano, max(fmt.snaplen, 65535), fmt.linktype)
                self._file = open_private(self.path)
                self._file.write(self.format.header())
                self.size = HEADER_LEN
            elif fmt.linktype != self.format.linktype:
                raise LinkTypeChanged(f"the restarted capture writes link type {fmt.linktype}, the file holds "
                                      f"{self.format.linktype}: its packets cannot be added to {self.path.name}")

    def write(self, records: bytes | memoryview, count: int, payload: int, first: float | None,
              last: float | None) -> None:
        """Append complete records already in the file's format."""
        with self._lock:
            assert self._file is not None and self.format is not None, "begin() first"
            if self.capped_at is not None:
                self.over_cap += count
                return
            if self.max_bytes is not None and self.size + len(records) > self.max_bytes:
                records, kept, payload, last = self._fit(records, self.max_bytes - self.size)
                self.capped_at = time.time()
                self.over_cap += count - kept
                count = kept
                if not kept:
                    return
            self._file.write(records)
            self.size += len(records)
            self.packets += count
            self.bytes += payload
            if first is not None and self.first is None:
                self.first = first
            if last is not None:
                self.last = last

    def _fit(self, records: bytes | memoryview, room: int) -> tuple[bytes | memoryview, int, int, float | None]:
        """The leading records that fit in `room` bytes: (records, count, payload bytes, last time)."""
        assert self.format is not None
        unpack = struct.Struct(self.format.endian + "IIII").unpack_from
        offset = count = payload = 0
        last: float | None = None
        while offset + RECORD_LEN <= len(records):
            sec, frac, caplen, _length = unpack(records, offset)
            if offset + RECORD_LEN + caplen > room:
                break
            offset += RECORD_LEN + caplen
            count += 1
            payload += caplen
            last = self.format.seconds(sec, frac)
        return records[:offset], count, payload, last

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    @property
    def closed(self) -> bool:
        return self._file is None


class StreamPump:
    """Reads one pcap byte stream from `read(n)` until it ends and appends its records to a sink.

    `read` returns b"" at the end of the stream. Bytes that are not a pcap stream (an error
    message a tool printed instead) are kept in `text` for the error report. Runs in a daemon
    thread; `done` is set when the stream has ended, `started` once its header was accepted.
    """

    def __init__(self, read: Callable[[int], bytes], sink: PcapSink, *, name: str = "capture") -> None:
        self._read = read
        self.sink = sink
        self.started = threading.Event()
        self.done = threading.Event()
        self.error: str | None = None
        self.text = b""
        self.partial = 0  # bytes of a record cut short when the stream ended
        self.ended_at: float | None = None
        self.packets = 0
        self._thread = threading.Thread(target=self._run, name=f"pump-{name}", daemon=True)

    def start(self) -> StreamPump:
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        try:
            self._pump()
        except CaptureError as exc:
            self.error = str(exc)
        except OSError as exc:
            self.error = f"reading the capture stream failed: {exc.strerror or exc}"
        except Exception as exc:  # a bug here must end the capture visibly, not kill the thread silently
            log.exception("capture stream pump failed")
            self.error = f"capture stream pump failed: {type(exc).__name__}"
        finally:
            self.ended_at = time.time()
            self.done.set()

    def _pump(self) -> None:
        buffer = bytearray()
        while len(buffer) < HEADER_LEN:
            chunk = self._read(READ_SIZE)
            if not chunk:
                self.text = bytes(buffer)
                return
            buffer += chunk
        try:
            fmt = PcapFormat.parse(bytes(buffer[:HEADER_LEN]))
        except ValueError:
            self.text = bytes(buffer[:4096])
            raise CaptureError("the capture tool did not write a pcap stream") from None
        self.sink.begin(fmt)
        self.started.set()
        assert self.sink.format is not None
        convert = _converter(fmt, self.sink.format)
        unpack = struct.Struct(fmt.endian + "IIII").unpack_from
        del buffer[:HEADER_LEN]
        while True:
            view = memoryview(buffer)
            offset, count, payload = 0, 0, 0
            first: float | None = None
            sec = frac = 0
            end = len(buffer)
            while offset + RECORD_LEN <= end:
                sec, frac, caplen, _length = unpack(view, offset)
                if caplen > 0x4000000:  # 64 MiB: no real record is that long; the stream is corrupt
                    view.release()
                    raise CaptureError(f"corrupt capture stream (a record claims {caplen} bytes)")
                if offset + RECORD_LEN + caplen > end:
                    break
                if first is None:
                    first = fmt.seconds(sec, frac)
                offset += RECORD_LEN + caplen
                count += 1
                payload += caplen
            if count:
                records = view[:offset]
                try:
                    self.sink.write(records if convert is None else convert(records), count, payload, first,
                                    fmt.seconds(sec, frac))
                finally:
                    records.release()
                self.packets += count
            view.release()
            del buffer[:offset]
            chunk = self._read(READ_SIZE)
            if not chunk:
                self.partial = len(buffer)
                return
            buffer += chunk


def _converter(src: PcapFormat, dst: PcapFormat) -> Callable[[memoryview], bytes] | None:
    """Re-pack record headers when a stream's byte order or time precision differs from the file's."""
    if src.endian == dst.endian and src.nano == dst.nano:
        return None
    read = struct.Struct(src.endian + "IIII")
    write = struct.Struct(dst.endian + "IIII")

    def convert(records: memoryview) -> bytes:
        out = bytearray()
        offset = 0
        while offset < len(records):
            sec, frac, caplen, length = read.unpack_from(records, offset)
            if src.nano and not dst.nano:
                frac //= 1000
            elif dst.nano and not src.nano:
                frac *= 1000
            out += write.pack(sec, frac, caplen, length)
            out += records[offset + RECORD_LEN: offset + RECORD_LEN + caplen]
            offset += RECORD_LEN + caplen
        return bytes(out)

    return convert


# --- reading finished files ---------------------------------------------------------------------

@dataclass(slots=True)
class FileInfo:
    """What a capture file holds, counted without dissecting a packet."""

    kind: str  # "pcap" | "pcapng"
    linktypes: list[int]
    packets: int
    bytes: int
    first: float | None
    last: float | None
    truncated: bool


def inspect(path: Path) -> FileInfo:
    """Count a pcap or pcapng file's packets; `CaptureError` when it is neither (or unreadable)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(HEADER_LEN)
            if head[:4] == _PCAPNG:
                handle.seek(0)
                return _inspect_pcapng(handle)
            try:
                fmt = PcapFormat.parse(head)
            except ValueError as exc:
                raise CaptureError(f"{path}: not a capture file ({exc})") from None
            packets = size = 0
            first = last = None
            truncated = False
            for sec, frac, data, _length in _records(handle, fmt):
                if data is None:
                    truncated = True
                    break
                packets += 1
                size += len(data)
                last = fmt.seconds(sec, frac)
                first = last if first is None else first
            return FileInfo("pcap", [fmt.linktype], packets, size, first, last, truncated)
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read the capture ({exc.strerror or exc})") from None


def _records(handle: BinaryIO, fmt: PcapFormat) -> Iterator[tuple[int, int, bytes | None, int]]:
    """(sec, frac, data, original length) per record; data None for a record cut short at the end."""
    unpack = struct.Struct(fmt.endian + "IIII").unpack
    while True:
        head = handle.read(RECORD_LEN)
        if not head:
            return
        if len(head) < RECORD_LEN:
            yield 0, 0, None, 0
            return
        sec, frac, caplen, length = unpack(head)
        data = handle.read(caplen)
        if len(data) < caplen:
            yield sec, frac, None, length
            return
        yield sec, frac, data, length


def _inspect_pcapng(handle: BinaryIO) -> FileInfo:
    packets = size = 0
    linktypes: list[int] = []
    endian = "<"
    truncated = False
    while True:
        head = handle.read(8)
        if not head:
            break
        if len(head) < 8:
            truncated = True
            break
        if head[:4] == _PCAPNG:
            order = handle.read(4)
            endian = "<" if order == b"\x4d\x3c\x2b\x1a" else ">"
            handle.seek(-4, os.SEEK_CUR)
        block_type, length = struct.unpack(endian + "II", head)
        if length < 12 or length % 4:
            truncated = True
            break
        body = handle.read(length - 8)
        if len(body) < length - 8:
            truncated = True
            break
        if block_type == 1 and len(body) >= 4:  # interface description
            linktypes.append(struct.unpack(endian + "H", body[:2])[0])
        elif block_type == 6 and len(body) >= 20:  # enhanced packet
            packets += 1
            size += struct.unpack(endian + "I", body[12:16])[0]
        elif block_type in (2, 3) and len(body) >= 4:  # obsolete / simple packet
            packets += 1
            size += struct.unpack(endian + "I", body[:4])[0] if block_type == 3 else len(body)
    return FileInfo("pcapng", linktypes, packets, size, None, None, truncated)


def merge(inputs: list[Path], output: Path) -> int:
    """Merge pcap files of one link type into `output` in time order, dropping exact duplicates.

    Used when a capture was cut into segments (a gateway filter corrected after a reboot, the
    packets of the reboot recovered from a spool). Streams: memory stays bounded. Returns the
    number of packets written.
    """
    handles = [path.open("rb") for path in inputs]
    try:
        formats = [PcapFormat.parse(handle.read(HEADER_LEN)) for handle in handles]
        linktypes = {fmt.linktype for fmt in formats}
        if len(linktypes) != 1:
            raise CaptureError(f"cannot merge captures of different link types {sorted(linktypes)}")
        out_fmt = PcapFormat("<", True, max(f.snaplen for f in formats), formats[0].linktype)

        def keyed(handle: BinaryIO, fmt: PcapFormat) -> Iterator[tuple[int, bytes, int]]:
            for sec, frac, data, length in _records(handle, fmt):
                if data is None:
                    return
                yield sec * 1_000_000_000 + (frac if fmt.nano else frac * 1000), data, length

        written = 0
        recent: set[tuple[int, bytes]] = set()
        recent_time = -1
        tmp = output.with_name(output.name + ".merging")
        with open_private(tmp) as out:
            out.write(out_fmt.header())
            merged = heapq.merge(*(keyed(h, f) for h, f in zip(handles, formats, strict=True)), key=lambda r: r[0])
            for when, data, length in merged:
                if when != recent_time:
                    recent, recent_time = set(), when
                if (when, data) in recent:
                    continue  # the same packet seen by two overlapping segments
                recent.add((when, data))
                sec, nsec = divmod(when, 1_000_000_000)
                out.write(struct.pack("<IIII", sec, nsec, len(data), length) + data)
                written += 1
        tmp.replace(output)
        return written
    finally:
        for handle in handles:
            handle.close()
