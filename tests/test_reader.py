"""Capture reading: pcap and pcapng variants, every link type, comments and app attribution, bad
input, truncated files, and captures written by the real tcpdump of traffic the test makes on
loopback or inside a network namespace it creates.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pcap_kit import PHONE, SERVER, Conv, Ng, eth, pcap_bytes, read, udp, write
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q
from scapy.layers.ppp import PPP, PPPoE
from scapy.utils import PcapNgWriter, RawPcapNgReader, RawPcapReader, wrpcap

from conftest import free_port, missing_setup
from harness.analyzer.flows import open_capture
from harness.analyzer.reader import CaptureFile
from harness.errors import CaptureError

T0 = 1_700_000_000.25
PAYLOAD = b"GET /reg?imei=358240051111110 HTTP/1.1\r\n\r\n"


def ip_packet(payload: bytes = PAYLOAD, v6: bool = False, sport: int = 40000) -> Any:
    layer = IPv6(src="fd00::2", dst="2001:db8::5") if v6 else IP(src=PHONE, dst=SERVER)
    return layer / TCP(sport=sport, dport=80, seq=10, flags="PA") / payload


def only_unit(path: Path) -> Any:
    units, stream = read(path)
    assert len(units) == 1, units
    return units[0], stream


# --- pcap variants -----------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_byte_orders_and_resolutions(tmp_path: Path, order: str, nano: bool) -> None:
    frames = [(T0, bytes(eth() / ip_packet())), (T0 + 1.000000123, bytes(eth() / ip_packet(b"more", v6=True)))]
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap_bytes(frames, order=order, nano=nano))
    units, stream = read(path)
    summary = stream.summary
    assert (summary.frames, summary.bytes, summary.link_types) == (2, sum(len(f) for _, f in frames), [1])
    assert summary.first == pytest.approx(T0, abs=1e-6)
    assert summary.last == pytest.approx(T0 + 1.000000123, abs=1e-9 if nano else 1e-6)
    assert [u.data for u in units] == [PAYLOAD, b"more"]
    assert not summary.truncated
    assert len(list(RawPcapReader(str(path)))) == 2  # scapy reads the same file


def test_modified_pcap_with_24_byte_records(tmp_path: Path) -> None:
    path = tmp_path / "m.pcap"
    path.write_bytes(pcap_bytes([(T0, bytes(eth() / ip_packet()))], modified=True))
    unit, stream = only_unit(path)
    assert unit.data == PAYLOAD and stream.summary.frames == 1


def test_scapy_written_pcap_and_pcapng_agree(tmp_path: Path) -> None:
    conv = Conv()
    packets = [*conv.syn(), conv.data(True, 0, PAYLOAD), udp(PHONE, "10.1.0.1", 40001, 53, b"dns")]
    for n, p in enumerate(packets):
        p.time = T0 + n
    wrpcap(str(tmp_path / "a.pcap"), packets)
    writer = PcapNgWriter(str(tmp_path / "a.pcapng"))
    for p in packets:
        writer.write(p)
    writer.close()
    a, sa = read(tmp_path / "a.pcap")
    b, sb = read(tmp_path / "a.pcapng")
    assert [(u.flow, u.data, u.frames, u.times) for u in a] == [(u.flow, u.data, u.frames, u.times) for u in b]
    assert (sa.summary.frames, sa.summary.first, sa.summary.last) == (sb.summary.frames, sb.summary.first,
                                                                       sb.summary.last) == (5, T0, T0 + 4)


# --- link types ----------------------------------------------------------------------------------


def _null_header(af: int, order: str) -> bytes:
    return struct.pack(order + "I", af)


LINKS: list[tuple[str, int, Callable[[Any], bytes]]] = [
    ("ethernet", 1, lambda p: bytes(eth() / p)),
    ("vlan", 1, lambda p: bytes(eth() / Dot1Q(vlan=7) / p)),
    ("qinq", 1, lambda p: bytes(eth() / Dot1AD(vlan=100) / Dot1Q(vlan=7) / p)),
    ("pppoe", 1, lambda p: bytes(eth() / PPPoE(sessionid=3) / PPP(proto=0x0021 if p.version == 4 else 0x0057) / p)),
    ("sll", 113, lambda p: bytes(CookedLinux(pkttype=4, lladdrtype=1, lladdrlen=6,
                                             proto=0x0800 if p.version == 4 else 0x86DD) / p)),
    ("sll2", 276, lambda p: bytes(CookedLinuxV2(proto=0x0800 if p.version == 4 else 0x86DD, ifindex=2) / p)),
    ("raw", 101, bytes),
    ("raw12", 12, bytes),
    ("raw14", 14, bytes),
    ("null-le", 0, lambda p: _null_header(2 if p.version == 4 else 30, "<") + bytes(p)),
    ("null-be", 0, lambda p: _null_header(2 if p.version == 4 else 24, ">") + bytes(p)),
    ("loop", 108, lambda p: _null_header(2 if p.version == 4 else 28, ">") + bytes(p)),
]


@pytest.mark.parametrize(("name", "link", "frame"), LINKS, ids=[n for n, _, _ in LINKS])
@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_link_types(tmp_path: Path, name: str, link: int, frame: Callable[[Any], bytes], v6: bool) -> None:
    path = tmp_path / f"{name}.pcap"
    path.write_bytes(pcap_bytes([(T0, frame(ip_packet(v6=v6)))], link=link))
    unit, stream = only_unit(path)
    assert unit.data == PAYLOAD
    assert (unit.flow.sport, unit.flow.dport) == (40000, 80)
    assert stream.summary.link_types == [link] and stream.summary.analysable_packets == 1


@pytest.mark.parametrize(("link", "v6"), [(228, False), (229, True)])
def test_raw_ipv4_and_ipv6_link_types(tmp_path: Path, link: int, v6: bool) -> None:
    path = tmp_path / "r.pcap"
    path.write_bytes(pcap_bytes([(T0, bytes(ip_packet(v6=v6)))], link=link))
    assert only_unit(path)[0].data == PAYLOAD


def test_unsupported_link_type_is_counted_and_said(tmp_path: Path) -> None:
    path = tmp_path / "wifi.pcap"
    path.write_bytes(pcap_bytes([(T0, b"\x08\x00" + bytes(40))] * 3, link=105))
    units, stream = read(path)
    assert units == [] and stream.summary.frames == 3 and stream.summary.analysable_packets == 0
    assert any("link type 105" in note for note in stream.notes)


def test_frames_that_are_not_ip_are_skipped(tmp_path: Path) -> None:
    arp = bytes(eth()) [:12] + b"\x08\x06" + bytes(28)
    path = tmp_path / "arp.pcap"
    path.write_bytes(pcap_bytes([(T0, arp), (T0 + 1, bytes(eth() / ip_packet())), (T0 + 2, b"\x00" * 5)]))
    unit, stream = only_unit(path)
    assert unit.frames == [2] and stream.summary.frames == 3 and stream.summary.analysable_packets == 1


# --- pcapng --------------------------------------------------------------------------------------


def test_pcapng_interfaces_resolutions_blocks_and_comments(tmp_path: Path) -> None:
    ng = Ng("<").shb(comment="captured at the gateway")
    ng.idb(1, comment="eth1 towards the phone")  # default resolution: microseconds
    ng.idb(101, tsresol=9, tsoffset=100)  # nanoseconds, 100 s offset
    ng.idb(276, tsresol=0x80 | 20)  # 2^-20 s
    ng.epb(0, int(T0 * 1e6), bytes(eth() / ip_packet(b"one")))
    ng.epb(1, int(T0 * 1e9) + 7, bytes(ip_packet(b"two", sport=40002)), comments=("checked by hand",))
    ng.isb()
    ng.epb(2, int(T0 * 2**20), bytes(CookedLinuxV2(proto=0x0800) / ip_packet(b"three", sport=40003)))
    ng.nrb([(bytes([203, 0, 113, 5]), ["api.example.com", "cdn.example.com"])])
    ng.spb(bytes(eth() / ip_packet(b"four", sport=40004)))  # interface 0, no time stamp
    path = tmp_path / "multi.pcapng"
    path.write_bytes(ng.bytes())
    units, stream = read(path)
    assert [u.data for u in units] == [b"one", b"two", b"three", b"four"]
    assert [u.frames for u in units] == [[1], [2], [3], [4]]
    assert units[0].times[0] == pytest.approx(T0, abs=1e-6)
    assert units[1].times[0] == pytest.approx(T0 + 100, abs=1e-6)
    assert units[2].times[0] == pytest.approx(T0, abs=1e-5)
    assert units[3].times == units[2].times  # a Simple Packet Block has no time: the previous one's
    assert stream.summary.link_types == [1, 101, 276]
    assert stream.summary.comments == ["section: captured at the gateway", "interface Ethernet: eth1 towards the phone",
                                       "frame 2: checked by hand"]
    assert stream.names == {SERVER: ["api.example.com", "cdn.example.com"]}
    assert stream.summary.first == pytest.approx(T0, abs=1e-5) and stream.summary.last == pytest.approx(T0 + 100)


def test_pcapng_big_endian_and_a_second_section(tmp_path: Path) -> None:
    first = Ng(">").shb().idb(101).epb(0, int(T0 * 1e6), bytes(ip_packet(b"big endian")))
    second = Ng("<").shb().idb(1).epb(0, int(T0 * 1e6) + 5, bytes(eth() / ip_packet(b"little endian", sport=4)))
    path = tmp_path / "sections.pcapng"
    path.write_bytes(first.bytes() + second.bytes())
    units, stream = read(path)
    assert [u.data for u in units] == [b"big endian", b"little endian"]
    assert stream.summary.link_types == [101, 1]


def test_hand_built_pcapng_is_what_libpcap_and_scapy_read(tmp_path: Path, tool: Callable[[str], str]) -> None:
    ng = Ng(">").shb().idb(1)
    for i in range(5):
        ng.epb(0, int(T0 * 1e6) + i, bytes(eth() / ip_packet(b"x%d" % i, sport=40000 + i)), comments=(f"c{i}",))
    path = tmp_path / "check.pcapng"
    path.write_bytes(ng.bytes())
    assert len(list(RawPcapNgReader(str(path)))) == 5
    out = subprocess.run([tool("tcpdump"), "-nr", str(path)], capture_output=True, text=True, check=True).stdout
    assert len(out.splitlines()) == 5
    assert read(path)[1].summary.frames == 5


# --- sending app -------------------------------------------------------------------------------


def pcapdroid_frame(packet: Any, uid: int, name: str) -> bytes:
    """PCAPdroid's 'pcapdroid_trailer' frame: bogus Ethernet header, IP, padding, 32-byte trailer."""
    raw = bytes(packet)
    head = b"\x00" * 12 + (b"\x08\x00" if raw[0] >> 4 == 4 else b"\x86\xdd")
    pad = b"\x00" * (-(14 + len(raw)) % 4)
    trailer = struct.pack("!Ii20s", 0x01072021, uid, name.encode()) + b"\xde\xad\xbe\xef"
    return head + raw + pad + trailer


