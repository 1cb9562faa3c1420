"""Recursive unwrapping: scan bytes, decode every encoded run found in them, scan the result.

Decode rather than enumerate: an identifier anywhere inside Base64 of JSON (or gzip of Base64 of
JSON with \\u escapes...) is found at any offset because the run is decoded and the decoded bytes
are scanned like the wire bytes were. One layer is many pieces joined by a separator; one
hyperscan call reports identifier matches and where escapes, UTF-16 and compressed streams
start, and `matcher.find_runs` finds the long Base64/hex runs, so only those places get Python
work and plain text costs about one scan.

Hits are deduplicated per identifier by span: the least decoded view of a place wins (a plain
IMEI is not reported again from inside a percent-decoded copy of the same bytes), except the
enumerated short Base64/hex literals, which only count where decoding found nothing.

Bounded: at most MAX_DEPTH layers, a per-unit budget of decoded bytes (zip bombs) and one for
the whole batch (memory); runs left undecoded for lack of budget are counted, never silently
dropped.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

from harness.analyzer import guess as guess_rules
from harness.analyzer.matcher import (
    B64_ALPHABET,
    B64_MIN,
    BOUNDARY_SETS,
    DECODE_TRIGGERS,
    GUESS_TRIGGERS,
    HEX_MIN,
    KEY_WINDOW,
    PROTOCOL_TRIGGERS,
    U16_MIN,
    Boundary,
    Form,
    Matcher,
    Trigger,
    find_digit_runs,
)
from harness.analyzer.model import LOCATIONS, Encoding, Hit

MAX_DEPTH = 6  # layers below the wire bytes: enough for gzip(base64(json-escape(base64(hex))))
MAX_INFLATE = 32 << 20  # one decompression never yields more than this
SEP = b"\xff\x00\xff\x00"  # between pieces: in no alphabet, not a digit/letter, not a UTF-16 pair

# flags of a piece
NO_BINARY_MAC = 1  # DHCP / ICMPv6 carry the MAC's octets by design: not a leak there
DNS_NAME = 2  # text of DNS labels: also try base32 (DNS is case-insensitive, base64 rarely fits)

_B64_RUN = re.compile(rb"[A-Za-z0-9+/_\-]+={0,2}")
_B64_WRAPPED = re.compile(rb"(?:[A-Za-z0-9+/]{4,}\r?\n)+[A-Za-z0-9+/]*={0,2}")
_UPPER = re.compile(rb"[A-Z]")
_B64_CHAR = re.compile(rb"[A-Za-z0-9+/_\-]")
_B64URL = bytes.maketrans(b"-_", b"+/")
_NOT_B64 = bytes(c for c in range(256) if c not in B64_ALPHABET)
_C_ESCAPE_RUN = re.compile(rb"(?:\\x[0-9A-Fa-f]{2})+")
_U16LE_RUN = re.compile(rb"(?:[\x09\x0a\x0d\x20-\x7e]\x00)+")
_U16BE_RUN = re.compile(rb"(?:\x00[\x09\x0a\x0d\x20-\x7e])+")
_JSON_ESC = re.compile(rb"\\(u[0-9A-Fa-f]{4}|[\"\\/bfnrt])")
_BASE32_RUN = re.compile(rb"[A-Za-z2-7]{8,}")
_NAME_HEX_RUN = re.compile(rb"[0-9A-Fa-f]{8,}")
_PRINTABLE_BYTES = b"\t\n\r" + bytes(range(0x20, 0x7F))
_PRINTABLE = frozenset(_PRINTABLE_BYTES)
_SIMPLE_ESC = {b'"': b'"', b"\\": b"\\", b"/": b"/", b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r",
               b"t": b"\t"}
_REGION = 8192  # percent / JSON-escape decoding covers the whole piece up to this size
_MAGIC_LEN = {Trigger.GZIP: 3, Trigger.ZLIB: 2, Trigger.ZIP: 4}
_INFLATE_STEP = {Trigger.GZIP: Encoding.GZIP, Trigger.ZLIB: Encoding.ZLIB, Trigger.ZIP: Encoding.ZIP}


@dataclass(slots=True)
class Piece:
    """Bytes to scan, and where they came from.

    `start`/`end` is the span in the unit's data that produced them; when `exact`, `data` *is*
    that span byte for byte, so a match inside maps to its exact offsets; otherwise (decoded
    bytes) a match maps to the whole span, the outermost encoded run.
    """

    data: bytes
    chain: tuple[str, ...]
    start: int
    end: int
    exact: bool = True
    owner: int = 0  # which unit of a batch
    flags: int = 0


@dataclass(slots=True)
class Outcome:
    """Per owner: hits (deduplicated), runs the decode budget left undecoded, and protocol
    landmarks (Trigger, offset in the unit) seen in the wire bytes (exact pieces)."""

    hits: list[list[Hit]]
    undecoded: list[int]
    events: list[list[tuple[int, int]]]


@dataclass(slots=True)
class _Layer:
    pieces: list[Piece]
    buf: bytes = b""
    starts: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        parts = [SEP]
        pos = len(SEP)
        for piece in self.pieces:
            self.starts.append(pos)
            parts += (piece.data, SEP)
            pos += len(piece.data) + len(SEP)
        self.buf = b"".join(parts)

    def locate(self, start: int, end: int) -> int:
        """The piece holding buf[start:end], or -1 when the span crosses a separator."""
        i = bisect_right(self.starts, start) - 1
        if i < 0 or end > self.starts[i] + len(self.pieces[i].data):
            return -1
        return i


def _with_step(chain: tuple[str, ...], steps: tuple[str, ...]) -> tuple[str, ...]:
    out = tuple(str(step) for step in chain + steps)
    if all(step in LOCATIONS for step in out):
        out += (str(Encoding.PLAIN),)
    return out


def looks_json(data: bytes) -> bool:
    """Decoded bytes that hold a JSON document (allowing a few bytes of header before it)."""
    head = data[:16]
    return b'{"' in head or b'["' in head or data.lstrip(b" \t\r\n\x00\xef\xbb\xbf")[:1] in (b"{", b"[")


class Unwrapper:
    """One analysis: pieces of one or more units in, deduplicated hits per unit out."""

    def __init__(self, matcher: Matcher, budgets: list[int], total: int) -> None:
        self.matcher = matcher
        self.budget = list(budgets)
        self.total = total  # for the whole batch: a layer holds all of its units' decoded bytes
        self.hits: list[list[Hit]] = [[] for _ in budgets]
        self.undecoded = [0] * len(budgets)
        self.events: list[list[tuple[int, int]]] = [[] for _ in budgets]
        self._seen: dict[tuple[int, str, int | None, str, bool], list[tuple[int, int]]] = defaultdict(list)
        self._fallback: list[tuple[Piece, int, int, Form]] = []

    def run(self, pieces: list[Piece]) -> Outcome:
        depth = 0
        while pieces:
            layer = _Layer(pieces)
            lits, trigs = self.matcher.scan(layer.buf)
            if depth == 0:
                self._landmarks(layer, trigs)
            if lits:
                self._literal_hits(layer, lits)
            if not self.matcher.active:
                break
            runs = self._runs(layer)
            if self.matcher.guess:
                self._guess_hits(layer, trigs, runs)
            if depth >= MAX_DEPTH:
                break
            pieces = self._decode(layer, trigs, runs) + self._host_names(layer)
            del layer, lits, trigs, runs  # before the next layer is built: memory
            depth += 1
        for piece, rel_start, rel_end, form in self._fallback:  # where decoding found nothing
            target = form.target
            self._emit(piece, rel_start, rel_end, target.kind, target.slot, target.value, form.steps)
        return Outcome(self.hits, self.undecoded, self.events)

    def _runs(self, layer: _Layer) -> list[tuple[int, int, int]]:
        """Long Base64/hex runs (and, guessing, digit runs). (No run crosses a separator.)"""
        runs = self.matcher.find_runs(layer.buf)
        if self.matcher.guess:
            runs += find_digit_runs(layer.buf)
        return runs

    def _landmarks(self, layer: _Layer, trigs: list[tuple[int, int]]) -> None:
        for trig, end in trigs:
            if trig in PROTOCOL_TRIGGERS:
                index = layer.locate(end - 1, end)
                if index >= 0 and layer.pieces[index].exact:
                    piece = layer.pieces[index]
                    self.events[piece.owner].append((trig, piece.start + end - layer.starts[index]))

    # --- hits -------------------------------------------------------------------------------

    def _emit(self, piece: Piece, rel_start: int, rel_end: int, kind: str, slot: int | None, value: str,
              steps: tuple[str, ...], guess: bool = False) -> None:
        if piece.exact:
            start, end = piece.start + rel_start, piece.start + rel_end
        else:
            start, end = piece.start, piece.end
        spans = self._seen[(piece.owner, kind, slot, value, guess)]
        if any(s < end and start < e for s, e in spans):
            return
        spans.append((start, end))
        self.hits[piece.owner].append(
            Hit(kind, slot, value, start, end, _with_step(piece.chain, steps), guess))

    def _literal_hits(self, layer: _Layer, lits: list[tuple[int, int]]) -> None:
        buf = layer.buf
        lengths = self.matcher.pattern_length
        # earlier first, and at one place the longer form first (IMEI before its 14-digit core)
        for pid, end in sorted(lits, key=lambda m: (m[1] - lengths[m[0]], -lengths[m[0]])):
            start = end - lengths[pid]
            index = layer.locate(start, end)
            if index < 0:
                continue
            piece = layer.pieces[index]
            base = layer.starts[index]
            for form in self.matcher.forms[pid]:
                if form.fallback:
                    if not form.encodes or _base64_confirms(buf, start, end, base, base + len(piece.data),
                                                            form.encodes):
                        self._fallback.append((piece, start - base, end - base, form))
                elif self._accept(form, piece, buf, start, end, base):
                    target = form.target
                    self._emit(piece, start - base, end - base, target.kind, target.slot, target.value,
                               form.steps)

    @staticmethod
    def _accept(form: Form, piece: Piece, buf: bytes, start: int, end: int, base: int) -> bool:
        if form.binary_mac and piece.flags & NO_BINARY_MAC:
            return False
        if form.boundary is not Boundary.NONE:
            banned = BOUNDARY_SETS[form.boundary]
            if buf[start - 1] in banned or buf[end] in banned:
                return False
        if form.keys:
            window = buf[max(base, start - KEY_WINDOW) : start].lower()
            if not any(key in window for key in form.keys):
                return False
        return True

    def _guess_hits(self, layer: _Layer, trigs: list[tuple[int, int]],
                    runs: list[tuple[int, int, int]]) -> None:
        found: list[guess_rules.Guess] = []
        for trig, start, end in runs:
            if trig == Trigger.DIGITS:
                found += guess_rules.check_digits(layer.buf, start, end)
        for trig, end in trigs:
            if trig in GUESS_TRIGGERS:
                mac = guess_rules.check_mac(Trigger(trig), layer.buf, end)
                if mac is not None:
                    found.append(mac)
        for kind, start, stop, value in found:
            index = layer.locate(start, stop)
            if index < 0:
                continue
            piece = layer.pieces[index]
            base = layer.starts[index]
            if not self._known_overlap(piece, start - base, stop - base, kind):
                self._emit(piece, start - base, stop - base, kind, None, value, (), guess=True)

    def _known_overlap(self, piece: Piece, rel_start: int, rel_end: int, kind: str) -> bool:
        """A guess where a known identifier of that kind was already found is no news."""
        if kind not in self.matcher.known_kinds:
            return False
        start, end = (piece.start + rel_start, piece.start + rel_end) if piece.exact else (piece.start, piece.end)
        return any(h.kind == kind and not h.guess and h.start < end and start < h.end
                   for h in self.hits[piece.owner])

    # --- decoding ---------------------------------------------------------------------------

    def _child(self, layer: _Layer, index: int, rel_start: int, rel_end: int, data: bytes,
               step: str) -> Piece | None:
        """A decoded piece under layer.pieces[index], charged to its owner's budget."""
        src = layer.pieces[index]
        if len(data) < 4:
            return None
        if len(data) > self.budget[src.owner] or len(data) > self.total:
            self.undecoded[src.owner] += 1
            return None
        self.budget[src.owner] -= len(data)
        self.total -= len(data)
        chain = (*src.chain, step)
        if looks_json(data):
            chain += (Encoding.JSON,)
        if src.exact:
            start, end = src.start + rel_start, src.start + rel_end
        else:
            start, end = src.start, src.end
        return Piece(data, chain, start, end, False, src.owner, src.flags & NO_BINARY_MAC)

    def _decode(self, layer: _Layer, trigs: list[tuple[int, int]], runs: list[tuple[int, int, int]]) -> list[Piece]:
        out: list[Piece] = []
        b64_done = 0  # a MIME block was decoded whole up to here: not its lines again
        for trig, start, end in runs:
            if trig == Trigger.DIGITS or (trig == Trigger.BASE64 and start < b64_done):
                continue
            index = layer.locate(start, end)
            if index < 0:
                continue
            if trig == Trigger.BASE64:
                b64_done = self._base64(layer, index, start, end, out)
            else:
                self._hex(layer, index, start, end, out)
        done_until: dict[int, int] = {}  # per trigger kind: runs already decoded end here
        escapes: dict[tuple[int, int], list[int]] = {}  # (trigger, piece) -> offsets of its escapes
        index, low, high = -1, 0, -1  # the piece the last escape was in, and its bounds
        for trig, end in sorted(trigs, key=lambda t: t[1]):
            if trig not in DECODE_TRIGGERS:
                continue
            if trig == Trigger.PERCENT or trig == Trigger.JSON_ESCAPE:
                if not low < end <= high:
                    index = layer.locate(end - 1, end)
                    low = layer.starts[index] if index >= 0 else 0
                    high = low + len(layer.pieces[index].data) if index >= 0 else -1
                if index >= 0:
                    escapes.setdefault((trig, index), []).append(end)
            elif trig in _MAGIC_LEN:
                self._inflate(layer, Trigger(trig), end, out)
            else:
                start = end - _RUN_LENGTH[trig]
                if start < done_until.get(trig, 0):
                    continue
                index = layer.locate(start, start + 1)
                if index >= 0:
                    done_until[trig] = _RUN_HANDLERS[trig](self, layer, index, start, out)
        for (trig, index), offsets in escapes.items():
            for first, last in _clusters(offsets, len(layer.pieces[index].data)):
                self._region(layer, Trigger(trig), index, first, last, out)
        return out

    def _base64(self, layer: _Layer, index: int, start: int, stop: int, out: list[Piece]) -> int:
        """Decode the Base64 runs in buf[start:stop] (a run, or lines of them: whole MIME blocks
        at once); where decoding ended."""
        buf = layer.buf
        pos = start
        while pos < stop:
            end = self._base64_run(layer, index, pos, out)
            following = _B64_CHAR.search(buf, end, stop)
            if following is None:
                return stop
            pos = following.start()
        return stop

    def _base64_run(self, layer: _Layer, index: int, start: int, out: list[Piece]) -> int:
        buf = layer.buf
        base = layer.starts[index]
        match = _B64_RUN.match(buf, start)
        assert match is not None
        end = match.end()
        text = match.group()
        if len(text) < B64_MIN or _UPPER.search(text) is None:
            return end  # paths and words (`/api/v1/registration/devices`), not Base64 (~1e-6 misses)
        if buf[end : end + 1] in (b"\n", b"\r") and len(text) % 4 == 0:
            wrapped = _B64_WRAPPED.match(buf, start)
            if wrapped is not None:  # MIME / PEM: equal lines (76 or 64 columns), a shorter last one
                lines = wrapped.group().replace(b"\r", b"").split(b"\n")
                lengths = list(map(len, lines))
                width = lengths[0]
                if lengths[:-1].count(width) == len(lengths) - 1 and lengths[-1] <= width:
                    keep, end = len(lines), wrapped.end()  # the usual case, without a loop per line
                else:
                    keep = next(i for i, n in enumerate(lengths) if n != width) + 1
                    keep -= lengths[keep - 1] > width
                    end = start
                    for _ in range(keep - 1):  # past the kept lines' breaks, then the last line
                        end = buf.index(b"\n", end) + 1
                    end += lengths[keep - 1]
                if keep > 1:
                    text = b"".join(lines[:keep])
        step = Encoding.BASE64
        if b"-" in text or b"_" in text:
            text = text.translate(_B64URL)
            step = Encoding.BASE64URL
        text = text.rstrip(b"=")
        # what precedes the real Base64 in the run is unknown (`/reg/eyJ`, a binary header ending
        # in letters): unless the run decodes to text (or JSON, or gzip) from its start, decode it
        # at all four alignments
        for align in range(4):
            body = text[align:]
            if len(body) % 4 == 1:
                body = body[:-1]
            if len(body) < 16:
                continue
            try:
                decoded = binascii.a2b_base64(body + b"=" * (-len(body) % 4))
            except binascii.Error:
                continue
            piece = self._child(layer, index, start - base, end - base, decoded, step)
            if piece is not None:
                out.append(piece)
            if align == 0 and _aligned(decoded):
                break
        return end

    def _hex(self, layer: _Layer, index: int, start: int, end: int, out: list[Piece]) -> None:
        text = layer.buf[start:end]
        base = layer.starts[index]
        for align in (0, 1) if len(text) % 2 else (0,):
            body = text[align : len(text) - (len(text) - align) % 2]
            piece = self._child(layer, index, start - base, end - base, bytes.fromhex(body.decode()),
                                Encoding.HEX)
            if piece is not None:
                out.append(piece)

    def _c_escape(self, layer: _Layer, index: int, start: int, out: list[Piece]) -> int:
        match = _C_ESCAPE_RUN.match(layer.buf, start)
        assert match is not None
        base = layer.starts[index]
        data = bytes.fromhex(match.group().replace(b"\\x", b"").decode())
        piece = self._child(layer, index, start - base, match.end() - base, data, Encoding.HEX)
        if piece is not None:
            out.append(piece)
        return match.end()

    def _utf16(self, layer: _Layer, index: int, start: int, out: list[Piece], big_endian: bool) -> int:
        buf = layer.buf
        if big_endian and buf[start - 1] in _PRINTABLE:
            return start + 1  # (printable, NUL) pairs from one byte earlier: read as UTF-16LE
        match = (_U16BE_RUN if big_endian else _U16LE_RUN).match(buf, start)
        assert match is not None
        if big_endian and buf[match.end() : match.end() + 1] == b"\x00":
            return match.end()  # UTF-16LE after a NUL (a separator's, a length's): its LE trigger reads it
        text = match.group()
        data = text[1::2] if big_endian else text[0::2]
        base = layer.starts[index]
        piece = self._child(layer, index, start - base, match.end() - base, data,
                            Encoding.UTF16BE if big_endian else Encoding.UTF16LE)
        if piece is not None:
            out.append(piece)
        return match.end()

    def _inflate(self, layer: _Layer, trig: Trigger, end: int, out: list[Piece]) -> None:
        start = end - _MAGIC_LEN[trig]
        index = layer.locate(start, end)
        if index < 0:
            return
        base = layer.starts[index]
        owner = layer.pieces[index].owner
        view = memoryview(layer.buf)[start : base + len(layer.pieces[index].data)]
        offset, wbits, stored = 0, 31 if trig is Trigger.GZIP else 15, None
        if trig is Trigger.ZIP:
            member = _zip_member(view)
            if member is None:
                return
            offset, wbits, stored = member
        limit = min(MAX_INFLATE, self.budget[owner], self.total)
        if stored is not None:
            data = bytes(view[offset : offset + min(stored, limit)])
            used = min(stored, len(view) - offset)
        else:
            inflated = inflate(view[offset:], wbits, limit)
            if inflated is None:
                return
            data, used, truncated = inflated
            if truncated:
                self.undecoded[owner] += 1  # bigger than the budget: the rest is not scanned
        piece = self._child(layer, index, start - base, start - base + offset + used, data, _INFLATE_STEP[trig])
        if piece is not None:
            out.append(piece)

    def _region(self, layer: _Layer, trig: Trigger, index: int, first: int, last: int,
                out: list[Piece]) -> None:
        """Percent or JSON escapes: decode the piece (or a window around them when it is big)."""
        base = layer.starts[index]
        stop = base + len(layer.pieces[index].data)
        cut = base
        if stop - base > _REGION:
            cut = max(base, first - _REGION // 8)
            stop = min(stop, last + _REGION // 8)
        text = layer.buf[cut:stop]
        if trig is Trigger.PERCENT:
            data = unquote_to_bytes(text)
            step = Encoding.FORM if b"&" in text and b"=" in text else Encoding.URL
        else:
            data = _JSON_ESC.sub(_json_unescape, text)
            step = Encoding.JSON_ESCAPE
        if data != text:
            piece = self._child(layer, index, cut - base, stop - base, data, step)
            if piece is not None:
                out.append(piece)

    def _host_names(self, layer: _Layer) -> list[Piece]:
        """Host names (DNS, SNI) are short: decode even short hex runs in them, and base32 (the
        case-insensitive encoding DNS tunnels use)."""
        out: list[Piece] = []
        for index, piece in enumerate(layer.pieces):
            if not piece.flags & DNS_NAME:
                continue
            for match in _NAME_HEX_RUN.finditer(piece.data):
                if len(match.group()) < HEX_MIN:  # longer ones went the usual way
                    text = match.group()[: len(match.group()) // 2 * 2]
                    child = self._child(layer, index, match.start(), match.end(), bytes.fromhex(text.decode()),
                                        Encoding.HEX)
                    if child is not None:
                        out.append(child)
            for match in _BASE32_RUN.finditer(piece.data):
                text = match.group().upper()
                while len(text) % 8 in (1, 3, 6):  # lengths no base32 text can have
                    text = text[:-1]
                try:
                    data = base64.b32decode(text + b"=" * (-len(text) % 8))
                except (binascii.Error, ValueError):
                    continue
                child = self._child(layer, index, match.start(), match.end(), data, Encoding.BASE32)
                if child is not None:
                    out.append(child)
        return out


def inflate(data: memoryview | bytes, wbits: int, limit: int) -> tuple[bytes, int, bool] | None:
    """Decompress what there is of a zlib/gzip/raw-deflate stream, at most `limit` bytes out.

    Returns (output, input bytes used, truncated by the limit), or None when not even the first
    block decodes. Fed in slices so that corruption later in the stream (a chunk header in the
    middle of it, a cut capture) keeps what came before it.
    """
    inflater = zlib.decompressobj(wbits)
    parts: list[bytes] = []
    produced = used = 0
    step = 1 << 14
    for pos in range(0, len(data), step):
        chunk = data[pos : pos + step]
        try:
            part = inflater.decompress(chunk, max(1, limit - produced))
        except zlib.error:
            break
        parts.append(part)
        produced += len(part)
        if inflater.unconsumed_tail or produced >= limit:
            used = pos + len(chunk) - len(inflater.unconsumed_tail)
            return b"".join(parts), used, True
        if inflater.eof:
            used = pos + len(chunk) - len(inflater.unused_data)
            break
        used = pos + len(chunk)
    if not produced:
        return None
    return b"".join(parts), used, False


def _aligned(decoded: bytes) -> bool:
    """Decoded from the run's start, is this what was encoded (text, JSON, compressed data)?"""
    if looks_json(decoded) or decoded[:2] in (b"\x1f\x8b", b"\x78\x9c", b"\x78\xda", b"\x78\x01", b"PK"):
        return True
    return len(decoded.translate(None, _PRINTABLE_BYTES)) * 20 < len(decoded)  # 95% printable


def _clusters(offsets: list[int], size: int) -> list[tuple[int, int]]:
    """Escapes close together, as (first, last) offsets: each cluster is decoded with a margin
    around it (the whole piece when it is small), not the whole of a big piece."""
    if size <= _REGION:
        return [(offsets[0], offsets[-1])]
    out: list[tuple[int, int]] = []
    first = last = offsets[0]
    for offset in offsets[1:]:
        if offset - last > _REGION // 4:
            out.append((first, last))
            first = offset
        last = offset
    out.append((first, last))
    return out


def _base64_confirms(buf: bytes, start: int, end: int, low: int, high: int, plain: bytes) -> bool:
    """Does the Base64 text around buf[start:end] decode (at some alignment) to `plain`?

    An enumerated Base64 literal covers all but the edge bits of its value: a value that
    differs only in its first or last character (another MAC of the same vendor) matches the
    literal, but not this check."""
    window = buf[max(low, start - 4) : min(high, end + 4)].translate(_B64URL, _NOT_B64)
    for align in range(4):
        body = window[align:]
        if len(body) % 4 == 1:
            body = body[:-1]
        try:
            if plain in binascii.a2b_base64(body + b"=" * (-len(body) % 4)):
                return True
        except binascii.Error:
            continue
    return False


def _json_unescape(match: re.Match[bytes]) -> bytes:
    esc = match.group(1)
    if esc[:1] == b"u":
        return chr(int(esc[1:], 16)).encode("utf-8", "surrogatepass")
    return _SIMPLE_ESC[esc]


def _zip_member(view: memoryview) -> tuple[int, int, int | None] | None:
    """(data offset, zlib wbits, stored size or None) of a zip local file header, else None."""
    if len(view) < 30:
        return None
    header = bytes(view[:30])
    method = int.from_bytes(header[8:10], "little")
    size = int.from_bytes(header[18:22], "little")
    offset = 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
    if method == 8:
        return offset, -15, None
    if method == 0 and size:
        return offset, 0, size
    return None


_RUN_LENGTH: dict[int, int] = {  # how far before a trigger's end its run starts
    Trigger.C_ESCAPE: 16,
    Trigger.UTF16LE: 2 * U16_MIN,
    Trigger.UTF16BE: 2 * U16_MIN,
}
_RUN_HANDLERS: dict[int, Callable[[Unwrapper, _Layer, int, int, list[Piece]], int]] = {
    Trigger.C_ESCAPE: Unwrapper._c_escape,
    Trigger.UTF16LE: lambda self, layer, index, start, out: self._utf16(layer, index, start, out, False),
    Trigger.UTF16BE: lambda self, layer, index, start, out: self._utf16(layer, index, start, out, True),
}


def unwrap(pieces: list[Piece], matcher: Matcher, budgets: list[int], total: int) -> Outcome:
    """Scan `pieces` and everything decoded from them; hits per owner (unit of a batch).

    `budgets` are the decoded bytes each owner may produce, `total` what all of them may."""
    return Unwrapper(matcher, budgets, total).run(pieces)
