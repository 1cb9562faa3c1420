"""Test helpers for the virtual network: a gateway capture in the router namespace and readers for it.

The capture is the real tcpdump run inside the router namespace on its phone-facing interface,
as a gateway capture backend would; reading uses scapy (TCP reassembly, DNS, TLS SNI).
"""

from __future__ import annotations

import signal
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scapy.layers.dns import DNS
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.tls.extensions import TLS_Ext_ServerName
from scapy.layers.tls.handshake import TLSClientHello
from scapy.layers.tls.record import TLS
from scapy.utils import rdpcap

from harness.virtual.network import PhoneNetwork

Flow = tuple[str, int, str, int]


class Capture:
    """tcpdump -i IFACE inside a namespace, written to a pcap; `stop()` then read `packets()`."""

    def __init__(self, argv_prefix: list[str], iface: str, path: Path) -> None:
        self.path = path
        self.proc = subprocess.Popen([*argv_prefix, "tcpdump", "-i", iface, "-s", "0", "-U", "--immediate-mode",
                                      "-w", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "listening on ...": packets from now on are seen
        assert b"listening on" in line, line

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()

    def packets(self) -> Any:
        return rdpcap(str(self.path))


def router_capture(network: PhoneNetwork, path: Path) -> Capture:
    return Capture(network.router_exec_argv([]), network.router_capture_iface, path)


def tcp_streams(packets: Any) -> dict[Flow, bytes]:
    """Each direction of each TCP connection, reassembled by sequence number."""
    segments: dict[Flow, dict[int, bytes]] = defaultdict(dict)
    for packet in packets:
        if IP in packet and TCP in packet:
            payload = bytes(packet[TCP].payload)
            if payload:
                flow = (packet[IP].src, packet[TCP].sport, packet[IP].dst, packet[TCP].dport)
                segments[flow][packet[TCP].seq] = payload
    return {flow: b"".join(data for _, data in sorted(parts.items())) for flow, parts in segments.items()}


@dataclass
class HttpRequest:
    flow: Flow
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def http_requests(streams: dict[Flow, bytes]) -> list[HttpRequest]:
    """Requests (Content-Length bodies) in client->server streams."""
    found = []
    for flow, data in streams.items():
        while data[:8].split(b" ")[0] in (b"GET", b"POST", b"PUT", b"HEAD"):
            head, _, rest = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _version = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
            length = int(headers.get("content-length", "0"))
            found.append(HttpRequest(flow, method, path, headers, rest[:length]))
            data = rest[length:]
    return found


def dns_queries(packets: Any) -> list[tuple[str, str, int]]:
    """(source address, name, destination port) of every plaintext DNS query."""
    queries = []
    for packet in packets:
        if IP in packet and UDP in packet and packet[UDP].dport == 53:
            message = DNS(bytes(packet[UDP].payload))
            if message.qr == 0 and message.qd:
                queries.append((packet[IP].src, message.qd[0].qname.decode().rstrip("."), packet[UDP].dport))
    return queries


def tls_server_names(streams: dict[Flow, bytes]) -> list[tuple[Flow, str]]:
    """SNI of every TLS ClientHello."""
    names = []
    for flow, data in streams.items():
        if not data.startswith(b"\x16\x03"):
            continue
        record = TLS(data)
        for message in record.msg:
            if isinstance(message, TLSClientHello):
                for ext in message.ext or []:
                    if isinstance(ext, TLS_Ext_ServerName):
                        names += [(flow, entry.servername.decode()) for entry in ext.servernames]
    return names