def test_pcapdroid_trailer_names_the_app(tmp_path: Path) -> None:
    conv = Conv()
    frames = [pcapdroid_frame(p.payload, 10123, "com.example.reg") for p in [*conv.syn(), conv.data(True, 0, PAYLOAD)]]
    frames.append(pcapdroid_frame(udp(PHONE, "10.1.0.1", 40001, 53, b"dns").payload, 1000, "android"))
    path = write(tmp_path / "pd.pcap", frames)
    units, _ = read(path)
    assert sorted((u.data, u.app) for u in units) == [(PAYLOAD, "com.example.reg"), (b"dns", "android")]


def test_pcapng_packet_comments_attribute_apps(tmp_path: Path) -> None:
    ng = Ng("<").shb().idb(101)
    ng.pcapdroid_uid(10123, "com.qualcomm.qti.autoregistration", "Auto Registration")
    ng.epb(0, int(T0 * 1e6), bytes(ip_packet(b"mapped")), comments=("u-10123",))
    ng.epb(0, int(T0 * 1e6) + 1, bytes(IP(src=PHONE, dst=SERVER) / UDP(sport=41000, dport=9) / b"unmapped"),
           comments=("u-999",))
    ng.epb(0, int(T0 * 1e6) + 2, bytes(IP(src=PHONE, dst=SERVER) / UDP(sport=41001, dport=9) / b"named"),
           comments=("app=com.example.other",))
    ng.epb(0, int(T0 * 1e6) + 3, bytes(IP(src=PHONE, dst=SERVER) / UDP(sport=41002, dport=9) / b"plain"),
           comments=("retransmission seen here",))
    path = tmp_path / "apps.pcapng"
    path.write_bytes(ng.bytes())
    units, stream = read(path)
    assert {(u.data, u.app) for u in units} == {(b"mapped", "com.qualcomm.qti.autoregistration"),
                                               (b"unmapped", "uid 999"), (b"named", "com.example.other"),
                                               (b"plain", None)}
    assert stream.summary.comments == ["frame 4: retransmission seen here"]


