"""Command-line options and ini keys of the plugin, parsed once into `GateOptions`.

Every option but `--device` carries the `--ph-` prefix (as labgrid uses `--lg-`) so nothing clashes
with pytest (`--capture`) or other plugins; each is also an ini key prefixed `phonehome_`.
`--device` clashes with pytest-playwright's option of the same name: do not load both.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.identifiers import mask_serial

DEVICE_FORMS = "SERIAL, IP:PORT, SERIAL@HOST:PORT or virtual:NAME"
CAPTURE_FORMS = "gateway[:IFACE], device, pcapdroid or file:PATH"
_CAPTURE = re.compile(r"gateway(:[\w.@-]+)?|device|pcapdroid|file:.+")
_DEVICE = re.compile(r"virtual:[\w.-]+|[\w.:-]+@[\w.-]+:\d{1,5}|[\w.:-]+")


@dataclass(frozen=True, slots=True)
class GateOptions:
    devices: tuple[str, ...]
    profile: str | None
    capture: str | None
    cycles: int
    dwell: float | None
    boot_timeout: float
    artifacts: Path
    baseline: Path | None


_OPTIONS: list[tuple[str, str]] = [
    # (option suffix, help); every ini value is read as a string and validated here
    ("profile", "device profile: a name in devices/ or a path to a YAML file"),
    ("capture", f"capture backend: {CAPTURE_FORMS} (default: the profile's)"),
    ("cycles", "power-up / screen-on / unlock / idle / lock cycles to run (default 1)"),
    ("dwell", "seconds each phase lasts (default: the profile's dwell)"),
    ("boot-timeout", "seconds to wait for a reboot to complete (default 300)"),
    ("artifacts", "directory for captures, findings JSON and evidence (default phonehome-artifacts)"),
    ("baseline", "baseline JSON of the previous build's destinations, for the new-destination check"),
]


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("phonehome", "phonehome: gate Android builds on identifier leaks")
    group.addoption(
        "--device", action="append", default=[], metavar="SERIAL",
        help=f"phone to gate ({DEVICE_FORMS}); repeatable. Clashes with pytest-playwright's --device.",
    )
    parser.addini("phonehome_device", type="linelist", default=[],
                  help=f"phones to gate ({DEVICE_FORMS}), one per line")
    for suffix, text in _OPTIONS:
        group.addoption(f"--ph-{suffix}", dest=f"ph_{suffix.replace('-', '_')}", default=None, help=text)
        parser.addini(f"phonehome_{suffix.replace('-', '_')}", type="string", default=None, help=text)


def _value(config: pytest.Config, name: str) -> str | None:
    value = config.getoption(f"ph_{name}")
    if value is None:
        value = config.getini(f"phonehome_{name}")
    return str(value) if value not in (None, "") else None


def _number(config: pytest.Config, name: str, default: float, *, minimum: float, integer: bool) -> float:
    raw = _value(config, name)
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "a whole number" if integer else "a number of seconds"
        raise pytest.UsageError(f"--ph-{name.replace('_', '-')}: expected {kind}, got {raw!r}") from None
    if not math.isfinite(value):
        raise pytest.UsageError(f"--ph-{name.replace('_', '-')}: expected a finite number, got {raw!r}")
    if value < minimum:
        raise pytest.UsageError(f"--ph-{name.replace('_', '-')}: must be at least {minimum:g}, got {raw!r}")
    return value


def parse_options(config: pytest.Config) -> GateOptions:
    """Read and validate every option; a bad value is a pytest usage error naming the option."""
    devices = list(config.getoption("device") or []) or list(config.getini("phonehome_device"))
    for device in devices:
        if not _DEVICE.fullmatch(device):
            raise pytest.UsageError(f"--device {mask_serial(device)!r}: expected {DEVICE_FORMS}")
    for device in devices:
        port = device.rpartition(":")[2]
        if not device.startswith("virtual:") and ":" in device and port.isdigit() and not 0 < int(port) < 65536:
            raise pytest.UsageError(f"--device {mask_serial(device)!r}: port {port} is not 1 to 65535")
        if device.startswith(":"):
            raise pytest.UsageError(f"--device {device!r}: expected {DEVICE_FORMS}")
    if len(set(devices)) != len(devices):
        raise pytest.UsageError("--device: the same phone is named twice")
    capture = _value(config, "capture")
    if capture is not None and not _CAPTURE.fullmatch(capture):
        raise pytest.UsageError(f"--ph-capture {capture!r}: expected {CAPTURE_FORMS}")
    if capture and capture.startswith("file:") and not Path(capture[5:]).is_file():
        raise pytest.UsageError(f"--ph-capture {capture!r}: no such capture file")
    baseline = _value(config, "baseline")
    if baseline is not None and not Path(baseline).is_file():
        raise pytest.UsageError(f"--ph-baseline {baseline!r}: no such file")
    dwell = _value(config, "dwell")
    return GateOptions(
        devices=tuple(devices),
        profile=_value(config, "profile"),
        capture=capture,
        cycles=int(_number(config, "cycles", 1, minimum=1, integer=True)),
        dwell=None if dwell is None else _number(config, "dwell", 0, minimum=0, integer=False),
        boot_timeout=_number(config, "boot_timeout", 300, minimum=1, integer=False),
        artifacts=Path(_value(config, "artifacts") or "phonehome-artifacts"),
        baseline=Path(baseline) if baseline else None,
    )
