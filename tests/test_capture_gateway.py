"""Gateway capture on real interfaces in namespaces the tests create (capture_kit.NetLab).

Real tcpdump, real packets from real sockets, captures read back with scapy. A lab phone is a
namespace with `wlan0` on the router's bridge; the gateway listens on the bridge, as on an AP.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from capture_kit import NetLab, packets, random_mac, udp_payloads

from harness.capture.base import CaptureFailed, CaptureSetupError, State
from harness.capture.gateway import GatewayCapture, PhoneAddress, exclusion_bpf, parse_address, split_endpoint
from harness.capture.pcap import inspect
from harness.capture.tcpdump import BUFFER_TIMEOUT


@pytest.fixture
def lab(netns_available: None, tool: object) -> Iterator[NetLab]:
    tool("tcpdump")  # type: ignore[operator]
    with NetLab() as net:
        yield net


def test_captures_only_the_phone_and_writes_an_owner_only_file(lab: NetLab, tmp_path: Path) -> None:
    a, b = lab.add_phone(), lab.add_phone()
    out = tmp_path / "a.pcap"
    capture = GatewayCapture(out, lab.bridge, netns=lab.router, phone=lab.shell(a), check_mobile_data=False)
    capture.start()
    lab.udp(a, lab.router_ip, 4000, [b"from-a-%d" % i for i in range(5)])
    lab.udp(b, lab.router_ip, 4000, [b"from-b-%d" % i for i in range(5)])
    time.sleep(0.3)
    result = capture.stop()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert sorted(udp_payloads(out, 4000)) == [b"from-a-%d" % i for i in range(5)]
    info = inspect(out)
    assert (result.packets, result.bytes) == (info.packets, info.bytes) and info.packets >= 5
    assert not info.truncated and result.errors == []
    assert result.blind_windows == []
    sidecar = out.with_name("a.pcap.capture.json")
    assert stat.S_IMODE(sidecar.stat().st_mode) == 0o600


def test_filter_follows_a_new_mac_and_ip_across_a_reboot(lab: NetLab, tmp_path: Path) -> None:
    a, b = lab.add_phone(), lab.add_phone()
    out = tmp_path / "a.pcap"
    capture = GatewayCapture(out, lab.bridge, netns=lab.router, phone=lab.shell(a), check_mobile_data=False)
    capture.start()
    lab.udp(a, lab.router_ip, 4000, [b"before"])
    capture.before_reboot()
    lab.readdress(a, mac=random_mac(), ip="10.77.0.50")
    lab.udp(a, lab.router_ip, 4000, [b"power-up-1", b"power-up-2"])  # sent before adb would be back
    lab.udp(b, lab.router_ip, 4000, [b"other-phone-during-reboot"])
    time.sleep(0.3)
    capture.after_reboot()
    lab.udp(a, lab.router_ip, 4000, [b"after"])
    lab.udp(b, lab.router_ip, 4000, [b"other-phone-after"])
    time.sleep(0.3)
    result = capture.stop()
    assert udp_payloads(out, 4000) == [b"before", b"power-up-1", b"power-up-2", b"after"]
    times = [float(p.time) for p in packets(out)]  # type: ignore[attr-defined]
    assert times == sorted(times)
    assert any("address changed" in note for note in result.notes)
    assert result.blind_windows == [] and result.errors == []
    assert not list(tmp_path.glob("*.spool*")) and not list(tmp_path.glob("*.reboot*"))


def test_unchanged_address_after_reboot_keeps_the_filter(lab: NetLab, tmp_path: Path) -> None:
    a = lab.add_phone()
    capture = GatewayCapture(tmp_path / "a.pcap", lab.bridge, netns=lab.router, phone=lab.shell(a),
                             check_mobile_data=False)
    capture.start()
    capture.before_reboot()
    lab.udp(a, lab.router_ip, 4000, [b"power-up"])
    time.sleep(0.2)
    capture.after_reboot()
    result = capture.stop()
    assert udp_payloads(tmp_path / "a.pcap", 4000) == [b"power-up"]
    assert any("unchanged" in note for note in result.notes)


def test_unreadable_address_after_reboot_is_a_blind_window(lab: NetLab, tmp_path: Path) -> None:
    a = lab.add_phone()
    capture = GatewayCapture(tmp_path / "a.pcap", lab.bridge, netns=lab.router, phone=lab.shell(a),
                             check_mobile_data=False)
    capture.start()
    capture.before_reboot()
    lab.ip(a.ns, "link", "set", "wlan0", "name", "eth9")  # the phone no longer answers for wlan0
    capture.after_reboot()
    result = capture.stop()
    assert len(result.blind_windows) == 1
    window = result.blind_windows[0]
    assert "could not be re-read" in window.reason and window.start is not None and window.end is not None
    assert not window.acceptable


def test_adb_over_tcp_is_left_out(lab: NetLab, tmp_path: Path) -> None:
    a = lab.add_phone()
    server = lab.router
    out = tmp_path / "a.pcap"
    capture = GatewayCapture(out, lab.bridge, netns=lab.router, phone=lab.shell(a), check_mobile_data=False,
                             exclude=[f"{a.ip}:5555"])
    capture.start()
    lab.tcp_listen_and_send(server, a, lab.router_ip, 5555, b"adb-stream")  # stands in for adb over TCP
    lab.tcp_listen_and_send(server, a, lab.router_ip, 8080, b"app-traffic")
    time.sleep(0.3)
    result = capture.stop()
    from scapy.layers.inet import TCP

    ports = {p[TCP].dport for p in packets(out) if TCP in p} | {p[TCP].sport for p in packets(out) if TCP in p}  # type: ignore[operator,index]
    assert 8080 in ports and 5555 not in ports
    assert result.exclude == [f"{a.ip}:5555"]


def test_missing_interface_and_namespace_fail_at_start(lab: NetLab, tmp_path: Path) -> None:
    with pytest.raises(CaptureSetupError, match=r"interface nosuch0 in network namespace .* does not exist"):
        GatewayCapture(tmp_path / "x.pcap", "nosuch0", netns=lab.router).start()
    with pytest.raises(CaptureSetupError, match="namespace phnosuch does not exist"):
        GatewayCapture(tmp_path / "x.pcap", "br0", netns="phnosuch").start()
    assert not (tmp_path / "x.pcap").exists()


def covered(sent_at: float, windows: list[Any]) -> bool:
    return any(w.start is not None and w.end is not None and w.start <= sent_at <= w.end for w in windows)


def test_tcpdump_killed_mid_capture_is_restarted_and_the_gap_recorded(lab: NetLab, tmp_path: Path) -> None:
    a = lab.add_phone()
    out = tmp_path / "a.pcap"
    capture = GatewayCapture(out, lab.bridge, netns=lab.router, phone=lab.shell(a), check_mobile_data=False)
    capture.start()
    lab.udp(a, lab.router_ip, 4000, [b"one"])
    time.sleep(BUFFER_TIMEOUT + 0.5)  # delivered: libpcap retired its block
    lab.udp(a, lab.router_ip, 4000, [b"last-moment"])
    last_moment = time.time()
    assert capture.main is not None and capture.main.proc is not None
    os.kill(capture.main.proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not capture.blind_windows and time.monotonic() < deadline:
        time.sleep(0.05)
    while capture.blind_windows and capture.blind_windows[0].end is None and time.monotonic() < deadline:
        time.sleep(0.05)
    lab.udp(a, lab.router_ip, 4000, [b"two"])
    result = capture.stop()
    kept = udp_payloads(out, 4000)
    assert kept[0] == b"one" and kept[-1] == b"two"
    # a packet in libpcap's open block dies with tcpdump: kept, or inside the recorded blind window
    assert b"last-moment" in kept or covered(last_moment, result.blind_windows)
    assert result.errors and "exited" in result.errors[0]
    assert len(result.blind_windows) == 1 and result.blind_windows[0].end is not None
    assert not inspect(out).truncated


def test_interface_gone_for_good_fails_check(lab: NetLab, tmp_path: Path) -> None:
    a = lab.add_phone()
    capture = GatewayCapture(tmp_path / "a.pcap", "v1", netns=lab.router, check_mobile_data=False)
    capture.start()
    lab.udp(a, lab.router_ip, 4000, [b"seen"])
    time.sleep(BUFFER_TIMEOUT + 0.5)
    lab.ip(lab.router, "link", "del", "v1")
    deadline = time.monotonic() + 10
    while capture.health().state is not State.FAILED and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(CaptureFailed, match="tcpdump on v1"):
        capture.check()
    result = capture.stop()
    assert result.packets >= 1 and result.failed
    assert result.blind_windows[0].end == result.stopped
    assert udp_payloads(tmp_path / "a.pcap", 4000) == [b"seen"]


def test_size_cap_is_recorded_as_a_blind_window(lab: NetLab, tmp_path: Path) -> None:
    a = lab.add_phone()
    out = tmp_path / "a.pcap"
    capture = GatewayCapture(out, lab.bridge, netns=lab.router, phone=lab.shell(a), check_mobile_data=False,
                             max_bytes=400)
    capture.start()
    lab.udp(a, lab.router_ip, 4000, [b"x" * 100 for _ in range(10)])
    time.sleep(0.3)
    result = capture.stop()
    assert out.stat().st_size <= 400
    assert 0 < result.packets < 10
    assert any("size cap" in w.reason for w in result.blind_windows)


def test_killed_harness_leaves_a_readable_capture(lab: NetLab, tmp_path: Path) -> None:
    a = lab.add_phone()
    out = tmp_path / "killed.pcap"
    code = (
        "import sys, time\n"
        "from harness.capture.gateway import GatewayCapture\n"
        f"c = GatewayCapture({str(out)!r}, {lab.bridge!r}, netns={lab.router!r}, check_mobile_data=False)\n"
        "c.start(); print('started', flush=True); time.sleep(60)\n"
    )
    runner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert runner.stdout is not None and runner.stdout.readline().strip() == "started"
        lab.udp(a, lab.router_ip, 4000, [b"kept-%d" % i for i in range(3)])
        time.sleep(BUFFER_TIMEOUT + 0.5)  # a kill loses at most libpcap's open block (documented)
    finally:
        runner.kill()
        runner.wait()
    assert udp_payloads(out, 4000) == [b"kept-0", b"kept-1", b"kept-2"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_unfiltered_without_a_phone_says_so(lab: NetLab, tmp_path: Path) -> None:
    a = lab.add_phone()
    capture = GatewayCapture(tmp_path / "a.pcap", lab.bridge, netns=lab.router, check_mobile_data=False)
    capture.start()
    lab.udp(a, lab.router_ip, 4000, [b"x"])
    time.sleep(0.2)
    result = capture.stop()
    assert any("unfiltered" in n for n in result.notes) and result.settings["filter"] == "none"


def test_parsers() -> None:
    address = parse_address("AA:BB:CC:DD:EE:01\n", "3: wlan0    inet 10.0.0.5/24 brd 10.0.0.255 scope global wlan0\n"
                            "3: wlan0    inet6 fe80::1/64 scope link \n3: wlan0    inet6 2001:db8::5/64 scope global\n")
    assert address == PhoneAddress(("aa:bb:cc:dd:ee:01",), ("10.0.0.5", "2001:db8::5"))
    assert address.bpf() == "ether host aa:bb:cc:dd:ee:01 or host 10.0.0.5 or host 2001:db8::5"
    assert "aa:bb" not in address.describe()
    assert parse_address("cat: /sys/class/net/wlan0/address: No such file", "") == PhoneAddress()
    assert split_endpoint("[2001:db8::1]:5555") == ("2001:db8::1", 5555)
    assert split_endpoint("10.0.0.5:5555") == ("10.0.0.5", 5555)
    assert split_endpoint("2001:db8::1") == ("2001:db8::1", None)
    assert exclusion_bpf(["10.0.0.5:5555", ":5037"]) == "not ((host 10.0.0.5 and tcp port 5555) or tcp port 5037)"
