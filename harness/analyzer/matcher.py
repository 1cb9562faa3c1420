"""Identifier patterns and the one scan that finds them (and the places worth decoding).

The matcher turns each known identifier into literal byte *forms*: the text an app would send
(IMEI with and without check digit, and grouped as in `urn:gsma:imei:`; MAC with any separator
and case; MSISDN international and national...), the raw bytes some binary protocols carry
(TBCD/BCD digits as on a SIM, a MAC's six octets, long numbers as int64 or varint), and
MD5/SHA-1/SHA-256 digests of the canonical texts (hex, Base64, raw). Encodings
(Base64, hex, percent, JSON escapes, UTF-16, gzip...) are *decoded* by `unwrap.py` and the result
scanned again. Only the first level of Base64 and hex of each text is also enumerated, for runs
too short to be worth a decode each (a URL path is a 16-character "Base64 run"); those literal
hits count only where decoding found nothing, and a Base64 one only after a decode around it
shows the whole value (a literal cannot cover its edge characters' bits).

One hyperscan database holds the literals plus "triggers" (escapes, UTF-16 runs, compression
magic, HTTP landmarks), so one pass over a buffer tells both what matched and where to decode;
long Base64/hex runs are found apart (a run pattern in that database slows all of it): two
one-pattern hyperscan databases find where each run starts and stops, one run at a time (runs
are few in most traffic), and `find_runs` (a byte-class translation and a substring search)
takes over where they come thick. Without hyperscan (no wheel for the platform) a portable
scanner gives the same answers, slower.

Matching rules, and why (no false positives is part of the contract):
  * Long values (12+ significant characters: IMEI and its 14-digit core, IMSI, ICCID, MACs,
    hashes) match anywhere, even inside a longer run of digits or letters: an IMEISV or an
    IMEI glued to other digits is still that IMEI on the wire, and 12 given digits occurring by
    chance is ~1e-12 per position.
  * Shorter values need a token boundary (no digit next to a number, no letter or digit next to a
    serial or hex cell ID), so `12345678` is not found inside `9123456789`.
  * Very short values (under 6 characters; cell IDs under 8) are only believed after a key that
    names them within 48 bytes before (`"SIM1CELLID":`, `cid=`, `serial:`): a bare `4711` is
    everywhere.
  * The 8-digit TAC is never a form; an IMEI with one digit changed inside its 14-digit core is a
    different IMEI. (A different *check digit* still matches: the core is the identifier.)
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from harness.analyzer.addresses import eui64
from harness.analyzer.model import Encoding
from harness.identifiers import IdentifierSet, Kind

_hs: Any
try:  # hyperscan has wheels for x86-64 and aarch64 Linux; elsewhere the portable scanner runs
    import hyperscan as _hs
except ImportError:  # pragma: no cover - exercised only where the wheel is missing
    _hs = None


class Boundary(IntEnum):
    """What may not stand right before or after a match."""

    NONE = 0
    DIGIT = 1
    ALNUM = 2
    HEX = 3


_DIGITS = frozenset(b"0123456789")
_HEXCH = frozenset(b"0123456789abcdefABCDEF")
_ALNUM = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
BOUNDARY_SETS: dict[Boundary, frozenset[int]] = {
    Boundary.NONE: frozenset(), Boundary.DIGIT: _DIGITS, Boundary.ALNUM: _ALNUM, Boundary.HEX: _HEXCH,
}
KEY_WINDOW = 48  # how far before a short value its key may stand


@dataclass(frozen=True, slots=True)
class Target:
    """Who a form belongs to: an identifier (kind, slot, value) or the canary."""

    kind: str
    slot: int | None
    value: str


@dataclass(frozen=True, slots=True)
class Form:
    """One literal byte string that, found on the wire, means `target` leaked."""

    target: Target
    pattern: bytes
    caseless: bool
    steps: tuple[str, ...]  # Encoding values from the identifier's text to these bytes
    boundary: Boundary = Boundary.NONE
    keys: tuple[bytes, ...] = ()  # non-empty: one must occur (lowercase) within KEY_WINDOW before
    binary_mac: bool = False  # a MAC's raw octets: legitimately in DHCP/NDP, skipped there
    fallback: bool = False  # an enumerated encoding: reported only where decoding found nothing
    encodes: bytes = b""  # Base64 literals: the bytes a decode around the match must show


class Trigger(IntEnum):
    """Places worth decoding (or, with --guess, shapes worth checking), and protocol landmarks.

    BASE64, HEX and DIGITS runs are found by `find_runs` (a byte-class translation and a
    substring search, faster than any run pattern in hyperscan); the others are compiled into
    the scan database and reported at their end offset.
    """

    BASE64 = 0
    HEX = 1
    DIGITS = 2  # --guess: IMEI- and ICCID-shaped digit runs
    PERCENT = 3
    JSON_ESCAPE = 4
    C_ESCAPE = 5
    UTF16LE = 6
    UTF16BE = 7
    GZIP = 8
    ZLIB = 9
    ZIP = 10
    GUESS_MAC = 11
    GUESS_MAC_KEYED = 12
    # protocol landmarks in the wire bytes (decoders.py): a Host header, an absolute request
    # target, a body that needs HTTP framing undone (chunked, raw deflate)
    HTTP_HOST = 13
    HTTP_ABSOLUTE = 14
    HTTP_FRAMING = 15


B64_MIN = 28  # shortest Base64 run decoded (21 bytes); shorter ones are matched as literals
HEX_MIN = 24  # shortest hex run decoded (12 bytes); likewise
U16_MIN = 6  # shortest UTF-16 run decoded, in characters
GUESS_DIGITS_MIN = 15

_H2 = rb"[0-9A-Fa-f]{2}"
TRIGGER_PATTERNS: dict[Trigger, bytes] = {
    Trigger.PERCENT: rb"%[0-9A-Fa-f]{2}",
    Trigger.JSON_ESCAPE: rb"\\u[0-9A-Fa-f]{4}|\\/|\\[nr][A-Za-z0-9+/]{4}",
    Trigger.C_ESCAPE: rb"[^0-9A-Fa-f](?:\\x[0-9A-Fa-f]{2}){4}",
    # the two bytes before a UTF-16 run are not one of its (printable, NUL) pairs: once per run
    Trigger.UTF16LE: rb"(?:[^\x09\x0a\x0d\x20-\x7e][\x00-\xff]|[\x09\x0a\x0d\x20-\x7e][^\x00])"
    rb"(?:[\x09\x0a\x0d\x20-\x7e]\x00){%d}" % U16_MIN,
    Trigger.UTF16BE: rb"(?:[^\x00][\x00-\xff]|\x00[^\x09\x0a\x0d\x20-\x7e])"
    rb"(?:\x00[\x09\x0a\x0d\x20-\x7e]){%d}" % U16_MIN,
    Trigger.GZIP: rb"\x1f\x8b\x08",
    Trigger.ZLIB: rb"\x78[\x01\x5e\x9c\xda]",
    Trigger.ZIP: rb"PK\x03\x04",
    Trigger.GUESS_MAC: rb"[^0-9A-Fa-f:.\-]" + _H2 + (rb"[:\-]" + _H2) * 5,
    Trigger.GUESS_MAC_KEYED: rb"(?:mac|bssid|addr)[\w\"' ]{0,24}[:=][\"' ]{0,3}[0-9A-Fa-f]{12}",
    Trigger.HTTP_HOST: rb"\nhost:",  # RFC 9112: no space before the colon
    Trigger.HTTP_ABSOLUTE: rb"[A-Z] http|CONNECT ",  # a proxy's absolute target, a tunnel's authority
    Trigger.HTTP_FRAMING: rb"\ntransfer-encoding:|\ncontent-encoding: ?deflate",
}
_CASELESS_TRIGGERS = frozenset({Trigger.GUESS_MAC_KEYED, Trigger.HTTP_HOST, Trigger.HTTP_FRAMING})
GUESS_TRIGGERS = frozenset({Trigger.DIGITS, Trigger.GUESS_MAC, Trigger.GUESS_MAC_KEYED})
PROTOCOL_TRIGGERS = frozenset({Trigger.HTTP_HOST, Trigger.HTTP_ABSOLUTE, Trigger.HTTP_FRAMING})
DECODE_TRIGGERS = frozenset(Trigger) - GUESS_TRIGGERS - PROTOCOL_TRIGGERS
TRIGGER_BASE = 1 << 24  # pattern ids at or above are triggers

B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-"
_RUN_TABLE = bytes(0x61 if c in B64_ALPHABET else 0x6E if c in b"\r\n" else 0x20 for c in range(256))
_HEX_TABLE = bytes(0x68 if c in b"0123456789abcdefABCDEF" else 0x20 for c in range(256))
_DIGIT_TABLE = bytes(0x64 if c in b"0123456789" else 0x20 for c in range(256))
RUN_START = min(B64_MIN, HEX_MIN)  # alphabet characters in a row that start a run
_RUN_NEEDLE = b"a" * RUN_START
_UPPER = re.compile(rb"[A-Z]")
_HEX_NEEDLE = b"h" * HEX_MIN
_DIGIT_NEEDLE = b"d" * GUESS_DIGITS_MIN


def find_runs(buf: bytes, base: int = 0, hexes: bool = True, start: int = 0) -> list[tuple[int, int, int]]:
    """(Trigger.BASE64 or HEX, base + start, base + end) of every long run in `buf[start:]`.

    A Base64 "run" goes on across line breaks (MIME lines come as one, decoded as one block);
    hex runs lie inside Base64-alphabet runs, so they are looked for only there. (This is the
    portable reference; with hyperscan, `_HyperscanScanner.runs` gives the same list faster.)
    """
    out: list[tuple[int, int, int]] = []
    classes = buf.translate(_RUN_TABLE)
    pos = classes.find(_RUN_NEEDLE, start)
    hex_classes = buf.translate(_HEX_TABLE) if hexes and pos >= 0 else b""
    while pos >= 0:
        end = classes.find(b" ", pos)
        end = len(buf) if end < 0 else end
        if _UPPER.search(buf, pos, end) is not None:  # (all real Base64 of 21+ bytes but ~1e-6)
            out.append((Trigger.BASE64, base + pos, base + end))
        at = hex_classes.find(_HEX_NEEDLE, pos, end)
        while at >= 0:
            stop = hex_classes.find(b" ", at, end)
            stop = end if stop < 0 else stop
            out.append((Trigger.HEX, base + at, base + stop))
            at = hex_classes.find(_HEX_NEEDLE, stop, end)
        pos = classes.find(_RUN_NEEDLE, end)
    return out


def _run_at(buf: bytes, pos: int, end: int, out: list[tuple[int, int, int]]) -> None:
    """`find_runs`' output for the one run buf[pos:end] (hex runs looked for in it alone)."""
    if _UPPER.search(buf, pos, end) is not None:
        out.append((Trigger.BASE64, pos, end))
    hex_classes = buf[pos:end].translate(_HEX_TABLE)
    at = hex_classes.find(_HEX_NEEDLE)
    while at >= 0:
        stop = hex_classes.find(b" ", at)
        stop = len(hex_classes) if stop < 0 else stop
        out.append((Trigger.HEX, pos + at, pos + stop))
        at = hex_classes.find(_HEX_NEEDLE, stop)


