"""QUIC Initial packets (RFC 9000, 9001; v2 RFC 9369): the client's ClientHello, read.

A QUIC client's first packets are encrypted, but with keys anyone derives from the packet's own
Destination Connection ID and a salt the RFC publishes: their TLS ClientHello (server name
included) is readable without any secret, like TLS over TCP's. `InitialAssembler` decrypts the
client's Initial packets of each UDP flow, joins their CRYPTO frames in offset order and, once
the ClientHello is whole (it may take several datagrams), yields it as one unit located
`quic-initial` for the dissector (its SNI names the flow). Server Initials, and anything that
does not decrypt, are left to the raw scan.

Bounded: MAX_CRYPTO bytes per flow, MAX_FLOWS flows waiting for the rest of their ClientHello.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from harness.analyzer.model import Encoding, Flow, StreamUnit

MAX_CRYPTO = 64 << 10
MAX_FLOWS = 1024


@dataclass(frozen=True, slots=True)
class _Version:
    salt: bytes
    prefix: bytes  # of the key, iv and hp labels
    initial: int  # the long header's packet type of an Initial


VERSIONS = {
    0x00000001: _Version(bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), b"quic ", 0),
    0x6B3343CF: _Version(bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"), b"quicv2 ", 1),
    0xFF00001D: _Version(bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899"), b"quic ", 0),  # draft-29
}


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand-Label (RFC 8446 7.1) with an empty context; one HMAC block is enough here."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return hmac.new(secret, info + b"\x01", hashlib.sha256).digest()[:length]


@dataclass(frozen=True, slots=True)
class _Keys:
    aead: AESGCM
    iv: bytes
    hp: bytes


def client_keys(version: int, dcid: bytes) -> _Keys:
    spec = VERSIONS[version]
    initial = hmac.new(spec.salt, dcid, hashlib.sha256).digest()
    client = _expand_label(initial, b"client in", 32)
    return _Keys(AESGCM(_expand_label(client, spec.prefix + b"key", 16)),
                 _expand_label(client, spec.prefix + b"iv", 12), _expand_label(client, spec.prefix + b"hp", 16))


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of a QUIC variable-length integer; IndexError when cut."""
    first = data[pos]
    size = 1 << (first >> 6)
    if pos + size > len(data):
        raise IndexError(pos)
    return int.from_bytes(bytes([first & 0x3F]) + data[pos + 1 : pos + size], "big"), pos + size


