"""Golden captures, end to end: every identifier x encoding x transport, positive and negative.

The captures are built here with scapy (never downloaded), written to pcap, and analysed by
`harness.analyzer.analyze` exactly as `phonehome analyze` would. One capture per transport holds
one flow (or one message) per identifier x encoding case, so a missing or wrong finding names
its case. The negative captures carry near misses (one character changed) in the same
encodings and must give no plaintext-identifier finding at all.

Transports: TCP split into several segments sent out of order with a retransmission (unknown
protocol on its own port), UDP datagrams, HTTP with chunked transfer and gzip content coding,
DNS query names (hex and base32 split over labels), TLS ClientHello SNI, CoAP URI and payload.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import json
import random
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pcap_kit import eth
from scapy.contrib.coap import CoAP
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP
from scapy.utils import wrpcap

from harness.analyzer.matcher import tbcd
from harness.analyzer.model import Report
from harness.identifiers import IdentifierSet, Kind

PHONE, SERVER, RESOLVER = "10.20.0.2", "198.51.100.7", "10.20.0.1"

# made-up identifiers of the right shapes
IDS: dict[str, list[str]] = {
    "imei": ["358240051111110", "358240051111128"],
    "meid": ["A10000009296F2"],
    "imsi": ["242016000012345"],
    "iccid": ["8947080012345678900"],
    "msisdn": ["+4791234567"],
    "wifi_mac": ["a4:d9:90:3c:5e:71"],
    "bt_mac": ["a4:d9:90:3c:5e:72"],
    "serial": ["NB1GAD2910402519"],
    "android_id": ["9774d56d682e549c"],
    "cell_id": ["27447298"],
}
# near misses: one character changed inside each value (a different phone's identifiers)
NEAR = {
    "imei": ["358240051191110", "358240051161128"], "meid": ["A10000009236F2"], "imsi": ["242016000092345"],
    "iccid": ["8947080012345478900"], "msisdn": ["+4791234067"], "wifi_mac": ["a4:d9:90:3c:5a:71"],
    "bt_mac": ["a4:d9:90:3c:5e:73"], "serial": ["NB1GAD2910402518"], "android_id": ["9774d56d682e549d"],
    "cell_id": ["27447398"],
}
KEYS = {"imei": "IMEI", "meid": "MEID", "imsi": "IMSI", "iccid": "ICCID", "msisdn": "MSISDN", "wifi_mac": "MACID",
        "bt_mac": "BTMAC", "serial": "SN", "android_id": "ANDROIDID", "cell_id": "CELLID"}
NUMERIC = {"imei", "imsi", "iccid", "msisdn"}


def _quote_all(data: bytes) -> bytes:
    return "".join(f"%{b:02X}" for b in data).encode()


def _json_escape_all(value: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in value)


@dataclass(frozen=True)
class Encoded:
    """How a value travels: the payload bytes, and the tail of the encoding chain expected."""

    name: str
    make: Callable[[str, str], bytes]  # (kind, value) -> payload
    chain_tail: tuple[str, ...]
    kinds: frozenset[str] = frozenset(IDS)


def _doc(kind: str, value: str) -> bytes:
    return json.dumps({"v": 3, KEYS[kind]: value, "t": "2019-07-22"}).encode()


ENCODINGS = [
    Encoded("plain", _doc, ("plain",)),
    Encoded("url", lambda k, v: b"q=" + _quote_all(_doc(k, v)), ("url", "json")),
    Encoded("json-escape", lambda k, v: f'{{"{KEYS[k]}":"{_json_escape_all(v)}"}}'.encode(),
            ("json-escape", "json")),
    Encoded("hex", lambda k, v: _doc(k, v).hex().encode(), ("hex", "json")),
    Encoded("base64", lambda k, v: base64.b64encode(_doc(k, v)), ("base64", "json")),
    Encoded("base64url", lambda k, v: base64.urlsafe_b64encode(b"\xfb\xff" + _doc(k, v)).rstrip(b"="),
            ("base64url", "json")),
    Encoded("base64-mime", lambda k, v: base64.encodebytes(_doc(k, v) * 3), ("base64", "json")),
    Encoded("md5", lambda k, v: json.dumps({"h": hashlib.md5(v.encode()).hexdigest()}).encode(), ("md5",)),
    Encoded("sha1", lambda k, v: json.dumps({"h": base64.b64encode(hashlib.sha1(v.encode()).digest()).decode()})
            .encode(), ("sha1",)),
    Encoded("sha256", lambda k, v: json.dumps({"h": hashlib.sha256(v.encode()).hexdigest().upper()}).encode(),
            ("sha256",)),
    Encoded("utf16le", lambda k, v: _doc(k, v).decode().encode("utf-16-le"), ("utf16le", "json")),
    # packed digits as on a SIM / in 3GPP messages (a phone number after its type-of-number byte)
    Encoded("tbcd", lambda k, v: b"\x01\x08" + (b"\x91" if k == "msisdn" else b"") + tbcd(v.lstrip("+")) + b"\x00",
            ("tbcd",), frozenset(NUMERIC)),
    Encoded("gzip", lambda k, v: gzip.compress(_doc(k, v)), ("gzip", "json")),
]


@dataclass
class Case:
    kind: str
    slot: int | None
    encoding: str
    chain_tail: tuple[str, ...]
    frames: set[int]
    head: str | None = None  # the location the chain must start with, when it matters


def cases_for(ids: dict[str, list[str]], encodings: list[Encoded]) -> list[tuple[str, int | None, str, Encoded]]:
    out = []
    for kind, values in ids.items():
        for position, value in enumerate(values):
            slot = position + 1 if Kind(kind) in {Kind.IMEI, Kind.MEID, Kind.IMSI, Kind.ICCID, Kind.MSISDN} else None
            for enc in encodings:
                if kind in enc.kinds:
                    out.append((kind, slot, value, enc))
    return out


# --- packet building ------------------------------------------------------------------------


class Capture:
    """Packets in capture order, with the 1-based frame number of each."""

    def __init__(self) -> None:
        self.packets: list[Any] = []
        self.clock = 1563777000.0

    def add(self, packet: Any) -> int:
        self.clock += 0.001
        packet.time = self.clock
        self.packets.append(packet)
        return len(self.packets)

    def udp(self, sport: int, dport: int, payload: bytes, reply: bytes | None = None) -> set[int]:
        frames = {self.add(eth() / IP(src=PHONE, dst=SERVER) / UDP(sport=sport, dport=dport) / payload)}
        if reply is not None:
            self.add(eth() / IP(src=SERVER, dst=PHONE) / UDP(sport=dport, dport=sport) / reply)
        return frames

    def tcp(self, sport: int, dport: int, payload: bytes, segments: int = 4, shuffle: bool = True,
            reply: bytes = b"", dst: str = SERVER) -> set[int]:
        """A whole connection; the client's payload cut into `segments`, sent out of order, one
        segment retransmitted. Returns the frames that carried the payload."""
        seq, ack = 1000 + sport, 5000

        def pkt(from_client: bool, flags: str, s: int, a: int, data: bytes = b"") -> Any:
            src, dst_, sp, dp = (PHONE, dst, sport, dport) if from_client else (dst, PHONE, dport, sport)
            packet = eth() / IP(src=src, dst=dst_) / TCP(sport=sp, dport=dp, flags=flags, seq=s, ack=a,
                                                           window=65535)
            return packet / data if data else packet

        self.add(pkt(True, "S", seq, 0))
        self.add(pkt(False, "SA", ack, seq + 1))
        self.add(pkt(True, "A", seq + 1, ack + 1))
        size = max(1, -(-len(payload) // segments))
        parts = [(seq + 1 + off, payload[off : off + size]) for off in range(0, len(payload), size)]
        order = list(range(len(parts)))
        if shuffle and len(parts) > 2:
            random.Random(sport).shuffle(order)
            order.append(order[0])  # a retransmission
        frames = set()
        for index in order:
            s, data = parts[index]
            frames.add(self.add(pkt(True, "PA", s, ack + 1, data)))
        end = seq + 1 + len(payload)
        self.add(pkt(False, "A", ack + 1, end))
        if reply:
            self.add(pkt(False, "PA", ack + 1, end, reply))
            ack += len(reply)
        self.add(pkt(True, "FA", end, ack + 1))
        self.add(pkt(False, "FA", ack + 1, end + 1))
        self.add(pkt(True, "A", end + 1, ack + 2))
        return frames

    def write(self, path: Path) -> Path:
        wrpcap(str(path), self.packets, linktype=1)
        return path


def ws_exchange(payload: bytes, deflate: bool, split: bool) -> tuple[bytes, bytes, bytes]:
    """A ws:// handshake and client messages as a real WebSocket stack writes them (wsproto, in
    memory): (request, masked client frames, 101 response). With `deflate`, permessage-deflate
    with context takeover (an earlier message primes the window); with `split`, two fragments."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, BytesMessage, Request, TextMessage
    from wsproto.extensions import PerMessageDeflate

    client, server = WSConnection(ConnectionType.CLIENT), WSConnection(ConnectionType.SERVER)
    hello = client.send(Request(host="push.example.com", target="/v2/socket",
                                extensions=[PerMessageDeflate()] if deflate else []))
    server.receive_data(hello)
    assert isinstance(next(server.events()), Request)
    reply = server.send(AcceptConnection(extensions=[PerMessageDeflate()] if deflate else []))
    client.receive_data(reply)
    assert isinstance(next(client.events()), AcceptConnection)
    frames = client.send(TextMessage('{"op":"hello","v":3,"t":"2019-07-22"}'))
    if split:
        half = len(payload) // 2
        frames += client.send(BytesMessage(payload[:half], message_finished=False))
        frames += client.send(BytesMessage(payload[half:]))
    else:
        frames += client.send(BytesMessage(payload))
    return hello, frames, reply