# --- bad input, truncation, empty -------------------------------------------------------------


def _valid(tmp_path: Path) -> bytes:
    conv = Conv()
    packets = [*conv.syn(), conv.data(True, 0, PAYLOAD), conv.data(False, 0, b"HTTP/1.1 200 OK\r\n\r\n")]
    return pcap_bytes([(T0 + i, bytes(p)) for i, p in enumerate(packets)])


def test_truncated_last_record_is_read_up_to_the_cut(tmp_path: Path) -> None:
    whole = _valid(tmp_path)
    path = tmp_path / "cut.pcap"
    path.write_bytes(whole[:-10])  # the reply's record lacks its last 10 bytes
    units, stream = read(path)
    assert stream.summary.truncated and stream.summary.frames == 5
    assert sorted(u.data for u in units) == [PAYLOAD, b"HTTP/1.1 "]  # what the capture holds, cut short
    path.write_bytes(whole[: len(whole) - len(bytes(Conv().data(False, 0, b"HTTP/1.1 200 OK\r\n\r\n"))) - 8])
    units, stream = read(path)  # now the cut falls inside the last record's header
    assert stream.summary.truncated and stream.summary.frames == 4 and [u.data for u in units] == [PAYLOAD]
    assert stream.summary.bytes == sum(len(bytes(p)) for p in [*Conv().syn(), Conv().data(True, 0, PAYLOAD)])


