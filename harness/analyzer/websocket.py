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
    frames: list[tuple[int, float]] = field(default_factory=list)  # (capture frame, time) that carried it
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
    inflater: Any = None  # created at the first compressed message; None again once its window is lost
    lost: bool = False


@dataclass(slots=True)
class _Done:
    """Messages completed in one unit: payloads, and per payload the frames that carried it."""

    plain: list[tuple[bytes, list[tuple[int, float]]]] = field(default_factory=list)
    inflated: list[tuple[bytes, list[tuple[int, float]]]] = field(default_factory=list)


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
        if state is None:
            if unit.stream_offset or unit.gap_before:
                return
            start = frames_start(unit.data)
            if start < 0:
                return
            state = self._dirs[key] = _Direction(start)
        rel = state.pos - unit.stream_offset  # where this unit's bytes not parsed yet start
        if rel < 0:
            del self._dirs[key]  # it starts past them: bytes were lost, where frames start is not known
            return
        if rel >= len(unit.data):
            return  # nothing new (a conflicting retransmission of bytes already parsed)
        done = _Done()
        self._parse(state, unit, rel, done)
        if state.lost:
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
        if opcode in (1, 2):  # a new message (a previous one left open was read as far as it went)
            state.message = _Message(bool(b0 & 0x40), bool(b1 & 0x80))
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
            if payload and state.key:
                done.plain.append((payload, [(unit.frames_between(pos, pos + len(payload))[0], unit.time_at(pos))]))
            return
        if message is None:
            return
        carried = [(frame, unit.time_at(pos)) for frame in unit.frames_between(pos, pos + max(1, len(payload)))]
        message.frames += [f for f in carried if f not in message.frames]
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
                done.plain.append((message.carry + payload, frames))
            message.carry = b"" if final else payload[-CARRY:]
            return
        if state.inflater is None:
            state.inflater = zlib.decompressobj(-15)
        if state.inflater is False:  # the window was lost: nothing after it inflates
            self.undecoded += 1
            return
        out, whole = _inflate(state.inflater, payload + (DEFLATE_TAIL if final else b""), MAX_INFLATE)
        if out:
            done.inflated.append((message.carry + out, frames))
            message.carry = b"" if final else out[-CARRY:]
        if not whole:
            self.undecoded += 1
            state.inflater = False
        elif state.inflater.eof:  # the sender ended its deflate stream: the next one starts anew
            state.inflater = None


def _inflate(inflater: Any, data: bytes, limit: int) -> tuple[bytes, bool]:
    """(output, the inflater is still usable): fed in slices, so damage keeps what came before it."""
    out: list[bytes] = []
    produced = 0
    try:
        for pos in range(0, len(data), 1 << 14):
            part = inflater.decompress(data[pos : pos + (1 << 14)], max(1, limit - produced))
            out.append(part)
            produced += len(part)
            if inflater.unconsumed_tail or produced >= limit:
                return b"".join(out), False
    except zlib.error:
        return b"".join(out), False
    return b"".join(out), True


def _units(source: StreamUnit, done: _Done) -> Iterator[StreamUnit]:
    kinds: tuple[tuple[list[tuple[bytes, list[tuple[int, float]]]], tuple[str, ...]], ...] = (
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
            for i, (frame, time) in enumerate(carried):  # each frame a position inside its message
                at = start + min(i, max(len(payload) - 1, 0))
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
