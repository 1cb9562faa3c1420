"""Captures for the `phonehome analyze` tests, built with scapy, and a runner for the real CLI.

Every address here only ever appears inside a capture file: nothing is sent anywhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from pcap_kit import eth
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, TCP, UDP
from scapy.utils import wrpcap

from harness import sample
from harness.analyzer.matcher import Matcher
from harness.identifiers import IdentifierSet

PHONE = sample.PHONE_IP
HOST_PC = "192.168.1.100"  # the test host that drives the phone over adb-over-TCP
SERIAL = "NB1GAD2910402519"
IDS: dict[str, list[str]] = {**sample.IDENTIFIERS, "serial": [SERIAL]}
ROOT = Path(__file__).resolve().parent.parent
CONSOLE_SCRIPT = Path(sys.executable).parent / "phonehome"


def write_pcap(path: Path, packets: list[Any]) -> Path:
    wrpcap(str(path), packets, linktype=1)
    return path


def write_ids(path: Path, ids: dict[str, list[str]] | None = None) -> Path:
    path.write_text(json.dumps(ids or IDS, indent=2))
    return path


def clean_packets(start: float = sample.START) -> list[Any]:
    """Ordinary traffic: DNS lookups and TLS sessions, no identifier readable."""
    clock = [start]
    packets: list[Any] = []
    for port, (name, address) in zip((40210, 40212), sample.TLS_PEERS, strict=True):
        packets += sample.dns_exchange(name, address, port - 5000, clock)
        packets += sample.tls_session(name, address, port, clock)
    return packets


def adb_packets(clock: list[float]) -> list[Any]:
    """The harness's own adb-over-TCP session to the phone: its CNXN banner carries the serial."""
    conn = sample.TcpConversation((HOST_PC, 50123), (PHONE, 5555), clock)
    packets = list(conn.handshake())
    packets += conn.send(True, b"CNXN\x01\x00\x00\x01\x00\x00\x10\x00host::features=shell_v2,cmd\x00")
    packets += conn.send(False, b"CNXN\x01\x00\x00\x01\x00\x00\x10\x00device::ro.serialno=" + SERIAL.encode()
                         + b";ro.product.model=Nokia 7 plus;features=shell_v2,cmd")
    return packets


def canary_packets(marker: str, clock: list[float]) -> list[Any]:
    """The canary: a DNS lookup of a fresh name holding the marker (as the capture backend sends)."""
    clock[0] += 0.05
    query = eth() / IP(src=PHONE, dst=sample.RESOLVER_IP) / UDP(sport=36001, dport=53) / DNS(
        id=77, rd=1, qd=DNSQR(qname=f"{marker}.canary.phonehome.test", qtype="A"))
    query.time = clock[0]
    return [query]


def raw_tcp(dst: str, dport: int, payload: bytes, clock: list[float], sport: int = 41500) -> list[Any]:
    """A client's TCP flow that sends `payload` (no DNS, no Host: an address-only contact)."""
    conn = sample.TcpConversation((PHONE, sport), (dst, dport), clock)
    packets = list(conn.handshake())
    if payload:
        packets += conn.send(True, payload)
    packets += conn.close()
    return packets


def syn_only(dst: str, dport: int, clock: list[float]) -> list[Any]:
    clock[0] += 0.01
    packet = eth() / IP(src=PHONE, dst=dst) / TCP(sport=41777, dport=dport, flags="S", seq=1)
    packet.time = clock[0]
    return [packet]


def run_cli(*args: str | Path, module: bool = False, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real console script (or `python -m harness`) as a user runs it."""
    head = [sys.executable, "-m", "harness"] if module else [str(CONSOLE_SCRIPT)]
    return subprocess.run([*head, *map(str, args)], capture_output=True, text=True, timeout=300,
                          cwd=cwd or ROOT, check=False)


def raw_identifier_hits(text: str, ids: dict[str, list[str]] | None = None) -> list[str]:
    """Identifiers the analyzer's own matcher finds in `text` (kind and slot only): must be none."""
    matcher = Matcher(IdentifierSet.from_mapping(ids or IDS, "test"), guess=False, canary=None)
    literals, _ = matcher.scan(text.encode())
    return sorted({f"{f.target.kind}[{f.target.slot}]" for pid, _ in literals for f in matcher.forms[pid]})
