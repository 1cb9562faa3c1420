"""Capture benchmarks: loss under load vs plain tcpdump, and on-device streaming through adb.

1. Loss under load. tcpreplay sends UDP frames at 50,000 packets/s for 10 s (quick: 3 s) out of
   a veth in one namespace; the peer veth in another namespace is captured at the same time by
   the gateway backend (tcpdump `-w -` piped into the harness's sink) and by plain
   `tcpdump -w FILE` (the baseline, same traffic, same run). Reported: sent (tcpreplay's count),
   captured, loss, kernel drops, CPU seconds of each capture. Goal: loss no higher than
   tcpdump's, and zero. The frames go to a MAC nobody has and are dropped inside the namespace.
2. On-device streaming. A virtual phone sends 1000-byte frames from its own namespace as fast as
   tcpreplay can; the device backend streams the phone's tcpdump over `exec:` through the real
   adb server (a private one). Baselines in the same run: the same number of bytes through
   `exec:cat` (what the adb path carries) and a host tcpdump in the phone's namespace.

Needs root, iproute2, tcpdump and tcpreplay (Debian: apt-get install tcpdump tcpreplay).
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import secrets
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.capture.gateway import GatewayCapture
from harness.capture.pcap import inspect

RATE = 50_000
FRAME = 96  # bytes on the wire per test frame
_CLK = os.sysconf("SC_CLK_TCK")


def _run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack("!10H", header))
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


def write_frames(path: Path, count: int, *, src_mac: str, dst_mac: str, src_ip: str, dst_ip: str,
                 frame: int = FRAME) -> None:
    """A pcap of `count` Ethernet/IPv4/UDP frames, each numbered, built without scapy (too slow here)."""
    payload_len = frame - 14 - 20 - 8
    ip_header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, frame - 14, 0, 0x4000, 64, 17, 0,
                            socket.inet_aton(src_ip), socket.inet_aton(dst_ip))
    ip_header = ip_header[:10] + struct.pack("!H", _checksum(ip_header)) + ip_header[12:]
    head = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) + b"\x08\x00" + ip_header
    udp = struct.pack("!HHHH", 40000, 9, payload_len + 8, 0)
    record = struct.pack("<IIII", 0, 0, frame, frame)
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        batch = []
        for number in range(count):
            batch.append(record + head + udp + struct.pack("!Q", number) + b"\x00" * (payload_len - 8))
            if len(batch) == 10000:
                out.write(b"".join(batch))
                batch = []
        out.write(b"".join(batch))


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a live process (children's time is only reported once they are reaped)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _CLK


@dataclass
class Lab:
    sender: str
    receiver: str
    receiver_mac: str


@contextlib.contextmanager
def _lab() -> Iterator[Lab]:
    tag = secrets.token_hex(3)
    sender, receiver = f"ph{tag}bs", f"ph{tag}br"
    made: list[str] = []
    try:
        for ns in (sender, receiver):
            _run(["ip", "netns", "add", ns])
            made.append(ns)
        _run(["ip", "link", "add", "s0", "netns", sender, "type", "veth", "peer", "name", "r0", "netns", receiver])
        for ns, dev, address in ((sender, "s0", "10.78.0.2/24"), (receiver, "r0", "10.78.0.1/24")):
            _run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"])
            _run(["ip", "-n", ns, "addr", "add", address, "dev", dev])
            _run(["ip", "-n", ns, "link", "set", dev, "up"])
        mac = _run(["ip", "netns", "exec", receiver, "cat", "/sys/class/net/r0/address"]).stdout.strip()
        yield Lab(sender, receiver, mac)
    finally:
        for ns in made:
            _run(["ip", "netns", "del", ns], check=False)


def _tcpreplay_sent(output: str) -> tuple[int, float, int]:
    """(packets sent, actual seconds, failed) from tcpreplay's summary."""
    sent = re.search(r"Actual: (\d+) packets .* in ([\d.]+) seconds", output)
    failed = re.search(r"Failed packets:\s+(\d+)", output)
    if sent is None:
        raise RuntimeError(f"tcpreplay said: {output.strip()[-300:]}")
    return int(sent.group(1)), float(sent.group(2)), int(failed.group(1)) if failed else 0


