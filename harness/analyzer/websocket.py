"""WebSocket messages (RFC 6455) of a plain ws:// connection: unmasked, joined, found for scanning.

A client masks every frame it sends with a 4-byte key written in the clear just before the
payload: the bytes are readable without decryption, but not as they stand, so a scan of the raw
stream misses an identifier in them. The frames after an HTTP Upgrade request (or its 101
response) are parsed; each message's fragments are unmasked and joined. permessage-deflate
(RFC 7692) messages are inflated with one inflater per direction (messages share its window),
a new one after a message that ends its deflate stream; the dissector owns the decode budget.

`FrameTracker` finds the handshake at the start of each direction and carries where the next
frame starts from one unit to the next (a long connection is cut into 1 MiB windows), so every
window's frames are read; it loses a direction at a gap (lost bytes: no frame boundary is known).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from harness.analyzer.model import Flow, StreamUnit

_UPGRADE = re.compile(rb"\nupgrade:[ \t]*websocket[ \t]*\r?\n", re.IGNORECASE)
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_OPCODES = frozenset({0, 1, 2, 8, 9, 10})  # continuation, text, binary, close, ping, pong
DEFLATE_TAIL = b"\x00\x00\xff\xff"  # stripped from each compressed message by the sender (RFC 7692 7.2.1)


@dataclass(frozen=True, slots=True)
class Message:
    """One message (or control frame): where its frames lie in the unit, and its payload."""

    start: int
    end: int
    payload: bytes
    compressed: bool
    final: bool  # its last frame (FIN) was seen: not cut by the end of the unit or a bad frame


HEAD_MAX = 8192  # an Upgrade request or 101 response is in a direction's first bytes


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


def chain_end(data: bytes, pos: int) -> int:
    """Where the frame after the last one starting in data[pos:] begins (beyond the end when that
    frame is cut), or -1 when something there is not a frame."""
    size = len(data)
    while pos < size:
        if pos + 2 > size:
            return -1  # a header cut in two: the next unit cannot say where it ends
        b0, b1 = data[pos], data[pos + 1]
        opcode = b0 & 0x0F
        if b0 & 0x30 or opcode not in _OPCODES:
            return -1
        length = b1 & 0x7F
        head = pos + 2 + (2 if length == 126 else 8 if length == 127 else 0) + (4 if b1 & 0x80 else 0)
        if head > size:
            return -1
        if length == 126:
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        elif length == 127:
            length = int.from_bytes(data[pos + 2 : pos + 10], "big")
        pos = head + length
    return pos


class FrameTracker:
    """Feed it every unit in capture order: it sets `unit.ws_at` where frames start in the unit."""

    def __init__(self) -> None:
        self._next: dict[tuple[Flow, bool], int] = {}  # stream offset of each direction's next frame

    def mark(self, unit: StreamUnit) -> None:
        if unit.flow.proto != "tcp":
            return
        key = (unit.flow, unit.from_client)
        at = self._next.get(key)
        if at is None:
            if unit.stream_offset or unit.gap_before:
                return
            at = frames_start(unit.data)
            if at < 0:
                return
        rel = at - unit.stream_offset
        if unit.gap_before or not 0 <= rel <= len(unit.data):
            del self._next[key]  # lost bytes: where frames start is no longer known
            return
        unit.ws_at = rel
        end = chain_end(unit.data, rel)
        if end < 0:
            self._next.pop(key, None)
        else:
            self._next[key] = unit.stream_offset + end


def messages(data: bytes, pos: int) -> Iterator[Message]:
    """The messages of the frames from data[pos]; stops at the first thing that is not a frame.
    A message cut by the end of the unit is given as far as it goes."""
    size = len(data)
    parts: list[bytes] = []
    first = -1
    compressed = False
    while pos + 2 <= size:
        b0, b1 = data[pos], data[pos + 1]
        opcode = b0 & 0x0F
        if b0 & 0x30 or opcode not in _OPCODES or (opcode >= 8 and (not b0 & 0x80 or b1 & 0x7F > 125)):
            break  # reserved bits, unknown opcode, fragmented or long control frame: not a frame
        length = b1 & 0x7F
        head = pos + 2
        if length == 126:
            length = int.from_bytes(data[head : head + 2], "big")
            head += 2
        elif length == 127:
            length = int.from_bytes(data[head : head + 8], "big")
            head += 8
        key = b""
        if b1 & 0x80:
            key = data[head : head + 4]
            head += 4
        if head > size:
            break
        end = min(head + length, size)
        payload = unmask(data[head:end], key)
        if opcode >= 8:
            if payload:
                yield Message(pos, end, payload, False, True)
        else:
            if opcode:  # a new message
                parts, first, compressed = [], pos, bool(b0 & 0x40)
            elif first < 0:
                return  # a continuation of nothing
            parts.append(payload)
            if b0 & 0x80 or end == size:
                yield Message(first, end, b"".join(parts), compressed, bool(b0 & 0x80) and end == head + length)
                parts, first = [], -1
        pos = end
    if parts:  # fragments before something that is not a frame: what there is of that message
        yield Message(first, pos, b"".join(parts), compressed, False)


def inflate_message(inflater: Any, message: Message, limit: int) -> tuple[bytes, bool]:
    """A permessage-deflate message through the direction's inflater: (what it gave, whole).

    Fed in slices, so a corrupt or cut message keeps what decoded before the damage; the
    stripped tail goes back in only after a whole message. Not `whole` when damaged, cut or
    over `limit`: the shared window is then lost for the messages after it."""
    out: list[bytes] = []
    produced = 0
    data = message.payload + (DEFLATE_TAIL if message.final else b"")
    try:
        for pos in range(0, len(data), 1 << 14):
            part = inflater.decompress(data[pos : pos + (1 << 14)], max(1, limit - produced))
            out.append(part)
            produced += len(part)
            if inflater.unconsumed_tail or produced >= limit:
                return b"".join(out), False
    except zlib.error:
        return b"".join(out), False
    return b"".join(out), message.final


def unmask(data: bytes, key: bytes) -> bytes:
    """XOR with the repeated 4-byte key, done on whole integers (no Python loop per byte)."""
    if len(key) != 4 or not data:
        return data
    size = len(data)
    mask = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "little") ^ int.from_bytes(mask, "little")).to_bytes(size, "little")