def chunked(body: bytes, size: int = 13) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size))
    return out + b"0\r\n\r\n"


def client_hello(sni: str) -> bytes:
    """A real ClientHello from Python's ssl (in memory: nothing is sent)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def labels(text: str, size: int = 30) -> str:
    return ".".join(text[i : i + size] for i in range(0, len(text), size))


def label_safe(kind: str, value: str) -> str:
    """The value as it can stand in a DNS label (MACs without separators, no `+`)."""
    return value.replace(":", "").lstrip("+")


# --- captures per transport -------------------------------------------------------------------


def build(transport: str, ids: dict[str, list[str]]) -> tuple[Capture, list[Case]]:
    cap = Capture()
    cases: list[Case] = []
    port = 20000
    if transport in ("tcp", "udp", "http"):
        for kind, slot, value, enc in cases_for(ids, ENCODINGS):
            port += 1
            payload = enc.make(kind, value)
            tail = enc.chain_tail
            if transport == "tcp":
                frames = cap.tcp(port, 9000 + port % 1000, b"\x00\x2aDEV1" + payload)
            elif transport == "udp":
                frames = cap.udp(port, 9000 + port % 1000, payload)
            else:  # the body gunzipped is JSON: its plain identifiers come as (..., "gzip", "json")
                head = (b"POST /collect HTTP/1.1\r\nHost: collect.example.com\r\nTransfer-Encoding: chunked\r\n"
                        b"Content-Encoding: gzip\r\nContent-Type: application/octet-stream\r\n\r\n")
                frames = cap.tcp(port, 80, head + chunked(gzip.compress(payload)), segments=6,
                                 reply=b"HTTP/1.1 204 No Content\r\n\r\n")
                tail = ("http-chunked", "gzip", "json") if enc.name == "plain" else tail
            cases.append(Case(kind, slot, enc.name, tail, frames))
    elif transport == "dns":
        for kind, slot, value, _ in cases_for(ids, ENCODINGS[:1]):
            text = label_safe(kind, value)
            for name, tail in ((f"{text}.v1.collect.example.com", ("dns-qname", "plain")),
                               (f"{labels(text.encode().hex(), 10)}.h.collect.example.com", ("dns-labels", "hex")),
                               (f"{labels(base64.b32encode(text.encode()).decode().rstrip('=').lower(), 7)}"
                                f".b.collect.example.com", ("dns-labels", "base32"))):
                port += 1
                query = DNS(id=port & 0xFFFF, rd=1, qd=DNSQR(qname=name))
                answer = DNS(id=port & 0xFFFF, qr=1, qd=DNSQR(qname=name), an=DNSRR(rrname=name, rdata=SERVER))
                frames = {cap.add(eth() / IP(src=PHONE, dst=RESOLVER) / UDP(sport=port, dport=53) / query)}
                cap.add(eth() / IP(src=RESOLVER, dst=PHONE) / UDP(sport=53, dport=port) / answer)
                cases.append(Case(kind, slot, "dns:" + tail[-1], tail, frames))
    elif transport == "tls":
        for kind, slot, value, _ in cases_for(ids, ENCODINGS[:1]):
            text = label_safe(kind, value)
            for sni, tail in ((f"{text}.collect.example.com", ("tls-sni", "plain")),
                              (f"{text.encode().hex()}.collect.example.com", ("tls-sni", "hex"))):
                port += 1
                record_app = b"\x17\x03\x03\x01\x00" + random.Random(port).randbytes(256)
                frames = cap.tcp(port, 443, client_hello(sni) + record_app, segments=3)
                cases.append(Case(kind, slot, "sni:" + tail[-1], tail, frames))
    elif transport == "coap":
        for kind, slot, value, enc in cases_for(ids, ENCODINGS):
            port += 1
            if enc.name == "plain":
                message = CoAP(type=0, code=2, msg_id=port & 0xFFFF, options=[
                    ("Uri-Host", b"collect.example.com"), ("Uri-Path", b"nb"),
                    ("Uri-Query", f"ep={label_safe(kind, value)}".encode())])
                frames = cap.udp(port, 5683, bytes(message))
                cases.append(Case(kind, slot, "coap-uri", ("coap-uri", "plain"), frames, "coap-uri"))
                port += 1
            message = CoAP(type=0, code=2, msg_id=port & 0xFFFF, options=[
                ("Uri-Host", b"collect.example.com"), ("Uri-Path", b"nb"), ("Content-Format", b"\x32")],
                paymark=b"\xff") / enc.make(kind, value)
            frames = cap.udp(port, 5683, bytes(message))
            cases.append(Case(kind, slot, enc.name, enc.chain_tail, frames, "coap-payload"))
    elif transport == "websocket":
        for kind, slot, value, enc in cases_for(ids, ENCODINGS):
            port += 1
            deflate = port % 2 == 0
            hello, frames_out, reply = ws_exchange(enc.make(kind, value), deflate, split=port % 4 == 1)
            frames = cap.tcp(port, 80, hello + frames_out, segments=5, reply=reply)
            tail = ("deflate", "json") if deflate and enc.name == "plain" else enc.chain_tail
            cases.append(Case(kind, slot, enc.name + (" deflated" if deflate else ""), tail, frames, "websocket"))
    return cap, cases


TRANSPORTS = ["tcp", "udp", "http", "dns", "tls", "coap", "websocket"]


def analyze_capture(path: Path, ids: dict[str, list[str]], **kw: Any) -> Report:
    """`phonehome analyze`'s Python API on the capture."""
    from harness.analyzer import analyze

    try:
        return analyze(path, IdentifierSet.from_mapping(ids, "IDS"), **kw)
    except ModuleNotFoundError as exc:  # the reader is written in parallel with these tests
        if not (exc.name or "").startswith("harness."):
            raise
        from conftest import missing_setup

        missing_setup(f"{exc.name} is not there yet")
        raise


