"""The one interface every capture backend implements, shaped like a Mobly per-device service.

A backend is started once per device and run, stopped once, and told about reboots in between
(`before_reboot()` / `after_reboot()`, Mobly's pause/resume): a backend that lives on the phone
restarts and re-verifies itself after every boot, one on a gateway re-checks its filter. What
it could not see is recorded as `BlindWindow`s with reasons, never dropped silently: the time
a phone-side capture was down across a reboot, packets lost to a size cap or to the kernel, the
cellular path a gateway never sees. The analyzer turns an unacceptable blind window, an empty
capture or a missing canary into `unverified`, so a backend's only duty there is to report
honestly; `health()` / `check()` say whether it is capturing right now.

A backend that cannot work on this phone or host (no root, interface missing, app not installed)
raises `CaptureSetupError` from `start()`: one line, never an empty capture that looks clean.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Protocol

from harness.analyzer.model import BlindWindow
from harness.capture.pcap import open_private
from harness.device.adb import ShellResult
from harness.errors import CaptureError, PhonehomeError

log = logging.getLogger("phonehome.capture")


class CaptureSetupError(CaptureError):
    """The backend cannot capture on this phone or host; says what is missing and what to use instead."""


class CaptureFailed(CaptureError):
    """A running capture broke (the capture tool died, the stream was cut) and was not restarted."""


class Shell(Protocol):
    """What a backend needs to run commands on the phone (`harness.device.Adb` is one)."""

    def script(self, text: str, timeout: float | None = None) -> ShellResult: ...


class Sampler(Protocol):
    """Something sampled on the phone alongside the capture (attribution.SocketSampler)."""

    path: Path

    def start(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def stop(self) -> None: ...


class State(StrEnum):
    NOT_STARTED = "not-started"
    RUNNING = "running"
    REBOOTING = "rebooting"  # between before_reboot() and after_reboot()
    FAILED = "failed"  # the capture broke and is not running
    STOPPED = "stopped"


@dataclass(slots=True)
class Health:
    """A snapshot: is it capturing, how much has it kept, what is wrong."""

    state: State
    packets: int
    bytes: int
    last_packet: float | None  # capture timestamp of the newest packet kept
    problems: list[str] = field(default_factory=list)  # wrong right now
    errors: list[str] = field(default_factory=list)  # went wrong earlier in the run (kept for the result)

    @property
    def ok(self) -> bool:
        return self.state in (State.RUNNING, State.REBOOTING) and not self.problems


@dataclass(slots=True)
class CaptureResult:
    """What a stopped capture produced: the file to analyse and everything the analyzer must be told."""

    backend: str
    path: Path
    packets: int
    bytes: int
    started: float | None
    stopped: float | None
    blind_windows: list[BlindWindow]
    exclude: list[str]  # ADDR[:PORT] flows the analyzer leaves out (the harness's own traffic)
    errors: list[str]
    notes: list[str]
    settings: dict[str, Any]
    canaries: list[dict[str, Any]] = field(default_factory=list)
    attribution: Path | None = None

    @property
    def empty(self) -> bool:
        return self.packets == 0

    @property
    def failed(self) -> bool:
        return bool(self.errors)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1, "backend": self.backend, "path": str(self.path), "packets": self.packets,
            "bytes": self.bytes, "started": self.started, "stopped": self.stopped,
            "blind_windows": [w.to_json() for w in self.blind_windows], "exclude": self.exclude,
            "errors": self.errors, "notes": self.notes, "settings": self.settings, "canaries": self.canaries,
            "attribution": str(self.attribution) if self.attribution else None,
        }


def sidecar(path: Path, suffix: str) -> Path:
    """A file written beside a capture (`x.pcap` -> `x.pcap.capture.json`)."""
    return path.with_name(f"{path.name}.{suffix}")


def write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Owner-only JSON: it may hold addresses and app names of the phone under test."""
    with open_private(path) as out:
        out.write(json.dumps(data, indent=2, sort_keys=True).encode() + b"\n")


