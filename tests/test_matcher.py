"""The identifier matcher: every kind in its plain forms, and no false positives.

Every test runs with the hyperscan scanner and with the portable one (no wheel on some
platforms): both must give the same answers.
"""

from __future__ import annotations

import random

import pytest

from harness.analyzer.decoders import analyze_unit
from harness.analyzer.matcher import Matcher, find_runs, luhn_digit, luhn_ok, split_msisdn, tbcd
from harness.analyzer.model import Flow, Hit, StreamUnit
from harness.identifiers import IdentifierSet, Kind

IDS = {
    Kind.IMEI: ["490154203237518", "356938035643809"],
    Kind.MEID: ["A10000009296F2"],
    Kind.IMSI: ["242011234567890"],
    Kind.ICCID: ["8947080012345678901", "89470800123456789012F"[:-1] + "F"],
    Kind.MSISDN: ["+4791234567"],
    Kind.WIFI_MAC: ["02:00:5e:10:00:01"],
    Kind.BT_MAC: ["0a:1b:2c:3d:4e:5f"],
    Kind.SERIAL: ["R58M12ABCDE"],
    Kind.ANDROID_ID: ["9774d56d682e549c"],
    Kind.CELL_ID: ["26296330"],
}


def make_ids(**overrides: list[str]) -> IdentifierSet:
    values = {kind: list(v) for kind, v in IDS.items()}
    for key, value in overrides.items():
        values[Kind(key)] = value
    return IdentifierSet(values)


@pytest.fixture(params=["hyperscan", "portable"])
def portable(request: pytest.FixtureRequest) -> bool:
    return bool(request.param == "portable")


def udp_unit(data: bytes, dport: int = 40000) -> StreamUnit:
    return StreamUnit(Flow("udp", "10.0.0.2", 50000, "192.0.2.1", dport), True, data, [0], [1], [0.0])


def hits_in(data: bytes, portable: bool, ids: IdentifierSet | None = None, **kw: object) -> list[Hit]:
    matcher = Matcher(ids if ids is not None else make_ids(), guess=bool(kw.get("guess", False)),
                      canary=kw.get("canary"), portable=portable)  # type: ignore[arg-type]
    return analyze_unit(udp_unit(data), matcher).hits


def kinds(hits: list[Hit]) -> set[tuple[str, int | None]]:
    return {(h.kind, h.slot) for h in hits}


def test_luhn_and_packing_helpers() -> None:
    assert luhn_ok("490154203237518")
    assert not luhn_ok("490154203237519")
    assert luhn_digit("49015420323751") == "8"
    assert tbcd("242011234567890") == bytes.fromhex("4202113254769880"[:14] + "f0")
    assert tbcd("1234", swapped=False) == b"\x12\x34"
    assert split_msisdn("+4791234567") == ("47", "91234567")
    assert split_msisdn("0014155550100") == ("1", "4155550100")
    assert split_msisdn("+8613800138000") == ("86", "13800138000")
    assert split_msisdn("+35312345678") == ("353", "12345678")
    assert split_msisdn("91234567") is None


PLAIN_CASES = [
    (b'{"IMEI1":"490154203237518"}', ("imei", 1)),
    (b"imei=49015420323751&x=1", ("imei", 1)),  # without the check digit
    (b"imeisv=4901542032375101;", ("imei", 1)),  # IMEISV: the 14-digit core
    (b"IMEI:356938035643809", ("imei", 2)),
    (b"meid=A10000009296F2", ("meid", 1)),
    (b"meid=a10000009296f2", ("meid", 1)),
    (b"meid=270113177609606898", ("meid", 1)),  # the decimal form of the hex MEID
    (b"<imsi>242011234567890</imsi>", ("imsi", 1)),
    (b"iccid=8947080012345678901", ("iccid", 1)),
    (b"iccid=8947080012345678901F", ("iccid", 1)),
    (b"ICCID 89470800123456789012", ("iccid", 2)),
    (b"iccid=8947080012345678901 ", ("iccid", 1)),
    (b"msisdn=+4791234567", ("msisdn", 1)),
    (b"msisdn=004791234567", ("msisdn", 1)),
    (b"msisdn=4791234567", ("msisdn", 1)),
    (b'"phone":"91234567"', ("msisdn", 1)),  # national form
    (b"mac=02:00:5e:10:00:01", ("wifi_mac", None)),
    (b"mac=02-00-5E-10-00-01", ("wifi_mac", None)),
    (b"mac=02005E100001", ("wifi_mac", None)),
    (b"mac=0200.5e10.0001", ("wifi_mac", None)),
    (b"bt=0A:1B:2C:3D:4E:5F", ("bt_mac", None)),
    (b"sn=r58m12abcde", ("serial", None)),
    (b"android_id=9774D56D682E549C", ("android_id", None)),
    (b'"SIM1CELLID":"26296330"', ("cell_id", None)),
    (b'"SIM1CELLID":"0x191400A"', ("cell_id", None)),  # hex of 26296330
    (b"cellid=0191400a,", ("cell_id", None)),
]


