"""Socket-owner snapshots: parsers on real kernel tables, and the sampler on a lab phone.

The tables below were printed by this machine's kernel (`/proc/net/tcp6`, `/proc/net/udp6` in a
namespace with a loopback connection and a v4-mapped UDP socket); the sampler test opens a real
connection inside a lab namespace as a chosen UID and must find that UID as its owner.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from capture_kit import NetLab

from harness.capture.attribution import SocketEntry, SocketSampler, parse_packages, parse_proc_net, parse_ss

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