def find_digit_runs(buf: bytes) -> list[tuple[int, int, int]]:
    """(Trigger.DIGITS, start, end) of every run of GUESS_DIGITS_MIN or more digits (--guess)."""
    out: list[tuple[int, int, int]] = []
    classes = buf.translate(_DIGIT_TABLE)
    pos = classes.find(_DIGIT_NEEDLE)
    while pos >= 0:
        end = classes.find(b" ", pos)
        end = len(buf) if end < 0 else end
        out.append((Trigger.DIGITS, pos, end))
        pos = classes.find(_DIGIT_NEEDLE, end)
    return out


# --- identifier -> forms ---------------------------------------------------------------------

# E.164 country codes are prefix-free: 1 and 7 are one digit, these are two, all else three.
_CC2 = frozenset({
    "20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46", "47",
    "48", "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63", "64", "65",
    "66", "81", "82", "84", "86", "90", "91", "92", "93", "94", "95", "98",
})
# trunk prefixes that differ from "0" (North America "1", Russia/Kazakhstan "8")
_TRUNK = {"1": "1", "7": "8"}
_CELL_KEYS = (b"cell", b"cid", b"ci\"", b"ci=", b"ci:", b"ci'", b"eci", b"nci", b"cgi")
_SHORT_KEYS: dict[Kind, tuple[bytes, ...]] = {
    Kind.SERIAL: (b"serial", b"sn", b"sno"),
    Kind.MSISDN: (b"msisdn", b"phone", b"tel", b"mdn", b"number", b"num"),
    Kind.IMSI: (b"imsi",),
    Kind.CELL_ID: _CELL_KEYS,
}