def check(report: Report, cases: list[Case]) -> list[str]:
    """Every case has a plaintext-identifier finding with its identifier in its frames; the
    chain ends as expected. Problems, as lines."""
    problems = []
    plain = [f for f in report.findings if f.rule == "plaintext-identifier"]
    for case in cases:
        mine = [f for f in plain if f.identifier == case.kind and f.slot == case.slot
                and set(f.frames) & case.frames]
        if not mine:
            problems.append(f"missing: {case.kind}[{case.slot}] {case.encoding} (frames {sorted(case.frames)})")
            continue
        tails = [tuple(f.encoding[-len(case.chain_tail):]) for f in mine
                 if case.head is None or f.encoding[0] == case.head]
        if case.chain_tail not in tails:
            problems.append(f"chain: {case.kind}[{case.slot}] {case.encoding}: {[f.encoding for f in mine]}")
    return problems


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_golden_positive(transport: str, tmp_path: Path) -> None:
    cap, cases = build(transport, IDS)
    report = analyze_capture(cap.write(tmp_path / f"{transport}.pcap"), IDS)
    assert report.status == "leak"
    problems = check(report, cases)
    assert not problems, "\n".join(problems)
    for finding in report.findings:  # masked everywhere a human looks
        for values in IDS.values():
            assert not any(v in finding.evidence for v in values)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_golden_negative(transport: str, tmp_path: Path) -> None:
    """The same captures made from another phone's (near-miss) identifiers: nothing of ours."""
    cap, _ = build(transport, NEAR)
    report = analyze_capture(cap.write(tmp_path / f"{transport}-near.pcap"), IDS)
    plain = [(f.identifier, f.slot, f.encoding) for f in report.findings if f.rule == "plaintext-identifier"]
    assert plain == []


