"""phonehome sample-capture DIR: a reproduction of the 2019 Nokia 7 Plus capture, to try the analyzer.

Writes DIR/nokia7plus-2019.pcap and DIR/ids.json (both 0600; the identifiers are made up). The
capture is what the phones sent on power-up: a DNS lookup of zzhc.vnet.cn (answered 42.99.2.15),
a TCP handshake, and `POST /` with `Content-Type: application/encrypted-json` whose body is
Base64 (wrapped at 76 columns like Android's Base64.DEFAULT) of a flat JSON object holding IMEI,
ICCID, IMSI, cell ID and Wi-Fi MAC, split over several TCP segments; ordinary TLS traffic
before and after. Then run:

    phonehome analyze DIR/nokia7plus-2019.pcap --identifiers DIR/ids.json
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness.errors import PhonehomeError

CAPTURE_NAME = "nokia7plus-2019.pcap"
IDS_NAME = "ids.json"
START = 1563777000.0  # 2019-07-22 06:30 UTC
PHONE_MAC, ROUTER_MAC = "a4:d9:90:3c:5e:71", "02:00:5e:10:00:01"
PHONE_IP, RESOLVER_IP = "192.168.1.23", "192.168.1.1"
ZZHC_IP = "42.99.2.15"
TLS_PEERS = (("android.googleapis.com", "142.250.74.42"), ("connectivitycheck.gstatic.com", "142.250.74.3"))

# Made-up identifiers of the right shapes (Luhn-valid IMEIs and ICCID; a Norwegian IMSI and ICCID).
IDENTIFIERS: dict[str, list[str]] = {
    "imei": ["358240051111110", "358240051111128"],
    "imsi": ["242016000012345"],
    "iccid": ["8947080012345678900"],
    "wifi_mac": [PHONE_MAC],
    "cell_id": ["27447298"],
}


def registration_body(ids: dict[str, list[str]]) -> bytes:
    """The client's JSON, Base64-encoded like Android's Base64.DEFAULT (76 columns, `\\n`)."""
    report = {
        "REGVER": "4.0", "MEID": ids["imei"][0][:14], "MODEL": "HMD-Nokia 7 plus", "SWVER": "00WW_3_22C",
        "SIM1ICCID": ids["iccid"][0], "SIM1LTEIMSI": ids["imsi"][0], "SIM1CDMAIMSI": "",
        "SIM1CELLID": ids["cell_id"][0], "IMEI1": ids["imei"][0], "IMEI2": ids["imei"][1],
        "MACID": ids["wifi_mac"][0], "ACCESSTYPE": "2", "REGDATE": "2019-07-22 08:30:12",
    }
    return base64.encodebytes(json.dumps(report, separators=(",", ":")).encode())


class TcpConversation:
    """One TCP connection's packets with correct sequence numbers."""

    def __init__(self, client: tuple[str, int], server: tuple[str, int], clock: list[float]) -> None:
        self.client, self.server, self.clock = client, server, clock
        self.seq, self.ack = 100_000 + client[1], 7_000_000 + server[1]

    def _pkt(self, from_client: bool, flags: str, payload: bytes = b"") -> Any:
        from scapy.layers.inet import IP, TCP
        from scapy.layers.l2 import Ether

        self.clock[0] += 0.004
        (src, sport), (dst, dport) = (self.client, self.server) if from_client else (self.server, self.client)
        seq, ack = (self.seq, self.ack) if from_client else (self.ack, self.seq)
        macs = (PHONE_MAC, ROUTER_MAC) if from_client else (ROUTER_MAC, PHONE_MAC)
        packet = Ether(src=macs[0], dst=macs[1]) / IP(src=src, dst=dst) / TCP(
            sport=sport, dport=dport, flags=flags, seq=seq, ack=ack if "A" in flags else 0, window=65535)
        if payload:
            packet = packet / payload
        packet.time = self.clock[0]
        advance = len(payload) + (1 if "S" in flags or "F" in flags else 0)
        if from_client:
            self.seq += advance
        else:
            self.ack += advance
        return packet

    def handshake(self) -> Iterator[Any]:
        yield self._pkt(True, "S")
        yield self._pkt(False, "SA")
        yield self._pkt(True, "A")

    def send(self, from_client: bool, data: bytes, segment: int = 1400) -> Iterator[Any]:
        for offset in range(0, len(data), segment):
            yield self._pkt(from_client, "PA", data[offset : offset + segment])
        yield self._pkt(not from_client, "A")

    def close(self) -> Iterator[Any]:
        yield self._pkt(True, "FA")
        yield self._pkt(False, "FA")
        yield self._pkt(True, "A")


