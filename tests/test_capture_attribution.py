"""Socket-owner snapshots: parsers on real kernel tables, the sampler on a lab phone, the lookup.

The tables below were printed by this machine's kernel (`/proc/net/tcp6`, `/proc/net/udp6` in a
namespace with a loopback connection and a v4-mapped UDP socket); the sampler test opens a real
connection inside a lab namespace as a chosen UID and must find that UID as its owner. The
end-to-end test captures a lab phone's real traffic at its gateway while the sampler runs, reads
the flows back with the analyzer's reader, and must name each flow's app through `SocketOwners`
(the lab has no package manager: `pm list packages -U` answers with recorded real-format text).
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from capture_kit import NetLab

from harness.capture.attribution import (
    SocketEntry,
    SocketOwners,
    SocketSampler,
    parse_packages,
    parse_proc_net,
    parse_ss,
)
from harness.device.adb import ShellResult

TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:D7BF 00000000000000000000000000000000:0000 0A 00000000:00000001 00:00000000 00000000     0        0 354810 2 00000000da4abf60 100 0 0 10 0
   1: 00000000000000000000000001000000:8E72 00000000000000000000000001000000:D7BF 01 00000000:00000000 00:00000000 00000000 10123        0 354811 2 000000006881eb14 20 0 0 10 -1
"""  # noqa: E501
UDP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 8822: 0000000000000000FFFF00000100007F:9222 0000000000000000FFFF00000100007F:0035 01 00000000:00000000 00:00000000 00000000  1000        0 354812 2 00000000c9f7b674 0
"""  # noqa: E501
TCP4 = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 6401A8C0:9C40 0F02632A:0050 01 00000000:00000000 00:00000000 00000000 10087        0 1234 1 0000000000000000 20 4 30 10 -1
"""  # noqa: E501


def test_proc_net_tables() -> None:
    assert parse_proc_net(TCP6, "tcp") == [
        SocketEntry("tcp", "::1", 0xD7BF, "::", 0, "LISTEN", 0),
        SocketEntry("tcp", "::1", 0x8E72, "::1", 0xD7BF, "ESTABLISHED", 10123),
    ]
    assert parse_proc_net(UDP6, "udp") == [SocketEntry("udp", "127.0.0.1", 0x9222, "127.0.0.1", 53, "CONNECTED", 1000)]
    assert parse_proc_net(TCP4, "tcp") == [SocketEntry("tcp", "192.168.1.100", 40000, "42.99.2.15", 80,
                                                       "ESTABLISHED", 10087)]
    assert parse_proc_net("cat: /proc/net/tcp: Permission denied\n", "tcp") == []


def test_ss_and_packages() -> None:
    ss = ("Netid State  Recv-Q Send-Q Local Address:Port  Peer Address:Port\n"
          "tcp   ESTAB  0      0      192.168.1.100:40000 42.99.2.15:80 uid:10087 ino:1234 sk:1 <->\n"
          "udp   UNCONN 0      0      *:5353 *:* uid:1051 ino:77 sk:2 <->\n"
          "tcp   ESTAB  0      0      [::1]:5555 [::1]:41000 ino:9 sk:3 <->\n")
    assert parse_ss(ss) == [SocketEntry("tcp", "192.168.1.100", 40000, "42.99.2.15", 80, "ESTAB", 10087),
                            SocketEntry("udp", "0.0.0.0", 5353, "0.0.0.0", 0, "UNCONN", 1051)]
    packages = parse_packages("package:com.qualcomm.qti.autoregistration uid:1000\npackage:android uid:1000\n"
                              "package:com.example.app uid:10087\nnoise\n")
    assert packages == {1000: ["com.qualcomm.qti.autoregistration", "android"], 10087: ["com.example.app"]}


@pytest.fixture
def lab(netns_available: None, tool: object) -> Iterator[NetLab]:
    tool("setpriv")  # type: ignore[operator]
    with NetLab() as net:
        yield net


