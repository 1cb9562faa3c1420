"""Flow table and TCP reassembly: orientation, out-of-order, retransmission, conflicting overlaps,
sequence wraparound, mid-stream captures, holes, window cuts, eviction, budgets, TLS elision, UDP,
fragments, tunnels, exclusion.

Captures are built with scapy (every segment's sequence number chosen by the test) and read back
through `open_capture`, the same path the analyzer takes.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
from pcap_kit import PHONE, PHONE6, SERVER, SERVER6, Conv, eth, joined, pcap_bytes, read, tcp, udp, write
from scapy.layers.inet import GRE, ICMP, IP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment

from harness.analyzer import flows
from harness.errors import PhonehomeError

IMEI = b"358240051111110"


def body(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size).hex().encode()[:size]


def tls_record(ctype: int, size: int, seed: int = 2) -> bytes:
    return bytes([ctype, 3, 3]) + size.to_bytes(2, "big") + random.Random(seed).randbytes(size)


# --- orientation -------------------------------------------------------------------------------


def test_client_is_the_syn_sender_even_with_the_higher_port_on_the_server(tmp_path: Path) -> None:
    conv = Conv(client=(PHONE, 80), server=(SERVER, 50000))
    units, stream = read(write(tmp_path / "c.pcap", [*conv.syn(), conv.data(True, 0, b"hello"),
                                                      conv.data(False, 0, b"world")]))
    assert [str(r.flow) for r in stream.flows] == [f"tcp {PHONE}:80 -> {SERVER}:50000"]
    assert {(u.from_client, u.data) for u in units} == {(True, b"hello"), (False, b"world")}


def test_synack_seen_first_makes_its_receiver_the_client(tmp_path: Path) -> None:
    conv = Conv()
    packets = [*conv.syn()[1:], conv.data(True, 0, b"GET / HTTP/1.1\r\n\r\n")]
    _, stream = read(write(tmp_path / "c.pcap", packets))
    flow = stream.flows[0].flow
    assert (flow.src, flow.sport, flow.dst, flow.dport) == (PHONE, 40000, SERVER, 80)


def test_without_syn_the_higher_port_is_the_client(tmp_path: Path) -> None:
    conv = Conv(client=(PHONE, 40000), server=(SERVER, 443))
    units, stream = read(write(tmp_path / "c.pcap", [conv.data(False, 0, b"from server first"),
                                                      conv.data(True, 0, b"then the client")]))
    flow = stream.flows[0].flow
    assert (flow.src, flow.sport) == (PHONE, 40000)
    by_side = {u.from_client: u for u in units}
    assert by_side[False].data == b"from server first" and by_side[True].data == b"then the client"
    assert all(u.gap_before for u in units)  # mid-stream: the stream may not start at a message boundary


def test_equal_ports_make_the_first_sender_the_client(tmp_path: Path) -> None:
    packets = [udp(SERVER, PHONE, 123, 123, b"first"), udp(PHONE, SERVER, 123, 123, b"second")]
    units, stream = read(write(tmp_path / "u.pcap", packets))
    assert stream.flows[0].flow.src == SERVER
    assert [(u.from_client, u.data) for u in units] == [(True, b"first"), (False, b"second")]


# --- reassembly --------------------------------------------------------------------------------


def test_out_of_order_segments_are_reassembled(tmp_path: Path) -> None:
    conv = Conv()
    data = b"POST /r HTTP/1.1\r\n\r\n" + b"imei=" + IMEI + b"&x=" + body(300)
    segments = conv.stream(True, data, size=40)
    order = segments[:1] + segments[3:] + segments[1:3]  # two segments arrive last
    units, stream = read(write(tmp_path / "o.pcap", [*conv.syn(), *order]))
    client = [u for u in units if u.from_client]
    assert len(client) == 1 and client[0].data == data and not client[0].gap_before
    assert stream.summary.evicted_bytes == 0


def test_retransmissions_are_not_duplicated(tmp_path: Path) -> None:
    conv = Conv()
    data = body(500)
    segments = conv.stream(True, data, size=100)
    units, _ = read(write(tmp_path / "r.pcap", [*conv.syn(), *segments[:3], segments[1], segments[2],
                                                 *segments[3:], segments[4]]))
    assert [u.data for u in units] == [data]


def test_partial_overlap_adds_only_the_new_bytes(tmp_path: Path) -> None:
    conv = Conv()
    data = body(300)
    packets = [*conv.syn(), conv.data(True, 0, data[:100]), conv.data(True, 50, data[50:200]),
               conv.data(True, 200, data[200:])]
    units, _ = read(write(tmp_path / "p.pcap", packets))
    assert [u.data for u in units] == [data]


def test_overlap_with_conflicting_data_hands_on_both_versions(tmp_path: Path) -> None:
    conv = Conv()
    first = b"id=AAAAAAAAAAAAAAA&ok=1"
    second = b"id=" + IMEI + b"&ok=1"  # same length, different bytes for the same sequence numbers
    packets = [*conv.syn(), conv.data(True, 0, first), conv.data(True, 0, second), conv.data(True, len(first), b"!")]
    units, _ = read(write(tmp_path / "x.pcap", packets))
    main = [u for u in units if not u.gap_before]
    extra = [u for u in units if u.gap_before]
    assert [u.data for u in main] == [first + b"!"]
    assert [u.data for u in extra] == [second] and extra[0].frames == [5]
    assert extra[0].stream_offset == main[0].stream_offset  # same place: consumers may dedupe by offset


def test_sequence_numbers_wrapping_around_2_to_the_32(tmp_path: Path) -> None:
    conv = Conv(isn=(0xFFFFFFFF - 150, 0xFFFFFFF0))
    data = b"msisdn=+4791234567&" + body(400)
    segments = conv.stream(True, data, size=64)
    reply = conv.stream(False, b"HTTP/1.1 200 OK\r\n\r\n" + body(100, 3), size=30)
    units, _ = read(write(tmp_path / "w.pcap", [*conv.syn(), *segments[:2], segments[3], segments[2], *segments[4:],
                                                 *reply]))
    assert joined(units, True) == data
    assert joined(units, False) == b"HTTP/1.1 200 OK\r\n\r\n" + body(100, 3)
    assert not any(u.gap_before for u in units)


def test_capture_starting_mid_stream(tmp_path: Path) -> None:
    conv = Conv(isn=(5000, 7000))
    data = body(600)
    units, stream = read(write(tmp_path / "m.pcap", conv.stream(True, data, size=100, start=12345)))
    assert [u.data for u in units] == [data] and units[0].gap_before
    assert stream.summary.analysable_packets == 6


def test_a_lost_segment_leaves_a_gap_and_the_rest_is_still_read(tmp_path: Path) -> None:
    conv = Conv()
    data = body(1000)
    segments = conv.stream(True, data, size=100)
    del segments[4]
    units, stream = read(write(tmp_path / "l.pcap", [*conv.syn(), *segments]))
    assert [(u.data, u.gap_before) for u in units] == [(data[:400], False), (data[500:], True)]
    assert any("gaps in TCP streams" in note for note in stream.notes)


def test_a_hole_skipped_under_pressure_is_read_when_its_bytes_arrive_late(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flows, "OOO_LIMIT", 300)
    conv = Conv()
    data = body(1000)
    segments = conv.stream(True, data, size=100)
    late = segments.pop(2)
    units, _ = read(write(tmp_path / "h.pcap", [*conv.syn(), *segments, late]))
    assert [u.data for u in units if u.data == data[200:300]] == [data[200:300]]
    assert b"".join(u.data for u in units if u.data != data[200:300]) == data[:200] + data[300:]
    offsets = sorted((u.stream_offset, len(u.data)) for u in units)
    assert all(a + n <= b for (a, n), (b, _) in itertools.pairwise(offsets))  # no shared offsets


def test_segment_too_far_ahead_is_dropped_and_counted(tmp_path: Path) -> None:
    conv = Conv()
    packets = [*conv.syn(), conv.data(True, 0, b"a" * 100), conv.data(True, flows.REORDER_SPAN + 5000, b"z" * 77),
               conv.data(True, 100, b"b" * 100)]
    units, stream = read(write(tmp_path / "e.pcap", packets))
    assert stream.summary.evicted_bytes == 77
    assert [u.data for u in units] == [b"a" * 100 + b"b" * 100]


def test_stream_that_really_jumps_ahead_is_followed(tmp_path: Path) -> None:
    conv = Conv()
    far = flows.REORDER_SPAN + 10_000
    packets = [*conv.syn(), conv.data(True, 0, b"start")]
    packets += [conv.data(True, far + i * 10, bytes([65 + i]) * 10) for i in range(flows.RESYNC_AFTER + 3)]
    units, stream = read(write(tmp_path / "j.pcap", packets))
    assert units[0].data == b"start"
    assert units[-1].gap_before and units[-1].data.endswith(b"K" * 10)
    assert stream.summary.evicted_bytes == 10 * (flows.RESYNC_AFTER - 1)


def test_window_cut_keeps_an_overlap_so_an_identifier_across_the_cut_is_whole(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flows, "WINDOW", 4096)
    monkeypatch.setattr(flows, "OVERLAP", 512)
    conv = Conv()
    data = bytearray(body(10_000))
    data[4090 : 4090 + len(IMEI)] = IMEI  # straddles the first cut at 4096
    data = bytes(data)
    units, _ = read(write(tmp_path / "cut.pcap", [*conv.syn(), *conv.stream(True, data, size=200)]))
    assert len(units) >= 3
    assert any(IMEI in u.data for u in units)
    for a, b in itertools.pairwise(units):
        assert b.stream_offset == a.stream_offset + len(a.data) - 512
        assert a.data[-512:] == b.data[:512]
        assert not b.gap_before
    assert joined(units) == data
    for unit in units:  # frames map bytes back to the segments that carried them
        for pos in (0, len(unit.data) // 2, len(unit.data) - 1):
            frame = unit.frames_between(pos, pos + 1)[0]
            start = unit.stream_offset + pos
            assert frame == 4 + start // 200


def test_global_budget_flushes_the_largest_buffers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flows, "BUDGET", 3000)
    packets = []
    for i in range(4):
        conv = Conv(client=(PHONE, 41000 + i))
        packets += conv.syn()
        packets += conv.stream(True, body(2000, i), size=250)
    units, stream = read(write(tmp_path / "b.pcap", packets))
    assert len(units) > 4  # flushed early, not only at the end
    for i in range(4):
        mine = [u for u in units if u.flow.sport == 41000 + i]
        assert joined(mine) == body(2000, i)
    assert stream.summary.evicted_bytes == 0


def test_snapshot_length_cut_packets_leave_a_gap(tmp_path: Path) -> None:
    conv = Conv()
    frames = [bytes(p) for p in [*conv.syn(), conv.data(True, 0, b"A" * 300), conv.data(True, 300, b"B" * 300)]]
    frames[3] = frames[3][:14 + 20 + 20 + 100]  # the capture kept only 100 payload bytes
    path = tmp_path / "snap.pcap"
    write(path, frames)
    units, _ = read(path)
    assert [(u.data, u.gap_before) for u in units] == [(b"A" * 100, False), (b"B" * 300, True)]


def test_fin_ends_a_direction_and_port_reuse_makes_a_new_flow(tmp_path: Path) -> None:
    conv = Conv()
    first = [*conv.syn(), conv.data(True, 0, b"one"), conv.data(True, 3, b"", flags="FA"),
             conv.data(False, 0, b"", flags="FA")]
    again = Conv(isn=(777777, 888888))
    second = [*again.syn(), again.data(True, 0, b"two")]
    units, stream = read(write(tmp_path / "reuse.pcap", first + second))
    assert [u.data for u in units] == [b"one", b"two"]
    assert len(stream.flows) == 2
    assert [r.first_frame for r in stream.flows] == [1, 7]
    assert [r.packets for r in stream.flows] == [6, 4]


def test_rst_flushes_both_directions(tmp_path: Path) -> None:
    conv = Conv()
    packets = [*conv.syn(), conv.data(True, 0, b"request"), conv.data(False, 0, b"partial reply"),
               conv.data(False, 13, b"", flags="R"), conv.data(True, 7, b"after reset")]
    units, _ = read(write(tmp_path / "rst.pcap", packets))
    assert [u.data for u in units] == [b"request", b"partial reply"]


def test_frames_and_times_map_bytes_back(tmp_path: Path) -> None:
    conv = Conv()
    packets = [*conv.syn(), conv.data(True, 0, b"aaaa"), conv.data(False, 0, b"zz"), conv.data(True, 4, b"bbbb")]
    units, _ = read(write(tmp_path / "f.pcap", packets, start=100.0))
    client = next(u for u in units if u.from_client)
    assert client.frames == [4, 6] and client.frame_offsets == [0, 4]
    assert client.frames_between(5, 7) == [6]
    assert client.time_at(0) == pytest.approx(100.003) and client.time_at(6) == pytest.approx(100.005)


# --- TLS ----------------------------------------------------------------------------------------


def test_tls_application_data_is_elided_and_handshake_kept(tmp_path: Path) -> None:
    conv = Conv(server=(SERVER, 443))
    hello = tls_record(22, 300, 5)
    app1, app2 = tls_record(23, 5000, 6), tls_record(23, 2000, 7)
    stream_bytes = hello + app1 + app2
    units, _ = read(write(tmp_path / "tls.pcap", [*conv.syn(), *conv.stream(True, stream_bytes, size=1448)]))
    [unit] = units
    assert unit.data == hello + app1[:5] + app2[:5]
    assert unit.tls_elided == 7000
    assert unit.frames[0] == 4


def test_tls_header_split_across_segments(tmp_path: Path) -> None:
    conv = Conv(server=(SERVER, 443))
    data = tls_record(22, 50, 1) + tls_record(23, 100, 2) + tls_record(21, 2, 3)
    cuts = [0, 52, 57, 58, len(data)]  # the second header is cut 2+3, the third 1+4
    packets = [*conv.syn()] + [conv.data(True, a, data[a:b]) for a, b in itertools.pairwise(cuts)]
    units, _ = read(write(tmp_path / "split.pcap", packets))
    assert units[0].data == data[:60] + data[160:]
    assert units[0].tls_elided == 100


def test_stream_that_stops_parsing_as_tls_is_kept_raw(tmp_path: Path) -> None:
    conv = Conv(server=(SERVER, 443))
    tail = b"GET /?imei=" + IMEI + b" HTTP/1.1\r\n\r\n"
    data = tls_record(22, 40, 1) + tls_record(23, 500, 2) + tail
    units, _ = read(write(tmp_path / "fall.pcap", [*conv.syn(), *conv.stream(True, data, size=200)]))
    assert units[0].data == data[:45] + data[45:50] + tail
    assert IMEI in units[0].data


def test_loss_inside_an_encrypted_body_keeps_following_tls(tmp_path: Path) -> None:
    conv = Conv(server=(SERVER, 443))
    data = tls_record(23, 3000, 1) + tls_record(23, 100, 2) + tls_record(22, 20, 3)
    segments = conv.stream(True, data, size=500)
    del segments[2]  # bytes 1000-1500: inside the first record's body
    units, stream = read(write(tmp_path / "loss.pcap", [*conv.syn(), *segments]))
    assert [u.data for u in units] == [data[:5] + data[3005:3010] + data[3110:]]
    assert not units[0].gap_before and not any("gaps" in note for note in stream.notes)


def test_out_of_order_encrypted_segments_cost_no_memory(tmp_path: Path) -> None:
    conv = Conv(server=(SERVER, 443))
    data = tls_record(23, 6000, 1) + tls_record(22, 30, 2)
    segments = conv.stream(True, data, size=1000)
    units, stream = read(write(tmp_path / "ooo.pcap", [*conv.syn(), segments[0], *segments[2:], segments[1]]))
    assert [u.data for u in units] == [data[:5] + data[6005:]]
    assert stream.summary.evicted_bytes == 0


# --- UDP, other protocols, IP layers ------------------------------------------------------------


def test_udp_one_unit_per_datagram(tmp_path: Path) -> None:
    packets = [udp(PHONE, SERVER, 5683, 5683, b"coap-1"), udp(PHONE, "10.1.0.1", 40001, 53, b"q1"),
               udp("10.1.0.1", PHONE, 53, 40001, b"answer"), udp(PHONE, "10.1.0.1", 40001, 53, b"q2")]
    units, stream = read(write(tmp_path / "u.pcap", packets))
    assert [(u.flow.dport, u.from_client, u.data) for u in units] == [
        (5683, True, b"coap-1"), (53, True, b"q1"), (53, False, b"answer"), (53, True, b"q2")]
    assert [u.frames for u in units] == [[1], [2], [3], [4]]
    dns = next(r for r in stream.flows if r.flow.dport == 53)
    assert (dns.flow.src, dns.flow.sport, dns.packets) == (PHONE, 40001, 3)


def test_other_ip_protocols_are_units_named_by_number(tmp_path: Path) -> None:
    ping = eth() / IP(src=PHONE, dst=SERVER) / ICMP() / (b"ping " + IMEI)
    units, stream = read(write(tmp_path / "icmp.pcap", [ping]))
    assert units[0].flow.proto == "1" and units[0].data.endswith(IMEI)
    assert stream.flows[0].flow.sport == 0


def test_ipv4_fragments_are_reassembled(tmp_path: Path) -> None:
    payload = b"{\"imei\":\"" + IMEI + b"\"}" + body(3000)
    datagram = IP(src=PHONE, dst=SERVER, id=4242) / UDP(sport=40000, dport=9999) / payload
    pieces = [eth() / p for p in fragment(datagram, fragsize=800)]
    units, _ = read(write(tmp_path / "frag.pcap", pieces[::-1]))  # last fragment first
    assert [u.data for u in units] == [payload]


def test_incomplete_fragments_are_counted_not_silent(tmp_path: Path) -> None:
    datagram = IP(src=PHONE, dst=SERVER, id=7) / UDP(sport=40000, dport=9999) / body(3000)
    pieces = [eth() / p for p in fragment(datagram, fragsize=800)]
    units, stream = read(write(tmp_path / "frag.pcap", pieces[:-1]))
    assert units == []
    assert stream.summary.evicted_bytes == sum(len(bytes(p[IP].payload)) for p in pieces[:-1])
    assert any("fragments" in note for note in stream.notes)


def test_fragments_that_wait_too_long_are_dropped_and_counted(tmp_path: Path) -> None:
    datagram = IP(src=PHONE, dst=SERVER, id=9) / UDP(sport=40000, dport=9999) / body(2000)
    first, *rest = [eth() / p for p in fragment(datagram, fragsize=800)]
    later = [udp(PHONE, SERVER, 40001, 9999, b"tick %d" % i) for i in range(3)]
    frames = [(0.0, bytes(first)), (50.0, bytes(later[0])), (100.0, bytes(later[1]))]
    frames += [(100.1, bytes(p)) for p in rest]  # the rest of the datagram, long after
    path = tmp_path / "late.pcap"
    path.write_bytes(pcap_bytes([(1_700_000_000 + t, f) for t, f in frames]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("harness.analyzer.reader.CHUNK", 1)  # maintain() (the sweep) runs between chunks
        units, stream = read(path)
    assert [u.data for u in units] == [b"tick 0", b"tick 1"]  # the late fragments never make a datagram
    assert stream.summary.evicted_bytes == len(bytes(datagram[IP].payload))


def test_ipv6_extension_headers_and_fragments(tmp_path: Path) -> None:
    from scapy.layers.inet6 import IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, fragment6

    ext = eth() / IPv6(src=PHONE6, dst=SERVER6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / \
        IPv6ExtHdrDestOpt() / UDP(sport=40000, dport=5683) / b"ext-headers"
    big = IPv6(src=PHONE6, dst=SERVER6) / IPv6ExtHdrFragment(id=99) / UDP(sport=40002, dport=9999) / body(2500)
    pieces = [eth() / p for p in fragment6(big, 1000)]
    conv = Conv(client=(PHONE6, 40001), server=(SERVER6, 80))
    packets = [ext, *pieces[1:], pieces[0], *conv.syn(), conv.data(True, 0, b"v6 tcp")]
    units, _ = read(write(tmp_path / "v6.pcap", packets))
    assert [(u.flow.src, u.flow.dport, u.data) for u in units] == [
        (PHONE6, 5683, b"ext-headers"), (PHONE6, 9999, body(2500)), (PHONE6, 80, b"v6 tcp")]


def test_tunnels_are_unwrapped(tmp_path: Path) -> None:
    inner = IP(src=PHONE, dst=SERVER) / UDP(sport=40000, dport=53) / b"inner"
    packets = [eth() / IP(src="192.0.2.1", dst="192.0.2.2") / inner,  # IP in IP
               eth() / IP(src="192.0.2.1", dst="192.0.2.2") / GRE() / inner,
               eth() / IPv6(src="2001:db8::1", dst="2001:db8::2") / inner]
    units, _ = read(write(tmp_path / "tun.pcap", packets))
    assert [(u.flow.src, u.flow.dst, u.data) for u in units] == [(PHONE, SERVER, b"inner")] * 3


def test_many_flows_retire_the_oldest_and_keep_their_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(flows, "MAX_CONNS", 40)
    monkeypatch.setattr(flows, "MAX_RECORDS", 50)
    packets = [udp(PHONE, "10.1.0.1", 30000 + i, 53, b"q%d" % i) for i in range(120)]
    packets += [udp(PHONE, "10.1.0.1", 30000, 53, b"again")]
    # maintain() runs once per chunk of the file: make every frame its own chunk
    monkeypatch.setattr("harness.analyzer.reader.CHUNK", 1)
    units, stream = read(write(tmp_path / "many.pcap", packets))
    assert len(units) == 121
    assert len(stream.flows) == 50  # past MAX_RECORDS, flows to the same service fold into its record
    assert sum(r.packets for r in stream.flows) == 121
    assert any("71 flows beyond 50 were folded" in note for note in stream.notes)
    assert stream.summary.analysable_packets == 121


# --- exclusion ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "excluded"), [
    ("10.1.0.2", 2), (f"{SERVER}:5555", 1), ("10.1.0.0/24", 2), (f"[{SERVER6}]:5555", 1), (SERVER6, 1),
    ("198.51.100.1", 0),
])
def test_exclude_drops_matching_flows_and_counts_them(tmp_path: Path, spec: str, excluded: int) -> None:
    adb = Conv(client=(PHONE, 50123), server=(SERVER, 5555))
    other = Conv(client=(PHONE, 40000), server=(SERVER, 80))
    v6 = Conv(client=(PHONE6, 40000), server=(SERVER6, 5555))
    packets = [*adb.syn(), adb.data(True, 0, b"CNXN serial"), *other.syn(), other.data(True, 0, b"GET /"),
               *v6.syn(), v6.data(True, 0, b"v6 adb")]
    units, stream = read(write(tmp_path / "x.pcap", packets), exclude=(spec,))
    assert stream.summary.excluded_flows == excluded
    kept = {u.data for u in units}
    assert len(kept) == 3 - excluded
    assert [r.excluded for r in stream.flows].count(True) == excluded
    assert stream.summary.analysable_packets == 4 * (3 - excluded)


@pytest.mark.parametrize("spec", ["adb.example.com", "10.1.0.2:99999", "[fd00::1", "10.1.0.2:port", "[::1]x"])
def test_bad_exclude_spec_is_one_clear_error(tmp_path: Path, spec: str) -> None:
    path = write(tmp_path / "x.pcap", Conv().syn())
    with pytest.raises(PhonehomeError) as info:
        flows.open_capture(path, [spec])
    assert "--exclude" in str(info.value) and "\n" not in str(info.value)


def test_tcp_segment_helper_sanity() -> None:
    """The helper really sets the sequence numbers the tests rely on (so they can fail)."""
    segment = tcp(PHONE, SERVER, 1, 2, 0xFFFFFFFF + 5, "A")
    assert segment["TCP"].seq == 4
