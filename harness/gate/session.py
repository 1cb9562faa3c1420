"""One phone for a whole gate run: selected (or started, for `virtual:NAME`), identified, restored.

The plugin makes one `DeviceSession` per `--device` value, on the worker that owns that phone. It
holds what every scenario needs: the locked `Device`, its profile, its identifiers with coverage,
its installed packages, and the outcome of every recording made on it, from which the device's
status follows (`leak` wins, then `unverified`, else `clean`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.analyzer.model import Finding, Status
from harness.device.device import Device
from harness.device.identifiers import Harvest
from harness.device.info import DeviceInfo
from harness.device.lifecycle import Timeouts
from harness.errors import DeviceError
from harness.gate.recording import Outcome, Recording
from harness.identifiers import SLOTTED_KINDS, mask_serial
from harness.profile import Profile, load_profile

if TYPE_CHECKING:
    from harness.plugin.options import GateOptions

log = logging.getLogger(__name__)

VIRTUAL = "virtual:"


def slug(text: str) -> str:
    """A file- and test-id-safe form of a label (no spaces or slashes)."""
    return re.sub(r"[^\w.+-]+", "_", text).strip("_") or "device"


_MDNS = re.compile(r"adb-(?P<serial>[^-]+)-\w+\._adb-tls-connect\._tcp\.?(?P<rest>@.*)?")


def check_capture(option: str | None, profile: Profile | None, *, virtual: bool) -> None:
    """A capture this phone can have, or one line saying what to give (before any phone is touched)."""
    from harness.capture import CaptureSpecError, choose

    choice = choose(option, profile, virtual=virtual)
    if choice.backend == "gateway" and "interface" not in choice.settings and not virtual:
        raise CaptureSpecError("gateway capture: which interface does the phone's traffic cross? Give "
                               "--ph-capture gateway:IFACE[@NETNS] or the profile's capture.interface "
                               "(`phonehome virtual start` prints the one for its phone)")


def device_id(spec: str, model: str | None = None) -> str:
    """The readable id of a `--device` value in test ids and artifact paths: model + masked serial."""
    if spec.startswith(VIRTUAL):
        return slug(f"virtual-{spec[len(VIRTUAL):]}")
    wireless = _MDNS.fullmatch(spec)  # Android 11+ wireless debugging: adb-<hardware serial>-<id>._adb-tls-connect
    if wireless:
        spec = wireless["serial"] + (wireless["rest"] or "")
    shown = mask_serial(spec).replace("serial …", "...")  # ASCII: pytest escapes other characters in ids
    if model:
        return slug(f"{model}-{shown}")
    return slug(f"serial{shown}" if shown.startswith("...") else shown)


class DeviceSession:
    """A phone under the gate, from `open()` to `close()` (settings restored, lock released)."""

    def __init__(self, spec: str, options: GateOptions, *, name: str | None = None) -> None:
        self.spec = spec
        self.options = options
        self.id = name or device_id(spec)
        self.artifacts = options.artifacts / self.id
        self.profile: Profile | None = None
        self.device: Device | None = None
        self.virtual: Any = None  # harness.virtual.phone.VirtualPhone for virtual:NAME
        self.harvest: Harvest | None = None
        self.info: DeviceInfo | None = None
        self.packages: dict[str, str] = {}
        self.outcomes: list[Outcome] = []
        self.policy_findings: list[Finding] = []  # findings without a capture: package audit, baseline diff
        self.errors: list[str] = []  # what kept the session from running at all (unverified)
        self.opened_at: float | None = None
        self.recording_names: set[str] = set()

    # --- life --------------------------------------------------------------------------------
    def open(self) -> DeviceSession:
        """Load the profile, start the virtual phone if asked, lock the phone, read identifiers."""
        self.opened_at = time.time()
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self.profile = self._load_profile()
        # no capture backend for this phone is a setup mistake: say it before touching the phone
        check_capture(self.options.capture, self.profile, virtual=self.spec.startswith(VIRTUAL))
        serial, relocate = self.spec, None
        if self.spec.startswith(VIRTUAL):
            serial, relocate = self._start_virtual(), (lambda: self.virtual.serial)
        try:
            self.device = Device.open(serial, profile=self.profile, timeouts=Timeouts(boot=self.options.boot_timeout),
                                      relocate=relocate)
            self.info = self.device.info()
            self.harvest = self.device.identifiers()
            self.packages = self.device.installed_for_audit()
        except BaseException:
            self.close()
            raise
        log.info("%s: %s, identifiers %s", self.id, self.describe(), ", ".join(self.harvest.summary()))
        return self

    def close(self) -> list[str]:
        """Restore the phone's settings and release it; a virtual phone is powered off. Never raises."""
        problems: list[str] = []
        try:
            if self.device is not None:
                problems = self.device.close()
        except Exception as exc:  # closing must go on to the virtual phone and the other phones
            problems.append(f"closing the phone failed ({type(exc).__name__}: {exc})")
        finally:
            self.device = None
            if self.virtual is not None:
                with contextlib.suppress(Exception):  # already gone is fine when closing
                    self._adb_client().disconnect(self.virtual.serial)
                try:
                    self.virtual.stop()
                except Exception as exc:
                    problems.append(f"stopping the virtual phone failed ({type(exc).__name__}: {exc})")
                self.virtual = None
        return problems

    def _load_profile(self) -> Profile | None:
        name = self.options.profile
        if name is None and self.spec.startswith(VIRTUAL):
            name = self.spec[len(VIRTUAL):]
        return load_profile(name) if name else None

    def _adb_client(self) -> Any:
        import adbutils

        return adbutils.AdbClient(socket_timeout=30)

    def _start_virtual(self) -> str:
        from harness.virtual.phone import VirtualPhone

        name = self.spec[len(VIRTUAL):]
        self.virtual = VirtualPhone(name)
        self.virtual.start(timeout=max(60.0, self.options.boot_timeout))
        client = self._adb_client()
        deadline = time.monotonic() + 30
        while True:
            client.connect(self.virtual.serial, timeout=10)
            if any(d.serial == self.virtual.serial and d.state == "device" for d in client.list()):
                return str(self.virtual.serial)
            if time.monotonic() > deadline:
                raise DeviceError(f"virtual phone {name} ({self.virtual.serial}) not listed by the adb server")
            time.sleep(0.3)

    # --- use ---------------------------------------------------------------------------------
    def record(self, name: str) -> Recording:
        """`with session.record("power-up") as rec:` a capture around the scenario's phases.

        Names are unique within the run (`lock`, `lock-2`...): no recording overwrites another's evidence.
        """
        if self.device is None or self.harvest is None:
            raise DeviceError(f"{self.id}: the phone is not open")
        base, number = slug(name), 2
        unique = base
        while unique in self.recording_names:
            unique, number = f"{base}-{number}", number + 1
        self.recording_names.add(unique)
        return Recording(self, unique)

    def reread_identifiers(self) -> None:
        """After a boot: add values that changed (a new per-network random MAC, a SIM read only now).

        Values are only ever added, so a value seen before the boot is still looked for.
        """
        if self.device is None or self.harvest is None:
            return
        fresh = self.device.identifiers().identifiers
        values = self.harvest.identifiers.values
        for kind, new in fresh.values.items():
            old = values.setdefault(kind, [])
            if kind in SLOTTED_KINDS:
                if not any(old):
                    old[:] = new
            else:
                old += [value for value in new if value and value not in old]

    def audit_packages(self) -> list[Finding]:
        """Installed catalog activation clients this phone's profile does not approve."""
        from harness.policy.policy import audit_packages

        found = audit_packages(self.packages, self.profile)
        self.policy_findings += found
        return found

    def new_destinations(self, baseline: Path) -> list[Finding]:
        """Destinations of this run's recordings that the baseline (previous build, same SKU) lacks."""
        from harness.gate.baseline import key_of, load_baseline, new_destinations

        header, keys = load_baseline(baseline)
        profile = self.profile.name if self.profile is not None else None
        if header.get("profile") and profile and header["profile"] != profile:
            raise DeviceError(f"baseline {baseline} is for profile {header['profile']}, this phone runs {profile}")
        seen: dict[tuple[str, int, str], dict[str, Any]] = {}
        for outcome in self.outcomes:
            for dest in outcome.report.destinations:
                seen.setdefault(key_of(dest), dest)
        found = new_destinations(keys, seen.values(), source=str(baseline))
        self.policy_findings += found
        return found

    def describe(self) -> str:
        info = self.info
        if info is None:
            return self.id
        return f"{info.model or '?'} (Android {info.release or '?'}, build {info.build_id or '?'})"

    @property
    def status(self) -> Status:
        """leak > unverified > clean over every recording; nothing recorded is unverified."""
        statuses = {outcome.status for outcome in self.outcomes}
        if Status.LEAK in statuses or self.policy_findings:
            return Status.LEAK
        if self.errors or Status.UNVERIFIED in statuses or not self.outcomes:
            return Status.UNVERIFIED
        return Status.CLEAN