def luhn_ok(digits: str) -> bool:
    """True when the last digit is the Luhn check digit of the others."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def luhn_digit(payload: str) -> str:
    """The Luhn check digit to append to `payload`."""
    return next(str(d) for d in range(10) if luhn_ok(payload + str(d)))


def tbcd(digits: str, *, swapped: bool = True) -> bytes:
    """Digits packed two per byte, F-filled (3GPP TS 24.008 / SIM EFs swap the nibbles)."""
    if len(digits) % 2:
        digits += "F"
    pairs = (digits[i : i + 2] for i in range(0, len(digits), 2))
    return bytes.fromhex("".join(p[::-1] if swapped else p for p in pairs))


def split_msisdn(value: str) -> tuple[str, str] | None:
    """(country code, national significant number) of an international number, else None."""
    digits = value.lstrip("+")
    if value.startswith("+"):
        pass
    elif value.startswith("00"):
        digits = value[2:]
    else:
        return None
    if not digits or digits[0] == "0":
        return None
    cc_len = 1 if digits[0] in "17" else 2 if digits[:2] in _CC2 else 3
    if len(digits) - cc_len < 4:
        return None
    return digits[:cc_len], digits[cc_len:]


@dataclass(frozen=True, slots=True)
class _Text:
    """A text rendering of an identifier (before any encoding)."""

    text: str
    caseless: bool
    steps: tuple[str, ...] = ()
    boundary: Boundary = Boundary.NONE
    keys: tuple[bytes, ...] = ()


def _numeric(text: str, kind: Kind, steps: tuple[str, ...] = (), key_below: int = 6) -> _Text:
    """A digit string: boundary and key rules by length (see the module docstring)."""
    boundary = Boundary.NONE if len(text) >= 12 else Boundary.DIGIT
    keys = _SHORT_KEYS.get(kind, ()) if len(text) < key_below else ()
    return _Text(text, False, steps, boundary, keys)


def _texts(kind: Kind, value: str) -> tuple[list[_Text], list[str], list[tuple[str, bool]], list[bytes]]:
    """Text forms, texts to hash, (digit strings to pack as TBCD/BCD, shifted), raw binary forms."""
    texts: list[_Text] = []
    hashed: list[str] = []
    packed: list[tuple[str, bool]] = []
    binary: list[bytes] = []
    if kind is Kind.IMEI:
        core = value[:14]
        full = core + luhn_digit(core)
        texts += [_numeric(value, kind), _numeric(core, kind)]
        # grouped: TAC-SNR(-check), SIP's and RCS's `urn:gsma:imei:` (RFC 7254); AA-BBBBBB-CCCCCC(-check)
        # as printed on the box. The core's groups: any check digit may follow.
        texts += [_Text(sep.join(groups), False, (Encoding.SEPARATED,))
                  for sep in "- " for groups in ((core[:8], core[8:]), (core[:2], core[2:8], core[8:]))]
        hashed += [value, core, full]
        packed += [(value, True), (core, True)]
    elif kind is Kind.MEID:
        if len(value) == 18:
            dec = value
            hx = f"{int(value[:10]):08X}{int(value[10:]):06X}" if int(value[:10]) < 1 << 32 else ""
            dec_steps: tuple[str, ...] = ()
            hex_steps: tuple[str, ...] = (Encoding.HEX,)
        else:
            hx = value.upper()
            dec = f"{int(hx[:8], 16):010d}{int(hx[8:], 16):08d}"
            dec_steps, hex_steps = (Encoding.DECIMAL,), ()
        texts.append(_numeric(dec, kind, dec_steps))
        hashed.append(dec)
        if len(hx) == 14:
            texts.append(_Text(hx, True, hex_steps))
            hashed += [hx, hx.lower()]
            binary.append(bytes.fromhex(hx))
    elif kind in (Kind.IMSI, Kind.ICCID):
        digits = value.rstrip("Ff")
        texts.append(_numeric(digits, kind))
        hashed += [digits, value] if value != digits else [digits]
        packed.append((digits, True))
        if kind is Kind.ICCID and len(digits) == 20:
            texts.append(_numeric(digits[:19], kind))
            hashed.append(digits[:19])
            packed.append((digits[:19], False))
    elif kind is Kind.MSISDN:
        split = split_msisdn(value)
        if split is None:  # no country code: only what was given, and without a trunk "0"
            texts.append(_numeric(value, kind))
            hashed.append(value)
            if value.startswith("0") and len(value) > 7:
                texts.append(_numeric(value[1:], kind))
        else:
            cc, nsn = split
            trunk = _TRUNK.get(cc, "0")
            for text in (cc + nsn, "00" + cc + nsn, trunk + nsn, nsn):
                texts.append(_numeric(text, kind))
            hashed += ["+" + cc + nsn, cc + nsn, "00" + cc + nsn, trunk + nsn, nsn]
            packed.append((cc + nsn, False))
    elif kind in (Kind.WIFI_MAC, Kind.BT_MAC):
        hx = "".join(ch for ch in value if ch in "0123456789abcdefABCDEF").lower()
        pairs = [hx[i : i + 2] for i in range(0, 12, 2)]
        shapes = [":".join(pairs), "-".join(pairs), hx, ".".join(hx[i : i + 4] for i in range(0, 12, 4))]
        texts += [_Text(s, True) for s in shapes]
        hashed += shapes + [s.upper() for s in shapes]
        binary.append(bytes.fromhex(hx))
        # as the last three groups of an IPv6 address made from it (EUI-64), compact and padded
        iid = f"{eui64(hx):016x}"
        groups = [iid[i : i + 4] for i in range(4, 16, 4)]
        for text in dict.fromkeys((":".join(g.lstrip("0") or "0" for g in groups), ":".join(groups))):
            texts.append(_Text(text, True, (Encoding.EUI64,), Boundary.HEX))
    elif kind is Kind.SERIAL:
        boundary = Boundary.ALNUM if len(value) < 10 else Boundary.NONE
        keys = _SHORT_KEYS[kind] if len(value) < 6 else ()
        texts.append(_Text(value, True, (), boundary, keys))
        hashed += sorted({value, value.upper(), value.lower()})
    elif kind is Kind.ANDROID_ID:
        boundary = Boundary.HEX if len(value) < 12 else Boundary.NONE
        texts.append(_Text(value, True, (), boundary))
        hashed += sorted({value.lower(), value.upper()})
        if len(value) % 2 == 0:
            binary.append(bytes.fromhex(value))
    elif kind is Kind.CELL_ID:
        given_hex = value[:2].lower() == "0x"
        number = int(value, 16) if given_hex else int(value)
        dec, hx = str(number), f"{number:x}"
        dec_steps = (Encoding.DECIMAL,) if given_hex else ()
        hex_steps = () if given_hex else (Encoding.HEX,)
        texts.append(_numeric(dec, kind, dec_steps, key_below=8))
        hex_texts = {hx, "0x" + hx, f"{number:08x}", "0x" + f"{number:08x}"}
        for text in sorted(hex_texts):
            keys = _CELL_KEYS if len(text.removeprefix("0x")) < 8 else ()
            texts.append(_Text(text, True, hex_steps, Boundary.ALNUM, keys))
        hashed += [dec, hx, hx.upper()]
    return texts, hashed, packed, binary


def _packed_forms(digits: str, allow_shift: bool, msisdn: bool = False) -> list[tuple[bytes, str, bool]]:
    """(bytes, step, hex text also a form) for `digits` packed as TBCD and BCD.

    TBCD also shifted one digit (3GPP mobile identity: the first digit shares a byte with the
    type nibble). Unswapped BCD written as hex text *is* the digit string (a plain form already),
    and shifted it would be a mere substring (a near miss would match), so neither is a form.
    A phone number is also packed after its type-of-number byte (0x91, international: SMS, MAP),
    which makes even a 10-digit one long enough to be specific.
    """
    out: list[tuple[bytes, str, bool]] = []
    if msisdn:
        out.append((b"\x91" + tbcd(digits), Encoding.TBCD, False))
    if len(digits) < 12:
        return out
    out.append((tbcd(digits), Encoding.TBCD, True))
    out.append((tbcd(digits, swapped=False), Encoding.BCD, False))
    if allow_shift:
        rest = digits[1:]
        out.append((tbcd(rest[: len(rest) - len(rest) % 2]), Encoding.TBCD, False))
    return out


INT_MIN_BYTES = 6  # shorter integers are not specific enough to be worth a form


def _integer_forms(digits: str) -> list[tuple[bytes, str]]:
    """A long digit identifier as the binary integer some protocols carry (protobuf int64,
    packed structs): big- and little-endian without their zero high bytes (so an 8-byte field
    matches too), and as a varint."""
    number = int(digits)
    size = (number.bit_length() + 7) // 8
    if not INT_MIN_BYTES <= size <= 8:
        return []
    varint = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        varint.append(low | (0x80 if number else 0))
        if not number:
            break
    value = int(digits)
    return [(value.to_bytes(size, "big"), Encoding.INT_BE), (value.to_bytes(size, "little"), Encoding.INT_LE),
            (bytes(varint), Encoding.VARINT)]


def _hash_forms(text: str) -> list[tuple[bytes, bool, tuple[str, ...]]]:
    """Digest forms of one text: (bytes, caseless, steps)."""
    out: list[tuple[bytes, bool, tuple[str, ...]]] = []
    raw = text.encode()
    for name, algo in ((Encoding.MD5, hashlib.md5), (Encoding.SHA1, hashlib.sha1),
                       (Encoding.SHA256, hashlib.sha256)):
        digest = algo(raw).digest()
        out.append((digest.hex().encode(), True, (Encoding.HEX, name)))
        std = base64.b64encode(digest).rstrip(b"=")
        out.append((std, False, (Encoding.BASE64, name)))
        url = base64.urlsafe_b64encode(digest).rstrip(b"=")
        if url != std:
            out.append((url, False, (Encoding.BASE64URL, name)))
        out.append((digest, False, (name,)))
    return out


def forms_for(kind: Kind, slot: int | None, value: str) -> list[Form]:
    """Every literal form matched for one identifier.

    Besides the texts, packed digits, raw octets and digests, the first level of Base64 and hex
    of each long text (and hex of the packed/raw forms) is enumerated: short encoded runs are
    not worth a decode each (a URL path is a 16-character "Base64 run"), so runs are decoded
    only from B64_DECODE_MIN/HEX_DECODE_MIN up, and these literals cover the short ones.
    """
    target = Target(str(kind), slot, value)
    texts, hashed, packed, binary = _texts(kind, value)
    forms = [Form(target, t.text.encode(), t.caseless, t.steps, t.boundary, t.keys) for t in texts]
    raw_forms: list[tuple[bytes, str, bool]] = []
    for digits, allow_shift in packed:
        raw_forms += _packed_forms(digits, allow_shift, msisdn=kind is Kind.MSISDN)
    raw_forms += [(b, Encoding.BINARY, False) for b in binary]  # their hex is a text form already
    for digits, _allow_shift in packed:
        raw_forms += [(b, step, False) for b, step in _integer_forms(digits)]
    is_mac = kind in (Kind.WIFI_MAC, Kind.BT_MAC)
    for raw, step, as_hex in raw_forms:
        forms.append(Form(target, raw, False, (step,), binary_mac=is_mac and step == Encoding.BINARY))
        if as_hex:
            forms.append(Form(target, raw.hex().encode(), True, (Encoding.HEX, step), fallback=True))
    for text in texts:
        if text.keys or len(text.text) < 10:
            continue  # short values only count next to their key: not knowable inside Base64
        variants = {text.text, text.text.lower(), text.text.upper()} if text.caseless else {text.text}
        for variant in sorted(variants):
            raw = variant.encode()
            for sep in ("", ":", "-", " "):
                forms.append(Form(target, raw.hex(sep).encode() if sep else raw.hex().encode(), True,
                                  (Encoding.HEX, *text.steps), fallback=True))
            for b64, step in _b64_at_alignments(raw):
                forms.append(Form(target, b64, False, (step, *text.steps), fallback=True, encodes=raw))
    for hashed_text in dict.fromkeys(hashed):
        forms += [Form(target, b, caseless, steps) for b, caseless, steps in _hash_forms(hashed_text)]
    return forms


def _b64_at_alignments(data: bytes) -> list[tuple[bytes, str]]:
    """The Base64 text that encodes `data` whatever its offset mod 3 (standard and URL-safe)."""
    out: list[tuple[bytes, str]] = []
    n = len(data)
    for pad in range(3):
        enc = base64.b64encode(b"\0" * pad + data)
        core = enc[-(-8 * pad // 6) : (8 * (pad + n)) // 6]
        out.append((core, Encoding.BASE64))
        url = core.replace(b"+", b"-").replace(b"/", b"_")
        if url != core:
            out.append((url, Encoding.BASE64URL))
    return out


# --- scanning --------------------------------------------------------------------------------

# (literal pattern id, end offset), (trigger, end offset)
ScanResult = tuple[list[tuple[int, int]], list[tuple[int, int]]]


def _escaped(pattern: bytes) -> bytes:
    """A literal as a regex that hyperscan and `re` both read byte for byte (NULs included)."""
    return b"".join(b"\\x%02x" % b for b in pattern)


class _HyperscanScanner:
    """One block-mode database: literals (ids 0..n-1) and triggers (TRIGGER_BASE + trigger)."""

    def __init__(self, literals: list[tuple[bytes, bool]], triggers: list[Trigger]) -> None:
        assert _hs is not None
        expressions = [_escaped(p) for p, _ in literals]
        flags = [_hs.HS_FLAG_CASELESS if caseless else 0 for _, caseless in literals]
        ids = list(range(len(literals)))
        for trig in triggers:
            expressions.append(TRIGGER_PATTERNS[trig])
            flags.append(_hs.HS_FLAG_CASELESS if trig in _CASELESS_TRIGGERS else 0)
            ids.append(TRIGGER_BASE + trig)
        self._db = _hs.Database(mode=_hs.HS_MODE_BLOCK)
        self._db.compile(expressions=expressions, ids=ids, elements=len(expressions), flags=flags)
        # their own databases (a run pattern in the main one slows all of it down by a fifth).
        # `runs`: where the next run starts (the first match ends RUN_START bytes into it), and
        # where it stops (the first byte neither in the Base64 alphabet nor a line break)
        self._run_start = _hs.Database(mode=_hs.HS_MODE_BLOCK)
        self._run_start.compile(expressions=[rb"[A-Za-z0-9+/_\-]{%d}" % RUN_START], ids=[0], elements=1, flags=[0])
        self._run_stop = _hs.Database(mode=_hs.HS_MODE_BLOCK)
        self._run_stop.compile(expressions=[rb"[^A-Za-z0-9+/_\-\r\n]"], ids=[0], elements=1, flags=[0])

    def runs(self, buf: bytes) -> list[tuple[int, int, int]]:
        """`find_runs(buf)`, without translating all of `buf`: hyperscan finds each run's start
        and end (stopping at the first match, then going on after the run). Where runs come
        thick (a JSON array of tokens), the rest goes to `find_runs`, cheaper per run."""
        out: list[tuple[int, int, int]] = []
        view = memoryview(buf)
        size = len(buf)
        pos = count = mark = 0
        while pos < size:
            found = _first_end(self._run_start, view[pos:])
            if found < 0:
                break
            start = pos + found - RUN_START
            found = _first_end(self._run_stop, view[start + RUN_START :])
            end = size if found < 0 else start + RUN_START + found - 1
            _run_at(buf, start, end, out)
            pos = end
            count += 1
            if count % _DENSE_RUNS == 0:
                if pos - mark < _DENSE_RUNS * _DENSE_SPACING:
                    out += find_runs(buf, start=pos)
                    break
                mark = pos
        return out

    def scan(self, buf: bytes) -> ScanResult:
        lits: list[tuple[int, int]] = []
        trigs: list[tuple[int, int]] = []
        lit_add, trig_add = lits.append, trigs.append

        def on_match(pid: int, _start: int, end: int, _flags: int, _ctx: object) -> None:
            if pid < TRIGGER_BASE:
                lit_add((pid, end))
            else:
                trig_add((pid - TRIGGER_BASE, end))

        self._db.scan(buf, match_event_handler=on_match)
        return lits, trigs


def _first_end(db: Any, view: memoryview) -> int:
    """End offset of the first match of `db` (one pattern) in `view`, or -1."""
    first = [-1]

    def stop_at(_id: int, _start: int, end: int, _flags: int, _ctx: object) -> bool:
        first[0] = end
        return True  # enough: the scan ends with ScanTerminated

    try:
        db.scan(view, match_event_handler=stop_at)
    except _hs.ScanTerminated:
        return first[0]
    return -1


# 64 runs within 64 KiB: `runs` leaves the rest to find_runs (~1.8 us a run vs ~2 ms a MiB: even)
_DENSE_RUNS, _DENSE_SPACING = 64, 1024


class _PortableScanner:
    """The same answers without hyperscan: `bytes.find` per literal, `re` per trigger."""

    @staticmethod
    def runs(buf: bytes) -> list[tuple[int, int, int]]:
        return find_runs(buf)

    def __init__(self, literals: list[tuple[bytes, bool]], triggers: list[Trigger]) -> None:
        self._exact = [(i, p) for i, (p, caseless) in enumerate(literals) if not caseless]
        self._folded = [(i, p.lower()) for i, (p, caseless) in enumerate(literals) if caseless]
        self._triggers = [
            (t, re.compile(TRIGGER_PATTERNS[t], re.IGNORECASE if t in _CASELESS_TRIGGERS else 0))
            for t in triggers
        ]

    @staticmethod
    def _find_all(buf: bytes, items: Iterable[tuple[int, bytes]], out: list[tuple[int, int]]) -> None:
        for pid, pattern in items:
            pos = buf.find(pattern)
            while pos >= 0:
                out.append((pid, pos + len(pattern)))
                pos = buf.find(pattern, pos + 1)

    def scan(self, buf: bytes) -> ScanResult:
        lits: list[tuple[int, int]] = []
        self._find_all(buf, self._exact, lits)
        if self._folded:
            self._find_all(buf.lower(), self._folded, lits)
        trigs: list[tuple[int, int]] = []
        for trig, regex in self._triggers:
            pos = 0
            while (m := regex.search(buf, pos)) is not None:
                trigs.append((int(trig), m.end()))
                pos = m.start() + 1
        return lits, trigs


class Matcher:
    """What to look for: known identifiers' forms, the canary, and (with `guess`) shapes."""

    def __init__(self, identifiers: IdentifierSet | None, *, guess: bool, canary: str | None,
                 portable: bool = False) -> None:
        self.guess = guess
        self.canary = canary
        forms: list[Form] = []
        for ident in identifiers or ():
            if ident.value:
                forms += forms_for(ident.kind, ident.slot, ident.value)
        if canary:
            forms.append(Form(Target("canary", None, canary), canary.encode(), True, ()))
        self._texts = [f for f in forms if not f.steps and f.target.kind != "canary"]
        self.known_kinds = frozenset(f.target.kind for f in forms if f.target.kind != "canary")
        # one pattern per distinct byte string; caseless ones are keyed by their lowercase bytes
        index: dict[tuple[bytes, bool], int] = {}
        self.forms: list[list[Form]] = []
        literals: list[tuple[bytes, bool]] = []
        for form in forms:
            key = (form.pattern.lower() if form.caseless else form.pattern, form.caseless)
            pid = index.get(key)
            if pid is None:
                pid = index[key] = len(literals)
                literals.append(key)
                self.forms.append([])
            if form not in self.forms[pid]:
                self.forms[pid].append(form)
        self.pattern_length = [len(p) for p, _ in literals]
        # with nothing to look for, only the protocol landmarks are scanned (host names)
        self.active = bool(literals) or guess
        triggers = [t for t in TRIGGER_PATTERNS if t in PROTOCOL_TRIGGERS or (
            self.active and (guess or t not in GUESS_TRIGGERS))]
        self.hyperscan = _hs is not None and not portable
        scanner = (_HyperscanScanner if self.hyperscan else _PortableScanner)(literals, triggers)
        self._scan: Callable[[bytes], ScanResult] = scanner.scan
        # (Trigger.BASE64 or HEX, start, end) of every long run: `find_runs(buf)`, faster
        self.find_runs: Callable[[bytes], list[tuple[int, int, int]]] = scanner.runs

    def scan(self, buf: bytes) -> ScanResult:
        """(literal pattern id, end offset) and (Trigger, end offset) for every match in `buf`."""
        return self._scan(buf)

    def literal_forms(self) -> list[bytes]:
        """Every literal byte form matched for the known identifiers, for a `grep -F` baseline.

        Plain texts in lower and upper case (all separator styles), their hex (both cases),
        Base64 (standard and URL-safe, at all three alignments), UTF-16LE/BE, TBCD/BCD, raw octets,
        and digest forms. Some contain NUL or newline bytes: a `grep -f` file cannot hold those.
        """
        out: dict[bytes, None] = {}
        for group in self.forms:
            for form in group:
                if form.target.kind == "canary":
                    continue
                variants = [form.pattern]
                if form.caseless:
                    variants = [form.pattern.lower(), form.pattern.upper()]
                for variant in variants:
                    out[variant] = None
        for form in self._texts:
            for variant in {form.pattern.lower(), form.pattern.upper()}:
                out[variant.hex().encode()] = None
                out[variant.hex().upper().encode()] = None
                for b64, _step in _b64_at_alignments(variant):
                    out[b64] = None
                text = variant.decode()
                out[text.encode("utf-16-le")] = None
                out[text.encode("utf-16-be")] = None
        return [p for p in out if p]