def test_sampler_finds_the_owner_of_a_live_connection(lab: NetLab, tmp_path: Path) -> None:
    phone = lab.add_phone()
    listener = subprocess.Popen(
        ["ip", "netns", "exec", lab.router, sys.executable, "-c",
         "import socket,time\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
         f"s.bind(({lab.router_ip!r}, 7777)); s.listen(); print('ready', flush=True)\n"
         "c,_=s.accept(); time.sleep(30)\n"],
        stdout=subprocess.PIPE, text=True)
    client = None
    try:
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        client = subprocess.Popen(
            ["ip", "netns", "exec", phone.ns, "setpriv", "--reuid", "10087", "--regid", "10087", "--clear-groups",
             sys.executable, "-c",
             f"import socket,time\nc=socket.create_connection(({lab.router_ip!r}, 7777)); print(c.getsockname()[1],"
             " flush=True); time.sleep(30)\n"],
            stdout=subprocess.PIPE, text=True)
        assert client.stdout is not None
        sport = int(client.stdout.readline())
        out = tmp_path / "c.pcap.sockets.json"
        sampler = SocketSampler(lab.shell(phone), out, interval=0.3)
        sampler.start()
        time.sleep(0.8)
        sampler.stop()
    finally:
        for process in (client, listener):
            if process is not None:
                process.kill()
                process.wait()
    data = json.loads(out.read_text())
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert data["source"] == "proc-net" and data["snapshots"] >= 3
    mine = [s for s in data["sockets"] if s["proto"] == "tcp" and s["sport"] == sport]
    assert len(mine) == 1
    entry = mine[0]
    assert (entry["src"], entry["dst"], entry["dport"], entry["uid"]) == (phone.ip, lab.router_ip, 7777, 10087)
    assert "ESTABLISHED" in entry["states"] and entry["first_seen"] < entry["last_seen"]
    assert entry["apps"] == []  # no package manager in a lab namespace: unknown, and said so
    assert any("packages not read" in e for e in data["errors"])


# `pm list packages -U` as Android 11 prints it (one line per package; a shared UID repeats)
PACKAGES = """\
package:com.qualcomm.qti.autoregistration uid:1000
package:android uid:1000
package:com.android.settings uid:1000
package:com.android.providers.settings uid:1000
package:com.android.phone uid:1001
package:com.example.tracker uid:10087
package:com.example.chat uid:10088
"""


def sampled(tables: dict[str, str], tmp_path: Path, *, packages: str = PACKAGES) -> Path:
    """A sockets.json written by the real sampler from recorded tables (no phone needed)."""
    class Recorded:
        def script(self, text: str, timeout: float | None = None) -> ShellResult:
            if text.startswith("pm list packages"):
                return ShellResult(text, 0, packages, "")
            body = "".join(f"PHONEHOME-NET {name}\n{tables.get(name, '')}" for name in ("tcp", "tcp6", "udp", "udp6"))
            return ShellResult(text, 0, body, "")

    out = tmp_path / "c.pcap.sockets.json"
    sampler = SocketSampler(Recorded(), out, interval=2.0)
    sampler._read_packages()
    sampler.snapshot()
    sampler.write()
    return out


UDP4 = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  101: 00000000:14E9 00000000:0000 07 00000000:00000000 00:00000000 00000000 10088        0 4321 2 0000000000000000 0
  102: 6401A8C0:A000 00000000:0000 07 00000000:00000000 00:00000000 00000000  1000        0 4322 2 0000000000000000 0
