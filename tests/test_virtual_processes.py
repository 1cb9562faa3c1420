"""The virtual phone as the capture layer drives it: pids, `exec`, `kill`, background jobs, files
in shared storage, and socket owners (`pm list packages -U`, `/proc/net/*`, `ss -e`).

Everything goes through the real adb server; the socket test reads the kernel's tables of the
phone's own network namespace, where the firmware's clients hold real sockets.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from typing import Any

from virtual_fixtures import adb_client, make_spec

from harness.capture.attribution import parse_packages, parse_proc_net, parse_ss
from harness.virtual.phone import VirtualPhone
from harness.virtual.spec import ClientSpec

Phones = Callable[..., list[VirtualPhone]]


def quick(name: str = "clean", **changes: Any) -> Any:
    return make_spec(name, **{"boot_seconds": 0.6, **changes})


def until(what: Callable[[], Any], timeout: float = 30.0, step: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = what()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)


def test_pid_exec_and_kill_as_mksh_and_toybox(virtual_phones: Phones, adb_server: dict[str, str]) -> None:
    phone, = virtual_phones(quick(), network=False)
    device = adb_client(adb_server).device(phone.serial)
    # the device capture's probe: `$$` is a pid, and `exec` replaces the shell (nothing after it runs)
    probe = device.shell("echo $$; exec echo phonehome-exec-ok; echo never").split()
    assert len(probe) == 2 and probe[0].isdigit() and probe[1] == "phonehome-exec-ok", probe
    # `sh -c` is a new process with its own pid; `exec` keeps it
    pids = device.shell("echo $$; sh -c 'echo $$; exec sh -c \"echo \\$\\$\"'").split()
    assert len(pids) == 3 and pids[0] != pids[1] == pids[2], pids
    # background job: `$!` is its pid, listed by ps, killed from another adb shell
    device.shell("sleep 60 & echo $! > /data/local/tmp/job.pid")
    pid = device.shell("cat /data/local/tmp/job.pid").strip()
    assert pid.isdigit()
    assert re.search(rf"^shell\s+{pid}\s.*\ssleep$", device.shell("ps -A"), re.M)
    assert device.shell2("kill -INT $(cat /data/local/tmp/job.pid)").returncode == 0
    until(lambda: not re.search(rf"^\S+\s+{pid}\s", device.shell("ps -A"), re.M), timeout=10)
    gone = device.shell2(f"kill {pid}")
    assert gone.returncode == 1 and f"kill: {pid}: No such process" in gone.output
    # `wait PID` reports how a job ended (128 + the signal), as mksh does
    assert device.shell("sleep 60 & P=$!; kill -INT $P; wait $P; echo $?") == "130"
    assert device.shell("(exit 3) & P=$!; wait $P; echo $?; wait; echo $?").split() == ["3", "0"]
    # a running `exec`ed command is interrupted by `kill -INT` of the pid its shell wrote
    conn = device.open_transport()
    conn.send_command("exec:echo $$ > /data/local/tmp/fg.pid; exec sleep 60")
    conn.check_okay()
    fg = until(lambda: device.shell("cat /data/local/tmp/fg.pid 2>/dev/null").strip())
    assert device.shell2(f"kill -s INT {fg}").returncode == 0
    conn.conn.settimeout(10)
    assert conn.conn.recv(100) == b"", "the stream ends when the command dies"
    conn.close()
    # the shell user cannot signal system processes; a bad signal is refused
    assert "Operation not permitted" in device.shell2("kill -TERM 1").output
    assert device.shell2("kill -NOPE 1").returncode == 1
    assert device.shell("command -v kill exec").split() == ["kill", "exec"]


def test_redirection_files_and_parent_directories(virtual_phones: Phones, adb_server: dict[str, str]) -> None:
    phone, = virtual_phones(quick(android=11, pcapdroid=True), network=False)
    device = adb_client(adb_server).device(phone.serial)
    assert device.shell("echo a > /data/local/tmp/x/y/z && cat /data/local/tmp/x/y/z") == "a"
    # a redirected file is readable while its command still runs (tcpdump's stderr file)
    device.shell("(echo started; sleep 30) > /data/local/tmp/live.txt 2>&1 &")
    until(lambda: device.shell("cat /data/local/tmp/live.txt 2>/dev/null") == "started", timeout=10)
    # PCAPdroid's own directory is created by the app; the shell may delete its captures
    device.shell("appops set com.emanuelef.remote_capture ACTIVATE_VPN allow")
    phone.call(lambda d: d.pcapdroid.start({"pcap_dump_mode": "pcap_file", "pcap_name": "one.pcap"}))
    phone.call(lambda d: d.pcapdroid.stop())
    assert "one.pcap" in device.shell("ls /sdcard/Download/PCAPdroid")
    assert device.shell2("rm /sdcard/Download/PCAPdroid/one.pcap").returncode == 0
    assert "one.pcap" not in device.shell("ls /sdcard/Download/PCAPdroid")


def test_background_tcpdump_to_a_file_stops_on_sigint(virtual_phones: Phones, adb_server: dict[str, str]) -> None:
    phone, = virtual_phones(quick(android=14))
    device = adb_client(adb_server).device(phone.serial)
    start = device.shell2("tcpdump -i any -n -U -w /data/local/tmp/bg.pcap 2>/data/local/tmp/bg.err & "
                          "echo $! > /data/local/tmp/bg.pid")
    assert start.returncode == 0
    pid = device.shell("cat /data/local/tmp/bg.pid").strip()
    until(lambda: "listening on" in device.shell("cat /data/local/tmp/bg.err"), timeout=15)
    router = re.search(r"default via (\S+)", device.shell("ip route show default"))
    assert router is not None
    assert device.shell2(f"ping -c 2 -W 2 {router.group(1)}").returncode == 0
    assert device.shell2("kill -INT $(cat /data/local/tmp/bg.pid)").returncode == 0
    # SIGINT reached the real tcpdump: it flushed and printed its statistics
    err = until(lambda: (text := device.shell("cat /data/local/tmp/bg.err")) and "packets captured" in text and text,
                timeout=15)
    assert re.search(r"\d+ packets? dropped by kernel", err), err
    until(lambda: not re.search(rf"^\S+\s+{pid}\s", device.shell("ps -A"), re.M), timeout=10)
    data = device.sync.read_bytes("/data/local/tmp/bg.pcap")
    assert data[:4] in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") and len(data) > 24 + 4 * 60


def _owner_spec() -> Any:
    """Two clients that keep a socket open long enough to be sampled: a UDP beacon waiting for an
    answer and a TCP connect that is never answered (both to a test address dropped inside)."""
    clients = [
        ClientSpec(name="beacon", package="com.example.beacon", triggers={"power-up": 0.2, "periodic": 0.5},
                   transport="udp", address="198.51.100.7", port=4000, body="hello"),
        ClientSpec(name="push", package="com.example.push", triggers={"power-up": 0.2, "periodic": 0.5},
                   transport="tcp", address="198.51.100.8", port=5228, body="hi"),
    ]
    spec = quick("clean")
    return dataclasses.replace(spec, clients=clients,
                               packages={**spec.packages, "com.example.beacon": "1.0", "com.example.push": "2.0"})


def test_socket_owners_are_the_clients_packages(virtual_phones: Phones, adb_server: dict[str, str]) -> None:
    phone, = virtual_phones(_owner_spec())
    device = adb_client(adb_server).device(phone.serial)
    listing = device.shell("pm list packages -U")
    assert re.fullmatch(r"(package:\S+ uid:\d+\n?)+", listing), listing
    owners = parse_packages(listing)
    uid_of = {name: uid for uid, names in owners.items() for name in names}
    assert uid_of["android"] == 1000 and uid_of["com.example.beacon"] >= 10000
    # shared UIDs as on a real phone: AOSP android_filesystem_config.h and the packages' sharedUserId
    assert (uid_of["com.android.shell"], uid_of["com.android.phone"], uid_of["com.google.android.networkstack"]) == \
        (2000, 1001, 1073)

    def sockets() -> dict[str, Any]:
        text = device.shell("cat /proc/net/udp; echo ==; cat /proc/net/tcp")
        udp, tcp = text.split("==\n")
        found = {}
        for entry in parse_proc_net(udp, "udp") + parse_proc_net(tcp, "tcp"):
            if (entry.dst, entry.dport) in (("198.51.100.7", 4000), ("198.51.100.8", 5228)):
                found[entry.dst] = entry
        return found if len(found) == 2 else {}

    found = until(sockets, timeout=30, step=0.1)
    assert owners[found["198.51.100.7"].uid] == ["com.example.beacon"]
    assert owners[found["198.51.100.8"].uid] == ["com.example.push"]
    assert found["198.51.100.8"].state == "SYN_SENT"
    assert found["198.51.100.7"].src == found["198.51.100.8"].src != "0.0.0.0"  # the phone's address
    for name in ("tcp6", "udp6"):
        assert device.shell(f"cat /proc/net/{name}").startswith("  sl  local_address")

    def ss_owners() -> set[int]:
        return {e.uid for e in parse_ss(device.shell("ss -tuna -e")) if e.dst in ("198.51.100.7", "198.51.100.8")}

    assert until(lambda: ss_owners() == {uid_of["com.example.beacon"], uid_of["com.example.push"]}, timeout=30)
