"""A whole virtual phone through the real adb server, adbutils and uiautomator2: lifecycle, UI,
PCAPdroid, tcpdump, every fault, and cleanup.

Tests with `network=False` need no root; the others build the phone's network namespaces and are
skipped on a desk (failed in CI) without them.
"""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scapy.layers.dns import DNSQR
from scapy.layers.inet import ICMP, IP, TCP
from scapy.utils import PcapReader
from virtual_fixtures import adb_client, connect, make_spec

from harness.virtual.phone import VirtualPhone

Phones = Callable[..., list[VirtualPhone]]
PCAPDROID_START = ("am start -e action start -e pcap_dump_mode pcap_file -e pcap_name {name} "
                   "-n com.emanuelef.remote_capture/.activities.CaptureCtrl")
PCAPDROID_STOP = "am start -e action stop -n com.emanuelef.remote_capture/.activities.CaptureCtrl"


def quick(name: str = "clean", **changes: Any) -> Any:
    return make_spec(name, **{"boot_seconds": 0.6, **changes})


def until(what: Callable[[], Any], timeout: float = 30.0, step: float = 0.2) -> Any:
    """Poll until `what()` is truthy; the value (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)


def adb_cmd(adb_server: dict[str, str], *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([adb_server["ADBUTILS_ADB_PATH"], *args], env={**os.environ, **adb_server},
                          capture_output=True, text=True, timeout=60, **kwargs)


def test_listed_by_the_real_adb_server(virtual_phones: Phones, adb_server: dict[str, str]) -> None:
    phone, = virtual_phones(quick(), network=False)
    listing = adb_cmd(adb_server, "devices", "-l").stdout
    line = next(line for line in listing.splitlines() if line.startswith(phone.serial))
    spec = phone.spec
    assert re.search(rf"\bdevice product:\S+ model:{spec.model.replace(' ', '_')} device:\S+", line)
    assert adb_cmd(adb_server, "-s", phone.serial, "shell", "echo", "hi").stdout == "hi\n"
    assert adb_cmd(adb_server, "-s", phone.serial, "exec-out", "echo", "a b").stdout == "a b\n"


def test_adb_shell_without_a_command_reads_stdin(virtual_phones: Phones, adb_server: dict[str, str]) -> None:
    phone, = virtual_phones(quick(), network=False)
    script = "getprop ro.build.version.sdk\nexit 3\necho never\n"
    piped = adb_cmd(adb_server, "-s", phone.serial, "shell", input=script)
    assert (piped.returncode, piped.stdout) == (3, f"{phone.spec.sdk}\n")
    tty = subprocess.run([adb_server["ADBUTILS_ADB_PATH"], "-s", phone.serial, "shell", "-tt"], input=script.encode(),
                         env={**os.environ, **adb_server}, capture_output=True, timeout=60)
    assert tty.returncode == 3
    assert re.fullmatch(rb"(\S+:/ \$ )getprop ro.build.version.sdk\r\n%d\r\n\1exit 3\r\n" % phone.spec.sdk,
                        tty.stdout), "a pty: mksh's prompt, echo, CRLF"


def test_reboot_goes_away_boots_and_comes_back(virtual_phones: Phones, adb_server: dict[str, str]) -> None:
    phone, = virtual_phones(quick(boot_seconds=8.0), network=False)
    client = adb_client(adb_server)
    device = client.device(phone.serial)
    boot_id = device.shell("cat /proc/sys/kernel/random/boot_id")
    device.reboot()

    def state() -> str:
        return {d.serial: d.state for d in client.list()}.get(phone.serial, "gone")

    until(lambda: state() != "device")
    seen: list[str] = []

    def completed() -> bool:
        if state() != "device":
            client.disconnect(phone.serial)
            client.connect(phone.serial, timeout=3)
            return False
        try:
            seen.append(client.device(phone.serial).shell("getprop sys.boot_completed", timeout=5))
        except Exception:
            return False
        return seen[-1] == "1"

    until(completed, timeout=60, step=0.3)
    assert "" in seen, f"never saw the phone online while booting: {seen}"
    assert device.shell("cat /proc/sys/kernel/random/boot_id") != boot_id
    assert device.shell("pm path android").startswith("package:")


def test_uiautomator2_drives_the_phone(virtual_phones: Phones, adb_server: dict[str, str]) -> None:
    import uiautomator2 as u2

    phone, = virtual_phones(quick(android=11), network=False)
    device = adb_client(adb_server).device(phone.serial)
    d = u2.connect(device)
    info = d.info
    assert (info["screenOn"], info["sdkInt"], info["displayWidth"]) == (True, 30, device.window_size()[0])
    d.screen_off()
    assert d.info["screenOn"] is False
    assert "mWakefulness=Asleep" in device.shell("dumpsys power")
    d.unlock()  # uiautomator2: POWER key, then a swipe up
    assert d.info["screenOn"] is True
    assert re.search(r"KeyguardStateMonitor\n(?:.*\n)*?\s+mIsShowing=false", device.shell("dumpsys window"))
    image = d.screenshot()
    assert image.size == tuple(device.window_size())
    xml = d.dump_hierarchy()
    assert 'package="com.android.launcher3"' in xml and 'bounds="[' in xml
    d.press("power")
    assert "mIsShowing=true" in device.shell("dumpsys window")


def start_pcapdroid(d: Any, device: Any, name: str) -> None:
    device.shell("input keyevent 224; input swipe 540 1800 540 300")
    assert device.shell(PCAPDROID_START.format(name=name)).startswith("Starting: Intent {")
    assert d(text="PCAPdroid control request").wait(timeout=10)
    d(text="Allow", enabled=True).click(timeout=10)
    if d(text="OK", resourceId="android:id/button1").exists(timeout=3):
        d(text="OK", resourceId="android:id/button1").click()


def test_pcapdroid_asks_on_every_start_and_writes_the_file(virtual_phones: Phones, adb_server: dict[str, str],
                                                           tmp_path: Path) -> None:
    import uiautomator2 as u2

    phone, = virtual_phones(quick(android=14, pcapdroid=True), network=False)
    device = adb_client(adb_server).device(phone.serial)
    d = u2.connect(device)
    start_pcapdroid(d, device, "first.pcap")
    assert "first.pcap" in device.shell("ls /sdcard/Download/PCAPdroid")
    device.shell(PCAPDROID_STOP)
    assert d(text="PCAPdroid control request").wait(timeout=10), "stopping from a shell asks again"
    d(text="Allow", enabled=True).click(timeout=10)
    device.shell("appops set com.emanuelef.remote_capture ACTIVATE_VPN allow")
    device.shell(PCAPDROID_START.format(name="second.pcap"))
    d(text="Allow", enabled=True).click(timeout=10)
    assert not d(text="Connection request").exists(timeout=1), "the VPN consent was already given"
    device.sync.pull("/sdcard/Download/PCAPdroid/second.pcap", str(tmp_path / "second.pcap"))
    header = (tmp_path / "second.pcap").read_bytes()[:24]
    assert header[:4] == b"\xd4\xc3\xb2\xa1" and int.from_bytes(header[20:24], "little") == 101  # LINKTYPE_RAW


def gateway(device: Any) -> str:
    route = device.shell("ip route show default")
    match = re.search(r"default via (\S+)", route)
    assert match, route
    return match.group(1)


def test_pcapdroid_captures_the_phones_traffic(virtual_phones: Phones, adb_server: dict[str, str],
                                               tmp_path: Path) -> None:
    import uiautomator2 as u2

    phone, = virtual_phones(quick(android=11, pcapdroid=True))
    device = adb_client(adb_server).device(phone.serial)
    d = u2.connect(device)
    start_pcapdroid(d, device, "traffic.pcap")
    router = gateway(device)
    assert device.shell2(f"ping -c 2 -W 2 {router}").returncode == 0
    device.shell(PCAPDROID_STOP)
    d(text="Allow", enabled=True).click(timeout=10)
    until(lambda: "Stopped capture" in device.shell("logcat -d -s CaptureService"))
    device.sync.pull("/sdcard/Download/PCAPdroid/traffic.pcap", str(tmp_path / "t.pcap"))
    packets = list(PcapReader(str(tmp_path / "t.pcap")))
    echoes = [p for p in packets if p.haslayer(ICMP) and p[IP].dst == router and p[ICMP].type == 8]
    assert len(echoes) >= 2


def test_tcpdump_streams_a_real_capture_over_exec_out(virtual_phones: Phones, adb_server: dict[str, str]) -> None:
    phone, = virtual_phones(quick(android=9))
    device = adb_client(adb_server).device(phone.serial)
    router = gateway(device)
    # exec: has no stderr channel (adbd merges it, as a phone does): tcpdump's "listening on" goes to /dev/null
    proc = subprocess.Popen([adb_server["ADBUTILS_ADB_PATH"], "-s", phone.serial, "exec-out",
                             "tcpdump -i any -s 0 -U --immediate-mode -w - 'not port 5555' 2>/dev/null"],
                            env={**os.environ, **adb_server}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        header = proc.stdout.read(24)
        assert header[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
        assert device.shell2(f"ping -c 3 -W 2 {router}").returncode == 0
        by_name = device.shell2("ping -c 1 -W 2 zzhc.vnet.cn")  # a DNS lookup in the simulated internet, then ICMP
        assert by_name.returncode == 0 and "(42.99.2.15)" in by_name.output
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    packets = list(PcapReader(io.BytesIO(header + rest)))  # type: ignore[arg-type]  # a file object works
    assert sum(1 for p in packets if p.haslayer(ICMP) and p[ICMP].type == 8 and p[IP].dst == router) >= 3
    assert any(p.haslayer(DNSQR) and p[DNSQR].qname == b"zzhc.vnet.cn." for p in packets)
    assert any(p.haslayer(ICMP) and p[IP].dst == "42.99.2.15" for p in packets)


def test_fault_tcpdump_dies_mid_capture(virtual_phones: Phones, adb_server: dict[str, str]) -> None:
    phone, = virtual_phones(quick(), faults=["tcpdump-dies"])
    result = subprocess.run([adb_server["ADBUTILS_ADB_PATH"], "-s", phone.serial, "exec-out",
                             "tcpdump -i any -U -w - 2>/dev/null"], env={**os.environ, **adb_server},
                            capture_output=True, timeout=60)
    assert result.stdout[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"), "a capture started, then ended by itself"


def test_fault_unauthorized(virtual_phones: Phones, adb_server: dict[str, str]) -> None:
    phone, = virtual_phones(quick(), network=False, faults=["unauthorized"])
    listing = adb_cmd(adb_server, "devices").stdout
    assert f"{phone.serial}\tunauthorized" in listing


def test_fault_boot_never_completes(virtual_phones: Phones, adb_server: dict[str, str]) -> None:
    phone, = virtual_phones(quick(), network=False, faults=["boot-never-completes"])
    device = adb_client(adb_server).device(phone.serial)
    for _ in range(5):
        assert device.shell("getprop sys.boot_completed") == ""
        time.sleep(0.3)
    assert "Can't find service: package" in device.shell("pm path android")


def test_fault_drop_connection_mid_command(virtual_phones: Phones, adb_server: dict[str, str]) -> None:
    phone, = virtual_phones(quick(), network=False, faults=["drop-connection"])
    client = adb_client(adb_server)
    try:
        first: str | None = client.device(phone.serial).shell("getprop", timeout=10)
    except Exception:
        first = None
    connect(client, phone.serial)
    full = client.device(phone.serial).shell("getprop")
    assert full.endswith("]") and "[ro.serialno]" in full
    assert first is None or (len(first) < len(full) and full.startswith(first)), "the first command was cut off"


def test_fault_new_port_after_reboot(virtual_phones: Phones, adb_server: dict[str, str]) -> None:
    phone, = virtual_phones(quick(), network=False, faults=["new-port"])
    client = adb_client(adb_server)
    old, serialno = phone.serial, client.device(phone.serial).shell("getprop ro.serialno")
    changed: list[str] = []
    phone.on_serial_change(changed.append)
    client.device(old).reboot()
    until(lambda: phone.wait_booted(0.5) and phone.serial != old)
    assert changed == [phone.serial]
    connect(client, phone.serial)
    assert client.device(phone.serial).shell("getprop ro.serialno") == serialno


def test_fault_new_ip_and_mac_after_reboot(virtual_phones: Phones, adb_server: dict[str, str]) -> None:
    phone, = virtual_phones(quick(android=14), faults=["new-ip-mac"])
    client = adb_client(adb_server)
    device = client.device(phone.serial)
    before = (device.shell("cat /sys/class/net/wlan0/address"), device.shell("ip -4 addr show wlan0"))
    phone.reboot()
    connect(client, phone.serial)
    after = (device.shell("cat /sys/class/net/wlan0/address"), device.shell("ip -4 addr show wlan0"))
    assert after[0] != before[0]
    assert re.search(r"inet (\S+)", after[1]).group(1) != re.search(r"inet (\S+)", before[1]).group(1)  # type: ignore[union-attr]


def test_faults_private_dns_and_mobile_data(virtual_phones: Phones, adb_server: dict[str, str]) -> None:
    phone, = virtual_phones(quick(), network=False, faults=["private-dns-on", "mobile-data-on"])
    device = adb_client(adb_server).device(phone.serial)
    assert device.shell("settings get global private_dns_mode") == "hostname"
    assert device.shell("settings get global private_dns_specifier") not in ("", "null")
    assert device.shell("settings get global mobile_data") == "1"


def netns_names() -> set[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def test_stop_leaves_no_namespace_behind(netns_available: None) -> None:
    phone = VirtualPhone(quick())
    phone.start()
    ours = set(phone.network.namespaces)
    assert ours and ours <= netns_names(), "the phone runs in its own namespaces"
    state_dir = phone.state_dir
    assert state_dir is not None and state_dir.is_dir()
    phone.stop()
    assert not (netns_names() & ours)
    assert not state_dir.exists()


def test_cli_virtual_start_prints_the_serial_and_stops_on_ctrl_c(adb_server: dict[str, str]) -> None:
    code = ("import argparse, sys; from harness.virtual import cli; p = argparse.ArgumentParser(); "
            "cli.add_arguments(p); sys.exit(cli.run(p.parse_args(sys.argv[1:])))")
    proc = subprocess.Popen([sys.executable, "-c", code, "start", "clean", "--no-network"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **adb_server})
    try:
        assert proc.stdout is not None
        serial = None
        for line in proc.stdout:
            match = re.match(r"adb serial: (127\.0\.0\.1:\d+)", line)
            if match:
                serial = match.group(1)
                break
        assert serial, "no serial printed"
        client = adb_client(adb_server)
        connect(client, serial)
        assert client.device(serial).shell("getprop sys.boot_completed") == "1"
        client.disconnect(serial)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped" in err


def test_screen_on_reaches_the_firmware_whose_traffic_the_phones_tcpdump_sees(virtual_phones: Phones,
                                                                             adb_server: dict[str, str]) -> None:
    """The 2019 build: waking the screen fires its China Telecom client; the phone's own tcpdump sees the POST."""
    phone, = virtual_phones(make_spec("nokia7plus-2019"))
    device = adb_client(adb_server).device(phone.serial)
    device.shell("input keyevent 223")
    proc = subprocess.Popen([adb_server["ADBUTILS_ADB_PATH"], "-s", phone.serial, "exec-out",
                             "tcpdump -i any -s 0 -U --immediate-mode -w - 2>/dev/null"],
                            env={**os.environ, **adb_server}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        header = proc.stdout.read(24)
        device.shell("input keyevent 224")
        until(lambda: "zzhc.vnet.cn" in device.shell("logcat -d -s AutoRegistration"), timeout=30)
        time.sleep(1.0)
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    payload = b"".join(bytes(p[TCP].payload) for p in PcapReader(io.BytesIO(header + rest))  # type: ignore[arg-type]
                       if p.haslayer(TCP) and p[IP].dst == "42.99.2.15" and p[TCP].dport == 80)
    assert b"POST / HTTP/1.1" in payload and b"application/encrypted-json" in payload
