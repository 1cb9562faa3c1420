"""Every capture backend against virtual phones, through the real adb server (private port).

The phones' traffic is real (their firmware's sockets in their own namespaces); the gateway
listens in each phone's router namespace, the device backend streams the phone's own tcpdump over
`exec:`, PCAPdroid is driven by intents and uiautomator2 presses its consent.
"""

# ruff: noqa: F811  (pytest fixtures imported from virtual_fixtures are parameters by design)

from __future__ import annotations

import dataclasses
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from virtual_fixtures import adb_client, make_spec, virtual_phones  # noqa: F401  (fixture)

from harness.capture.base import CaptureFailed, CaptureSetupError
from harness.capture.device import DeviceCapture
from harness.capture.gateway import GatewayCapture
from harness.capture.pcap import LINKTYPE_RAW, LINKTYPE_SLL2, inspect
from harness.capture.pcapdroid import PcapdroidCapture
from harness.capture.select import build, choose
from harness.device.adb import Adb
from harness.device.lifecycle import Lifecycle

Phones = Callable[..., list[Any]]


def adb_for(adb_server: dict[str, str], phone: Any) -> Adb:
    return Adb(adb_client(adb_server), phone.serial)


def reboot(adb: Adb) -> None:
    """The device layer's reboot: issued, gone, back, boot completed, package manager up."""
    Lifecycle(adb, sdk=30).reboot()


def tcp_payloads(path: Path) -> list[tuple[float, bytes]]:
    from scapy.layers.inet import TCP
    from scapy.utils import rdpcap

    return [(float(p.time), bytes(p[TCP].payload)) for p in rdpcap(str(path)) if TCP in p and bytes(p[TCP].payload)]


def has_query(path: Path, marker: str) -> bool:
    """The canary's DNS query, found the simplest way: its label bytes in a UDP payload."""
    from scapy.layers.inet import UDP
    from scapy.utils import rdpcap

    return any(marker.encode() in bytes(p[UDP].payload) for p in rdpcap(str(path)) if UDP in p)