def loss_under_load(seconds: float, workdir: Path) -> None:
    count = int(RATE * seconds)
    with _lab() as lab:
        frames = workdir / "frames.pcap"
        write_frames(frames, count, src_mac="02:00:00:00:00:02", dst_mac="02:00:00:00:00:99", src_ip="10.78.0.2",
                     dst_ip="10.78.0.99")
        ours = GatewayCapture(workdir / "gateway.pcap", "r0", netns=lab.receiver, check_mobile_data=False)
        baseline_file = workdir / "tcpdump.pcap"
        baseline = subprocess.Popen(["ip", "netns", "exec", lab.receiver, "tcpdump", "-i", "r0", "-n", "-w",
                                     str(baseline_file)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True)
        ours.start()
        time.sleep(1.0)  # both listening
        self_before = resource.getrusage(resource.RUSAGE_SELF)
        replay = _run(["ip", "netns", "exec", lab.sender, "tcpreplay", "-i", "s0", f"--pps={RATE}", str(frames)])
        time.sleep(1.0)
        self_after = resource.getrusage(resource.RUSAGE_SELF)
        assert ours.main is not None and ours.main.proc is not None
        ours_tcpdump_cpu = _cpu_seconds(ours.main.proc.pid)
        baseline_cpu = _cpu_seconds(baseline.pid)
        result = ours.stop()
        baseline.send_signal(2)
        _, baseline_err = baseline.communicate(timeout=30)
    sent, actual, failed = _tcpreplay_sent(replay.stdout + replay.stderr)
    ours_kept = inspect(result.path).packets
    base_kept = inspect(baseline_file).packets
    base_dropped = re.search(r"(\d+) packets dropped by kernel", baseline_err)
    pump_cpu = (self_after.ru_utime + self_after.ru_stime) - (self_before.ru_utime + self_before.ru_stime)
    print(f"== loss under load: {sent} frames of {FRAME} B sent in {actual:.2f} s ({sent / actual:,.0f} pps, "
          f"target {RATE:,}; tcpreplay failed {failed}) ==")
    print("capture                          kept    lost   loss %  kernel drops  CPU s (% of one core)")
    for name, kept, dropped, cpu in (
        ("phonehome gateway (tcpdump|sink)", ours_kept, result.settings["kernel_dropped"], ours_tcpdump_cpu + pump_cpu),
        ("plain tcpdump -w FILE", base_kept, int(base_dropped.group(1)) if base_dropped else -1, baseline_cpu),
    ):
        lost = sent - kept
        print(f"{name:<32} {kept:>7} {lost:>7} {100 * lost / sent:7.3f} {dropped:>13}  {cpu:5.2f} "
              f"({100 * cpu / actual:.0f} %)")
    print(f"  (phonehome CPU = its tcpdump {ours_tcpdump_cpu:.2f} s + the harness's pump {pump_cpu:.2f} s)")
    blind = [w.reason for w in result.blind_windows]
    print(f"  phonehome blind windows: {blind or 'none'}; loss ratio vs tcpdump: "
          f"{(sent - ours_kept) / max(sent - base_kept, 1):.2f} (lost counts, 1 lost = floor)")


def device_streaming(count: int, workdir: Path) -> None:
    """The device backend's stream through the real adb server, against two baselines in the same run.

    Transport: `exec:cat` of a pushed file of the same size (what the adb path carries at best).
    Capture: a host tcpdump in the phone's namespace seeing the same frames (plain `-w FILE`).
    """
    import adbutils

    from harness.device.adb import Adb
    from harness.device.server import private_adb_server
    from harness.virtual.phone import VirtualPhone

    size = 1000
    with private_adb_server() as server:
        port = int(server["ANDROID_ADB_SERVER_PORT"])
        with VirtualPhone("clean") as phone:
            client = adbutils.AdbClient(host="127.0.0.1", port=port)
            client.connect(phone.serial, timeout=10)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not any(d.serial == phone.serial and d.state == "device"
                                                          for d in client.list()):
                time.sleep(0.2)
            adb = Adb(client, phone.serial)
            network = phone.network
            blob = workdir / "blob.bin"
            blob.write_bytes(os.urandom(count * (size + 16)))
            device = adb.device()
            device.sync.push(str(blob), "/data/local/tmp/phonehome-bench.bin")
            began = time.monotonic()
            stream = device.open_transport()
            stream.send_command("exec:cat /data/local/tmp/phonehome-bench.bin")
            stream.check_okay()
            carried = 0
            while chunk := stream.conn.recv(1 << 20):
                carried += len(chunk)
            transport = carried / (time.monotonic() - began)
            stream.close()
            adb.script("rm -f /data/local/tmp/phonehome-bench.bin")

            frames = workdir / "phone-frames.pcap"
            write_frames(frames, count, src_mac=network.phone_mac, dst_mac="02:00:00:00:00:99",
                         src_ip=network.phone_ip, dst_ip="192.168.1.250", frame=size)
            runs = [_device_run(adb, network, frames, workdir, immediate) for immediate in (False, True)]
    print(f"== on-device streaming through the adb server: {count} frames of {size} B per run ==")
    print(f"adb transport (exec:cat, same size)   {transport / 1e6:8.1f} MB/s  (baseline 1)")
    for immediate, (sent, actual, kept, streamed, cpu, base, windows) in zip((False, True), runs, strict=True):
        rate = kept * (size + 16) / streamed
        print(f"device backend, {'--immediate-mode' if immediate else 'block batching  '}  {rate / 1e6:8.1f} MB/s  "
              f"kept {kept} of {sent} ({100 * kept / sent:.2f} %) sent in {actual:.2f} s ({sent / actual:,.0f} pps), "
              f"all in by {streamed:.2f} s; ratio to transport {rate / transport:.3f}; phone tcpdump CPU {cpu:.2f} s")
        print(f"  host tcpdump in the phone's namespace kept {base} (baseline 2: same frames, plus the phone's own "
              f"traffic); blind windows: {windows or 'none'}")


def _device_run(adb: Any, network: Any, frames: Path, workdir: Path,
                immediate: bool) -> tuple[int, float, int, float, float, int, list[str]]:
    """One device-backend capture of the replayed frames: (sent, seconds, kept, all-in-by, tcpdump CPU, baseline,
    blind windows)."""
    from harness.capture.device import DeviceCapture

    capture = DeviceCapture(workdir / f"device-{immediate}.pcap", adb, immediate=immediate)
    baseline_file = workdir / f"phone-tcpdump-{immediate}.pcap"
    baseline = subprocess.Popen(network.exec_argv(["tcpdump", "-i", "any", "-n", "-w", str(baseline_file)]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    capture.start()
    time.sleep(1.0)
    pids = _run(["pgrep", "-f", f"tcpdump -i any -n -s 0 -U {'--immediate-mode ' if immediate else ''}-B"],
                check=False).stdout.split()
    cpu_before = sum(_cpu_seconds(int(pid)) for pid in pids)
    before = capture.sink.packets
    began = time.monotonic()
    replay = _run(network.exec_argv(["tcpreplay", "-i", "wlan0", "--topspeed", str(frames)]))
    sent, actual, _ = _tcpreplay_sent(replay.stdout + replay.stderr)
    last, changed = capture.sink.packets, time.monotonic()
    while time.monotonic() - changed < 2.0 and time.monotonic() - began < 60:
        time.sleep(0.05)
        if capture.sink.packets != last:
            last, changed = capture.sink.packets, time.monotonic()
    cpu = sum(_cpu_seconds(int(pid)) for pid in pids) - cpu_before
    result = capture.stop()
    baseline.send_signal(2)
    baseline.wait(30)
    return (sent, actual, last - before, changed - began, cpu, inspect(baseline_file).packets,
            [w.reason for w in result.blind_windows])


def run(quick: bool) -> None:
    missing = [tool for tool in ("ip", "tcpdump", "tcpreplay") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        print(f"bench_capture: skipped (needs root and {', '.join(missing) or 'namespaces'}; "
              "Debian: apt-get install tcpdump tcpreplay)")
        return
    with tempfile.TemporaryDirectory(prefix="phonehome-bench-capture-") as tmp:
        loss_under_load(3.0 if quick else 10.0, Path(tmp))
        device_streaming(20_000 if quick else 200_000, Path(tmp))


if __name__ == "__main__":
    import sys

    run("--quick" in sys.argv)
