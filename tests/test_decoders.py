"""Protocol decoders: HTTP/1.x, DNS (UDP and TCP), TLS ClientHello SNI, CoAP, raw payloads.

Messages are built with scapy (DNS, CoAP) and Python's own ssl (real TLS records), never typed
in as hex, so the decoders meet the bytes real stacks write.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import gzip
import json
import random
import ssl
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.contrib.coap import CoAP
from scapy.layers.dns import DNS, DNSQR, DNSRR, dns_compress

from harness.analyzer.decoders import UnitResult, analyze_unit, analyze_units
from harness.analyzer.matcher import Matcher
from harness.analyzer.model import Flow, StreamUnit
from harness.analyzer.websocket import WebSocketReader
from harness.identifiers import IdentifierSet, Kind

IMEI = "490154203237518"
IMSI = "242011234567890"
ICCID = "8947080012345678901"
MAC = "02:00:5e:10:00:01"
SERIAL = "R58M12ABCDE"
IDS = IdentifierSet({Kind.IMEI: [IMEI], Kind.IMSI: [IMSI], Kind.ICCID: [ICCID], Kind.WIFI_MAC: [MAC],
                     Kind.SERIAL: [SERIAL], Kind.CELL_ID: ["26296330"]})
BODY = json.dumps({"MEID": IMEI[:14], "IMEI1": IMEI, "SIM1ICCID": ICCID, "SIM1LTEIMSI": IMSI,
                   "SIM1CELLID": "26296330", "MACID": MAC}).encode()
MATCHER = Matcher(IDS, guess=False, canary="phc-canary-5e1f", portable=False)


def unit(data: bytes, proto: str = "tcp", dport: int = 80, from_client: bool = True, sport: int = 40000,
         frames: list[int] | None = None, offsets: list[int] | None = None) -> StreamUnit:
    frames = frames or [1]
    return StreamUnit(Flow(proto, "10.0.0.2", sport, "42.99.2.15", dport), from_client, data,
                      offsets or [0], frames, [float(f) for f in frames])


def run(data: bytes, **kw: object) -> UnitResult:
    return analyze_unit(unit(data, **kw), MATCHER)  # type: ignore[arg-type]


def where(result: UnitResult) -> dict[tuple[str, int | None], tuple[str, ...]]:
    """Each identifier's first hit's encoding chain."""
    out: dict[tuple[str, int | None], tuple[str, ...]] = {}
    for hit in result.hits:
        out.setdefault((hit.kind, hit.slot), hit.encoding)
    return out


# --- HTTP ---------------------------------------------------------------------------------


def http_request(body: bytes, headers: str = "", target: str = "/", method: str = "POST") -> bytes:
    head = (f"{method} {target} HTTP/1.1\r\nHost: zzhc.vnet.cn\r\nContent-Type: application/encrypted-json\r\n"
            f"{headers}")
    if "Transfer-Encoding" not in headers:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def chunked(body: bytes, size: int = 7) -> bytes:
    parts = [b"%x;ext=1\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
             for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\nX-Trailer: 1\r\n\r\n"


def test_the_2019_request() -> None:
    result = run(http_request(base64.encodebytes(BODY)))
    assert where(result)[("imei", 1)] == ("http-body", "base64", "json")
    assert {c.host for c in result.contacts} == {"zzhc.vnet.cn"}
    assert all(c.how == "http-host" and c.frame == 1 for c in result.contacts)


def test_request_line_and_headers() -> None:
    data = http_request(b"", headers=f"X-Serial: {SERIAL}\r\nCookie: m={MAC}\r\n", method="GET",
                        target=f"/reg?imsi={IMSI}&iccid={ICCID}")
    found = where(run(data))
    assert found[("imsi", 1)] == ("http-request-line", "plain")
    assert found[("iccid", 1)] == ("http-request-line", "plain")
    assert found[("serial", None)] == ("http-header", "plain")
    assert found[("wifi_mac", None)] == ("http-header", "plain")


def test_chunked_body_split_inside_an_identifier() -> None:
    body = b'{"imei":"' + IMEI.encode() + b'"}'
    data = http_request(chunked(body, 5), headers="Transfer-Encoding: chunked\r\n")
    assert IMEI.encode() not in data  # the chunk framing cuts it
    assert where(run(data))[("imei", 1)] == ("http-body", "http-chunked", "plain")


@pytest.mark.parametrize(("coding", "pack", "step"), [
    ("gzip", gzip.compress, "gzip"),
    ("deflate", zlib.compress, "zlib"),
    ("deflate", lambda b: zlib.compress(b)[2:-4], "deflate"),  # raw deflate, as many servers send
])
def test_content_encoding(coding: str, pack: object, step: str) -> None:
    body = pack(base64.b64encode(BODY))  # type: ignore[operator]
    data = http_request(body, headers=f"Content-Encoding: {coding}\r\n")
    assert where(run(data))[("iccid", 1)] == ("http-body", step, "base64", "json")


def test_chunked_gzip_body() -> None:
    data = http_request(chunked(gzip.compress(BODY), 100),
                        headers="Transfer-Encoding: chunked\r\nContent-Encoding: gzip\r\n")
    assert where(run(data))[("imsi", 1)] == ("http-body", "http-chunked", "gzip", "json")


def test_response_and_pipelined_messages() -> None:
    first = b"GET /a HTTP/1.1\r\nHost: one.example\r\n\r\n"
    second = http_request(BODY).replace(b"zzhc.vnet.cn", b"two.example")
    result = run(first + second)
    assert {c.host for c in result.contacts} == {"one.example", "two.example"}
    assert where(result)[("imei", 1)] == ("http-body", "plain")
    response = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + BODY  # runs to the end
    assert where(run(response, from_client=False))[("imsi", 1)] == ("http-body", "plain")


def test_unit_starting_mid_stream() -> None:
    tail = b"rest of an earlier body " + BODY[:20] + b"\r\n"
    result = run(tail + http_request(base64.b64encode(BODY)))
    assert where(result)[("imei", 1)] == ("http-body", "base64", "json")
    assert {c.host for c in result.contacts} == {"zzhc.vnet.cn"}


def test_proxy_and_connect_targets() -> None:
    proxy = b"GET http://user@zzhc.vnet.cn:9999/reg HTTP/1.1\r\nHost: zzhc.vnet.cn:9999\r\n\r\n"
    assert {(c.host, c.how) for c in run(proxy).contacts} == {("zzhc.vnet.cn", "http-host")}
    connect = b"CONNECT dm.wo.com.cn:6001 HTTP/1.1\r\n\r\n"
    assert [c.host for c in run(connect).contacts] == ["dm.wo.com.cn"]


def test_host_word_in_a_body_is_not_a_contact() -> None:
    data = http_request(b"some text\nHost: evil.example\n")
    assert {c.host for c in run(data).contacts} == {"zzhc.vnet.cn"}


def test_contact_frame_is_where_the_header_is() -> None:
    data = http_request(BODY)
    split = data.index(b"\r\nHost:") + 2  # the Host line came in the second segment
    result = analyze_unit(unit(data, frames=[7, 9], offsets=[0, split]), MATCHER)
    assert [c.frame for c in result.contacts] == [9]


# --- DNS ----------------------------------------------------------------------------------


def test_dns_query_name_hex_split_over_labels() -> None:
    hexed = IMEI.encode().hex()
    name = f"{hexed[:20]}.{hexed[20:]}.t.exfil.example"
    query = bytes(DNS(id=7, rd=1, qd=DNSQR(qname=name)))
    result = run(query, proto="udp", dport=53)
    assert where(result)[("imei", 1)] == ("dns-qname", "dns-labels", "hex")
    assert [(c.host, c.how) for c in result.contacts] == [(name, "dns-query")]


def test_dns_query_name_base32_and_plain() -> None:
    b32 = base64.b32encode(ICCID.encode()).decode().rstrip("=").lower()
    name = f"{b32[:25]}.{b32[25:]}.x.example.net"
    assert where(run(bytes(DNS(qd=DNSQR(qname=name))), proto="udp", dport=53))[("iccid", 1)] == (
        "dns-qname", "dns-labels", "base32")
    plain = bytes(DNS(qd=DNSQR(qname=f"{IMEI}.imei.example.com")))
    assert where(run(plain, proto="udp", dport=53))[("imei", 1)] == ("dns-qname", "plain")


def test_dns_answers_follow_cnames_with_compression() -> None:
    response = DNS(id=1, qr=1, qd=DNSQR(qname="zzhc.vnet.cn"),
                   an=[DNSRR(rrname="zzhc.vnet.cn", type="CNAME", rdata="a.vnet.cn"),
                       DNSRR(rrname="a.vnet.cn", type="A", rdata="42.99.2.15"),
                       DNSRR(rrname="a.vnet.cn", type="AAAA", rdata="2001:db8::f")])
    wire = bytes(dns_compress(response))
    assert b"\xc0" in wire  # compression pointers are in use
    result = run(wire, proto="udp", dport=53, from_client=False)
    assert result.dns_answers == {"a.vnet.cn": {"42.99.2.15", "2001:db8::f"},
                                  "zzhc.vnet.cn": {"42.99.2.15", "2001:db8::f"}}
    assert result.contacts == []  # a response is not a lookup by the phone


def test_dns_over_tcp_with_length_prefixes() -> None:
    one = bytes(DNS(id=1, qd=DNSQR(qname="first.example")))
    two = bytes(DNS(id=2, qd=DNSQR(qname=f"{IMSI}.second.example")))
    data = len(one).to_bytes(2, "big") + one + len(two).to_bytes(2, "big") + two
    result = run(data, proto="tcp", dport=53)
    assert [c.host for c in result.contacts] == ["first.example", f"{IMSI}.second.example"]
    assert where(result)[("imsi", 1)] == ("dns-qname", "plain")


def test_dns_compression_loop_and_garbage_do_not_hang() -> None:
    header = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    loop = header + b"\xc0\x0c\x00\x01\x00\x01"
    run(loop, proto="udp", dport=53)
    run(header + b"\x3f" + b"a" * 10, proto="udp", dport=53)
    result = run(header + IMEI.encode(), proto="udp", dport=53)
    assert ("imei", 1) in where(result)  # not DNS after all: scanned raw


def test_mdns_names_are_scanned_but_are_no_destination() -> None:
    announce = bytes(DNS(qr=1, aa=1, an=DNSRR(rrname=f"android-{SERIAL}.local", type="A", rdata="10.0.0.2")))
    result = run(announce, proto="udp", dport=5353, sport=5353, from_client=False)
    assert result.contacts == [] and result.dns_answers == {}
    assert ("serial", None) in where(result)


# --- TLS ----------------------------------------------------------------------------------


def tls_pair(tmp_path: Path, sni: str) -> tuple[ssl.SSLObject, ssl.SSLObject, list[ssl.MemoryBIO]]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sni)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    bios = [ssl.MemoryBIO() for _ in range(4)]
    client = client_ctx.wrap_bio(bios[0], bios[1], server_hostname=sni)
    server = server_ctx.wrap_bio(bios[2], bios[3], server_side=True)
    return client, server, bios


def tls_session(tmp_path: Path, sni: str, secret: bytes) -> tuple[bytes, bytes]:
    """Real TLS (Python's ssl, in memory): the client's and the server's bytes on the wire."""
    client, server, (c_in, c_out, s_in, s_out) = tls_pair(tmp_path, sni)
    upstream, downstream = bytearray(), bytearray()
    for _ in range(10):
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        moved = c_out.read()
        upstream += moved
        s_in.write(moved)
        back = s_out.read()
        downstream += back
        c_in.write(back)
    client.write(secret)
    upstream += c_out.read()
    return bytes(upstream), bytes(downstream)


def refragment(data: bytes, size: int) -> bytes:
    """The same TLS stream with every handshake record cut into records of `size` bytes."""
    out, pos = bytearray(), 0
    while pos + 5 <= len(data):
        ctype, version, length = data[pos], data[pos + 1 : pos + 3], int.from_bytes(data[pos + 3 : pos + 5], "big")
        body = data[pos + 5 : pos + 5 + length]
        pieces = [body[i : i + size] for i in range(0, len(body), size)] if ctype == 22 else [body]
        for piece in pieces:
            out += bytes([ctype]) + version + len(piece).to_bytes(2, "big") + piece
        pos += 5 + length
    return bytes(out)


def test_tls_sni_and_no_hits_in_encrypted_bytes(tmp_path: Path) -> None:
    up, down = tls_session(tmp_path, "zzhc.vnet.cn", BODY * 20)
    result = run(up, dport=443)
    assert [(c.host, c.how) for c in result.contacts] == [("zzhc.vnet.cn", "tls-sni")]
    assert result.hits == []
    assert run(down, dport=443, from_client=False).hits == []
    # the same ciphertext treated as an unknown protocol: still nothing
    guessing = Matcher(IDS, guess=True, canary=None)
    assert analyze_unit(unit(up, proto="udp", dport=4433), guessing).hits == []


def test_tls_sni_split_over_records_and_identifier_in_sni(tmp_path: Path) -> None:
    sni = f"{IMEI}.dev.example.com"
    up, _ = tls_session(tmp_path, sni, b"x")
    split = refragment(up, 40)
    assert split != up
    for data in (up, split):
        result = run(data, dport=443)
        assert [c.host for c in result.contacts] == [sni]
        assert where(result)[("imei", 1)] == ("tls-sni", "plain")


def test_tls_with_app_data_elided_by_the_reader(tmp_path: Path) -> None:
    up, _ = tls_session(tmp_path, "a.example", b"x" * 3000)
    # the reader keeps record headers but leaves application-data bodies out
    out, pos, elided = bytearray(), 0, 0
    while pos + 5 <= len(up):
        length = int.from_bytes(up[pos + 3 : pos + 5], "big")
        out += up[pos : pos + 5]
        if up[pos] == 23:
            elided += length
        else:
            out += up[pos + 5 : pos + 5 + length]
        pos += 5 + length
    data = bytes(out) + b"\x16\x03\x03\x00\x20" + bytes(32)  # and a record after the elided one
    record = StreamUnit(Flow("tcp", "10.0.0.2", 40000, "192.0.2.1", 443), True, data, [0], [1], [0.0],
                        tls_elided=elided)
    result = analyze_unit(record, MATCHER)
    assert [c.host for c in result.contacts] == ["a.example"]


# --- CoAP ---------------------------------------------------------------------------------


def test_coap_uri_and_payload() -> None:
    message = CoAP(type=0, code=2, msg_id=0x1234, token=b"\x01\x02",
                   options=[("Uri-Host", b"zzhc.vnet.cn"), ("Uri-Path", b"nb"), ("Content-Format", b"\x32"),
                            ("Uri-Query", f"ep={IMEI}".encode())], paymark=b"\xff") / base64.b64encode(BODY)
    result = run(bytes(message), proto="udp", dport=5683)
    found = {(h.kind, h.encoding) for h in result.hits}
    assert ("imei", ("coap-uri", "plain")) in found
    assert ("imei", ("coap-payload", "base64", "json")) in found
    assert ("imsi", ("coap-payload", "base64", "json")) in found
    assert [(c.host, c.how) for c in result.contacts] == [("zzhc.vnet.cn", "coap-uri-host")]


def test_coap_on_another_port_is_recognised_by_its_uri() -> None:
    message = CoAP(type=0, code=2, msg_id=1, options=[("Uri-Host", b"m.fxltsbl.com"), ("Uri-Path", b"rd")])
    result = run(bytes(message) + b"\xff" + BODY, proto="udp", dport=15683)
    assert [c.host for c in result.contacts] == ["m.fxltsbl.com"]
    assert where(result)[("iccid", 1)] == ("coap-payload", "plain")


# --- other --------------------------------------------------------------------------------


def test_unknown_protocols_are_scanned_raw() -> None:
    assert where(run(b"\x00\x07REG" + BODY, dport=9999))[("imei", 1)] == ("tcp-payload", "plain")
    assert where(run(base64.b64encode(BODY), proto="udp", dport=9998))[("imei", 1)] == (
        "udp-payload", "base64", "json")
    other = StreamUnit(Flow("47", "10.0.0.2", 0, "192.0.2.1", 0), True, BODY, [0], [1], [0.0])
    assert where(analyze_unit(other, MATCHER))[("imei", 1)] == ("ip-payload", "plain")


def _protobuf_registration(imei: int, imsi: int) -> bytes:
    """A real protobuf message (built by the protobuf runtime from a descriptor, as an app's
    generated class would be) holding the IMEI as an int64 and the IMSI as a fixed64 field."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    proto = descriptor_pb2.FileDescriptorProto(name="reg.proto", package="reg")
    message = proto.message_type.add(name="Register")
    fields = descriptor_pb2.FieldDescriptorProto
    message.field.add(name="model", number=1, type=fields.TYPE_STRING, label=fields.LABEL_OPTIONAL)
    message.field.add(name="imei", number=2, type=fields.TYPE_INT64, label=fields.LABEL_OPTIONAL)
    message.field.add(name="imsi", number=3, type=fields.TYPE_FIXED64, label=fields.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    cls = message_factory.GetMessageClass(pool.FindMessageTypeByName("reg.Register"))
    return cls(model="TA-1062", imei=imei, imsi=imsi).SerializeToString()  # type: ignore[no-any-return]


def test_numeric_identifiers_as_binary_integers() -> None:
    body = _protobuf_registration(int(IMEI), int(IMSI))
    assert IMEI.encode() not in body and IMSI.encode() not in body
    found = where(run(http_request(body, "Content-Type: application/x-protobuf\r\n")))
    assert found[("imei", 1)] == ("http-body", "varint")
    assert found[("imsi", 1)] == ("http-body", "int-le")  # fixed64 is little-endian on the wire
    packed = struct.pack(">Q", int(IMEI)) + struct.pack("<Q", int(IMSI))
    assert where(run(packed, proto="udp", dport=9998)) == {("imei", 1): ("udp-payload", "int-be"),
                                                           ("imsi", 1): ("udp-payload", "int-le")}
    near = struct.pack(">Q", int(IMEI) + 1) + struct.pack("<Q", int(IMSI) - 1)  # other numbers: nothing
    assert run(near, proto="udp", dport=9998).hits == []


def test_imei_grouped_as_in_a_sip_urn_and_on_the_box() -> None:
    tac, snr, check = IMEI[:8], IMEI[8:14], IMEI[14]
    register = (f"REGISTER sip:ims.mnc001.mcc242.3gppnetwork.org SIP/2.0\r\n"
                f'Contact: <sip:10.0.0.2:5060>;+sip.instance="<urn:gsma:imei:{tac}-{snr}-{check}>"\r\n'
                "Content-Length: 0\r\n\r\n").encode()
    assert where(run(register, proto="udp", dport=5060)) == {("imei", 1): ("udp-payload", "separated")}
    boxed = f"IMEI {tac[:2]} {tac[2:]} {snr} {check}".encode()
    assert where(run(boxed, proto="udp", dport=9998)) == {("imei", 1): ("udp-payload", "separated")}
    other = f"urn:gsma:imei:{tac}-{int(snr) + 1:06d}-{check}".encode()  # another phone of the same model
    assert run(other, proto="udp", dport=5060).hits == []


def test_canary_in_a_dns_name() -> None:
    result = run(bytes(DNS(qd=DNSQR(qname="phc-canary-5e1f.invalid"))), proto="udp", dport=53)
    assert [(h.kind, h.encoding) for h in result.hits] == [("canary", ("dns-qname", "plain"))]


def test_batch_gives_the_same_answers_as_one_by_one() -> None:
    units = [unit(http_request(base64.b64encode(BODY))), unit(bytes(DNS(qd=DNSQR(qname="x.example"))),
                                                             proto="udp", dport=53),
             unit(b"nothing here"), unit(b"imsi=" + IMSI.encode(), proto="udp", dport=1)]
    batch = analyze_units(units, MATCHER)
    single = [analyze_unit(u, MATCHER) for u in units]
    assert [(r.hits, r.contacts, r.dns_answers) for r in batch] == [
        (r.hits, r.contacts, r.dns_answers) for r in single]
    assert batch[0].hits and batch[3].hits and not batch[2].hits


def _websocket(payloads: list[bytes]) -> tuple[bytes, bytes]:
    """(client stream, server stream) of a ws:// connection with permessage-deflate, written by
    wsproto: the client's messages masked, the server's echoed back compressed (unmasked)."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, BytesMessage, Request
    from wsproto.extensions import PerMessageDeflate

    client, server = WSConnection(ConnectionType.CLIENT), WSConnection(ConnectionType.SERVER)
    up = client.send(Request(host="push.example.com", target="/ws", extensions=[PerMessageDeflate()]))
    server.receive_data(up)
    next(server.events())
    down = server.send(AcceptConnection(extensions=[PerMessageDeflate()]))
    client.receive_data(down)
    next(client.events())
    for payload in payloads:
        up += client.send(BytesMessage(payload))
        down += server.send(BytesMessage(payload))
    return up, down


def run_ws(stream: bytes, *, from_client: bool = True, cuts: Sequence[int] = (), overlap: int = 0) -> UnitResult:
    """A TCP direction as the flow layer gives it (windows ending at `cuts`, each starting `overlap`
    bytes before the last one ended) through the WebSocket reader: the hits of every unit."""
    reader = WebSocketReader()
    units: list[StreamUnit] = []
    start = 0
    for number, end in enumerate([*cuts, len(stream)], 1):
        offset = max(0, start - overlap)
        window = StreamUnit(Flow("tcp", "10.0.0.2", 40000, "42.99.2.15", 80), from_client, stream[offset:end], [0],
                            [number], [float(number)], stream_offset=offset)
        units += [window, *reader.feed(window)]
        start = end
    merged = UnitResult()
    for result in analyze_units(units, MATCHER):
        merged.hits += result.hits
    return merged


def test_websocket_messages_both_ways() -> None:
    up, down = _websocket([b'{"op":"hello"}', BODY])
    assert IMEI.encode() not in up and IMEI.encode() not in down  # masked / compressed on the wire
    assert where(run_ws(up))[("imei", 1)] == ("websocket", "deflate", "json")
    assert where(run_ws(down, from_client=False))[("imei", 1)] == ("websocket", "deflate", "json")


def test_websocket_messages_across_windows_wherever_they_are_cut() -> None:
    """Frames and messages (fragmented, compressed with a shared window) that windows cut anywhere:
    in a header, in a payload, in a frame longer than a window."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, BytesMessage, Request
    from wsproto.extensions import PerMessageDeflate

    for deflate in (False, True):
        client, server = WSConnection(ConnectionType.CLIENT), WSConnection(ConnectionType.SERVER)
        extensions = [PerMessageDeflate()] if deflate else []
        stream = client.send(Request(host="push.example.com", target="/ws", extensions=extensions))
        server.receive_data(stream)
        next(server.events())
        client.receive_data(server.send(AcceptConnection(extensions=[PerMessageDeflate()] if deflate else [])))
        next(client.events())
        noise = random.Random(11)
        for _ in range(3):
            stream += client.send(BytesMessage(noise.randbytes(300)))
        stream += client.send(BytesMessage(noise.randbytes(40), message_finished=False))
        stream += client.send(BytesMessage(BODY[:50], message_finished=False))  # fragments, IMEI in the next
        stream += client.send(BytesMessage(BODY[50:]))
        stream += client.send(BytesMessage(noise.randbytes(5000)))  # longer than a window below
        stream += client.send(BytesMessage(BODY))
        head = stream.index(b"\r\n\r\n") + 4
        for cut in range(head + 1, len(stream) - 1, 37):
            found = {h.kind for h in run_ws(stream, cuts=[cut, min(cut + 2000, len(stream) - 1)], overlap=64).hits}
            assert "imei" in found and "iccid" in found, (deflate, cut)


def test_websocket_edges_real_streams_have() -> None:
    secret = json.dumps({"IMEI1": IMEI}).encode()
    # a ping with the IMEI, cut by a window: joined before it is scanned
    ping = WS_UPGRADE + _ws_frame(b"x" * 40) + _ws_frame(secret, opcode=9)
    cut = len(WS_UPGRADE) + len(_ws_frame(b"x" * 40)) + 2 + 4 + 14  # header, key, then into the IMEI
    assert "imei" in {h.kind for h in run_ws(ping, cuts=[cut], overlap=0).hits}
    # a message left unfinished when the next one starts: what there was of it is read
    unfinished = WS_UPGRADE + _ws_frame(secret, fin=False) + _ws_frame(b"next message")
    assert "imei" in {h.kind for h in run_ws(unfinished).hits}
    # the same 4-tuple reused by a new connection: its handshake starts a new stream
    flow = Flow("tcp", "10.0.0.2", 40000, "42.99.2.15", 80)
    reader = WebSocketReader()
    first = StreamUnit(flow, True, WS_UPGRADE + _ws_frame(b"hello"), [0], [1], [1.0])
    second = StreamUnit(flow, True, WS_UPGRADE + _ws_frame(secret), [0], [2], [2.0])
    units = [first, *reader.feed(first), second, *reader.feed(second)]
    assert any(h.kind == "imei" for r in analyze_units(units, MATCHER) for h in r.hits)
    # the frame named is the one that carried the identifier, not the message's last
    message = _ws_frame(secret + b"y" * 300)
    stream = WS_UPGRADE + message
    at = len(WS_UPGRADE)
    window = StreamUnit(flow, True, stream, [0, at, at + 100, at + 200], [1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0])
    (joined,) = WebSocketReader().feed(window)
    hit = next(h for h in analyze_units([joined], MATCHER)[0].hits if h.kind == "imei")
    assert joined.frames_between(hit.start, hit.end) == [2]


def test_a_conflicting_retransmission_does_not_lose_the_channel() -> None:
    """The flow layer hands a retransmission that disagrees with what it kept on as a unit of its
    own (`extra`), ahead of the window it belongs to: the reader goes on with the main run."""
    stream = WS_UPGRADE + _ws_frame(b"z" * 3000) + _ws_frame(BODY)
    flow = Flow("tcp", "10.0.0.2", 40000, "42.99.2.15", 80)
    reader = WebSocketReader()
    first = StreamUnit(flow, True, stream[:1000], [0], [1], [1.0])
    conflict = StreamUnit(flow, True, bytes(500), [0], [3], [3.0], True, 2000, extra=True)
    rest = StreamUnit(flow, True, stream[900:], [0], [2], [2.0], stream_offset=900)
    units = [first, *reader.feed(first), conflict, *reader.feed(conflict), rest, *reader.feed(rest)]
    assert any(h.kind == "imei" for r in analyze_units(units, MATCHER) for h in r.hits)


def test_a_tiny_frame_flood_costs_a_bounded_time_per_byte() -> None:
    """1 MiB of masked one-byte messages: linear, and one scanned unit, not one per message."""
    frame = _ws_frame(b"x")
    stream = WS_UPGRADE + frame * ((1 << 20) // len(frame))
    window = StreamUnit(Flow("tcp", "10.0.0.2", 40000, "42.99.2.15", 80), True, stream, [0], [1], [1.0])
    assert len(list(WebSocketReader().feed(window))) == 1


def _ws_frame(payload: bytes, *, opcode: int = 2, fin: bool = True, rsv1: bool = False) -> bytes:
    """One masked client frame per RFC 6455 5.2 (for what wsproto will not write: a deflate
    stream ended with BFINAL, a message cut short)."""
    key = b"\x1f\x2e\x3d\x4c"
    head = bytes([fin << 7 | rsv1 << 6 | opcode])
    if len(payload) < 126:
        head += bytes([0x80 | len(payload)])
    else:
        head += bytes([0x80 | 126]) + len(payload).to_bytes(2, "big")
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


WS_UPGRADE = _websocket([])[0]
WS_STREAM = _websocket([BODY, base64.b64encode(BODY), b"x" * 300])[0]


def test_websocket_inflation_survives_what_senders_and_captures_do() -> None:
    def deflated(data: bytes, final: bool) -> bytes:
        packer = zlib.compressobj(9, zlib.DEFLATED, -15)
        out = packer.compress(data) + packer.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)
        return out if final else out[:-4]

    # a sender that ends each message's deflate stream (BFINAL): the next message starts anew
    ended = WS_UPGRADE + _ws_frame(deflated(b'{"op":"hello"}', True), rsv1=True) \
        + _ws_frame(deflated(BODY, True), rsv1=True)
    assert where(run_ws(ended))[("imei", 1)] == ("websocket", "deflate", "json")
    # the capture ends inside a compressed message: what inflated before the cut is scanned
    cut = WS_UPGRADE + _ws_frame(deflated(BODY + random.Random(7).randbytes(4000), False), rsv1=True)
    assert where(run_ws(cut[:-200]))[("imei", 1)] == ("websocket", "deflate", "json")
    # a first fragment, then bytes that are no frame: the fragment is still read
    broken = WS_UPGRADE + _ws_frame(BODY, fin=False) + b"\x80"
    assert where(run_ws(broken))[("imei", 1)] == ("websocket", "plain")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(0, 2000), flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6),
       windows=st.lists(st.integers(1, 2000), max_size=3))
def test_mangled_websocket_streams_never_raise(cut: int, flips: list[tuple[int, int]], windows: list[int]) -> None:
    data = bytearray(WS_STREAM[:cut] if cut < len(WS_STREAM) else WS_STREAM)
    for at, value in flips:
        if len(data) > len(WS_UPGRADE):
            data[len(WS_UPGRADE) + at % (len(data) - len(WS_UPGRADE))] = value
    run_ws(bytes(data), cuts=sorted({w for w in windows if w < len(data)}), overlap=16)


SEEDS = [http_request(base64.b64encode(BODY), headers="Transfer-Encoding: chunked\r\n"),
         bytes(DNS(qr=1, qd=DNSQR(qname="a.b.example"), an=DNSRR(rrname="a.b.example", rdata="1.2.3.4"))),
         bytes(CoAP(type=0, code=2, msg_id=1, options=[("Uri-Host", b"h.example"), ("Uri-Path", b"p")]))
         + b"\xff" + BODY,
         b"\x16\x03\x01\x00\x30\x01\x00\x00\x2c\x03\x03" + bytes(40), gzip.compress(BODY),
         b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(20) + zlib.compress(BODY)[2:]]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(SEEDS), cut=st.integers(0, 400), flips=st.lists(st.tuples(st.integers(0, 400),
       st.integers(0, 255)), max_size=6), port=st.sampled_from([53, 80, 443, 5683, 5353, 9999]),
       proto=st.sampled_from(["tcp", "udp"]))
def test_mangled_messages_never_raise(seed: bytes, cut: int, flips: list[tuple[int, int]], port: int,
                                      proto: str) -> None:
    data = bytearray(seed[:cut] if cut < len(seed) else seed)
    for at, value in flips:
        if data:
            data[at % len(data)] = value
    result = run(bytes(data), proto=proto, dport=port)
    for hit in result.hits:
        assert 0 <= hit.start <= hit.end <= len(data)