def test_gateway_sees_power_up_that_the_device_backend_misses(virtual_phones: Phones, adb_server: dict[str, str],
                                                              tmp_path: Path) -> None:
    (phone,) = virtual_phones("clean")
    adb = adb_for(adb_server, phone)
    gateway = build(choose(None, virtual=True), tmp_path / "gw.pcap", adb=adb, network=phone.network,
                    attribution=False)
    device = DeviceCapture(tmp_path / "dev.pcap", adb)
    gateway.start()
    device.start()
    before = len(phone.firmware.sent())
    gateway.before_reboot()
    device.before_reboot()
    reboot(adb)
    # the power-up clients fire right after boot completes, before a phone-side capture can be back
    assert phone.firmware.wait_sent(lambda sent: any(s["trigger"] == "power-up" for s in sent[before:]), 20)
    time.sleep(0.5)
    gateway.after_reboot()
    device.after_reboot()
    canary = device.send_canary(adb)
    gw, dev = gateway.stop(), device.stop()

    (window,) = dev.blind_windows
    assert window.start is not None and window.end is not None and "reboot" in window.reason
    power_up = [t for t, data in tcp_payloads(tmp_path / "gw.pcap") if b"generate_204" in data]
    assert any(window.start <= t <= window.end for t in power_up), "gateway missed the power-up request"
    assert not any(window.start <= t <= window.end for t, _ in tcp_payloads(tmp_path / "dev.pcap"))
    assert gw.blind_windows == [] and gw.errors == [] and dev.errors == []
    assert has_query(tmp_path / "dev.pcap", canary.marker) and has_query(tmp_path / "gw.pcap", canary.marker)
    info = inspect(tmp_path / "dev.pcap")
    assert info.linktypes == [LINKTYPE_SLL2] and info.packets == dev.packets and not info.truncated
    assert dev.settings["restarts"] == 1 and f"not tcp port {phone.port}" in dev.settings["filter"]
    for name in ("gw.pcap", "dev.pcap", "gw.pcap.capture.json", "dev.pcap.capture.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600


def test_gateway_filter_follows_new_ip_and_mac_across_reboot(virtual_phones: Phones, adb_server: dict[str, str],
                                                            tmp_path: Path) -> None:
    (phone,) = virtual_phones("clean", faults=["new-ip-mac"])
    adb = adb_for(adb_server, phone)
    old_ip, old_mac = phone.network.phone_ip, phone.network.phone_mac
    capture = GatewayCapture(tmp_path / "gw.pcap", phone.network.router_capture_iface, netns=phone.network.router_ns,
                             phone=adb)
    capture.start()
    before = len(phone.firmware.sent())
    capture.before_reboot()
    reboot(adb)
    assert (phone.network.phone_ip, phone.network.phone_mac) != (old_ip, old_mac)
    assert phone.firmware.wait_sent(lambda sent: any(s["trigger"] == "power-up" for s in sent[before:]), 20)
    capture.after_reboot()
    canary = capture.send_canary(adb)
    result = capture.stop()
    from scapy.layers.inet import IP
    from scapy.utils import rdpcap

    sources = {p[IP].src for p in rdpcap(str(tmp_path / "gw.pcap")) if IP in p}
    assert phone.network.phone_ip in sources
    assert any(b"generate_204" in data for _, data in tcp_payloads(tmp_path / "gw.pcap"))
    assert has_query(tmp_path / "gw.pcap", canary.marker)
    assert any("address changed" in note for note in result.notes)
    assert len(result.settings["filters"]) == 2 and result.blind_windows == []


def test_gateway_reports_cellular_blind_window_when_mobile_data_is_on(virtual_phones: Phones,
                                                                     adb_server: dict[str, str],
                                                                     tmp_path: Path) -> None:
    (phone,) = virtual_phones("clean", faults=["mobile-data-on"])
    adb = adb_for(adb_server, phone)
    capture = GatewayCapture(tmp_path / "gw.pcap", phone.network.router_capture_iface, netns=phone.network.router_ns,
                             phone=adb)
    capture.start()
    result = capture.stop()
    (window,) = result.blind_windows
    assert window.path == "cellular" and "mobile data is on" in window.reason and not window.acceptable
    assert window.end == result.stopped


def test_gateway_with_mobile_data_off_has_no_cellular_window(virtual_phones: Phones, adb_server: dict[str, str],
                                                            tmp_path: Path) -> None:
    (phone,) = virtual_phones("clean")
    adb = adb_for(adb_server, phone)
    capture = GatewayCapture(tmp_path / "gw.pcap", phone.network.router_capture_iface, netns=phone.network.router_ns,
                             phone=adb)
    capture.start()
    capture.send_canary(adb)
    result = capture.stop()
    assert result.blind_windows == [] and result.packets > 0


def test_device_backend_needs_root(virtual_phones: Phones, adb_server: dict[str, str], tmp_path: Path) -> None:
    (phone,) = virtual_phones("clean", faults=["user-build"])
    capture = DeviceCapture(tmp_path / "dev.pcap", adb_for(adb_server, phone))
    with pytest.raises(CaptureSetupError) as caught:
        capture.start()
    message = str(caught.value)
    assert "permission" in message.lower() and "user build" in message and "\n" not in message
    assert not (tmp_path / "dev.pcap").exists()


# `tcpdump -h` of AOSP's tcpdump 4.5.1 (Android 7 and older), from external/tcpdump's usage(): no --immediate-mode
OLD_TCPDUMP_USAGE = """\
tcpdump version 4.5.1
libpcap version 1.5.3
Usage: tcpdump [-aAbdDefhHIJKlLnNOpqRStuUvxX] [ -B size ] [ -c count ]
\t\t[ -C file_size ] [ -E algo:secret ] [ -F file ] [ -G seconds ]
\t\t[ -i interface ] [ -j tstamptype ] [ -M secret ]
\t\t[ -Q in|out|inout ]
\t\t[ -r file ] [ -s snaplen ] [ -T type ] [ -V file ] [ -w file ]
\t\t[ -W filecount ] [ -y datalinktype ] [ -z command ]
\t\t[ -Z user ] [ expression ]
"""


class OldTcpdumpAdb(Adb):
    """The phone as before Android 8: its tcpdump answers `-h` without --immediate-mode."""

    def script(self, text: str, timeout: float | None = None, **options: Any) -> Any:
        result = super().script(text, timeout, **options)
        if " -h 2>&1" in text:
            return dataclasses.replace(result, stdout=OLD_TCPDUMP_USAGE)
        return result


@pytest.mark.parametrize(("asked", "tcpdump_age"), [(False, "android-8-and-later"), (True, "android-8-and-later"),
                                                   (True, "android-7")])
def test_device_backend_batching_or_immediate_mode_keeps_a_canary_sent_right_before_stop(
        virtual_phones: Phones, adb_server: dict[str, str], tmp_path: Path, asked: bool, tcpdump_age: str) -> None:
    """Batching by default (stop waits out the buffer timeout); `--immediate-mode` only where tcpdump has it."""
    from harness.capture.canary import send_canary

    (phone,) = virtual_phones("clean")
    old = tcpdump_age == "android-7"
    adb = OldTcpdumpAdb(adb_client(adb_server), phone.serial) if old else adb_for(adb_server, phone)
    capture = DeviceCapture(tmp_path / "dev.pcap", adb, immediate=asked)
    capture.start()
    used = asked and not old
    assert ("--immediate-mode" in capture.command()) is used
    canary = send_canary(adb)  # no settle wait: stop() right after must not lose it
    result = capture.stop()
    assert result.settings["immediate_mode"] is used and result.errors == []
    assert any("no --immediate-mode" in note for note in result.notes) is old
    assert has_query(tmp_path / "dev.pcap", canary.marker)


def test_device_tcpdump_dying_mid_capture_keeps_a_readable_file_and_fails(virtual_phones: Phones,
                                                                        adb_server: dict[str, str],
                                                                        tmp_path: Path) -> None:
    (phone,) = virtual_phones("clean", faults=["tcpdump-dies"])
    adb = adb_for(adb_server, phone)
    capture = DeviceCapture(tmp_path / "dev.pcap", adb)
    capture.start()
    capture.send_canary(adb)
    deadline = time.monotonic() + 15
    while capture.health().ok and time.monotonic() < deadline:
        time.sleep(0.1)
    with pytest.raises(CaptureFailed, match="tcpdump"):
        capture.check()
    result = capture.stop()
    assert result.failed and "stopped mid-capture" in result.errors[0]
    (window,) = result.blind_windows
    assert window.end == result.stopped
    info = inspect(tmp_path / "dev.pcap")
    assert info.packets == result.packets > 0 and not info.truncated


def test_pcapdroid_consent_pressed_and_restarted_after_reboot(virtual_phones: Phones, adb_server: dict[str, str],
                                                             tmp_path: Path) -> None:
    (phone,) = virtual_phones(make_spec("clean", pcapdroid=True))
    adb = adb_for(adb_server, phone)
    out = tmp_path / "pd.pcap"
    capture = PcapdroidCapture(out, adb)
    capture.start()
    first = capture.send_canary(adb)
    capture.before_reboot()
    reboot(adb)
    capture.after_reboot()
    second = capture.send_canary(adb)
    result = capture.stop()
    assert result.settings["consents"] == 3  # start, start after the reboot, stop
    (window,) = result.blind_windows
    assert "after boot" in window.reason and window.end is not None
    info = inspect(out)
    assert info.linktypes == [LINKTYPE_RAW] and info.packets == result.packets > 0
    assert has_query(out, first.marker) and has_query(out, second.marker)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    for remote in result.settings["segments"]:  # raw identifiers in shared storage: deleted, or said loudly
        assert capture.remote_size(remote) is None or any(remote in note for note in result.notes)
    restored = adb.script("appops get com.emanuelef.remote_capture ACTIVATE_VPN").stdout.strip()
    assert restored in ("No operations.", "ACTIVATE_VPN: default")  # as before the run, not left on allow


def test_pcapdroid_not_installed_is_one_clear_error(virtual_phones: Phones, adb_server: dict[str, str],
                                                    tmp_path: Path) -> None:
    (phone,) = virtual_phones("clean", network=False)
    with pytest.raises(CaptureSetupError, match=r"PCAPdroid .* is not installed"):
        PcapdroidCapture(tmp_path / "pd.pcap", adb_for(adb_server, phone)).start()


def test_socket_attribution_is_written_beside_the_capture(virtual_phones: Phones, adb_server: dict[str, str],
                                                         tmp_path: Path) -> None:
    (phone,) = virtual_phones("clean")
    adb = adb_for(adb_server, phone)
    capture = build(choose("device"), tmp_path / "dev.pcap", adb=adb, attribution_interval=0.5)
    capture.start()
    time.sleep(1.2)
    result = capture.stop()
    assert result.attribution == tmp_path / "dev.pcap.sockets.json"
    import json

    data = json.loads(result.attribution.read_text())
    assert data["version"] == 1 and data["snapshots"] >= 2
    # what the phone could not answer is said in the file, never silently empty
    assert data["sockets"] or any("no socket table" in e for e in data["errors"])
    assert data["packages"] or any("packages not read" in e for e in data["errors"])
    assert stat.S_IMODE(result.attribution.stat().st_mode) == 0o600


def test_socket_owners_name_the_app_of_a_flow_the_gateway_captured(virtual_phones: Phones,
                                                                   adb_server: dict[str, str], tmp_path: Path) -> None:
    """End to end through adb: `pm list packages -U` and /proc/net from the virtual phone, joined to captured flows."""
    import subprocess
    import sys

    from harness.analyzer.reader import open_capture
    from harness.capture.attribution import SocketOwners, parse_packages

    (phone,) = virtual_phones("clean")
    adb = adb_for(adb_server, phone)
    owners_of = parse_packages(adb.script("pm list packages -U").stdout)
    uid, (package,) = next((u, names) for u, names in sorted(owners_of.items()) if u >= 10000 and len(names) == 1)
    network = phone.network
    server = subprocess.Popen(network.router_exec_argv([
        sys.executable, "-c", "import socket,time\ns=socket.socket()\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(({network.router_ip!r}, 8086)); s.listen(); print('ready', flush=True)\n"
        "c,_=s.accept(); c.recv(100); time.sleep(30)\n"]), stdout=subprocess.PIPE, text=True)
    client = None
    capture = build(choose(None, virtual=True), tmp_path / "gw.pcap", adb=adb, network=network,
                    attribution_interval=0.3)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        capture.start()
        client = subprocess.Popen(network.exec_argv([
            "setpriv", "--reuid", str(uid), "--regid", str(uid), "--clear-groups", sys.executable, "-c",
            f"import socket,time\nc=socket.create_connection(({network.router_ip!r}, 8086)); c.sendall(b'hi'); "
            "print(c.getsockname()[1], flush=True); time.sleep(30)\n"]), stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None
        sport = int(client.stdout.readline())
        time.sleep(1.0)  # snapshots while the connection is open
        result = capture.stop()
    finally:
        for process in (client, server):
            if process is not None:
                process.kill()
                process.wait()
    assert result.attribution is not None
    owners = SocketOwners.load(result.attribution)
    stream = open_capture(result.path)
    for _unit in stream.units():
        pass
    (record,) = [r for r in stream.flows if r.flow.proto == "tcp" and r.flow.dport == 8086]
    flow = record.flow
    assert (flow.src, flow.sport) == (network.phone_ip, sport)
    assert owners.app(flow.proto, flow.src, flow.sport, flow.dst, flow.dport, record.first_time) == package
