"""One phone for one gate run: locked, its settings journaled, every step verified.

This is the device layer's face for the gate and the capture backends:

    with Device.open("R58M123456", profile=profile) as phone:
        phone.reboot()                          # BootRecord: stage times, clock offset
        phone.preconditions(mobile_data_off=True)
        ids = phone.identifiers()               # Harvest: values + coverage + missing()
        phone.screen_on(); phone.unlock(); phone.lock()

`close()` (also on an exception or Ctrl-C) puts back every setting the run changed and releases
the per-serial lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from harness.device.adb import Adb, AdbTimeout, DeviceOffline, Secret
from harness.device.identifiers import Harvest, Harvester, Root, detect_root
from harness.device.info import (
    DeviceInfo,
    InstalledPackage,
    ResetAction,
    audit_input,
    catalog_packages,
    device_info,
    list_packages,
    reset_state,
)
from harness.device.lifecycle import BootRecord, Lifecycle, RecoveryReport, ScreenState, StepResult, Timeouts
from harness.device.preconditions import Preconditions, check, ensure_mobile_data_off, ensure_private_dns_off
from harness.device.select import SerialLock, hardware_lock_key, lock_dir, lock_key, open_device, parse_spec
from harness.device.settings import SettingsJournal
from harness.errors import DeviceError
from harness.identifiers import DEFAULT_REQUIRED, IdentifierSet, Kind

log = logging.getLogger("phonehome.device")
T = TypeVar("T")


class Device:
    """A locked phone with its lifecycle, settings journal, identifiers and packages."""

    def __init__(self, adb: Adb, *, profile: Any = None, timeouts: Timeouts | None = None, use_u2: bool = True,
                 lock: bool = True, lock_wait: float = 0.0,
                 relocate: Callable[[], str | None] | None = None) -> None:
        self.adb = adb
        self.profile = profile
        self._lock = SerialLock(adb, wait=lock_wait) if lock else None
        self._lock_wait = lock_wait
        self._hw_lock: SerialLock | None = None
        self.journal = SettingsJournal(adb, lock_dir() / f"{lock_key(adb)}.journal.json")
        self.lifecycle = Lifecycle(adb, sdk=0, timeouts=timeouts, use_u2=use_u2, relocate=relocate)
        self.leftover: list[str] = []
        self._props: dict[str, str] | None = None
        self._root: Root | None = None
        self.resets: list[ResetAction] = []

    @classmethod
    def open(cls, spec: str, *, timeout: float = 30.0, **kwargs: Any) -> Device:
        """Select the phone by `--device` value, lock it, undo a crashed run's settings."""
        device = cls(open_device(parse_spec(spec), timeout=timeout), **kwargs)
        device.start()
        return device

    def start(self) -> Device:
        if self._lock is not None and not self._lock.held:
            self._lock.acquire()
        try:
            props = self.refresh()
            hardware = _hardware_serial(props)
            self.lifecycle.remember_identity(hardware)
            paths = [self.journal.path] if self.journal.path else []
            if hardware and _loopback(self.adb.serial):
                hardware = f"{hardware}@{self.adb.serial}"
            if hardware and self._lock is not None:
                # the same phone may be reachable as USB and IP:PORT, or through two adb servers:
                # a second lock on the phone's own serial keeps two drivers apart across all of them
                key = hardware_lock_key(hardware)
                if self._hw_lock is None or not self._hw_lock.held:
                    self._hw_lock = SerialLock(self.adb, wait=self._lock_wait, key=key).acquire()
                self.journal.path = lock_dir() / f"{key}.journal.json"  # found again on a new port
                paths.append(self.journal.path)
            self.leftover = []
            for path in dict.fromkeys(paths):
                self.leftover += SettingsJournal.restore_leftover(self.adb, path)
        except BaseException:
            self._release_locks()
            raise
        return self

    def _release_locks(self) -> None:
        for held in (self._hw_lock, self._lock):
            if held is not None:
                held.release()

    def close(self) -> list[str]:
        """Restore settings, release the lock; returns restore problems (also logged)."""
        problems: list[str] = []
        try:
            problems = self.journal.restore()
        except DeviceError as exc:
            problems = [f"settings not restored: {exc}"]
            log.error("%s: %s", self.adb.label, problems[0])
        finally:
            self._release_locks()
        return problems

    def __enter__(self) -> Device:
        return self.start() if self._props is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- who it is ------------------------------------------------------------------------
    @property
    def label(self) -> str:
        return self.adb.label

    @property
    def props(self) -> dict[str, str]:
        return self._props if self._props is not None else self.refresh()

    def refresh(self) -> dict[str, str]:
        """Re-read system properties (after a boot: SIM, operator and build can change)."""
        self._props = self._guarded(self.adb.getprops)
        self.lifecycle.sdk = self.sdk
        return self._props

    @property
    def sdk(self) -> int:
        text = (self._props or {}).get("ro.build.version.sdk", "0")
        return int(text) if text.isdigit() else 0

    def info(self) -> DeviceInfo:
        return device_info(self.label, self.props, getattr(self.profile, "market", None))

    @property
    def root(self) -> Root:
        if self._root is None:
            self._root = detect_root(self.adb)
        return self._root

    # --- identifiers and packages ---------------------------------------------------------
    def identifiers(self, overrides: IdentifierSet | None = None) -> Harvest:
        """Read identifiers, the profile's values winning; see Harvest.missing() for `require`."""
        if overrides is None:
            overrides = getattr(self.profile, "identifiers", None)
        return self._guarded(lambda: Harvester(self.adb, self.props, root=self.root).run(overrides))

    def missing_identifiers(self, harvest: Harvest) -> list[str]:
        """Reasons the device is `unverified` for identifiers (the profile's `require`)."""
        require: Iterable[Kind] = getattr(self.profile, "require", None) or DEFAULT_REQUIRED
        return harvest.missing(require)

    def packages(self, detail: Iterable[str] | None = None) -> dict[str, InstalledPackage]:
        """Installed packages; catalog activation packages also get their versionName."""
        wanted = list(detail) if detail is not None else catalog_packages()
        return self._guarded(lambda: list_packages(self.adb, detail=wanted))

    def installed_for_audit(self) -> dict[str, str]:
        """package -> version, the input of `harness.policy.policy.audit_packages`."""
        return audit_input(self.packages())

    def reset(self, packages: Iterable[str] | None = None, commands: Sequence[str] | None = None) -> list[ResetAction]:
        """First-registration state: `pm clear` installed catalog activation packages + profile reset commands."""
        names = list(packages) if packages is not None else catalog_packages()
        installed = self.packages(detail=[]).keys()
        extra = list(commands) if commands is not None else list(getattr(self.profile, "reset", []) or [])
        self.resets = self._guarded(lambda: reset_state(self.adb, installed, names, extra))
        for action in self.resets:
            log.info("%s: reset %s -> %s", self.label, action.command, "ok" if action.ok else action.output[:60])
        return self.resets

    # --- preconditions --------------------------------------------------------------------
    def preconditions(self, *, mobile_data_off: bool = False, private_dns_off: bool = False,
                      need_wifi: bool = True, enforce: bool = True) -> Preconditions:
        """Check SIM, data, Wi-Fi, Private DNS; with `enforce`, turn data / Private DNS off (journaled) first."""
        acted: list[str] = []
        if enforce and mobile_data_off and ensure_mobile_data_off(self.adb, self.journal):
            acted.append("mobile data turned off")
        if enforce and private_dns_off and ensure_private_dns_off(self.adb, self.journal):
            acted.append("Private DNS turned off")
        report = check(self.adb, sdk=self.sdk, has_sim=getattr(self.profile, "has_sim", True), need_wifi=need_wifi,
                       mobile_data_must_be_off=mobile_data_off, private_dns_must_be_off=private_dns_off)
        report.notes += acted
        return report

    def put_setting(self, namespace: str, key: str, value: str) -> None:
        """A journaled `settings put` (stay-awake, screen timeout...), restored at close."""
        self.journal.put(namespace, key, value)

    # --- lifecycle ------------------------------------------------------------------------
    def reboot(self) -> BootRecord:
        """Reboot and wait through every stage; a failed boot is recovered (or DeviceUnrecoverable)."""
        before = len(self.lifecycle.boots)
        try:
            record = self.lifecycle.reboot()
        except DeviceError as exc:
            self.lifecycle.recover(f"reboot failed: {exc}")
            # recovery either rebooted the phone itself or brought it back without one
            record = self.lifecycle.boots[-1] if len(self.lifecycle.boots) > before else self.lifecycle.reboot()
        self.refresh()
        return record

    def clock_offset(self) -> tuple[float | None, float | None]:
        """Phone clock minus host clock and its uncertainty (s); phases are in host time."""
        return self._guarded(self.lifecycle.clock_offset)

    def state(self) -> ScreenState:
        return self._guarded(self.lifecycle.state)

    def screen_on(self, *, check: bool = True) -> StepResult:
        return self._guarded(lambda: self.lifecycle.screen_on(check=check))

    def screen_off(self, *, check: bool = True) -> StepResult:
        return self._guarded(lambda: self.lifecycle.screen_off(check=check))

    def unlock(self, *, check: bool = True) -> StepResult:
        method, secret = self.unlock_secret()
        return self._guarded(lambda: self.lifecycle.unlock(method, secret, check=check))

    def lock(self, *, check: bool = True) -> StepResult:
        method, _ = self.unlock_secret(need_secret=False)
        return self._guarded(lambda: self.lifecycle.lock(method, check=check))

    def unlock_secret(self, *, need_secret: bool = True) -> tuple[str, Secret | None]:
        """(method, secret) from the profile's `unlock: {method, secret_env}`; the secret stays in memory,
        wrapped so that its repr (in tracebacks, logs, exception messages) is masked."""
        unlock = getattr(self.profile, "unlock", None)
        method = getattr(unlock, "method", None) or "swipe"
        env = getattr(unlock, "secret_env", None)
        if method in {"none", "swipe"} or not need_secret:
            return method, None
        if not env:
            raise DeviceError(f"unlock method {method} needs `secret_env` in the profile's unlock section")
        if not os.environ.get(env):
            raise DeviceError(f"unlock method {method}: environment variable {env} (profile unlock.secret_env) "
                              "is not set")
        return method, Secret(os.environ[env])

    def recover(self, reason: str) -> RecoveryReport:
        report = self.lifecycle.recover(reason)
        with contextlib.suppress(DeviceError):
            self.refresh()
        return report

    def _guarded(self, action: Callable[[], T]) -> T:
        """Run an action; if the phone dropped off, recover once and run it again."""
        try:
            return action()
        except (DeviceOffline, AdbTimeout) as exc:
            self.recover(f"{type(exc).__name__}: {exc}")
            return action()


def _loopback(serial: str) -> bool:
    """A transport on this host's loopback (virtual phones, emulators' TCP ports): its port is part of its identity.

    Two virtual phones of one profile share `ro.serialno`; they are still two phones.
    """
    return serial.startswith(("127.", "localhost:", "[::1]:"))


def _hardware_serial(props: dict[str, str]) -> str | None:
    """`ro.serialno` when it names this phone (not empty, `unknown` or the generic dev-board value)."""
    value = (props.get("ro.serialno") or props.get("ro.boot.serialno") or "").strip()
    if not value or value.lower() in {"unknown", "0123456789abcdef"} or not value.isprintable():
        return None
    return value
