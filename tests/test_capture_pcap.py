"""The pcap plumbing under every backend: streams cut anywhere, restarts, caps, merges, files.

Captures are built with scapy and read back with scapy; the stream pump is fed the bytes in
chunks of every size a pipe or an adb socket might deliver.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pcap_kit import eth
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import CookedLinuxV2
from scapy.packet import Packet, Raw
from scapy.utils import PcapNgWriter, PcapWriter, rdpcap, wrpcap

from harness.capture.pcap import (
    LinkTypeChanged,
    PcapFormat,
    PcapSink,
    StreamPump,
    inspect,
    merge,
    open_private,
)


def frames(n: int, *, start: float = 1_700_000_000.0, tag: bytes = b"p") -> list[Packet]:
    out: list[Packet] = []
    for i in range(n):
        packet = eth() / IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=4000, dport=53) / Raw(tag + b"%d" % i * 7)
        packet.time = start + i * 0.001
        out.append(packet)
    return out


def chunks_of(data: bytes, sizes: list[int]) -> list[bytes]:
    out, at = [], 0
    for size in sizes:
        if at >= len(data):
            break
        out.append(data[at:at + size])
        at += size
    if at < len(data):
        out.append(data[at:])
    return out


def reader(parts: list[bytes]) -> object:
    queue = list(parts)
    return lambda _n: queue.pop(0) if queue else b""


def pump(parts: list[bytes], sink: PcapSink) -> StreamPump:
    worker = StreamPump(reader(parts), sink).start()  # type: ignore[arg-type]
    assert worker.join(10)
    return worker


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(min_value=1, max_value=900), min_size=1, max_size=60))
def test_records_survive_any_chunking(tmp_path_factory: pytest.TempPathFactory, sizes: list[int]) -> None:
    tmp = tmp_path_factory.mktemp("chunks")
    source, out = tmp / "in.pcap", tmp / "out.pcap"
    packets = frames(25)
    wrpcap(str(source), packets)
    sink = PcapSink(out)
    worker = pump(chunks_of(source.read_bytes(), sizes), sink)
    sink.close()
    assert worker.error is None and worker.partial == 0
    assert [bytes(p) for p in rdpcap(str(out))] == [bytes(p) for p in packets]
    assert sink.packets == 25 and sink.bytes == sum(len(p) for p in packets)
    assert sink.first == pytest.approx(float(packets[0].time)) and sink.last == pytest.approx(float(packets[-1].time))


def test_a_restarted_stream_joins_the_same_file_in_its_format(tmp_path: Path) -> None:
    first, second, out = tmp_path / "a.pcap", tmp_path / "b.pcap", tmp_path / "out.pcap"
    wrpcap(str(first), frames(3, tag=b"a"))
    with PcapWriter(str(second), endianness=">", nano=True) as writer:  # another byte order and precision
        for packet in frames(2, start=1_700_000_100.123456, tag=b"b"):
            writer.write(packet)
    sink = PcapSink(out)
    pump([first.read_bytes()], sink)
    pump([second.read_bytes()], sink)
    sink.close()
    back = rdpcap(str(out))
    assert [bytes(p)[-8:] for p in back] == [bytes(p)[-8:] for p in frames(3, tag=b"a") + frames(2, tag=b"b")]
    assert float(back[3].time) == pytest.approx(1_700_000_100.123456, abs=1e-6)
    assert PcapFormat.parse(out.read_bytes()[:24]).endian == "<"


def test_a_stream_of_another_link_type_is_refused(tmp_path: Path) -> None:
    ether, cooked, out = tmp_path / "e.pcap", tmp_path / "c.pcap", tmp_path / "out.pcap"
    wrpcap(str(ether), frames(2))
    wrpcap(str(cooked), [CookedLinuxV2() / IP() / UDP()])
    sink = PcapSink(out)
    pump([ether.read_bytes()], sink)
    second = pump([cooked.read_bytes()], sink)
    sink.close()
    assert second.error is not None and "link type 276" in second.error
    assert len(rdpcap(str(out))) == 2
    with pytest.raises(LinkTypeChanged):
        sink.begin(PcapFormat("<", False, 65535, 276))


def test_text_instead_of_pcap_is_kept_for_the_error(tmp_path: Path) -> None:
    sink = PcapSink(tmp_path / "out.pcap")
    worker = pump([b"tcpdump: any: You don't have permission to capture on that device\n"], sink)
    assert worker.error is not None and b"permission" in worker.text
    assert not worker.started.is_set() and not (tmp_path / "out.pcap").exists()


def test_a_stream_cut_mid_record_keeps_whole_records(tmp_path: Path) -> None:
    source, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    wrpcap(str(source), frames(4))
    data = source.read_bytes()
    sink = PcapSink(out)
    worker = pump([data[:-10]], sink)
    sink.close()
    assert worker.partial > 0 and worker.error is None
    info = inspect(out)
    assert info.packets == 3 and not info.truncated


def test_a_corrupt_record_length_stops_the_stream(tmp_path: Path) -> None:
    source = tmp_path / "in.pcap"
    wrpcap(str(source), frames(1))
    data = bytearray(source.read_bytes())
    struct.pack_into("<I", data, 24 + 8, 0x7FFFFFFF)
    worker = pump([bytes(data)], PcapSink(tmp_path / "out.pcap"))
    assert worker.error is not None and "corrupt" in worker.error


def test_size_cap_keeps_what_fits_and_counts_the_rest(tmp_path: Path) -> None:
    source, out = tmp_path / "in.pcap", tmp_path / "out.pcap"
    packets = frames(10)
    wrpcap(str(source), packets)
    record = 16 + len(packets[0])
    sink = PcapSink(out, max_bytes=24 + 3 * record + 5)
    pump([source.read_bytes()], sink)
    sink.close()
    assert sink.packets == 3 and sink.over_cap == 7 and sink.capped_at is not None
    assert out.stat().st_size == 24 + 3 * record and len(rdpcap(str(out))) == 3


def test_merge_orders_by_time_and_drops_duplicates(tmp_path: Path) -> None:
    a, b, out = tmp_path / "a.pcap", tmp_path / "b.pcap", tmp_path / "out.pcap"
    early = frames(3, start=100.0, tag=b"x")
    late = frames(3, start=100.0005, tag=b"y")
    wrpcap(str(a), early)
    wrpcap(str(b), [late[0], late[1], early[2], late[2]])  # early[2] again: seen by two overlapping segments
    assert merge([a, b], out) == 6
    times = [float(p.time) for p in rdpcap(str(out))]
    assert times == sorted(times) and len(times) == 6
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_inspect_counts_pcapng_and_flags_truncation(tmp_path: Path) -> None:
    ng = tmp_path / "x.pcapng"
    with PcapNgWriter(str(ng)) as writer:
        for packet in frames(4):
            writer.write(packet)
    info = inspect(ng)
    assert (info.kind, info.packets, info.linktypes) == ("pcapng", 4, [1])
    cut = tmp_path / "cut.pcap"
    wrpcap(str(cut), frames(3))
    cut.write_bytes(cut.read_bytes()[:-5])
    info = inspect(cut)
    assert info.truncated and info.packets == 2


def test_open_private_is_owner_only_and_refuses_symlinks(tmp_path: Path) -> None:
    loose = tmp_path / "loose.pcap"
    loose.write_bytes(b"")
    loose.chmod(0o644)
    with open_private(loose) as handle:
        handle.write(b"x")
    assert stat.S_IMODE(loose.stat().st_mode) == 0o600
    link = tmp_path / "link.pcap"
    os.symlink(tmp_path / "elsewhere", link)
    with pytest.raises(OSError):
        open_private(link)
    assert not (tmp_path / "elsewhere").exists()