def test_truncated_pcapng(tmp_path: Path) -> None:
    ng = Ng().shb().idb(1).epb(0, 1, bytes(eth() / ip_packet(b"first")))
    ng.epb(0, 2, bytes(eth() / ip_packet(b"second", sport=40001)))
    path = tmp_path / "cut.pcapng"
    path.write_bytes(ng.bytes()[:-6])  # the block's length field and two bytes of the packet
    units, stream = read(path)
    assert stream.summary.truncated and stream.summary.frames == 2
    assert sorted(u.data for u in units) == [b"first", b"seco"]
    path.write_bytes(ng.bytes()[:-12])  # now the second packet's TCP header is cut: nothing to read in it
    units, stream = read(path)
    assert stream.summary.truncated and stream.summary.frames == 2
    assert [u.data for u in units] == [b"first"]


def test_corrupt_record_length_stops_with_a_note(tmp_path: Path) -> None:
    whole = bytearray(_valid(tmp_path))
    at = 24
    for _ in range(4):  # to the fifth record (the reply)
        at += 16 + struct.unpack_from("<I", whole, at + 8)[0]
    struct.pack_into("<I", whole, at + 8, 0x7FFFFFF0)
    path = tmp_path / "corrupt.pcap"
    path.write_bytes(bytes(whole))
    units, stream = read(path)
    assert stream.summary.truncated and stream.summary.frames == 4 and [u.data for u in units] == [PAYLOAD]
    assert any("record of 2147483632 bytes" in n for n in stream.notes)