def test_websocket_messages_past_the_first_window(tmp_path: Path) -> None:
    """A long-lived ws:// channel: 1.5 MiB of messages, then one with the IMEI. The flow layer cuts
    the stream into 1 MiB windows; the frames of the later one are found from where the earlier
    one's last frame ends."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, BytesMessage, Request

    client, server = WSConnection(ConnectionType.CLIENT), WSConnection(ConnectionType.SERVER)
    hello = client.send(Request(host="push.example.com", target="/channel"))
    server.receive_data(hello)
    next(server.events())
    client.receive_data(server.send(AcceptConnection()))
    next(client.events())
    noise = random.Random(5)
    stream = hello + b"".join(client.send(BytesMessage(noise.randbytes(16_000))) for _ in range(100))
    stream += client.send(BytesMessage(_doc("imei", IDS["imei"][0])))
    cap = Capture()
    frames = cap.tcp(41900, 80, stream, segments=len(stream) // 1400 + 1, shuffle=False)
    report = analyze_capture(cap.write(tmp_path / "long-ws.pcap"), IDS)
    found = [f for f in report.findings if f.identifier == "imei"]
    assert [f.encoding for f in found] == [["websocket", "plain"]]
    assert max(found[0].frames) == max(frames)


def test_each_websocket_message_with_the_identifier_is_a_finding(tmp_path: Path) -> None:
    """The same identifier sent again later on the same channel is another place it went out."""
    hello, first, _reply = ws_exchange(_doc("imei", IDS["imei"][0]), deflate=False, split=False)
    _, again, _ = ws_exchange(_doc("imei", IDS["imei"][0]), deflate=False, split=False)
    cap = Capture()
    frames = cap.tcp(41950, 80, hello + first + again, segments=6, shuffle=False)
    report = analyze_capture(cap.write(tmp_path / "twice.pcap"), IDS)
    found = sorted(f.frames for f in report.findings if f.identifier == "imei" and f.slot == 1)
    assert len(found) == 2 and found[0] != found[1] and set(found[0] + found[1]) <= frames


def test_golden_2019_incident(tmp_path: Path) -> None:
    """The Nokia 7 Plus capture: DNS, then POST / of Base64 (76 columns) JSON, over several segments."""
    ids = IDS
    report_json = {"REGVER": "4.0", "MEID": ids["imei"][0][:14], "IMEI1": ids["imei"][0],
                   "IMEI2": ids["imei"][1], "SIM1ICCID": ids["iccid"][0], "SIM1LTEIMSI": ids["imsi"][0],
                   "SIM1CELLID": ids["cell_id"][0], "MACID": ids["wifi_mac"][0], "ACCESSTYPE": "2"}
    body = base64.encodebytes(json.dumps(report_json, separators=(",", ":")).encode())
    cap = Capture()
    cap.add(eth() / IP(src=PHONE, dst=RESOLVER) / UDP(sport=35353, dport=53) / DNS(rd=1, qd=DNSQR(
        qname="zzhc.vnet.cn")))
    cap.add(eth() / IP(src=RESOLVER, dst=PHONE) / UDP(sport=53, dport=35353) / DNS(
        qr=1, qd=DNSQR(qname="zzhc.vnet.cn"), an=DNSRR(rrname="zzhc.vnet.cn", rdata="42.99.2.15")))
    head = (b"POST / HTTP/1.1\r\nContent-Type: application/encrypted-json\r\nHost: zzhc.vnet.cn\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    cap.tcp(41002, 80, head + body, segments=5, dst="42.99.2.15",
            reply=b'HTTP/1.1 200 OK\r\nContent-Length: 41\r\n\r\n{"resultCode":"0","resultDesc":"Success"}')
    report = analyze_capture(cap.write(tmp_path / "2019.pcap"), ids)
    assert report.status == "leak"
    plain = {(f.identifier, f.slot, tuple(f.encoding), f.host) for f in report.findings
             if f.rule == "plaintext-identifier"}
    chain = ("http-body", "base64", "json")
    assert plain == {("imei", 1, chain, "zzhc.vnet.cn"), ("imei", 2, chain, "zzhc.vnet.cn"),
                     ("iccid", 1, chain, "zzhc.vnet.cn"), ("imsi", 1, chain, "zzhc.vnet.cn"),
                     ("cell_id", None, chain, "zzhc.vnet.cn"), ("wifi_mac", None, chain, "zzhc.vnet.cn")}
    assert any(f.rule == "unapproved-activation-client" for f in report.findings)
