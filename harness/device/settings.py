"""Every setting the harness changes on a phone is journaled and put back, even after a crash.

The journal lives in memory and in a file beside the phone's lock (owner-only), written before
each change. `restore()` runs at the end of a run, on failure and on Ctrl-C (the Device's
context manager and an atexit hook); a run killed outright leaves the file behind and the next
run that locks the same phone restores it first (`restore_leftover`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from harness.device.adb import Adb, sh_join
from harness.errors import DeviceError

log = logging.getLogger("phonehome.device")

NAMESPACES = ("system", "secure", "global")
_KEY = re.compile(r"[A-Za-z0-9_.:-]{1,128}")


@dataclass(slots=True)
class Change:
    """One change: a `settings` key or a `svc` switch, with the value it had before."""

    kind: str  # "setting" or "svc"
    namespace: str  # settings namespace, or the svc service ("data", "wifi")
    key: str
    old: str | None  # None: the key did not exist ("null")
    new: str
    at: float = field(default_factory=time.time)

    def describe(self) -> str:
        if self.kind == "svc":
            return f"svc {self.namespace} {'enable' if self.new == '1' else 'disable'} (was {self.old})"
        return f"settings {self.namespace} {self.key}: {self.old} -> {self.new}"


def _check(namespace: str, key: str) -> None:
    if namespace not in NAMESPACES:
        raise DeviceError(f"settings namespace must be one of {', '.join(NAMESPACES)}, got {namespace!r}")
    if not _KEY.fullmatch(key):
        raise DeviceError(f"not a settings key: {key!r}")


def read_setting(adb: Adb, namespace: str, key: str) -> str | None:
    """`settings get` -> value, or None when the key is unset (`null`)."""
    _check(namespace, key)
    value = adb.shell(["settings", "get", namespace, key], timeout=15).stdout.strip()
    return None if value in {"", "null"} else value


class SettingsJournal:
    """Records each change before making it; `restore()` undoes them newest first."""

    def __init__(self, adb: Adb, path: Path | None = None) -> None:
        self.adb = adb
        self.path = path
        self.changes: list[Change] = []
        self.restored: list[str] = []
        self._atexit = False

    # --- changes --------------------------------------------------------------------------
    def put(self, namespace: str, key: str, value: str) -> Change:
        """`settings put`, recording the old value the first time this key is touched."""
        _check(namespace, key)
        old = read_setting(self.adb, namespace, key)
        change = self._record(Change("setting", namespace, key, old, str(value)))
        self._apply_setting(namespace, key, str(value))
        return change

    def set_mobile_data(self, enabled: bool) -> Change:
        """`svc data enable|disable`; the old state is the `mobile_data` setting."""
        old = read_setting(self.adb, "global", "mobile_data")
        change = self._record(Change("svc", "data", "mobile_data", old, "1" if enabled else "0"))
        self._svc("data", enabled)
        return change

    def set_wifi(self, enabled: bool) -> Change:
        old = read_setting(self.adb, "global", "wifi_on")
        change = self._record(Change("svc", "wifi", "wifi_on", old, "1" if enabled else "0"))
        self._svc("wifi", enabled)
        return change

    def _record(self, change: Change) -> Change:
        first = next((c for c in self.changes if (c.kind, c.namespace, c.key) == (change.kind, change.namespace,
                                                                                   change.key)), None)
        if first is not None:
            change.old = first.old  # restore to the value before the harness first touched it
        self.changes.append(change)
        self._save()
        if not self._atexit:
            atexit.register(self._restore_at_exit)
            self._atexit = True
        log.info("%s: %s", self.adb.label, change.describe())
        return change

    def _apply_setting(self, namespace: str, key: str, value: str | None) -> None:
        argv = ["settings", "delete", namespace, key] if value is None else ["settings", "put", namespace, key, value]
        result = self.adb.shell(argv, timeout=15)
        if result.exit_code not in (0, None):
            raise DeviceError(f"{' '.join(argv[:4])} failed on {self.adb.label}: {result.output.strip()[:120]}")

    def _svc(self, service: str, enabled: bool) -> None:
        result = self.adb.shell(["svc", service, "enable" if enabled else "disable"], timeout=20)
        if result.exit_code not in (0, None):
            raise DeviceError(f"svc {service} failed on {self.adb.label}: {result.output.strip()[:120]}")

    # --- restoring ------------------------------------------------------------------------
    def restore(self) -> list[str]:
        """Undo every change, newest first; returns problems (each also logged), [] when all went back."""
        problems: list[str] = []
        done: set[tuple[str, str, str]] = set()
        for change in reversed(self.changes):
            ident = (change.kind, change.namespace, change.key)
            if ident in done:
                continue
            done.add(ident)
            try:
                if change.kind == "svc":
                    self._svc(change.namespace, _was_enabled(change))
                else:
                    self._apply_setting(change.namespace, change.key, change.old)
                    now = read_setting(self.adb, change.namespace, change.key)
                    if now != change.old:
                        raise DeviceError(f"reads back {now!r}")
                self.restored.append(change.describe())
            except DeviceError as exc:
                problems.append(f"could not restore {change.describe()}: {exc} "
                                f"(by hand: adb shell {restore_command(change)})")
        for problem in problems:
            log.error("%s: %s", self.adb.label, problem)
        self.changes = []
        if not problems:
            self._forget()
        else:
            self._save()
        return problems

    def _restore_at_exit(self) -> None:
        if self.changes:
            with contextlib.suppress(Exception):
                self.restore()

    # --- the file -------------------------------------------------------------------------
    def _save(self) -> None:
        if self.path is None:
            return
        data = {"serial_label": self.adb.label, "pid": os.getpid(), "changes": [asdict(c) for c in self.changes]}
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        tmp.replace(self.path)

    def _forget(self) -> None:
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    @classmethod
    def restore_leftover(cls, adb: Adb, path: Path) -> list[str]:
        """Undo what a killed run left changed on this phone (call with the phone's lock held)."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.error("%s: unreadable settings journal %s: %s", adb.label, path, exc)
            return [f"unreadable settings journal {path}"]
        journal = cls(adb, path)
        journal.changes = [Change(**c) for c in data.get("changes", []) if isinstance(c, dict)]
        if journal.changes:
            log.warning("%s: restoring %d setting(s) a previous run left changed", adb.label, len(journal.changes))
        problems = journal.restore()
        return [f"left by a previous run: {p}" for p in problems]


def restore_command(change: Change) -> str:
    """The shell command that undoes one change (for reports and manual recovery)."""
    if change.kind == "svc":
        return sh_join(["svc", change.namespace, "enable" if _was_enabled(change) else "disable"])
    if change.old is None:
        return sh_join(["settings", "delete", change.namespace, change.key])
    return sh_join(["settings", "put", change.namespace, change.key, change.old])


def _was_enabled(change: Change) -> bool:
    """An unset switch is on: Android enables mobile data and Wi-Fi by default."""
    return change.old not in {"0"}
