"""Choosing a backend (`--ph-capture`, the profile, the default) and the analyse-only file backend."""

from __future__ import annotations

from pathlib import Path

import pytest
from pcap_kit import eth
from scapy.layers.inet import IP, UDP
from scapy.utils import wrpcap

from harness.capture.base import CaptureSetupError, State
from harness.capture.file import FileCapture
from harness.capture.gateway import GatewayCapture
from harness.capture.select import CaptureChoice, CaptureSpecError, build, choose, from_profile, parse_spec
from harness.errors import ConfigError, PhonehomeError
from harness.profile import load_profile


def write_profile(tmp_path: Path, capture: str) -> Path:
    path = tmp_path / "phone.yaml"
    path.write_text(f'market: "NO"\ncapture: {capture}\n')
    return path


@pytest.mark.parametrize(("text", "backend", "settings"), [
    ("gateway", "gateway", {}),
    ("gateway:eth1", "gateway", {"interface": "eth1"}),
    ("gateway:ap0@ph-1a2b3c-router", "gateway", {"interface": "ap0@ph-1a2b3c-router"}),
    ("device", "device", {}),
    ("pcapdroid", "pcapdroid", {}),
    ("file:/tmp/x y.pcap", "file", {"path": "/tmp/x y.pcap"}),
])
def test_parse_spec(text: str, backend: str, settings: dict[str, str]) -> None:
    choice = parse_spec(text)
    assert (choice.backend, dict(choice.settings), choice.source) == (backend, settings, "--ph-capture")


@pytest.mark.parametrize("text", ["", "wifi", "gateway:", "gateway:a/b", "gateway:way-too-long-name0", "device:x",
                                  "file:", "pcapdroid:eth0", "gateway:eth0@bad/ns"])
def test_bad_spec_is_one_line(text: str) -> None:
    with pytest.raises(CaptureSpecError) as caught:
        parse_spec(text)
    assert "\n" not in str(caught.value) and "--ph-capture" in str(caught.value)


def test_option_wins_and_keeps_the_profiles_settings_for_the_same_backend(tmp_path: Path) -> None:
    profile = load_profile(write_profile(tmp_path, "{backend: gateway, interface: eth1, max_bytes: 1000000}"))
    assert dict(choose(None, profile).settings) == {"interface": "eth1", "max_bytes": 1000000}
    merged = choose("gateway:eth2", profile)
    assert dict(merged.settings) == {"interface": "eth2", "max_bytes": 1000000}
    assert dict(choose("device", profile).settings) == {}


def test_defaults(tmp_path: Path) -> None:
    assert choose(None, virtual=True).backend == "gateway"
    with pytest.raises(CaptureSpecError, match="no capture backend chosen"):
        choose(None)
    profile = load_profile(write_profile(tmp_path, "{}"))
    assert from_profile(profile) is None


@pytest.mark.parametrize(("section", "field"), [
    ("{backend: gateway, max_bytes: -5}", "capture.max_bytes"),
    ("{backend: gateway, snaplen: yes}", "capture.snaplen"),
    ("{backend: device, tcpdump: tcpdump}", "capture.tcpdump"),
    ("{backend: pcapdroid, package: 'not a package'}", "capture.package"),
    ("{backend: gateway, interface: 'a/b'}", "capture.interface"),
])
def test_bad_profile_settings_name_file_and_field(tmp_path: Path, section: str, field: str) -> None:
    path = write_profile(tmp_path, section)
    with pytest.raises(ConfigError) as caught:
        choose(None, load_profile(path))
    assert caught.value.path == str(path) and caught.value.field == field


def test_build_needs_what_the_backend_needs(tmp_path: Path) -> None:
    with pytest.raises(CaptureSpecError, match="which interface"):
        build(choose("gateway"), tmp_path / "x.pcap")
    with pytest.raises(CaptureSpecError, match="needs a phone over adb"):
        build(choose("device"), tmp_path / "x.pcap")
    backend = build(choose("gateway:eth7@phns"), tmp_path / "x.pcap")
    assert isinstance(backend, GatewayCapture) and (backend.interface, backend.netns) == ("eth7", "phns")
    assert backend.sampler is None


def test_build_gateway_for_a_virtual_phones_router(tmp_path: Path) -> None:
    class Network:  # the two attributes of harness.virtual.network.PhoneNetwork that a gateway uses
        router_capture_iface = "ap0"
        router_ns = "ph-abc123-router"

    backend = build(CaptureChoice("gateway"), tmp_path / "x.pcap", network=Network())
    assert isinstance(backend, GatewayCapture) and (backend.interface, backend.netns) == ("ap0", "ph-abc123-router")


def test_file_backend_reports_an_existing_capture(tmp_path: Path) -> None:
    path = tmp_path / "given.pcap"
    wrpcap(str(path), [eth() / IP() / UDP() for _ in range(3)])
    capture = build(choose(f"file:{path}"), tmp_path / "unused.pcap")
    assert isinstance(capture, FileCapture)
    capture.start()
    capture.after_reboot()
    result = capture.stop()
    assert (result.packets, result.path, result.empty) == (3, path, False)
    assert capture.state is State.STOPPED
    assert not list(tmp_path.glob("*.json")), "nothing is written beside the user's file"


def test_file_backend_empty_missing_and_not_a_capture(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pcap"
    wrpcap(str(empty), [])
    assert FileCapture(empty).start().stop().empty
    with pytest.raises(CaptureSetupError, match="does not exist"):
        FileCapture(tmp_path / "nope.pcap").start()
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a capture at all\n")
    with pytest.raises(CaptureSetupError, match="not a capture file"):
        FileCapture(text).start()


def test_setup_errors_are_phonehome_errors() -> None:
    assert issubclass(CaptureSetupError, PhonehomeError) and issubclass(CaptureSpecError, PhonehomeError)
