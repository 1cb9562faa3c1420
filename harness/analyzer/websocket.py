"""WebSocket messages (RFC 6455) of plain ws:// connections: unmasked, joined, inflated.

A client masks every frame it sends with a 4-byte key written in the clear just before the
payload: the bytes are readable without decryption, but not as they stand, so a scan of the raw
stream misses an identifier in them. `WebSocketReader` finds the handshake at the start of a TCP
direction (an HTTP head with `Upgrade: websocket`) and from there parses the direction as one
stream, unit after unit (the flow layer cuts long streams into overlapping windows; only bytes
past what was parsed are read), so frames and messages may span windows. permessage-deflate
(RFC 7692) messages go through one inflater per direction (messages share its window; a new one
after a message that ends its deflate stream).

For each unit it yields what completed in it as units of their own, located `websocket`: masked
or compressed messages (an unmasked, uncompressed one-frame message is in the raw scan already),
joined with a separator no match crosses, plain and inflated ones apart. A direction is dropped
at a gap (lost bytes: no frame boundary is known) or at bytes that are no frame. Bounded: a
message keeps at most MAX_MESSAGE bytes (the rest is counted in `undecoded`), inflation as the
analyzer's decode budget allows.
"""

from __future__ import annotations

import re
import zlib
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from harness.analyzer.model import Encoding, Flow, StreamUnit
from harness.analyzer.unwrap import MAX_INFLATE, SEP, looks_json

_UPGRADE = re.compile(rb"\nupgrade:[ \t]*websocket[ \t]*\r?\n", re.IGNORECASE)
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_OPCODES = frozenset({0, 1, 2, 8, 9, 10})  # continuation, text, binary, close, ping, pong
DEFLATE_TAIL = b"\x00\x00\xff\xff"  # stripped from each compressed message by the sender (RFC 7692 7.2.1)
HEAD_MAX = 8192  # an Upgrade request or 101 response is in a direction's first bytes
MAX_MESSAGE = 1 << 20
MAX_DIRECTIONS = 4096  # ws:// directions followed at once (the oldest is let go)
MAX_DRAIN = 256 << 20  # inflated bytes past MAX_INFLATE thrown away to keep a direction's window
CARRY = 256  # bytes of a message read in one unit scanned again with its rest in the next


def frames_start(data: bytes) -> int:
    """Where the frames begin: after a handshake (an HTTP head with `Upgrade: websocket`) at the
    start of `data`; -1 if none."""
    if not (data.startswith(b"GET ") or data.startswith(b"HTTP/1.")):
        return -1
    head = data[:HEAD_MAX]
    upgrade = _UPGRADE.search(head)
    if upgrade is None:
        return -1
    end = _HEAD_END.search(head, upgrade.start())
    return -1 if end is None else end.end()


def unmask(data: bytes, key: bytes, phase: int = 0) -> bytes:
    """XOR with the repeated 4-byte key from `phase` bytes into the payload, on whole integers."""
    if len(key) != 4 or not data:
        return data
    size = len(data)
    turned = key[phase % 4 :] + key[: phase % 4]
    mask = (turned * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "little") ^ int.from_bytes(mask, "little")).to_bytes(size, "little")


@dataclass(slots=True)
class _Message:
    compressed: bool
    masked: bool
    parts: list[bytes] = field(default_factory=list)
    size: int = 0
    frames: list[tuple[int, int, float]] = field(default_factory=list)  # (offset in parts, capture frame, time)
    count: int = 0  # WebSocket frames
    carry: bytes = b""  # the end of what was read of it in an earlier unit: a match may cross there


@dataclass(slots=True)
class _Direction:
    pos: int  # stream offset of the next byte to parse
    head: bytes = b""  # a frame header cut by the end of a unit
    left: int = 0  # payload bytes of the current frame still to come
    key: bytes = b""
    phase: int = 0  # payload bytes of the current frame already read (the mask's phase)
    fin: bool = False
    control: bool = False
    message: _Message | None = None
    inflater: Any = None  # created at the first compressed message; False once its window is lost
    control_parts: bytes = b""  # a control frame's payload (125 bytes at most), perhaps cut by a unit's end
    control_frames: list[tuple[int, int, float]] = field(default_factory=list)
    closing: bool = False  # the current control frame is a close
    lost: bool = False
    closed: bool = False


@dataclass(slots=True)
class _Done:
    """Messages completed in one unit: payloads, and per payload the frames that carried it."""

    plain: list[tuple[bytes, list[tuple[int, int, float]]]] = field(default_factory=list)
    inflated: list[tuple[bytes, list[tuple[int, int, float]]]] = field(default_factory=list)