def client_hello(name: str) -> bytes:
    from scapy.layers.tls.extensions import ServerName, TLS_Ext_ServerName, TLS_Ext_SupportedVersion_CH
    from scapy.layers.tls.handshake import TLSClientHello
    from scapy.layers.tls.record import TLS

    hello = TLSClientHello(ciphers=[0x1301, 0x1302, 0xC02F], ext=[
        TLS_Ext_ServerName(servernames=[ServerName(servername=name.encode())]),
        TLS_Ext_SupportedVersion_CH(versions=[0x0304, 0x0303])])
    return bytes(TLS(msg=[hello]))


def app_data(size: int, seed: int) -> bytes:
    """A TLS application-data record with random-looking (encrypted) contents, the same every run."""
    body = random.Random(seed).randbytes(size)
    return b"\x17\x03\x03" + len(body).to_bytes(2, "big") + body


def dns_exchange(name: str, answer: str, sport: int, clock: list[float]) -> list[Any]:
    from scapy.layers.dns import DNS, DNSQR, DNSRR
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    query = Ether(src=PHONE_MAC, dst=ROUTER_MAC) / IP(src=PHONE_IP, dst=RESOLVER_IP) / UDP(sport=sport, dport=53) / \
        DNS(id=sport & 0xFFFF, rd=1, qd=DNSQR(qname=name, qtype="A"))
    reply = Ether(src=ROUTER_MAC, dst=PHONE_MAC) / IP(src=RESOLVER_IP, dst=PHONE_IP) / UDP(sport=53, dport=sport) / \
        DNS(id=sport & 0xFFFF, qr=1, rd=1, ra=1, qd=DNSQR(qname=name, qtype="A"),
            an=DNSRR(rrname=name, type="A", ttl=600, rdata=answer))
    clock[0] += 0.02
    query.time = clock[0]
    clock[0] += 0.03
    reply.time = clock[0]
    return [query, reply]


def tls_session(name: str, address: str, sport: int, clock: list[float]) -> list[Any]:
    conn = TcpConversation((PHONE_IP, sport), (address, 443), clock)
    packets = list(conn.handshake())
    packets += conn.send(True, client_hello(name))
    packets += conn.send(False, app_data(1200, sport))  # server hello + certificates, encrypted in TLS 1.3
    packets += conn.send(True, app_data(300, sport + 1))
    packets += conn.send(False, app_data(900, sport + 2))
    packets += conn.close()
    return packets


def incident_packets(ids: dict[str, list[str]] | None = None, start: float = START) -> list[Any]:
    """The packets of the sample capture, in time order."""
    ids = ids or IDENTIFIERS
    clock = [start]
    packets: list[Any] = []
    for port, (name, address) in zip((40110, 40112), TLS_PEERS, strict=True):
        packets += dns_exchange(name, address, port - 5000, clock)
        packets += tls_session(name, address, port, clock)
    packets += dns_exchange("zzhc.vnet.cn", ZZHC_IP, 35353, clock)
    body = registration_body(ids)
    head = (b"POST / HTTP/1.1\r\nContent-Type: application/encrypted-json\r\nHost: zzhc.vnet.cn\r\n"
            b"Content-Length: %d\r\nConnection: Keep-Alive\r\nUser-Agent: Apache-HttpClient/UNAVAILABLE "
            b"(java 1.4)\r\n\r\n" % len(body))
    conn = TcpConversation((PHONE_IP, 41002), (ZZHC_IP, 80), clock)
    packets += conn.handshake()
    packets += conn.send(True, head)
    packets += conn.send(True, body, segment=160)  # the Base64 body over several segments
    reply = b'{"resultCode":"0","resultDesc":"Success"}'
    packets += conn.send(False, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (len(reply), reply))
    packets += conn.close()
    packets += tls_session(*TLS_PEERS[0], 40120, clock)
    return packets


def _owner_only(path: Path) -> int:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def write_sample(directory: Path) -> tuple[Path, Path]:
    """Write the capture and its IDS.json (0600) into `directory`; their paths."""
    from scapy.utils import PcapWriter

    try:
        directory.mkdir(parents=True, exist_ok=True)
        capture, ids_file = directory / CAPTURE_NAME, directory / IDS_NAME
        with os.fdopen(_owner_only(capture), "wb") as handle:
            writer = PcapWriter(handle, linktype=1, sync=True)
            for packet in incident_packets():
                writer.write(packet)
            writer.flush()
        with os.fdopen(_owner_only(ids_file), "w", encoding="utf-8") as handle:
            json.dump(IDENTIFIERS, handle, indent=2)
            handle.write("\n")
    except OSError as exc:
        raise PhonehomeError(f"{directory}: cannot write the sample: {exc.strerror or exc}") from None
    return capture, ids_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", type=Path, metavar="DIR", help="where to write the capture and ids.json")


def run(args: argparse.Namespace) -> int:
    capture, ids_file = write_sample(args.directory)
    print(f"wrote {capture} and {ids_file} (0600; made-up identifiers)")
    print(f"next: phonehome analyze {capture} --identifiers {ids_file}")
    return 0
