"""Recursive unwrapping: every encoding the issue names, nested, at any offset; bounded.

Payloads are raw UDP units (no protocol decoder in the way), so the chain starts `udp-payload`.
Every test runs with both scanners (hyperscan and the portable fallback).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import zipfile
import zlib
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.analyzer.decoders import analyze_unit
from harness.analyzer.matcher import Matcher, tbcd
from harness.analyzer.model import Flow, Hit, StreamUnit
from harness.identifiers import IdentifierSet, Kind

IMEI = "490154203237518"
IMEI2 = "356938035643809"
IMSI = "242011234567890"
ICCID = "8947080012345678901"
MAC = "02:00:5e:10:00:01"
CELL = "26296330"
IDS = IdentifierSet({
    Kind.IMEI: [IMEI, IMEI2], Kind.IMSI: [IMSI], Kind.ICCID: [ICCID], Kind.WIFI_MAC: [MAC],
    Kind.CELL_ID: [CELL], Kind.SERIAL: ["R58M12ABCDE"], Kind.MSISDN: ["+4791234567"],
})
# the 2019 body: flat JSON, keys as the China Telecom client sends them
BODY = json.dumps({"REGVER": "1", "MEID": IMEI[:14], "IMEI1": IMEI, "IMEI2": IMEI2, "MODEL": "TA-1046",
                   "SIM1ICCID": ICCID, "SIM1LTEIMSI": IMSI, "SIM1CELLID": CELL, "MACID": MAC,
                   "ACCESSTYPE": "1", "REGDATE": "2019-03-01 10:00:00"}).encode()
ALL = {("imei", 1), ("imei", 2), ("iccid", 1), ("imsi", 1), ("cell_id", None), ("wifi_mac", None)}

_MATCHERS: dict[bool, Matcher] = {}


@pytest.fixture(params=["hyperscan", "portable"])
def matcher(request: pytest.FixtureRequest) -> Matcher:
    portable = request.param == "portable"
    if portable not in _MATCHERS:
        _MATCHERS[portable] = Matcher(IDS, guess=False, canary=None, portable=portable)
    return _MATCHERS[portable]


def scan(data: bytes, matcher: Matcher) -> list[Hit]:
    unit = StreamUnit(Flow("udp", "10.0.0.2", 50000, "192.0.2.1", 40000), True, data, [0], [1], [0.0])
    return analyze_unit(unit, matcher).hits


def found(hits: list[Hit]) -> set[tuple[str, int | None]]:
    return {(h.kind, h.slot) for h in hits}


def chains(hits: list[Hit]) -> set[tuple[str, ...]]:
    return {h.encoding for h in hits}


def b64url_body() -> bytes:
    """BODY with a filler that makes its URL-safe Base64 use `-` and `_`."""
    for n in range(9):
        body = BODY[:-1] + b',"pad":"' + b"x" * n + b'???>>>~~~"}'
        encoded = base64.urlsafe_b64encode(body)
        if b"-" in encoded and b"_" in encoded:
            return body
    raise AssertionError("no filler gives both - and _")


ENCODED = {
    "base64": (b"d=" + base64.b64encode(BODY) + b";", ("udp-payload", "base64", "json")),
    "base64-unpadded": (base64.b64encode(BODY + b"  ").rstrip(b"=") + b" ", ("udp-payload", "base64", "json")),
    "base64url": (base64.urlsafe_b64encode(b64url_body()).rstrip(b"="), ("udp-payload", "base64url", "json")),
    "base64-mime-lf": (base64.encodebytes(BODY), ("udp-payload", "base64", "json")),
    "base64-mime-crlf": (base64.encodebytes(BODY).replace(b"\n", b"\r\n"), ("udp-payload", "base64", "json")),
    "base64-trailing-nul": (base64.b64encode(BODY + b"\0"), ("udp-payload", "base64", "json")),
    "hex-lower": (BODY.hex().encode(), ("udp-payload", "hex", "json")),
    "hex-upper": (BODY.hex().upper().encode(), ("udp-payload", "hex", "json")),
    "c-escapes": (b'"' + b"".join(b"\\x%02x" % c for c in BODY) + b'"', ("udp-payload", "hex", "json")),
    "percent": (quote(BODY, safe="").encode(), ("udp-payload", "url")),
    "json-escape": (json.dumps(BODY.decode(), ensure_ascii=True).encode().replace(b"0", b"\\u0030"),
                    ("udp-payload", "json-escape")),
    "utf16le": (BODY.decode().encode("utf-16-le"), ("udp-payload", "utf16le", "json")),
    "utf16be": (b"\xfe\xff" + BODY.decode().encode("utf-16-be"), ("udp-payload", "utf16be", "json")),
    "gzip": (b"\x00\x01" + gzip.compress(BODY) + b"\x00", ("udp-payload", "gzip", "json")),
    "zlib": (b"junk" + zlib.compress(BODY), ("udp-payload", "zlib", "json")),
}


@pytest.mark.parametrize("name", sorted(ENCODED))
def test_every_encoding_of_the_2019_body(name: str, matcher: Matcher) -> None:
    data, chain = ENCODED[name]
    assert IMEI.encode() not in data or name in ("percent",)  # a byte grep would miss most
    hits = scan(data, matcher)
    assert found(hits) >= ALL, name
    assert chain in chains(hits) or any(h.encoding[: len(chain)] == chain for h in hits), chains(hits)


def test_zip_member(matcher: Matcher) -> None:
    with zipfile.ZipFile(out2 := io.BytesIO(), "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("device.json", BODY[::-1])  # stored, and reversed: nothing to find
    hits = scan(zipped(BODY), matcher)
    assert found(hits) >= ALL
    assert ("udp-payload", "zip", "json") in chains(hits)
    assert scan(out2.getvalue(), matcher) == []


def zipped(data: bytes) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("device.json", data)
    return out.getvalue()


NESTED = {
    "base64(gzip(json))": base64.b64encode(gzip.compress(BODY)),
    "gzip(base64(json))": gzip.compress(base64.b64encode(BODY)),
    "base64(base64(json))": base64.b64encode(base64.b64encode(BODY)),
    "percent(base64(json))": quote(base64.b64encode(BODY + b"?>?"), safe="").encode(),
    "form(base64)": b"a=1&data=" + quote(base64.b64encode(BODY + b"?>?"), safe="").encode() + b"&b=2",
    "json(base64 with \\/ and \\n)": json.dumps({"d": base64.encodebytes(BODY + b"??>").decode()}).encode()
    .replace(b"/", b"\\/"),
    "hex(base64(json))": base64.b64encode(BODY).hex().encode(),
    "base64(utf16(json))": base64.b64encode(BODY.decode().encode("utf-16-le")),
    "base64(json-escape)": base64.b64encode(json.dumps({"v": BODY.decode()}).encode().replace(b"4", b"\\u0034")),
    "zlib(hex(json))": zlib.compress(BODY.hex().encode()),
    "base64(zip)": base64.b64encode(zipped(BODY)),
}


@pytest.mark.parametrize("name", sorted(NESTED))
def test_nested_encodings(name: str, matcher: Matcher) -> None:
    hits = scan(NESTED[name], matcher)
    assert found(hits) >= ALL, name
    # nothing in there was readable as is: every hit names a decoding
    assert all(h.encoding[1] not in ("plain", "json") for h in hits), chains(hits)


def test_chain_of_base64_gzip_json(matcher: Matcher) -> None:
    data = b'{"payload":"' + base64.b64encode(gzip.compress(BODY)) + b'"}'
    hits = scan(data, matcher)
    assert chains(hits) == {("udp-payload", "base64", "gzip", "json")}
    start = data.index(b'":"') + 3
    assert {(h.start, h.end) for h in hits} == {(start, len(data) - 2)}


@settings(max_examples=40, deadline=None)
@given(prefix=st.binary(max_size=7), offset=st.integers(0, 11), suffix=st.binary(max_size=5))
def test_identifier_at_any_alignment_inside_base64(prefix: bytes, offset: int, suffix: bytes) -> None:
    matcher = _MATCHERS.setdefault(False, Matcher(IDS, guess=False, canary=None))
    plain = b"x" * offset + b'{"a":"' + IMEI.encode() + b'"}' + suffix
    data = b"q=" + base64.b64encode(prefix + plain)
    assert ("imei", 1) in found(scan(data, matcher))


@settings(max_examples=30, deadline=None)
@given(cut=st.integers(0, 40))
def test_base64_glued_to_a_path(cut: int) -> None:
    matcher = _MATCHERS.setdefault(False, Matcher(IDS, guess=False, canary=None))
    data = b"POST /reg/v2/" + b"abc/"[: cut % 5] + base64.urlsafe_b64encode(BODY[cut:]) + b" HTTP/1.1\r\n"
    hits = scan(data, matcher)
    assert ("iccid", 1) in found(hits)


def test_short_base64_and_hex_are_found_as_literals(matcher: Matcher) -> None:
    for encoded in (base64.b64encode(IMEI.encode()), base64.b64encode(b"#" + IMEI.encode()),
                    base64.b64encode(b"#!" + IMEI.encode()),
                    IMEI.encode().hex().encode(), IMEI.encode().hex(":").encode(), MAC.encode().hex(" ").encode()):
        hits = scan(b"v=" + encoded + b";", matcher)
        assert found(hits) & {("imei", 1), ("wifi_mac", None)}, encoded


def test_short_base64_literal_is_confirmed_by_decoding(matcher: Matcher) -> None:
    # another MAC of the same vendor differs in its last character: the enumerated literal
    # (which cannot cover that character's last bits) matches, the decode check does not
    other = MAC[:-1] + "3"
    for prefix in (b"", b"#", b"#!"):
        assert scan(b"v=" + base64.b64encode(prefix + other.encode()) + b";", matcher) == []


def test_hashes(matcher: Matcher) -> None:
    texts = [(IMEI, ("imei", 1)), (IMEI[:14], ("imei", 1)), (MAC, ("wifi_mac", None)),
             (MAC.upper().replace(":", ""), ("wifi_mac", None)), (IMSI, ("imsi", 1))]
    for text, expected in texts:
        for algo in (hashlib.md5, hashlib.sha1, hashlib.sha256):
            digest = algo(text.encode()).digest()
            for shown in (digest.hex(), digest.hex().upper(), base64.b64encode(digest).decode(),
                          base64.urlsafe_b64encode(digest).decode().rstrip("=")):
                hits = scan(f'{{"id":"{shown}"}}'.encode(), matcher)
                assert expected in found(hits), (text, algo, shown)
                assert hits[0].encoding[-1] == algo().name.replace("sha", "sha").lower()


def test_tbcd_and_bcd(matcher: Matcher) -> None:
    # EF_IMSI (length, parity/type nibble, digits), a 3GPP mobile identity for the IMEI, EF_ICCID
    ef_imsi = b"\x08" + bytes([(int(IMSI[0]) << 4) | 0x9]) + tbcd(IMSI[1:])
    identity = bytes([(int(IMEI[0]) << 4) | 0xA]) + tbcd(IMEI[1:])
    ef_iccid = tbcd(ICCID)
    bcd = bytes.fromhex(IMSI + "f")
    for data, expected in ((ef_imsi, ("imsi", 1)), (identity, ("imei", 1)), (ef_iccid, ("iccid", 1)),
                           (bcd, ("imsi", 1))):
        hits = scan(b"\x01\x02" + data + b"\x03", matcher)
        assert expected in found(hits), data.hex()
        assert hits[0].encoding[-1] in ("tbcd", "bcd")


def test_binary_mac_but_not_in_dhcp(matcher: Matcher) -> None:
    raw = bytes.fromhex(MAC.replace(":", ""))
    assert ("wifi_mac", None) in found(scan(b"\x00\x10" + raw + b"\x00", matcher))
    dhcp = StreamUnit(Flow("udp", "0.0.0.0", 68, "255.255.255.255", 67), True, b"\x01\x01\x06\x00" + raw,
                      [0], [1], [0.0])
    assert analyze_unit(dhcp, matcher).hits == []


def test_one_hit_per_identifier_per_run(matcher: Matcher) -> None:
    hits = scan(base64.b64encode(BODY), matcher)
    imei1 = [h for h in hits if (h.kind, h.slot) == ("imei", 1)]
    assert len(imei1) == 1  # MEID and IMEI1 both hold it, in one run
    plain = scan(b"imei=" + IMEI.encode() + b"&again=" + IMEI.encode(), matcher)
    assert len(plain) == 2 and plain[0].start != plain[1].start


def test_decompression_is_bounded(matcher: Matcher) -> None:
    bomb = gzip.compress(IMEI.encode() + b"\0" * (64 << 20) + IMSI.encode(), 9)
    assert len(bomb) < 200_000
    unit = StreamUnit(Flow("udp", "10.0.0.2", 50000, "192.0.2.1", 40000), True, bomb, [0], [1], [0.0])
    result = analyze_unit(unit, matcher)
    assert found(result.hits) == {("imei", 1)}  # found before the budget ran out
    assert result.undecoded >= 1  # the rest was not scanned, and that is said


def test_deep_nesting_stops(matcher: Matcher) -> None:
    data = BODY
    for _ in range(12):
        data = base64.b64encode(data)
    result = analyze_unit(
        StreamUnit(Flow("udp", "10.0.0.2", 50000, "192.0.2.1", 40000), True, data, [0], [1], [0.0]), matcher)
    assert result.hits == []  # deeper than MAX_DEPTH: not found, but it ends


def test_plain_text_is_not_decoded_into_garbage_hits(matcher: Matcher) -> None:
    text = (b"GET /api/v1/registration/devices/list?page=2&sort=name HTTP/1.1\r\nAccept: application/json\r\n"
            b"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N\r\n"
            b"X-Trace: 1700000000123 deadbeefcafebabe0123456789abcdef\r\n\r\n") * 20
    assert scan(text, matcher) == []


def test_identifier_across_a_mime_line_break(matcher: Matcher) -> None:
    cut = 0
    for lead in range(40, 57):  # the IMEI starts `lead` bytes in; a 76-column line holds 57 bytes
        body = b"x" * lead + IMEI.encode() + b"y" * 40
        wrapped = base64.encodebytes(body).replace(b"\n", b"\r\n")
        if lead + len(IMEI) > 57:  # the IMEI's Base64 is cut by the line break
            cut += 1
            assert ("imei", 1) in found(scan(wrapped, matcher)), lead
    assert cut >= 10


def test_escapes_far_apart_in_a_big_piece(matcher: Matcher) -> None:
    filler = b"lorem ipsum dolor sit amet " * 800  # > 8 KiB between the two
    first = quote(MAC, safe="").encode()  # 02%3A00%3A...
    second = json.dumps({"imsi": IMSI}).encode().replace(b"2", b"\\u0032")
    hits = scan(b"a=" + first + b" " + filler + second + b" " + filler, matcher)
    assert found(hits) == {("wifi_mac", None), ("imsi", 1)}
    assert {h.encoding for h in hits} == {("udp-payload", "url"), ("udp-payload", "json-escape")}
    mac = next(h for h in hits if h.kind == "wifi_mac")
    assert mac.end - mac.start < 4096  # the decoded region is the escapes' neighbourhood, not everything


def test_a_batch_of_bombs_stays_within_its_memory_bound() -> None:
    import tracemalloc

    from harness.analyzer.decoders import BATCH_DECODE_LIMIT, analyze_units

    bomb = gzip.compress(IMEI.encode() + b"\0" * (8 << 20), 9)
    units = [StreamUnit(Flow("udp", "10.0.0.2", 50000 + i, "192.0.2.1", 40000), True, bomb, [0], [1], [0.0])
             for i in range(40)]  # each alone may decode ~1.3 MiB: 40 of them more than the batch may
    matcher = _MATCHERS.setdefault(False, Matcher(IDS, guess=False, canary=None))
    tracemalloc.start()
    try:
        results = analyze_units(units, matcher)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * BATCH_DECODE_LIMIT  # the decoded pieces, the joined layer, one scan copy
    assert sum(r.undecoded for r in results) >= 10  # the rest is said, not silently dropped
    assert sum(1 for r in results if r.hits) >= 10