@pytest.mark.parametrize(("data", "expected"), PLAIN_CASES)
def test_plain_forms(data: bytes, expected: tuple[str, int | None], portable: bool) -> None:
    hits = hits_in(b"xx " + data + b" yy", portable)
    assert expected in kinds(hits), f"{expected} not found in {data!r}"
    hit = next(h for h in hits if (h.kind, h.slot) == expected)
    assert hit.encoding[-1] in ("plain", "hex", "decimal")


NEGATIVE_CASES = [
    b"tac=49015420",  # the TAC alone
    b"imei=490154203237528",  # one digit different inside the 14-digit core
    b"imei=490154203237",  # a prefix
    b"n=123456789012345 m=987654321098765",  # other numbers of the same length
    b"imsi=242011234567891",
    b"iccid=8947080012345678902",
    b"msisdn=991234567",  # the national number inside a longer one
    b"msisdn=912345678",
    b"mac=02:00:5e:10:00:02",
    b"Content-Length: 26296331",
    b"x=126296330",  # a longer number containing the (short) cell ID
    b"serial=R58M12ABCDF",
    b"android_id=9774d56d682e549d",
]


@pytest.mark.parametrize("data", NEGATIVE_CASES)
def test_near_misses_are_not_hits(data: bytes, portable: bool) -> None:
    assert hits_in(data, portable) == []


def test_short_cell_id_needs_its_key(portable: bool) -> None:
    ids = make_ids(cell_id=["4711"])
    assert kinds(hits_in(b'"cid": 4711', portable, ids)) == {("cell_id", None)}
    assert kinds(hits_in(b"SIM1CELLID=4711&a=b", portable, ids)) == {("cell_id", None)}
    assert hits_in(b"Content-Length: 4711\r\n", portable, ids) == []
    assert hits_in(b"port 4711 open", portable, ids) == []


def test_short_serial_needs_token_boundaries(portable: bool) -> None:
    ids = make_ids(serial=["AB12345C"])
    assert kinds(hits_in(b"serialno=ab12345c;", portable, ids)) == {("serial", None)}
    assert hits_in(b"token=XAB12345C9", portable, ids) == []


def test_random_bytes_and_random_digits_give_nothing(portable: bool) -> None:
    rnd = random.Random(8)
    noise = rnd.randbytes(1 << 20)
    digits = "".join(rnd.choice("0123456789") for _ in range(200_000)).encode()
    assert hits_in(noise, portable) == []
    assert hits_in(noise, portable, guess=True) == []
    # other 15-digit numbers, each one digit off an identifier's core
    near = b" ".join(b"4901542032375%d8" % d for d in range(10) if d != 1)
    assert hits_in(digits + b" " + near, portable) == []


def test_hit_offsets_point_at_the_identifier(portable: bool) -> None:
    data = b"GARBAGE imei=490154203237518 rest"
    (hit,) = hits_in(data, portable)
    assert data[hit.start : hit.end] == b"490154203237518"
    assert hit.encoding == ("udp-payload", "plain")


def test_canary(portable: bool) -> None:
    hits = hits_in(b"ping PhC-7F3A9C21 pong", portable, IdentifierSet(), canary="phc-7f3a9c21")
    assert [(h.kind, h.value) for h in hits] == [("canary", "phc-7f3a9c21")]
    assert hits_in(b"ping phc-7f3a9c22", portable, IdentifierSet(), canary="phc-7f3a9c21") == []


def test_guess_shapes(portable: bool) -> None:
    imei = "356938035643809"
    iccid = "894708001234567890" + luhn_digit("894708001234567890")
    data = (f'{{"imei":"{imei}","iccid":"{iccid}F","wlan_mac":"a4:5e:60:d1:22:3b",'
            f'"bt_addr":"a45e60d1223c","x":"123456789012345","mac":"02:00:00:00:00:00"}}').encode()
    hits = hits_in(data, portable, IdentifierSet(), guess=True)
    got = {(h.kind, h.value) for h in hits}
    assert all(h.guess and h.slot is None for h in hits)
    assert got == {("imei", imei), ("iccid", iccid), ("wifi_mac", "a4:5e:60:d1:22:3b"),
                   ("bt_mac", "a45e60d1223c")}