class WebSocketReader:
    """Feed it every unit in capture order; it yields the ws:// messages that completed in it."""

    def __init__(self) -> None:
        self._dirs: dict[tuple[Flow, bool], _Direction] = {}
        self.undecoded = 0  # messages or parts of them not read (too big, inflation budget, lost window)

    def feed(self, unit: StreamUnit) -> Iterator[StreamUnit]:
        if unit.flow.proto != "tcp" or unit.location is not None or unit.extra:
            return
        key = (unit.flow, unit.from_client)
        state = self._dirs.get(key)
        if state is not None and (unit.gap_before or unit.stream_offset == 0):
            del self._dirs[key]  # bytes were lost (no frame boundary is known), or a new connection
            state = None
        if state is None:
            if unit.stream_offset or unit.gap_before:
                return
            start = frames_start(unit.data)
            if start < 0:
                return
            if len(self._dirs) >= MAX_DIRECTIONS:
                del self._dirs[next(iter(self._dirs))]
            state = self._dirs[key] = _Direction(start)
        rel = state.pos - unit.stream_offset  # where this unit's bytes not parsed yet start
        if rel < 0:
            del self._dirs[key]  # it starts past them: bytes were lost, where frames start is not known
            return
        if rel >= len(unit.data):
            return  # nothing new (a window's overlap only)
        done = _Done()
        self._parse(state, unit, rel, done)
        if state.lost or state.closed:
            del self._dirs[key]
        yield from _units(unit, done)

    def finish(self) -> Iterator[StreamUnit]:
        """Nothing waits for a later unit that could be scanned now: messages still open at the
        end of the capture were read as far as they went, unit by unit."""
        self._dirs.clear()
        return iter(())

    def _parse(self, state: _Direction, unit: StreamUnit, rel: int, done: _Done) -> None:
        data = unit.data
        size = len(data)
        pos = rel
        while pos < size and not state.lost:
            if state.left == 0:
                pos = self._header(state, data, pos, done)
                continue
            take = min(state.left, size - pos)
            payload = unmask(data[pos : pos + take], state.key, state.phase)
            self._payload(state, unit, pos, payload, done)
            state.left -= take
            state.phase += take
            pos += take
            if state.left == 0:
                self._frame_end(state, done)
        state.pos = unit.stream_offset + pos
        message = state.message
        if message is not None and message.parts:  # open at the end of this unit: read what there is
            self._emit(state, message, done, final=False)

    def _header(self, state: _Direction, data: bytes, pos: int, done: _Done) -> int:
        """Read a frame header (perhaps the rest of one cut by the last unit); where it ends."""
        head = state.head + data[pos : pos + 14 - len(state.head)]
        if len(head) < 2:
            state.head = head
            return len(data)
        b0, b1 = head[0], head[1]
        opcode = b0 & 0x0F
        if b0 & 0x30 or opcode not in _OPCODES or (opcode >= 8 and (not b0 & 0x80 or b1 & 0x7F > 125)):
            state.lost = True  # reserved bits, unknown opcode, fragmented or long control frame
            return len(data)
        length = b1 & 0x7F
        need = 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if b1 & 0x80 else 0)
        if len(head) < need:
            state.head = head
            return len(data)
        if length == 126:
            length = int.from_bytes(head[2:4], "big")
        elif length == 127:
            length = int.from_bytes(head[2:10], "big")
        consumed = need - len(state.head)
        state.head = b""
        state.key = head[need - 4 : need] if b1 & 0x80 else b""
        state.left, state.phase, state.fin, state.control = length, 0, bool(b0 & 0x80), opcode >= 8
        if opcode in (1, 2):  # a new message
            if state.message is not None and state.message.parts:  # one left open: what there was of it
                self._emit(state, state.message, done, final=False)
            state.message = _Message(bool(b0 & 0x40), bool(b1 & 0x80))
        elif opcode >= 8:
            state.control_parts, state.control_frames, state.closing = b"", [], opcode == 8
        elif opcode == 0 and state.message is None:  # a continuation of what the capture missed
            state.message = _Message(False, bool(b1 & 0x80))
        if state.message is not None and not state.control:
            state.message.count += 1
        if length == 0:
            self._frame_end(state, done)
        return pos + consumed

    def _payload(self, state: _Direction, unit: StreamUnit, pos: int, payload: bytes, done: _Done) -> None:
        message = state.message
        if state.control:  # close reasons, pings: one frame, at most 125 bytes
            _carriers(unit, pos, len(payload), len(state.control_parts), state.control_frames)
            state.control_parts += payload
            return
        if message is None:
            return
        _carriers(unit, pos, len(payload), message.size, message.frames)
        room = MAX_MESSAGE - message.size
        if len(payload) > room:
            self.undecoded += 1
            payload = payload[: max(room, 0)]
        if payload:
            message.parts.append(payload)
            message.size += len(payload)

    def _frame_end(self, state: _Direction, done: _Done) -> None:
        if state.control:
            state.control = False
            if state.control_parts and state.key:  # a client's close reason or ping text, unmasked
                done.plain.append((state.control_parts, state.control_frames))
            state.closed = state.closing
            return
        message = state.message
        if state.fin and message is not None:
            if message.parts or message.compressed:
                self._emit(state, message, done, final=True)
            state.message = None

    def _emit(self, state: _Direction, message: _Message, done: _Done, final: bool) -> None:
        """A message's payload (so far) to `done`; compressed ones through the direction's inflater."""
        payload = b"".join(message.parts)
        message.parts.clear()
        message.size = 0
        frames = list(message.frames)
        message.frames.clear()
        if not message.compressed:
            if message.masked or message.count > 1 or not final or message.carry:
                shift = len(message.carry)
                done.plain.append((message.carry + payload, [(at + shift, f, t) for at, f, t in frames]))
            message.carry = b"" if final else payload[-CARRY:]
            return
        if state.inflater is None:
            state.inflater = zlib.decompressobj(-15)
        if state.inflater is False:  # the window was lost: nothing after it inflates
            self.undecoded += 1
            return
        out, usable, cut = _inflate(state.inflater, payload + (DEFLATE_TAIL if final else b""), MAX_INFLATE)
        self.undecoded += cut or not usable
        if out:
            shift, scale = len(message.carry), len(out) / max(len(payload), 1)
            done.inflated.append((message.carry + out, [(shift + int(at * scale), f, t) for at, f, t in frames]))
            message.carry = b"" if final else out[-CARRY:]
        if not usable:
            state.inflater = False
        elif state.inflater.eof:  # the sender ended its deflate stream: the next one starts anew
            state.inflater = None