"""


def test_owners_name_the_app_behind_each_flow(tmp_path: Path) -> None:
    owners = SocketOwners.load(sampled({"tcp": TCP4, "tcp6": TCP6, "udp": UDP4, "udp6": UDP6}, tmp_path))
    assert len(owners) == 6
    # the phone as client, the exact socket
    assert owners.app("tcp", "192.168.1.100", 40000, "42.99.2.15", 80) == "com.example.tracker"
    # the same flow oriented the other way (a capture that began mid-connection, the server first)
    assert owners.app("tcp", "42.99.2.15", 80, "192.168.1.100", 40000) == "com.example.tracker"
    # loopback: the client end is uid 10123 (unknown to pm); the other end is root's listener
    assert owners.app("tcp", "::1", 0x8E72, "::1", 0xD7BF) == "uid 10123"
    assert owners.app("tcp", "::1", 0xD7BF, "::1", 0x8E72) == "root"
    # an unconnected UDP socket bound to any address (mDNS 5353) claims the phone's own datagrams...
    assert owners.app("udp", "192.168.1.100", 5353, "224.0.0.251", 5353) == "com.example.chat"
    # ...but never a peer's datagram that merely comes from the same port number
    assert owners.app("udp", "192.168.1.1", 5353, "192.168.1.100", 40961) is None
    # (a reply to the phone's bound socket is the phone's, whichever end the capture saw first)
    assert owners.uid("udp", "8.8.8.8", 53, "192.168.1.100", 0xA000) == 1000
    # a shared UID names its AID and the candidates
    assert owners.app("udp", "192.168.1.100", 0xA000, "8.8.8.8", 53) == \
        "system (uid 1000: android, com.android.providers.settings, com.android.settings +1)"
    # a v4-mapped socket and an IPv4 flow, either spelling
    assert owners.app("udp", "127.0.0.1", 0x9222, "127.0.0.1", 53) == "system (uid 1000: android, " \
        "com.android.providers.settings, com.android.settings +1)"
    assert owners.uid("udp", "::ffff:127.0.0.1", 0x9222, "::ffff:127.0.0.1", 53) == 1000
    # nothing seen: None, not a guess
    assert owners.app("tcp", "192.168.1.100", 40001, "42.99.2.15", 80) is None
    assert owners.app("tcp", "192.168.1.100", 40000, "42.99.2.15", 80, 0.0) == "com.example.tracker"


def test_owners_secondary_users_port_reuse_and_bad_files(tmp_path: Path) -> None:
    base = {"version": 1, "interval": 2.0,
            "packages": {"10087": ["com.example.tracker"], "10088": ["com.example.chat"]}}
    flow = {"proto": "tcp", "src": "10.0.0.2", "sport": 40000, "dst": "42.99.2.15", "dport": 80}
    data = {**base, "sockets": [
        {**flow, "uid": 1010087, "first_seen": 100.0, "last_seen": 104.0},  # user 10's copy of the app
        {**flow, "uid": 10088, "first_seen": 200.0, "last_seen": 210.0},  # the port reused later by another app
    ]}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(data))
    owners = SocketOwners.load(path)
    assert owners.app("tcp", "10.0.0.2", 40000, "42.99.2.15", 80, 103.0) == "com.example.tracker"
    assert owners.app("tcp", "10.0.0.2", 40000, "42.99.2.15", 80, 211.5) == "com.example.chat"
    assert owners.app("tcp", "10.0.0.2", 40000, "42.99.2.15", 80, 150.0) == "com.example.tracker"  # nearer
    assert owners.name(2000) == "shell" and owners.name(99999) == "uid 99999"
    for bad in ("", "{not json", "[]", json.dumps({"sockets": [{"src": "nonsense"}, None, {}]})):
        path.write_text(bad)
        assert len(SocketOwners.load(path)) == 0
    assert len(SocketOwners.load(tmp_path / "missing.json")) == 0


class FakePm:
    """A lab phone's shell, with `pm list packages -U` answered from recorded text (no Android there)."""

    def __init__(self, shell: object) -> None:
        self.shell = shell

    def script(self, text: str, timeout: float | None = None) -> ShellResult:
        if text.startswith("pm list packages"):
            return ShellResult(text, 0, PACKAGES, "")
        return self.shell.script(text, timeout)  # type: ignore[attr-defined,no-any-return]


def test_gateway_capture_flows_are_attributed_to_their_apps(lab: NetLab, tmp_path: Path, tool: object) -> None:
    """End to end on real sockets: capture at the gateway, sample owners on the phone, join them."""
    from harness.analyzer.reader import open_capture
    from harness.capture.gateway import GatewayCapture

    tool("tcpdump")  # type: ignore[operator]
    phone = lab.add_phone()
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab.router, sys.executable, "-c",
         "import socket,time\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
         f"s.bind(({lab.router_ip!r}, 8080)); s.listen(); print('ready', flush=True)\n"
         "c,_=s.accept(); c.recv(100); time.sleep(30)\n"],
        stdout=subprocess.PIPE, text=True)
    apps = []
    out = tmp_path / "gw.pcap"
    capture = GatewayCapture(out, lab.bridge, netns=lab.router, phone=lab.shell(phone), check_mobile_data=False)
    capture.sampler = SocketSampler(FakePm(lab.shell(phone)), out.with_name(out.name + ".sockets.json"), interval=0.3)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        capture.start()
        for uid, code in (
            (10087, f"c=socket.create_connection(({lab.router_ip!r}, 8080)); c.sendall(b'IMEI=1'); "),
            (10088, f"c=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); c.bind(('', 0)); "
                    f"c.sendto(b'hello', ({lab.router_ip!r}, 9999)); "),
        ):
            apps.append(subprocess.Popen(
                ["ip", "netns", "exec", phone.ns, "setpriv", "--reuid", str(uid), "--regid", str(uid),
                 "--clear-groups", sys.executable, "-c",
                 f"import socket,time\n{code}print('sent', flush=True); time.sleep(30)\n"],
                stdout=subprocess.PIPE, text=True))
        for app in apps:
            assert app.stdout is not None and app.stdout.readline().strip() == "sent"
        time.sleep(1.0)  # a few snapshots while both sockets are open
        result = capture.stop()
    finally:
        for process in (*apps, server):
            process.kill()
            process.wait()
    assert result.attribution is not None and result.attribution.exists()
    owners = SocketOwners.load(result.attribution)
    stream = open_capture(result.path)
    for _unit in stream.units():
        pass
    seen = {}
    for record in stream.flows:
        flow = record.flow
        if flow.dport in (8080, 9999):
            seen[flow.dport] = owners.app(flow.proto, flow.src, flow.sport, flow.dst, flow.dport, record.first_time)
    assert seen == {8080: "com.example.tracker", 9999: "com.example.chat"}


