"""Which capture backend runs: `--ph-capture`, else the profile's `capture:` section, else a default.

    choice = choose(options.capture, profile, virtual=is_virtual)   # errors: one line
    capture = build(choice, artifacts / "capture.pcap", adb=adb, network=phone.network)

`--ph-capture gateway[:IFACE[@NETNS]] | device | pcapdroid | file:PATH` wins over the profile;
when it names the profile's backend, the profile's other settings (filter, size cap...) still
apply. A virtual phone defaults to the gateway in its router namespace; a real phone has no
default (a gateway needs to know the interface its traffic crosses): one clear error says how to
choose. Unusable settings are one line naming the profile file and field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.capture.attribution import SocketSampler
from harness.capture.base import CaptureBackend, sidecar
from harness.capture.device import DeviceCapture
from harness.capture.file import FileCapture
from harness.capture.gateway import GatewayCapture
from harness.capture.pcapdroid import PACKAGE, PcapdroidCapture
from harness.device.adb import Adb
from harness.errors import ConfigError, PhonehomeError

BACKENDS = ("gateway", "device", "pcapdroid", "file")
SPEC_FORMS = "gateway[:IFACE[@NETNS]], device, pcapdroid or file:PATH"
_IFACE = re.compile(r"[^\s/:@]{1,15}")  # Linux: at most 15 bytes, no '/', ':' or whitespace
_NETNS = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_PACKAGE = re.compile(r"[A-Za-z][\w]*(\.[A-Za-z][\w]*)+")
# setting -> (type, check, what it must be)
_RULES: dict[str, tuple[type, Callable[[Any], bool], str]] = {
    "interface": (str, lambda v: bool(_interface(v)), "an interface name, optionally IFACE@NETNS"),
    "filter": (str, lambda v: bool(v.strip()), "a tcpdump (BPF) filter expression"),
    "snaplen": (int, lambda v: v >= 0, "a snap length in bytes, 0 for whole packets"),
    "max_bytes": (int, lambda v: v > 0, "a size cap in bytes, more than 0"),
    "tcpdump": (str, lambda v: v.startswith("/"), "an absolute path to tcpdump on the phone"),
    "package": (str, lambda v: bool(_PACKAGE.fullmatch(v)), "an Android package name"),
    "path": (str, lambda v: bool(v.strip()), "a capture file path"),
}


class CaptureSpecError(PhonehomeError):
    """A `--ph-capture` value or capture setting that names no usable backend."""


@dataclass(frozen=True, slots=True)
class CaptureChoice:
    backend: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    source: str = "default"  # "--ph-capture", "profile <file>", "default"

    def describe(self) -> str:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(self.settings.items()) if k != "filter")
        return f"{self.backend}{f' ({detail})' if detail else ''} from {self.source}"


def _interface(value: str) -> tuple[str, str | None] | None:
    """`IFACE` or `IFACE@NETNS` -> (iface, netns)."""
    iface, _, netns = value.partition("@")
    if not _IFACE.fullmatch(iface) or (netns and not _NETNS.fullmatch(netns)):
        return None
    return iface, netns or None


def parse_spec(text: str) -> CaptureChoice:
    """A `--ph-capture` value; a bad one is `CaptureSpecError` with one line."""
    backend, colon, rest = text.strip().partition(":")
    if backend == "gateway":
        if colon and not _interface(rest):
            raise CaptureSpecError(f"--ph-capture {text!r}: {rest!r} is not an interface name (gateway:IFACE or "
                                   "gateway:IFACE@NETNS)")
        return CaptureChoice("gateway", {"interface": rest} if colon else {}, "--ph-capture")
    if backend in ("device", "pcapdroid") and not colon:
        return CaptureChoice(backend, {}, "--ph-capture")
    if backend == "file" and rest.strip():
        return CaptureChoice("file", {"path": rest}, "--ph-capture")
    raise CaptureSpecError(f"--ph-capture {text!r}: expected {SPEC_FORMS}")


def _checked(backend: str, settings: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Type- and range-check settings; `where` is the profile file (ConfigError) or None."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        rule = _RULES.get(key)
        if rule is None:
            raise ConfigError(where, None, f"capture.{key}", f"not a setting of the {backend} backend")
        kind, ok, what = rule
        if not isinstance(value, kind) or isinstance(value, bool) or not ok(value):
            raise ConfigError(where, None, f"capture.{key}", f"expected {what}, got {value!r}")
        out[key] = value
    return out


def from_profile(profile: Any) -> CaptureChoice | None:
    """The profile's `capture:` section (`harness.profile.CaptureSettings`), checked; None if absent."""
    section = getattr(profile, "capture", None)
    backend = getattr(section, "backend", None)
    if not backend:
        return None
    where = str(getattr(profile, "path", "profile"))
    if backend not in BACKENDS:
        raise ConfigError(where, None, "capture.backend", f"expected one of {', '.join(BACKENDS)}")
    return CaptureChoice(backend, _checked(backend, getattr(section, "settings", {}) or {}, where), f"profile {where}")