def test_guess_inside_decoded_layers(portable: bool) -> None:
    import base64

    body = base64.encodebytes(b'{"MEID":"35693803564380","IMEI1":"356938035643809","MACID":"a4:5e:60:d1:22:3b"}')
    hits = hits_in(b"POST / HTTP/1.1\r\n\r\n" + body, portable, IdentifierSet(), guess=True)
    assert {(h.kind, h.value, h.encoding) for h in hits} == {
        ("imei", "356938035643809", ("udp-payload", "base64", "json")),
        ("wifi_mac", "a4:5e:60:d1:22:3b", ("udp-payload", "base64", "json"))}


def test_guess_ignores_non_luhn_and_free_text_macs(portable: bool) -> None:
    data = b"id=356938035643808 uptime 01:02:03:04:05:06 sum 8947080012345678902"
    assert hits_in(data, portable, IdentifierSet(), guess=True) == []


def test_known_identifier_is_not_also_a_guess(portable: bool) -> None:
    hits = hits_in(b'{"imei":"490154203237518"}', portable, make_ids(), guess=True)
    assert [(h.kind, h.guess) for h in hits] == [("imei", False)]


def test_literal_forms_for_the_grep_baseline() -> None:
    ids = IdentifierSet({Kind.IMEI: ["490154203237518"], Kind.WIFI_MAC: ["02:00:5e:10:00:01"]})
    forms = set(Matcher(ids, guess=False, canary=None).literal_forms())
    assert b"490154203237518" in forms and b"49015420323751" in forms
    assert b"02:00:5E:10:00:01" in forms and b"02005e100001" in forms and b"0200.5e10.0001" in forms
    assert b"490154203237518".hex().encode() in forms
    assert "490154203237518".encode("utf-16-le") in forms
    import base64
    import hashlib

    assert base64.b64encode(b"490154203237518") in forms  # alignment 0 (15 bytes: no padding)
    assert base64.b64encode(b"x490154203237518")[2:21] in forms  # alignment 1: 19 whole sextets
    assert hashlib.sha256(b"490154203237518").hexdigest().encode() in forms
    assert tbcd("490154203237518") in forms
    assert bytes.fromhex("02005e100001") in forms
    assert not any(f in (b"49015420", b"") for f in forms)


def test_nothing_to_look_for_still_scans_for_hosts() -> None:
    matcher = Matcher(None, guess=False, canary=None)
    assert not matcher.active
    data = b"GET / HTTP/1.1\r\nHost: example.org\r\n\r\n"
    unit = StreamUnit(Flow("tcp", "10.0.0.2", 40000, "192.0.2.1", 80), True, data, [0], [1], [0.0])
    result = analyze_unit(unit, matcher)
    assert result.hits == []
    assert [c.host for c in result.contacts] == ["example.org"]


def test_run_finders_agree() -> None:
    """The hyperscan run finder (start/stop scans, dense stretches handed to `find_runs`) gives
    exactly what the portable `find_runs` gives: Base64 runs across line breaks, hex runs
    inside them, runs at either end of the buffer, and thick runs of tokens."""
    import base64

    fast = Matcher(None, guess=False, canary="c4n4ry", portable=False)
    portable = Matcher(None, guess=False, canary="c4n4ry", portable=True)
    if not fast.hyperscan:
        pytest.skip("no hyperscan on this platform")
    rng = random.Random(8)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-"
    makers = [
        lambda: bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 60))),
        lambda: rng.choice([b" ", b"\n", b"\r\n", b'","', b"=", b"\x00"]),
        lambda: rng.randbytes(rng.randrange(1, 40)).hex().encode(),
        lambda: rng.randbytes(rng.randrange(1, 20)).hex().upper().encode(),
        lambda: base64.encodebytes(rng.randbytes(rng.randrange(10, 300))),
        lambda: rng.randbytes(rng.randrange(1, 8)),
    ]
    buffers = [b"", b"A" * 24, b"a" * 23, b"x " + b"Ab" * 20, b"0123456789abcdef" * 3 + b"\n" + b"Q" * 30]
    buffers += [b"".join(rng.choice(makers)() for _ in range(rng.randrange(0, 300))) for _ in range(400)]
    dense = b'","'.join(base64.b64encode(rng.randbytes(24)) for _ in range(300))  # the hand-over
    buffers += [dense, b"plain text " * 5000 + dense + b" tail " + b"deadbeef" * 4]
    for buf in buffers:
        assert fast.find_runs(buf) == portable.find_runs(buf) == find_runs(buf), buf[:120]