class CaptureBackend(ABC):
    """Base class: state machine, blind-window bookkeeping and the result; backends fill in `_start` etc."""

    name: ClassVar[str]
    sees_power_up: ClassVar[bool]  # sees traffic sent before adb is up (only the gateway)
    sees_cellular: ClassVar[bool]  # sees traffic the phone sends over mobile data
    writes_sidecar: ClassVar[bool] = True  # the result as JSON beside the capture (not beside a user's file)

    def __init__(self, output: Path, *, max_bytes: int | None = None) -> None:
        self.output = Path(output)
        self.max_bytes = max_bytes
        self.state = State.NOT_STARTED
        self.started: float | None = None
        self.stopped: float | None = None
        self.blind_windows: list[BlindWindow] = []
        self.exclude: list[str] = []
        self.errors: list[str] = []
        self.notes: list[str] = []
        self.canaries: list[dict[str, Any]] = []
        self.attribution: Path | None = None
        self.sampler: Sampler | None = None  # socket-owner snapshots taken while capturing
        self._lock = threading.RLock()
        self._reboot_started: float | None = None

    # --- the service interface ----------------------------------------------------------------
    def start(self) -> CaptureBackend:
        """Begin capturing; raises `CaptureSetupError` when this backend cannot work here."""
        with self._lock:
            if self.state is not State.NOT_STARTED:
                raise CaptureError(f"{self.name} capture already {self.state}")
            self._start()
            self.started = time.time()
            self.state = State.RUNNING
            if self.sampler is not None:
                self.sampler.start()
                self.attribution = self.sampler.path
            log.info("%s capture started -> %s", self.name, self.output)
            return self

    def before_reboot(self) -> None:
        """The phone is about to reboot (Mobly's pause): note when, let the backend prepare."""
        with self._lock:
            if self.state is not State.RUNNING:
                return
            self._reboot_started = time.time()
            self.state = State.REBOOTING
            if self.sampler is not None:
                self.sampler.pause()
            self._before_reboot()

    def after_reboot(self) -> None:
        """The phone is back (boot completed): restart / re-verify (Mobly's resume).

        Also right after a reboot nobody announced: a backend restarts whatever died.
        """
        with self._lock:
            if self.state not in (State.RUNNING, State.REBOOTING, State.FAILED):
                return
            since = self._reboot_started
            self._reboot_started = None
            self.state = State.RUNNING
            try:
                self._after_reboot(since)
            except PhonehomeError as exc:  # CaptureError, or a DeviceError from a phone that did not answer
                self.state = State.FAILED
                self.errors.append(str(exc))
                raise
            if self.sampler is not None:
                self.sampler.resume()

    def stop(self) -> CaptureResult:
        """Stop, finish the file, close open blind windows; the result is also written beside the capture."""
        with self._lock:
            if self.state is State.STOPPED:
                return self.result()
            if self.state is not State.NOT_STARTED:
                if self.sampler is not None:
                    self.sampler.stop()
                try:
                    self._stop()
                except PhonehomeError as exc:  # the file is kept; the failure is part of the result
                    self.errors.append(str(exc))
            self.stopped = time.time()
            for window in self.blind_windows:
                if window.start is not None and window.end is None:
                    window.end = self.stopped
            self.state = State.STOPPED
            result = self.result()
            if self.writes_sidecar and self.output.exists():
                write_private_json(sidecar(self.output, "capture.json"), result.to_json())
            log.info("%s capture stopped: %d packets, %d blind windows, %d errors", self.name, result.packets,
                     len(result.blind_windows), len(result.errors))
            return result

    def health(self) -> Health:
        packets, size, last = self._counts()
        problems = self._problems() if self.state in (State.RUNNING, State.REBOOTING) else []
        state = State.FAILED if self.state is State.RUNNING and problems else self.state
        return Health(state, packets, size, last, problems, list(self.errors))

    def check(self) -> Health:
        """`health()`, raising `CaptureFailed` when the capture is broken (call it between phases)."""
        health = self.health()
        if health.state is State.FAILED:
            why = health.problems or health.errors[-1:] or ["not running"]
            raise CaptureFailed(f"{self.name} capture broken: {'; '.join(why)}")
        return health

    def send_canary(self, shell: Shell, *, settle: float = 3.0, **options: Any) -> Any:
        """Make the phone send a fresh canary now (see `canary.send_canary`) and record it.

        Waits up to `settle` seconds for the capture to take in new packets, so a `stop()` right
        after does not cut the canary off. Returns the `Canary`; give `.marker` to the analyzer.
        """
        from harness.capture.canary import send_canary

        before = self._progress()
        canary = send_canary(shell, **options)
        self.canaries.append(canary.to_json())
        if canary.warning and canary.warning not in self.notes:
            self.notes.append(canary.warning)
        deadline = time.monotonic() + settle
        while self._progress() == before and time.monotonic() < deadline:
            time.sleep(0.1)
        return canary

    def result(self) -> CaptureResult:
        packets, size, _last = self._counts()
        return CaptureResult(self.name, self.output, packets, size, self.started, self.stopped,
                             list(self.blind_windows), list(self.exclude), list(self.errors), list(self.notes),
                             self._settings(), list(self.canaries), self.attribution)

    def __enter__(self) -> CaptureBackend:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # --- blind windows ------------------------------------------------------------------------
    def open_window(self, reason: str, start: float | None = None, *, path: str | None = None) -> BlindWindow:
        """A span from `start` (default now) that stays open until `close_window` or stop."""
        window = BlindWindow(reason, start if start is not None else time.time(), None, path)
        self.blind_windows.append(window)
        log.warning("%s capture blind from %.3f: %s", self.name, window.start or 0.0, reason)
        return window

    def close_window(self, window: BlindWindow, end: float | None = None) -> None:
        if window.end is None:
            window.end = end if end is not None else time.time()

    def open_windows(self, path: str | None = None) -> list[BlindWindow]:
        return [w for w in self.blind_windows if w.end is None and w.start is not None and w.path == path]

    # --- for subclasses -----------------------------------------------------------------------
    @abstractmethod
    def _start(self) -> None: ...

    @abstractmethod
    def _stop(self) -> None: ...

    def _before_reboot(self) -> None:
        return None

    def _after_reboot(self, since: float | None) -> None:
        return None

    @abstractmethod
    def _counts(self) -> tuple[int, int, float | None]:
        """(packets, bytes, capture time of the newest packet) kept so far."""

    def _progress(self) -> int:
        """A number that grows while packets arrive (packets kept, by default)."""
        return self._counts()[0]

    def _problems(self) -> list[str]:
        """What is wrong right now (the tool exited, the file stopped growing...)."""
        return []

    def _settings(self) -> dict[str, Any]:
        """The settings in force, recorded in the result (interface, filter, cap...)."""
        return {"max_bytes": self.max_bytes}