def choose(option: str | None, profile: Any = None, *, virtual: bool = False) -> CaptureChoice:
    """`--ph-capture` over the profile over the default; raises one line when nothing usable is chosen."""
    from_file = from_profile(profile) if profile is not None else None
    if option:
        chosen = parse_spec(option)
        if from_file is not None and from_file.backend == chosen.backend:
            return CaptureChoice(chosen.backend, {**from_file.settings, **chosen.settings}, chosen.source)
        return chosen
    if from_file is not None:
        return from_file
    if virtual:
        return CaptureChoice("gateway", {}, "default (virtual phone: its router)")
    raise CaptureSpecError(f"no capture backend chosen: give --ph-capture {SPEC_FORMS}, or the profile's capture: "
                           "section (a gateway needs the interface the phone's traffic crosses)")


def build(choice: CaptureChoice, output: Path, *, adb: Adb | None = None, network: Any = None,
          prepare_ui: Callable[[], None] | None = None, attribution: bool = True,
          attribution_interval: float = 2.0) -> CaptureBackend:
    """The backend for `choice`, writing `output`; `network` is a virtual phone's PhoneNetwork.

    With `adb`, the backend also samples socket owners (`<output>.sockets.json`) unless
    `attribution` is off, and leaves out the harness's own adb-over-TCP connection.
    """
    settings = dict(choice.settings)
    if choice.backend == "file":
        return FileCapture(Path(settings["path"]))
    backend: CaptureBackend
    if choice.backend == "gateway":
        if "interface" in settings:
            iface, netns = _interface(settings["interface"]) or (settings["interface"], None)
        elif network is not None:
            iface, netns = network.router_capture_iface, network.router_ns
        else:
            raise CaptureSpecError("gateway capture: which interface does the phone's traffic cross? "
                                   "--ph-capture gateway:IFACE or the profile's capture.interface")
        backend = GatewayCapture(output, iface, netns=netns, bpf=settings.get("filter"), phone=adb,
                                 exclude=[adb.serial] if adb is not None and adb.is_tcp else [],
                                 snaplen=settings.get("snaplen", 0), max_bytes=settings.get("max_bytes"))
    elif adb is None:
        raise CaptureSpecError(f"{choice.backend} capture needs a phone over adb")
    elif choice.backend == "device":
        backend = DeviceCapture(output, adb, interface=settings.get("interface", "any"), bpf=settings.get("filter"),
                                tcpdump=settings.get("tcpdump"), snaplen=settings.get("snaplen", 0),
                                max_bytes=settings.get("max_bytes"))
    elif choice.backend == "pcapdroid":
        backend = PcapdroidCapture(output, adb, package=settings.get("package", PACKAGE),
                                   max_bytes=settings.get("max_bytes"), prepare_ui=prepare_ui)
    else:
        raise CaptureSpecError(f"unknown capture backend {choice.backend!r}: expected {SPEC_FORMS}")
    if adb is not None and attribution:
        backend.sampler = SocketSampler(adb, sidecar(output, "sockets.json"), interval=attribution_interval)
    return backend
