"""The phone's MAC in its own IPv6 address (EUI-64): found in headers and payloads, and masked.

Packets are built with scapy and analysed from the pcap file; every address is inside the file.
The interface ID is computed here with `ipaddress` from RFC 4291's rule, not by the analyzer.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from pathlib import Path
from typing import Any

from analyze_kit import IDS, run_cli, write_ids
from scapy.layers.inet import TCP
from scapy.layers.inet6 import ICMPv6ND_NS, IPv6
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from harness import sample
from harness.analyzer import analyze
from harness.identifiers import IdentifierSet

MAC = IDS["wifi_mac"][0]
SERVER = "2001:db8:beef::443"
ROUTER_MAC = "02:00:00:00:00:fe"


def _eui64_address(prefix: str, mac: str) -> str:
    octets = bytearray(bytes.fromhex(mac.replace(":", "")))
    octets[0] ^= 0x02  # the universal/local bit
    iid = bytes(octets[:3]) + b"\xff\xfe" + bytes(octets[3:])
    return str(ipaddress.IPv6Address(ipaddress.IPv6Network(prefix).network_address.packed[:8] + iid))


PHONE_EUI64 = _eui64_address("2001:db8:1:2::/64", MAC)
PHONE_PRIVATE = "2001:db8:1:2:9c1e:4b2a:71d3:a0f5"  # a temporary (RFC 8981) address of the same phone
PHONE_LINK = _eui64_address("fe80::/64", MAC)


def _flow(src: str, sport: int, dst: str = SERVER, payload: bytes = b"") -> list[Any]:
    up, down = Ether(src=MAC, dst=ROUTER_MAC), Ether(src=ROUTER_MAC, dst=MAC)  # explicit: scapy would resolve them
    packets = [up / IPv6(src=src, dst=dst) / TCP(sport=sport, dport=443, flags="S", seq=1),
               down / IPv6(src=dst, dst=src) / TCP(sport=443, dport=sport, flags="SA", seq=9, ack=2)]
    if payload:
        packets.append(up / IPv6(src=src, dst=dst) / TCP(sport=sport, dport=443, flags="PA", seq=2, ack=10) / payload)
    for i, packet in enumerate(packets):
        packet.time = sample.START + sport / 1000 + i * 0.001
    return packets


def _write(path: Path, packets: list[Any]) -> Path:
    wrpcap(str(path), packets, linktype=1)
    return path


def test_an_eui64_source_address_is_the_mac_going_out(tmp_path: Path) -> None:
    packets = _flow(PHONE_EUI64, 40001) + _flow(PHONE_EUI64, 40002) + _flow(PHONE_PRIVATE, 40003) \
        + _flow(PHONE_LINK, 40004, dst="fe80::1")
    report = analyze(_write(tmp_path / "v6.pcap", packets), IdentifierSet.from_mapping(IDS, "test"))
    found = [f for f in report.findings if f.identifier == "wifi_mac"]
    assert [(f.encoding, f.frames, f.dst) for f in found] == [(["ipv6-address", "eui64"], [1], SERVER)]
    assert "on 2 flows" in found[0].evidence and MAC[-3:] in found[0].evidence  # masked: last 3 only


def test_the_address_in_a_payload_is_found_too(tmp_path: Path) -> None:
    via = f"REGISTER sip:ims.example SIP/2.0\r\nVia: SIP/2.0/TCP [{PHONE_EUI64}]:5060\r\n\r\n".encode()
    report = analyze(_write(tmp_path / "sip.pcap", _flow(PHONE_PRIVATE, 40005, payload=via)),
                     IdentifierSet.from_mapping(IDS, "test"))
    assert [f.encoding for f in report.findings if f.identifier == "wifi_mac"] == [["tcp-payload", "eui64"]]


def test_reports_never_show_the_mac_derived_address(tmp_path: Path) -> None:
    capture = _write(tmp_path / "v6.pcap", _flow(PHONE_EUI64, 40006))
    out = tmp_path / "findings.json"
    done = run_cli("analyze", capture, "--identifiers", write_ids(tmp_path / "ids.json"), "--json", out)
    assert done.returncode == 1, done.stderr
    for text in (out.read_text(), done.stdout, done.stderr):
        assert PHONE_EUI64 not in text and PHONE_EUI64.split(":", 4)[4] not in text
    assert json.loads(out.read_text())["findings"][0]["encoding"] == ["ipv6-address", "eui64"]


def test_neighbour_discovery_stays_on_the_link(tmp_path: Path) -> None:
    solicit = Ether(src=MAC, dst="33:33:ff:00:00:01") / IPv6(src=PHONE_EUI64, dst="ff02::1:ff00:1") \
        / ICMPv6ND_NS(tgt="2001:db8:1:2::1")
    solicit.time = sample.START
    report = analyze(_write(tmp_path / "nd.pcap", [solicit, *_flow(PHONE_PRIVATE, 40007)]),
                     IdentifierSet.from_mapping(IDS, "test"))
    assert [f for f in report.findings if f.identifier == "wifi_mac"] == []


def test_the_report_itself_never_holds_the_address(tmp_path: Path) -> None:
    """The gate writes `report.to_json()` as it is: every finding on the flow carries its `src`."""
    packets = _flow(PHONE_EUI64, 40008, payload=b"imei=" + IDS["imei"][0].encode())
    report = analyze(_write(tmp_path / "v6.pcap", packets), IdentifierSet.from_mapping(IDS, "test"))
    assert {f.identifier for f in report.findings} == {"wifi_mac", "imei"}
    text = json.dumps(report.to_json())
    assert PHONE_EUI64 not in text and PHONE_EUI64.split(":", 4)[4] not in text


def test_the_interface_id_here_is_what_the_kernel_forms(netns_available: None) -> None:
    """Cross-check the test's own EUI-64 rule against Linux: a veth link with that MAC, in a
    namespace the test creates, gets exactly that link-local address."""
    ns = f"ph-eui64-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "d0", "address", MAC, "type", "veth", "peer", "name", "d1"],
                       check=True)
        subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.d0.addr_gen_mode=0"], check=True)
        for end in ("d0", "d1"):
            subprocess.run(["ip", "-n", ns, "link", "set", end, "up"], check=True)
        shown = subprocess.run(["ip", "-n", ns, "-6", "addr", "show", "dev", "d0"], capture_output=True, text=True,
                               check=True).stdout
        assert f"inet6 {PHONE_LINK}/64" in shown, shown
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
