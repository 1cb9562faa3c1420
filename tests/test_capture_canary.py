"""The canary end to end: the phone sends a marker, the capture keeps it, the analyzer finds it.

A capture that missed the marker, or saw nothing at all, must come out `unverified`, never clean.
Lab phones (capture_kit) and a virtual phone, real packets, the real analyzer.
"""

# ruff: noqa: F811  (pytest fixtures imported from virtual_fixtures are parameters by design)

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from capture_kit import NetLab
from virtual_fixtures import adb_client, virtual_phones  # noqa: F401  (fixture)

from harness.analyzer import analyze
from harness.analyzer.model import Status
from harness.capture.canary import CANARY_DOMAIN, canary_name, new_marker, private_dns_warning, send_canary
from harness.capture.gateway import GatewayCapture
from harness.device.adb import Adb
from harness.errors import PhonehomeError


@pytest.fixture
def lab(netns_available: None, tool: object) -> Iterator[NetLab]:
    tool("tcpdump")  # type: ignore[operator]
    with NetLab() as net:
        yield net


def test_marker_is_one_fresh_dns_label() -> None:
    markers = {new_marker() for _ in range(100)}
    assert len(markers) == 100
    for marker in markers:
        assert marker.isalnum() and marker == marker.lower() and len(marker) <= 63
    assert canary_name("phx", CANARY_DOMAIN) == "phx.canary.phonehome.test"
    assert private_dns_warning("off") is None and "DNS-over-TLS" in (private_dns_warning("hostname") or "")


def test_dns_canary_seen_makes_the_capture_verifiable(lab: NetLab, tmp_path: Path) -> None:
    phone = lab.add_phone()
    shell = lab.shell(phone)
    capture = GatewayCapture(tmp_path / "c.pcap", lab.bridge, netns=lab.router, phone=shell, check_mobile_data=False)
    capture.start()
    canary = capture.send_canary(shell)
    result = capture.stop()
    assert canary.method == "dns" and canary.target == f"{canary.marker}.{CANARY_DOMAIN}"
    assert canary.private_dns == "unknown"  # no `settings` here: recorded as unknown, not guessed
    assert result.canaries[0]["marker"] == canary.marker
    report = analyze(result.path, None, guess=True, canary=canary.marker, exclude=result.exclude,
                     blind_windows=result.blind_windows)
    assert report.capture.canary is not None and report.capture.canary.marker_seen
    assert report.status is Status.CLEAN, report.reasons


def test_canary_sent_after_the_capture_stopped_is_unverified(lab: NetLab, tmp_path: Path) -> None:
    phone = lab.add_phone()
    shell = lab.shell(phone)
    capture = GatewayCapture(tmp_path / "c.pcap", lab.bridge, netns=lab.router, phone=shell, check_mobile_data=False)
    capture.start()
    capture.send_canary(shell)  # traffic exists: only the canary decides
    result = capture.stop()
    late = send_canary(shell)  # what a capture that stopped too early misses
    report = analyze(result.path, None, canary=late.marker)
    assert report.status is Status.UNVERIFIED
    assert any("canary" in reason for reason in report.reasons)


def test_empty_capture_is_reported_honestly_and_unverified(lab: NetLab, tmp_path: Path) -> None:
    lab.add_phone()
    capture = GatewayCapture(tmp_path / "c.pcap", lab.bridge, netns=lab.router, check_mobile_data=False)
    capture.start()
    result = capture.stop()
    assert result.empty and result.packets == 0 and result.errors == []
    report = analyze(result.path, None)
    assert report.status is Status.UNVERIFIED and any("no packets" in r for r in report.reasons)


def test_http_canary_reaches_a_test_network_endpoint(lab: NetLab, tmp_path: Path, tool: Any) -> None:
    tool("nc")
    phone = lab.add_phone()
    shell = lab.shell(phone)
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab.router, sys.executable, "-c",
         "import http.server, sys\n"
         "class H(http.server.BaseHTTPRequestHandler):\n"
         "    def do_GET(self):\n"
         "        print(self.path, flush=True); self.send_response(204); self.end_headers()\n"
         "    def log_message(self, *a): pass\n"
         f"s = http.server.HTTPServer(({lab.router_ip!r}, 8080), H); print('ready', flush=True)\n"
         "s.handle_request()\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        capture = GatewayCapture(tmp_path / "c.pcap", lab.bridge, netns=lab.router, phone=shell,
                                 check_mobile_data=False)
        capture.start()
        canary = capture.send_canary(shell, method="http", url=f"http://{lab.router_ip}:8080/")
        result = capture.stop()
        assert server.stdout.readline().strip() == f"/phonehome-canary/{canary.marker}"
    finally:
        server.kill()
        server.wait()
    assert canary.warning is None and canary.exit_code == 0
    report = analyze(result.path, None, canary=canary.marker)
    assert report.capture.canary is not None and report.capture.canary.marker_seen


def test_bad_canary_options_are_one_line_errors(lab: NetLab) -> None:
    shell = lab.shell(lab.add_phone())
    with pytest.raises(PhonehomeError, match="needs a url"):
        send_canary(shell, method="http")
    with pytest.raises(PhonehomeError, match="expected http://HOST"):
        send_canary(shell, method="http", url="https://example.test/")
    with pytest.raises(PhonehomeError, match="unknown canary method"):
        send_canary(shell, method="smoke")
    assert shell.commands == []  # nothing was sent for a bad option


def test_private_dns_mode_is_recorded_on_a_phone(virtual_phones: Callable[..., list[Any]],
                                                 adb_server: dict[str, str], tmp_path: Path) -> None:
    (phone,) = virtual_phones("clean", faults=["private-dns-on"])
    adb = Adb(adb_client(adb_server), phone.serial)
    capture = GatewayCapture(tmp_path / "c.pcap", phone.network.router_capture_iface, netns=phone.network.router_ns,
                             phone=adb)
    capture.start()
    canary = capture.send_canary(adb)
    result = capture.stop()
    mode = adb.script("settings get global private_dns_mode").stdout.strip()
    assert canary.private_dns == mode and mode in ("opportunistic", "hostname")
    assert canary.warning is not None and canary.warning in result.notes


def test_canary_found_in_a_virtual_phones_capture(virtual_phones: Callable[..., list[Any]],
                                                  adb_server: dict[str, str], tmp_path: Path) -> None:
    (phone,) = virtual_phones("clean")
    adb = Adb(adb_client(adb_server), phone.serial)
    capture = GatewayCapture(tmp_path / "c.pcap", phone.network.router_capture_iface, netns=phone.network.router_ns,
                             phone=adb)
    capture.start()
    time.sleep(0.2)
    canary = capture.send_canary(adb)
    result = capture.stop()
    found = analyze(result.path, None, canary=canary.marker, exclude=result.exclude)
    assert found.capture.canary is not None and found.capture.canary.marker_seen
    assert not any("canary" in r for r in found.reasons)
    missing = analyze(result.path, None, canary=new_marker(), exclude=result.exclude)
    assert missing.status is Status.UNVERIFIED
