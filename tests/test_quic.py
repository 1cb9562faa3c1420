"""QUIC Initial packets: the client's ClientHello read from packets anyone can decrypt.

The datagrams are what a real QUIC stack (aioquic, in memory: nothing is sent) writes when it
connects; they are put in a pcap with scapy and analysed from the file.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicProtocolVersion
from analyze_kit import IDS, PHONE, write_pcap
from pcap_kit import eth
from scapy.layers.inet import IP, UDP

from harness import sample
from harness.analyzer import analyze
from harness.analyzer.quic import crypto_frames
from harness.identifiers import IdentifierSet

SERVER = "198.51.100.7"  # a documentation address: only ever inside the capture file
IMEI = IDS["imei"][0]


def initial_datagrams(server_name: str, version: int = QuicProtocolVersion.VERSION_1,
                      alpn: list[str] | None = None) -> list[bytes]:
    config = QuicConfiguration(is_client=True, alpn_protocols=alpn or ["h3"], server_name=server_name)
    config.original_version = version
    connection = QuicConnection(configuration=config)
    connection.connect((SERVER, 443), now=0.0)
    return [data for data, _ in connection.datagrams_to_send(now=0.0)]


def capture(tmp_path: Path, datagrams: list[bytes], name: str = "quic.pcap") -> Path:
    packets: list[Any] = []
    for i, data in enumerate(datagrams):
        packet = eth() / IP(src=PHONE, dst=SERVER) / UDP(sport=50123, dport=443) / data
        packet.time = sample.START + i * 0.001
        packets.append(packet)
    return write_pcap(tmp_path / name, packets)


@pytest.mark.parametrize("version", [QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2])
def test_the_sni_of_a_quic_client_names_the_flow_and_is_scanned(tmp_path: Path, version: int) -> None:
    datagrams = initial_datagrams(f"{IMEI}.reg.example.com", version)
    assert not any(IMEI.encode() in d for d in datagrams)  # encrypted on the wire
    report = analyze(capture(tmp_path, datagrams), IdentifierSet.from_mapping(IDS, "test"))
    found = [f for f in report.findings if f.identifier == "imei"]
    assert [f.encoding for f in found] == [["quic-initial", "tls-sni", "plain"]]
    assert found[0].host == "‹imei[1]›.reg.example.com" and found[0].frames == [1]  # the name masked


def test_a_client_hello_over_two_datagrams_is_joined(tmp_path: Path) -> None:
    alpn = [f"{'x' * 200}{i}" for i in range(6)] + [f"reg-{IMEI}"]  # longer than one Initial packet
    datagrams = initial_datagrams("push.example-oem.com", alpn=alpn)
    assert len(datagrams) == 2
    first, second = (b"".join(data for _, data in crypto_frames(d)) for d in datagrams)
    assert IMEI.encode() in second and IMEI.encode() not in first
    report = analyze(capture(tmp_path, datagrams), IdentifierSet.from_mapping(IDS, "test"))
    assert [d["host"] for d in report.destinations] == ["push.example-oem.com"]
    found = [f for f in report.findings if f.identifier == "imei"]
    assert [(f.encoding, f.frames, f.host) for f in found] == [(["quic-initial", "plain"], [2], "push.example-oem.com")]


def test_mangled_initials_never_raise() -> None:
    datagram = initial_datagrams("a.example")[0]
    rng = random.Random(3)
    for _ in range(300):
        mangled = bytearray(datagram[: rng.randrange(len(datagram) + 1)])
        for _ in range(rng.randrange(4)):
            if mangled:
                mangled[rng.randrange(len(mangled))] = rng.randrange(256)
        crypto_frames(bytes(mangled))  # decrypts, or gives nothing: never an exception