@pytest.mark.parametrize("kind", ["pcap-le", "pcap-be-ns", "pcapng"])
def test_valid_header_without_packets_is_empty_not_an_error(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "empty"
    if kind == "pcapng":
        path.write_bytes(Ng().shb().idb(1).bytes())
    else:
        path.write_bytes(pcap_bytes([], order="<" if kind == "pcap-le" else ">", nano=kind.endswith("ns")))
    units, stream = read(path)
    assert units == [] and stream.summary.frames == 0 and not stream.summary.truncated
    assert stream.summary.first is None


@pytest.mark.parametrize(("content", "says"), [
    (b"", "empty file"),
    (b"hello, this is not a capture\n", "looks like text"),
    (b"\x1f\x8b\x08\x00" + bytes(40), "gzip"),
    (bytes(range(256)) * 4, "not a pcap or pcapng"),
    (b"\xd4\xc3\xb2\xa1\x02\x00", "cut short"),
    (b"\x0a\x0d\x0d\x0a\x1c\x00\x00\x00\x99\x99\x99\x99" + bytes(16), "damaged"),
])
def test_not_a_capture_is_one_clear_error(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "bad.pcap"
    path.write_bytes(content)
    with pytest.raises(CaptureError) as info:
        read(path)
    message = str(info.value)
    assert says in message and str(path) in message and "\n" not in message


def test_missing_and_directory_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CaptureError, match="no such capture file"):
        read(tmp_path / "nope.pcap")
    with pytest.raises(CaptureError, match="is a directory"):
        read(tmp_path)


def test_a_pipe_is_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "capture.fifo"
    os.mkfifo(fifo)
    with pytest.raises(CaptureError, match="not a regular file"):
        read(fifo)


def test_mutated_captures_never_raise_anything_else(tmp_path: Path) -> None:
    """Flipped, dropped and repeated bytes: the reader reads what it can, or says it is no capture."""
    base = bytearray(_valid(tmp_path) + Ng().shb().idb(113).epb(0, 9, bytes(CookedLinux(proto=0x0800) /
                                                                          ip_packet())).bytes())
    rng = random.Random(8)
    path = tmp_path / "m.pcap"
    for _ in range(300):
        data = bytearray(base)
        for _ in range(rng.randrange(1, 6)):
            at = rng.randrange(len(data))
            action = rng.random()
            if action < 0.6:
                data[at] = rng.randrange(256)
            elif action < 0.8:
                del data[at : at + rng.randrange(1, 30)]
            else:
                data[at:at] = data[at : at + rng.randrange(1, 30)]
        if rng.random() < 0.2:  # sometimes a pcapng section first
            data = bytearray(base[len(_valid(tmp_path)) :]) + data
        path.write_bytes(bytes(data))
        with contextlib.suppress(CaptureError):
            read(path)


def test_read_pages_are_released(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The reader drops pages behind it (the resident size stays small on 1 GB captures)."""
    import harness.analyzer.reader as reader

    released: list[int] = []
    monkeypatch.setattr(reader, "RELEASE", 4096)
    monkeypatch.setattr(reader.CaptureFile, "_release", lambda self, upto: released.append(upto))
    conv = Conv()
    frames = [bytes(p) for p in conv.stream(True, bytes(80_000), size=1400)]
    units, _ = read(write(tmp_path / "big.pcap", frames))
    assert released and max(released) > 60_000
    assert sum(len(u.data) for u in units) == 80_000


def test_capture_file_is_closed_after_reading(tmp_path: Path) -> None:
    path = tmp_path / "c.pcap"
    path.write_bytes(_valid(tmp_path))
    capture = CaptureFile(path)
    capture.close()
    assert capture.buf.closed


def test_a_read_abandoned_half_way_still_closes(tmp_path: Path) -> None:
    """Buffers hold views of the memory map: closing must drop them first, not fail."""
    conv = Conv()
    packets = [*conv.syn(), *conv.stream(True, b"a" * 3000, size=500), udp(PHONE, "10.1.0.1", 40001, 53, b"q"),
               *conv.stream(True, b"b" * 3000, size=500, start=3000)]
    stream = open_capture(write(tmp_path / "half.pcap", packets))
    units = stream.units()
    assert next(units).data == b"q"  # the TCP flow's bytes are still buffered
    stream.close()
    assert stream._file.buf.closed


# --- captures written by the real tcpdump ------------------------------------------------------


TRAFFIC = textwrap.dedent("""
    import socket, sys, threading
    host, port, family = sys.argv[1], int(sys.argv[2]), socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port)); server.listen(1)
    def serve():
        conn, _ = server.accept()
        data = b""
        while not data.endswith(b"\\r\\n\\r\\n"):
            data += conn.recv(65536)
        conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")
        conn.close()
    thread = threading.Thread(target=serve); thread.start()
    client = socket.create_connection((host, port))
    client.sendall(sys.argv[3].encode() + b"x" * 5000 + b"\\r\\n\\r\\n")  # several segments on lo
    reply = b""
    while len(reply) < 40:
        chunk = client.recv(100)
        if not chunk:
            break
        reply += chunk
    client.close(); thread.join(); server.close()
    u = socket.socket(family, socket.SOCK_DGRAM); u.bind((host, 0))
    v = socket.socket(family, socket.SOCK_DGRAM); v.bind((host, port))
    u.sendto(b"datagram " + sys.argv[3].encode(), (host, port)); v.recv(100)
    print(reply.decode())
