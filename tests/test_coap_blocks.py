"""CoAP block-wise transfers (RFC 7959): a body split over Block1/Block2 datagrams is joined.

The datagrams are real CoAP built by scapy, written to a pcap and analysed from the file, as an
NB-IoT module's registration would be captured. Every address is inside the file only.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from analyze_kit import IDS, PHONE, write_pcap
from pcap_kit import eth
from scapy.contrib.coap import CoAP
from scapy.layers.inet import IP, UDP

from harness import sample
from harness.analyzer import analyze
from harness.analyzer.coap_blocks import BlockAssembler
from harness.analyzer.model import Flow, StreamUnit
from harness.identifiers import IdentifierSet

IMEI = IDS["imei"][0]
SERVER = "203.0.113.9"  # a documentation address: only ever inside the capture file
BODY = json.dumps({"REGVER": "5.0", "IMEI1": IMEI, "SIM1ICCID": IDS["iccid"][0], "MODEL": "TA-1062",
                   "SWVER": "00WW_3_22C"}).encode()
BLOCK = 16  # SZX 0: the smallest block size, so every identifier crosses a block boundary somewhere


def _block_option(num: int, more: bool, szx: int = 0) -> bytes:
    value = num << 4 | more << 3 | szx
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def _datagrams(body: bytes, option: int = 27, size: int = BLOCK, order: list[int] | None = None,
               from_phone: bool = True, size_hint: bool = False) -> list[Any]:
    """The body as CoAP POST blocks (Block1) from the phone, or as response blocks (Block2)."""
    szx = size.bit_length() - 5
    count = -(-len(body) // size)
    packets = []
    for n in order if order is not None else range(count):
        options: list[tuple[Any, bytes]] = [("Uri-Path", b"nb")] if from_phone else []
        options.append((option, _block_option(n, n < count - 1, szx)))
        if size_hint:  # RFC 7959 2.3: a Block1 request may carry Block2 NUM=0, the response size it wants
            options.insert(1, (23, _block_option(0, False, 6)))
        message = CoAP(type=0, code=2 if from_phone else 69, msg_id=100 + n, token=b"\x07",
                       options=options, paymark=b"\xff") / body[n * size : (n + 1) * size]
        src, dst, sport, dport = (PHONE, SERVER, 40683, 5683) if from_phone else (SERVER, PHONE, 5683, 40683)
        packet = eth() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / message
        packet.time = sample.START + 0.01 * len(packets)
        packets.append(packet)
    return packets


def _imei_findings(path: Path) -> list[Any]:
    report = analyze(path, IdentifierSet.from_mapping(IDS, "test"))
    return [f for f in report.findings if f.identifier == "imei"]


def test_an_identifier_split_across_blocks_is_found(tmp_path: Path) -> None:
    packets = _datagrams(BODY)
    assert not any(IMEI.encode() in bytes(p) for p in packets)  # no single datagram holds it
    found = _imei_findings(write_pcap(tmp_path / "blocks.pcap", packets))
    assert [f.encoding for f in found] == [["coap-payload", "plain"]]
    start = BODY.index(IMEI.encode())
    assert found[0].frames == [start // BLOCK + 1, (start + len(IMEI) - 1) // BLOCK + 1]


def test_a_base64_body_split_across_blocks_is_decoded_whole(tmp_path: Path) -> None:
    found = _imei_findings(write_pcap(tmp_path / "b64.pcap", _datagrams(base64.b64encode(BODY))))
    assert ["coap-payload", "base64", "json"] in [f.encoding for f in found]


def test_blocks_out_of_order_and_retransmitted_still_join(tmp_path: Path) -> None:
    count = -(-len(BODY) // BLOCK)
    order = [1, 0, 0, *range(2, count)][::-1]  # reversed, block 0 twice
    found = _imei_findings(write_pcap(tmp_path / "shuffled.pcap", _datagrams(BODY, order=order)))
    assert len(found) == 1 and found[0].encoding == ["coap-payload", "plain"]


def test_block2_response_bodies_are_joined(tmp_path: Path) -> None:
    found = _imei_findings(write_pcap(tmp_path / "block2.pcap", _datagrams(BODY, option=23, from_phone=False)))
    assert len(found) == 1 and found[0].encoding == ["coap-payload", "plain"]


def test_a_lost_block_is_a_hole_not_a_join(tmp_path: Path) -> None:
    start = BODY.index(IMEI.encode())
    lost = (start + 8) // BLOCK  # a block in the middle of the IMEI
    count = -(-len(BODY) // BLOCK)
    packets = _datagrams(BODY, order=[n for n in range(count) if n != lost])
    assert _imei_findings(write_pcap(tmp_path / "lost.pcap", packets)) == []


def test_an_identifier_inside_one_block_is_reported_once(tmp_path: Path) -> None:
    body = IMEI.encode() + b" " + b"x" * 40  # the IMEI whole in block 0 (size 32)
    found = _imei_findings(write_pcap(tmp_path / "once.pcap", _datagrams(body, size=32)))
    assert len(found) == 1


def test_the_assembler_bounds_what_it_waits_for() -> None:
    assembler = BlockAssembler()
    flows = [Flow("udp", "10.0.0.2", 40000 + i, SERVER, 5683) for i in range(300)]
    joined: list[StreamUnit] = []
    for flow in flows:  # 300 transfers, each left at its first of two blocks
        block = bytes(CoAP(type=0, code=2, msg_id=1, options=[("Uri-Path", b"nb"), (27, _block_option(0, True))],
                           paymark=b"\xff") / (b"a" * BLOCK))
        joined += assembler.feed(StreamUnit(flow, True, block, [0], [1], [0.0]))
        second = bytes(CoAP(type=0, code=2, msg_id=2, options=[("Uri-Path", b"nb"), (27, _block_option(1, True))],
                            paymark=b"\xff") / (b"b" * BLOCK))
        joined += assembler.feed(StreamUnit(flow, True, second, [0], [2], [0.0]))
    assert len(joined) == 300 - 256  # the oldest were joined early, not kept
    joined += assembler.finish()
    assert len(joined) == 300 and all(u.data == b"a" * BLOCK + b"b" * BLOCK for u in joined)


def test_a_block2_size_hint_in_requests_does_not_hide_block1(tmp_path: Path) -> None:
    found = _imei_findings(write_pcap(tmp_path / "hint.pcap", _datagrams(BODY, size_hint=True)))
    assert [f.encoding for f in found] == [["coap-payload", "plain"]]


def test_a_last_block_sent_again_after_its_transfer_is_not_a_new_body(tmp_path: Path) -> None:
    first = _datagrams(b"x" * 100)  # its last block starts at 96
    second = _datagrams(b"a" * 90 + IMEI.encode() + b"b" * 30)  # the IMEI across 96
    for i, packet in enumerate(second):
        packet.time += 1 + i * 0.01
    resent = first[-1].copy()  # its ACK was lost: the client sends the last block again
    resent.time = first[-1].time + 0.5
    found = _imei_findings(write_pcap(tmp_path / "resent.pcap", [*first, resent, *second]))
    assert [f.encoding for f in found] == [["coap-payload", "plain"]]


def test_waiting_transfers_hold_a_bounded_number_of_bytes() -> None:
    assembler = BlockAssembler()
    payload = b"z" * 1024
    joined = 0
    for i in range(20):  # 20 transfers of 1 MiB each, none finished: 20 MiB would wait
        flow = Flow("udp", "10.0.0.2", 41000 + i, SERVER, 5683)
        for n in range(1024):
            block = bytes(CoAP(type=0, code=2, msg_id=n, options=[("Uri-Path", b"nb"), (27, _block_option(n, True, 6))],
                               paymark=b"\xff") / payload)
            joined += sum(1 for _ in assembler.feed(StreamUnit(flow, True, block, [0], [n + 1], [0.0])))
    assert joined >= 12  # the oldest were joined early: at most MAX_PENDING (8 MiB) waits
    assert joined + sum(1 for _ in assembler.finish()) == 20
