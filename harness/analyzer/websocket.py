"""WebSocket messages (RFC 6455) of a plain ws:// connection: unmasked, joined, found for scanning.

A client masks every frame it sends with a 4-byte key written in the clear just before the
payload: the bytes are readable without decryption, but not as they stand, so a scan of the raw
stream misses an identifier in them. The frames after an HTTP Upgrade request (or its 101
response) are parsed; each message's fragments are unmasked and joined. permessage-deflate
(RFC 7692) messages are inflated with one inflater per direction (messages share its window),
a new one after a message that ends its deflate stream; the dissector owns the decode budget.

Only frames that follow the handshake in the same unit are read (a connection's first window,
1 MiB per direction): a frame chain cannot be found reliably from the middle of a stream.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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


def frames_start(data: bytes) -> int:
    """Where the frames begin: after the head of a message with `Upgrade: websocket`; -1 if none.
    (Called only for units where the scan saw that header: a regex over every HTTP unit costs.)"""
    upgrade = _UPGRADE.search(data)
    if upgrade is None:
        return -1
    end = _HEAD_END.search(data, upgrade.start())
    return -1 if end is None else end.end()


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