""")


@contextlib.contextmanager
def tcpdump(command: list[str], path: Path) -> Iterator[None]:
    """Run tcpdump until the block ends; wait until it listens; stop it with SIGINT."""
    # -B: with --immediate-mode the kernel ring holds few snaplen-sized slots; a burst overflows the default
    proc = subprocess.Popen([*command, "-U", "--immediate-mode", "-B", "32768", "-w", str(path)],
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        said = ""
        while "listening on" not in said:  # ("data link type ..." may come first)
            line = proc.stderr.readline()
            assert line, f"tcpdump did not start: {said}"
            said += line
        yield
        time.sleep(0.3)  # let the last packets reach the file
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_traffic(host: str, port: int, marker: str, netns: str | None = None) -> None:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    done = subprocess.run([*prefix, sys.executable, "-c", TRAFFIC, host, str(port), marker], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0 and "200 OK" in done.stdout, done.stderr


def check_real_capture(path: Path, host: str, port: int, marker: str) -> Any:
    units, stream = read(path)
    tcp_units = [u for u in units if u.flow.proto == "tcp" and u.flow.dport == port]
    request = b"".join(u.data for u in tcp_units if u.from_client)
    reply = b"".join(u.data for u in tcp_units if not u.from_client)
    assert request.startswith(marker.encode()) and request.endswith(b"x" * 100 + b"\r\n\r\n")
    assert len(request) >= len(marker) + 5004  # lo may repeat a packet: never fewer bytes
    assert reply.startswith(b"HTTP/1.1 200 OK")
    flow = tcp_units[0].flow
    assert (flow.dst, flow.dport) == (host, port) and flow.sport != port  # the connecting side is the client
    datagrams = [u for u in units if u.flow.proto == "udp" and port in (u.flow.sport, u.flow.dport)]
    assert datagrams and datagrams[0].data == b"datagram " + marker.encode()
    assert not stream.summary.truncated and stream.summary.analysable_packets >= 6
    return stream


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_tcpdump_on_loopback(tmp_path: Path, tool: Callable[[str], str], host: str) -> None:
    if os.geteuid() != 0:
        missing_setup("capturing on lo needs root")
    port = free_port()
    path = tmp_path / "lo.pcap"
    with tcpdump([tool("tcpdump"), "-i", "lo", f"port {port}"], path):
        run_traffic(host, port, "imei=358240051111110")
    stream = check_real_capture(path, host, port, "imei=358240051111110")
    assert stream.summary.link_types == [1]


@contextlib.contextmanager
def namespace() -> Iterator[str]:
    name = f"phrd{os.getpid() % 100000}{random.randrange(1000)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.mark.parametrize(("extra", "link"), [((), 276), (("-y", "LINUX_SLL"), 113)], ids=["sll2", "sll"])
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_tcpdump_any_inside_a_namespace(tmp_path: Path, tool: Callable[[str], str], netns_available: None,
                                        extra: tuple[str, ...], link: int, host: str) -> None:
    port = 8080
    path = tmp_path / "any.pcap"
    with namespace() as ns:
        if extra:
            probe = subprocess.run(["ip", "netns", "exec", ns, tool("tcpdump"), "-i", "any", "-L"],
                                   capture_output=True, text=True, check=False)
            if "LINUX_SLL " not in probe.stdout + probe.stderr:
                pytest.skip("this tcpdump cannot write LINUX_SLL for -i any")
        with tcpdump(["ip", "netns", "exec", ns, tool("tcpdump"), "-i", "any", *extra], path):
            run_traffic(host, port, "serial=NB1GAD2910402519", ns)
    stream = check_real_capture(path, host, port, "serial=NB1GAD2910402519")
    assert stream.summary.link_types == [link]


WEBSOCKET = textwrap.dedent("""
    import random, socket, sys, threading
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Request, TextMessage
    from wsproto.extensions import PerMessageDeflate
    server = socket.create_server(("127.0.0.1", 8081))
    def serve():
        conn, _ = server.accept()
        ws = WSConnection(ConnectionType.SERVER)
        while data := conn.recv(65536):
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, Request):
                    conn.sendall(ws.send(AcceptConnection(extensions=[PerMessageDeflate()])))
                elif isinstance(event, CloseConnection):
                    conn.sendall(ws.send(event.response()))
        conn.close()
    thread = threading.Thread(target=serve)
    thread.start()
    client = socket.create_connection(("127.0.0.1", 8081))
    ws = WSConnection(ConnectionType.CLIENT)
    client.sendall(ws.send(Request(host="push.example.com", target="/ws", extensions=[PerMessageDeflate()])))
    ws.receive_data(client.recv(65536))
    list(ws.events())
    noise = random.Random(1)
    for _ in range(100):  # 1.6 MB of incompressible messages first: the flow layer cuts the stream
        client.sendall(ws.send(BytesMessage(noise.randbytes(16000))))
    client.sendall(ws.send(TextMessage('{"IMEI1":"%s"}' % sys.argv[1])))
    client.sendall(ws.send(CloseConnection(code=1000)))
    ws.receive_data(client.recv(65536))
    client.close()
    thread.join(10)