def crypto_frames(datagram: bytes) -> list[tuple[int, bytes]]:
    """(offset, data) of the CRYPTO frames in the client Initial packets of one UDP datagram."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    try:
        while pos + 7 <= len(datagram) and datagram[pos] & 0xC0 == 0xC0:  # long header, fixed bit
            first = datagram[pos]
            spec = VERSIONS.get(int.from_bytes(datagram[pos + 1 : pos + 5], "big"))
            if spec is None:
                break
            at = pos + 5
            dcid = datagram[at + 1 : at + 1 + datagram[at]]
            at += 1 + datagram[at]
            at += 1 + datagram[at]  # source connection ID
            initial = (first >> 4) & 3 == spec.initial
            if initial:
                token, at = _varint(datagram, at)
                at += token
            length, at = _varint(datagram, at)
            end = at + length
            if end > len(datagram) or len(dcid) > 20:
                break
            if initial:
                version = int.from_bytes(datagram[pos + 1 : pos + 5], "big")
                plain = _decrypt(datagram[pos:end], at - pos, client_keys(version, dcid))
                if plain is None:
                    break  # not the client's (a server's Initial), or not QUIC
                out += _crypto(plain)
            pos = end
    except IndexError:
        pass
    return out


def _decrypt(packet: bytes, pn_offset: int, keys: _Keys) -> bytes | None:
    """Remove header protection, then open the AEAD (RFC 9001 5.3, 5.4)."""
    sample = packet[pn_offset + 4 : pn_offset + 20]
    if len(sample) < 16:
        return None
    encryptor = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor()  # noqa: S305 - RFC 9001 5.4.3: one block
    mask = encryptor.update(sample) + encryptor.finalize()
    first = packet[0] ^ (mask[0] & 0x0F)
    pn_len = (first & 3) + 1
    pn = bytes(b ^ m for b, m in zip(packet[pn_offset : pn_offset + pn_len], mask[1 : 1 + pn_len], strict=True))
    header = bytes([first]) + packet[1:pn_offset] + pn
    nonce = (int.from_bytes(keys.iv, "big") ^ int.from_bytes(pn, "big")).to_bytes(12, "big")
    try:
        return keys.aead.decrypt(nonce, packet[pn_offset + pn_len :], header)
    except InvalidTag:
        return None


def _crypto(plain: bytes) -> list[tuple[int, bytes]]:
    """CRYPTO frames of a decrypted Initial payload (PADDING, PING and ACK skipped)."""
    out: list[tuple[int, bytes]] = []
    pos = 0
    try:
        while pos < len(plain):
            kind, pos = _varint(plain, pos)
            if kind in (0x00, 0x01):
                continue
            if kind in (0x02, 0x03):  # ACK: largest, delay, range count, first range, ranges, (ECN)
                _largest, pos = _varint(plain, pos)
                _delay, pos = _varint(plain, pos)
                ranges, pos = _varint(plain, pos)
                for _ in range(1 + 2 * ranges + (3 if kind == 0x03 else 0)):
                    _value, pos = _varint(plain, pos)
            elif kind == 0x06:
                offset, pos = _varint(plain, pos)
                length, pos = _varint(plain, pos)
                out.append((offset, plain[pos : pos + length]))
                pos += length
            else:
                break  # CONNECTION_CLOSE or a frame an Initial cannot carry
    except IndexError:
        pass
    return out


@dataclass(slots=True)
class _Hello:
    app: str | None
    parts: dict[int, tuple[bytes, int, float]] = field(default_factory=dict)  # offset -> data, frame, time
    size: int = 0
    done: bool = False


class InitialAssembler:
    """Feed it every unit in capture order; it yields each QUIC flow's ClientHello once whole."""

    def __init__(self) -> None:
        self._flows: dict[tuple[Flow, bool], _Hello] = {}

    def feed(self, unit: StreamUnit) -> Iterator[StreamUnit]:
        data = unit.data
        if unit.flow.proto != "udp" or len(data) < 7 or data[0] & 0xC0 != 0xC0 or unit.location is not None:
            return
        key = (unit.flow, unit.from_client)
        hello = self._flows.get(key)
        if hello is not None and hello.done:
            return
        frames = crypto_frames(data)
        if not frames:
            return
        if hello is None:
            if len(self._flows) >= MAX_FLOWS:
                oldest = next(iter(self._flows))
                yield from _unit(oldest[0], oldest[1], self._flows.pop(oldest))
            hello = self._flows[key] = _Hello(unit.app)
        frame, time = (unit.frames[0], unit.times[0]) if unit.frames else (0, 0.0)
        for offset, chunk in frames:
            if offset not in hello.parts and chunk and hello.size + len(chunk) <= MAX_CRYPTO:
                hello.parts[offset] = (chunk, frame, time)
                hello.size += len(chunk)
        joined = _contiguous(hello)
        if len(joined) >= 4 and len(joined) >= 4 + int.from_bytes(joined[1:4], "big"):
            hello.done = True  # later Initials (ACKs, resends) add nothing
            yield from _unit(unit.flow, unit.from_client, hello)
            hello.parts.clear()

    def finish(self) -> Iterator[StreamUnit]:
        """Flows whose ClientHello never completed: what there is of it."""
        for (flow, from_client), hello in self._flows.items():
            if not hello.done:
                yield from _unit(flow, from_client, hello)
        self._flows.clear()


def _contiguous(hello: _Hello) -> bytes:
    out = bytearray()
    for offset in sorted(hello.parts):
        if offset > len(out):
            break
        out += hello.parts[offset][0][len(out) - offset :]
    return bytes(out)


def _unit(flow: Flow, from_client: bool, hello: _Hello) -> Iterator[StreamUnit]:
    data = _contiguous(hello)
    if not data:
        return
    offsets = [o for o in sorted(hello.parts) if o < len(data)]
    yield StreamUnit(flow, from_client, data, offsets, [hello.parts[o][1] for o in offsets],
                     [hello.parts[o][2] for o in offsets], app=hello.app, location=Encoding.QUIC_INITIAL)