def test_analyzer_carries_the_socket_owner_into_findings(tmp_path: Path) -> None:
    from analyze_kit import raw_tcp, write_pcap

    from harness.analyzer import analyze
    from harness.identifiers import IdentifierSet, Kind

    clock = [1_700_000_000.0]
    pcap = write_pcap(tmp_path / "c.pcap", raw_tcp("42.99.2.15", 80, b"POST / HTTP/1.1\r\nHost: zzhc.vnet.cn\r\n\r\n"
                                                   b"IMEI1=861234567890518", clock, sport=41500))
    stream = open_capture_flows(pcap)
    (flow,) = [r.flow for r in stream]
    sockets = tmp_path / "c.pcap.sockets.json"
    sockets.write_text(json.dumps({"version": 1, "interval": 2.0, "packages": {"1000": [
        "com.qualcomm.qti.autoregistration"]}, "sockets": [
        {"proto": "tcp", "src": flow.src, "sport": flow.sport, "dst": flow.dst, "dport": flow.dport, "uid": 1000,
         "first_seen": clock[0] - 1, "last_seen": clock[0] + 1}]}))
    ids = IdentifierSet({Kind("imei"): ["861234567890518"]})
    assert {f.app for f in analyze(pcap, ids).findings} == {None}
    report = analyze(pcap, ids, attribution=sockets)  # type: ignore[call-arg,unused-ignore]
    assert {str(f.rule) for f in report.findings} >= {"plaintext-identifier", "unapproved-activation-client"}
    assert {f.app for f in report.findings} == {"com.qualcomm.qti.autoregistration"}
    assert [d["app"] for d in report.destinations] == ["com.qualcomm.qti.autoregistration"]


def open_capture_flows(path: Path) -> list[Any]:
    from harness.analyzer.reader import open_capture

    stream = open_capture(path)
    for _unit in stream.units():
        pass
    return list(stream.flows)



def test_time_wait_sockets_are_not_attributed_to_root(tmp_path: Path) -> None:
    """A closed TCP connection lingers in TIME_WAIT with uid 0: that is the kernel's, not an app's.

    The phone is a recorded `/proc/net/tcp` answer (a stand-in: catching a real socket in TIME_WAIT
    on a virtual phone at sampling time is a race), fed through the sampler's own shell protocol.
    """
    from harness.capture.attribution import _MARK, SocketSampler
    from harness.device.adb import ShellResult

    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    table = header + ("   0: 6401A8C0:A1B2 0F02632A:0050 06 00000000:00000000 03:00000b2a 00000000     0        0 0\n"
                      "   1: 6401A8C0:A1B4 0F02632A:0050 01 00000000:00000000 00:00000000 00000000 10123        0 7\n")

    class RecordedPhone:
        def script(self, text: str, timeout: float | None = None) -> ShellResult:
            if "pm list packages -U" in text:
                return ShellResult(text, 0, "package:com.example.app uid:10123\n")
            return ShellResult(text, 0, f"{_MARK} tcp\n{table}")

    sampler = SocketSampler(RecordedPhone(), tmp_path / "sockets.json")
    sampler.snapshot()
    assert [(s["sport"], s["uid"]) for s in sampler.sockets.values()] == [(0xA1B4, 10123)]