""")


def test_tcpdump_of_a_real_websocket_channel(tmp_path: Path, tool: Callable[[str], str], netns_available: None) -> None:
    """A ws:// channel between real sockets (wsproto over loopback in a namespace), permessage-
    deflate on: the IMEI in a message past the first MiB is found, masked and compressed as sent."""
    from harness.analyzer import analyze
    from harness.identifiers import IdentifierSet

    imei = "358240051111110"
    path = tmp_path / "ws.pcap"
    with namespace() as ns, tcpdump(["ip", "netns", "exec", ns, tool("tcpdump"), "-i", "lo", "tcp port 8081"], path):
        done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", WEBSOCKET, imei],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
    assert imei.encode() not in path.read_bytes()
    report = analyze(path, IdentifierSet.from_mapping({"imei": [imei]}, "test"))
    assert [f.encoding[:2] for f in report.findings if f.identifier == "imei"] == [["websocket", "deflate"]]


TAGGED = textwrap.dedent("""
    import sys
    from scapy.all import Dot1AD, Dot1Q, Ether, IP, TCP, UDP, sendp
    marker = sys.argv[1].encode()
    base = Ether(src="02:00:5e:10:00:01", dst="02:00:5e:10:00:02")
    flow = IP(src="10.77.0.1", dst="10.77.0.2")
    frames = [base / Dot1Q(vlan=7) / flow / TCP(sport=40000, dport=8080, flags="S", seq=100),
              base / Dot1Q(vlan=7) / flow / TCP(sport=40000, dport=8080, flags="PA", seq=101, ack=1) / marker,
              base / Dot1AD(vlan=100) / Dot1Q(vlan=7) / flow / UDP(sport=40001, dport=9) / (b"datagram " + marker)]
    sendp(frames, iface="ph0", verbose=False)