def _inflate(inflater: Any, data: bytes, limit: int) -> tuple[bytes, bool, bool]:
    """(output up to `limit`, the inflater is still usable, output was thrown away).

    Fed in slices, so damage keeps what came before it; past `limit` the output is inflated and
    thrown away (up to MAX_DRAIN), so that the direction's window survives a huge message."""
    out: list[bytes] = []
    produced = drained = 0
    try:
        for pos in range(0, len(data), 1 << 14):
            chunk = data[pos : pos + (1 << 14)]
            while chunk:
                room = limit - produced
                part = inflater.decompress(chunk, room if room > 0 else 1 << 20)
                if room > 0:
                    out.append(part)
                    produced += len(part)
                else:
                    drained += len(part)
                    if drained > MAX_DRAIN:
                        return b"".join(out), False, True
                chunk = inflater.unconsumed_tail
    except zlib.error:
        return b"".join(out), False, drained > 0
    return b"".join(out), True, drained > 0


def _carriers(unit: StreamUnit, pos: int, size: int, base: int, into: list[tuple[int, int, float]]) -> None:
    """Append (offset in the message, frame, time) for each capture frame that carried
    unit.data[pos:pos + size], the message having `base` bytes before it."""
    offsets = unit.frame_offsets
    i = max(bisect_right(offsets, pos) - 1, 0)
    while i < len(offsets) and (offsets[i] <= pos or offsets[i] < pos + size):
        if not into or into[-1][1] != unit.frames[i]:
            into.append((base + max(0, offsets[i] - pos), unit.frames[i], unit.times[i]))
        i += 1


def _units(source: StreamUnit, done: _Done) -> Iterator[StreamUnit]:
    kinds: tuple[tuple[list[tuple[bytes, list[tuple[int, int, float]]]], tuple[str, ...]], ...] = (
        (done.plain, ()), (done.inflated, (Encoding.DEFLATE,)))
    for messages, steps in kinds:
        if not messages:
            continue
        if steps and all(looks_json(payload) for payload, _ in messages):
            steps += (Encoding.JSON,)  # as for any decoded bytes (wire bytes are not marked)
        data = bytearray()
        offsets: list[int] = []
        frames: list[int] = []
        times: list[float] = []
        for payload, carried in messages:
            if data:
                data += SEP
            start = len(data)
            for at, frame, time in carried:  # where each capture frame's bytes begin in the message
                at = start + min(at, max(len(payload) - 1, 0))
                if offsets and at <= offsets[-1]:
                    at = offsets[-1] + 1
                offsets.append(at)
                frames.append(frame)
                times.append(time)
            data += payload
        if not offsets:
            offsets, frames, times = [0], list(source.frames[:1]), list(source.times[:1])
        yield StreamUnit(source.flow, source.from_client, bytes(data), offsets, frames, times, app=source.app,
                         location=Encoding.WEBSOCKET, steps=steps)