""")


def test_tcpdump_on_a_vlan_trunk(tmp_path: Path, tool: Callable[[str], str], netns_available: None) -> None:
    """802.1Q (and QinQ) frames on a real interface, written by the real tcpdump: libpcap puts
    back the tag that veth's VLAN offload took off. (This kernel has no 8021q module for VLAN
    interfaces, so scapy sends the tagged frames; everything stays inside the namespace.)"""
    path = tmp_path / "trunk.pcap"
    marker = "imei=358240051111110"
    with namespace() as ns:
        for args in (["link", "add", "ph0", "type", "veth", "peer", "name", "gw0"],
                     ["link", "set", "ph0", "up"], ["link", "set", "gw0", "up"]):
            subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True)
        with tcpdump(["ip", "netns", "exec", ns, tool("tcpdump"), "-i", "gw0"], path):
            done = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", TAGGED, marker],
                                  capture_output=True, text=True, timeout=60, check=False)
            assert done.returncode == 0, done.stderr
    frames = [data for data, _ in RawPcapReader(str(path))]
    assert any(data[12:14] == b"\x81\x00" for data in frames)  # the tags are in the file
    assert any(data[12:14] == b"\x88\xa8" for data in frames)
    units, stream = read(path)
    assert stream.summary.link_types == [1]
    got = {(u.flow.proto, u.flow.dst, u.flow.dport, u.data) for u in units if u.flow.dst == "10.77.0.2"}
    assert got == {("tcp", "10.77.0.2", 8080, marker.encode()),  # (the kernel's own IPv6 ND frames aside)
                   ("udp", "10.77.0.2", 9, b"datagram " + marker.encode())}


def test_tcpdump_capture_killed_mid_write_is_truncated_not_an_error(tmp_path: Path,
                                                                     tool: Callable[[str], str]) -> None:
    if os.geteuid() != 0:
        missing_setup("capturing on lo needs root")
    port = free_port()
    path = tmp_path / "lo.pcap"
    with tcpdump([tool("tcpdump"), "-i", "lo", f"port {port}"], path):
        run_traffic("127.0.0.1", port, "imsi=242016000012345")
    whole = path.read_bytes()
    path.write_bytes(whole[:-7])  # a killed capture: the last record half written
    units, stream = read(path)
    assert stream.summary.truncated
    assert any(b"imsi=242016000012345" in u.data for u in units)
