"""One capture around one scenario's phases, analysed when it ends: the gate's unit of evidence.

    with session.record("screen-activation") as rec:
        rec.screen_on()
        rec.unlock()
    outcome = rec.outcome        # Report + phases + capture result, status leak/unverified/clean

The capture starts before the first phase and stops after a canary was sent at the end, so a
capture that stopped working shows up as a missing canary. Anything that keeps the recording from
proving the phone clean (capture errors, preconditions unmet, a step that could not be verified,
the phone lost) makes it `unverified` with the reason; findings make it `leak` regardless.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import allure
import pytest

from harness.analyzer import analyze
from harness.analyzer.model import CaptureSummary, Finding, Report, Status
from harness.capture import CaptureBackend, CaptureResult, build, choose
from harness.device.lifecycle import BootRecord, StepResult
from harness.errors import PhonehomeError
from harness.gate.timeline import PhaseMark, Timeline
from harness.profile import DEFAULT_DWELL, DEFAULT_SETTLE

if TYPE_CHECKING:
    from harness.gate.session import DeviceSession

log = logging.getLogger(__name__)

WIFI_OFF_SECONDS = 3.0
WIFI_BACK_TIMEOUT = 60.0


@dataclass(slots=True)
class Outcome:
    """What one recording proved: the analyzer's report with the scenario's context."""

    name: str
    session: DeviceSession
    report: Report
    timeline: list[PhaseMark] = field(default_factory=list)
    capture: CaptureResult | None = None
    boots: list[BootRecord] = field(default_factory=list)
    steps: list[StepResult] = field(default_factory=list)
    findings_path: Path | None = None

    @property
    def status(self) -> Status:
        return self.report.status

    @property
    def findings(self) -> list[Finding]:
        return self.report.findings


def _unverified(path: str, reasons: list[str]) -> Report:
    return Report(status=Status.UNVERIFIED, reasons=reasons, capture=CaptureSummary(path=path), coverage={},
                  findings=[])


class Recording:
    """A capture plus a phase timeline on one phone; `outcome` is set when the `with` block ends."""

    def __init__(self, session: DeviceSession, name: str) -> None:
        assert session.device is not None and session.harvest is not None
        self.session = session
        self.device = session.device
        self.name = name
        self.path = session.artifacts / f"{name}.pcap"
        self.timeline = Timeline()
        self.capture: CaptureBackend | None = None
        self.boots: list[BootRecord] = []
        self.steps: list[StepResult] = []
        self.reasons: list[str] = []  # unverified, from the scenario's own steps
        self.notes: list[str] = []
        self.extra_findings: list[Finding] = []
        self.outcome: Outcome | None = None
        self.backend = ""
        self.aborted = False
        self.start_offset: float | None = None  # phone clock minus host clock when the capture started
        profile = session.profile
        self.settle = profile.settle if profile is not None else DEFAULT_SETTLE
        self.dwell = dict(profile.dwell) if profile is not None else dict(DEFAULT_DWELL)
        if session.options.dwell is not None:
            self.dwell = dict.fromkeys(self.dwell, session.options.dwell)

    # --- the capture -------------------------------------------------------------------------
    def __enter__(self) -> Recording:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is None:
            self.stop()
        elif isinstance(exc, PhonehomeError | AssertionError):
            self.stop(f"{self.name} did not run to the end: {exc}")
        else:
            self.abort()

    @property
    def started(self) -> bool:
        return self.capture is not None

    def start(self) -> Recording:
        """Start the capture (the first phase does it when a scenario prepares the phone first)."""
        if self.capture is not None:
            return self
        options, session = self.session.options, self.session
        choice = choose(options.capture, session.profile, virtual=session.virtual is not None)
        self.backend = choice.backend
        network = session.virtual.network if session.virtual is not None else None
        capture = build(choice, self.path, adb=self.device.adb, network=network)
        capture.start()
        self.capture = capture
        if choice.backend in ("device", "pcapdroid"):  # packets stamped by the phone's clock
            self.start_offset = self.device.clock_offset()[0]
        self._preconditions()
        return self

    @contextmanager
    def failing_closed(self, what: str) -> Iterator[None]:
        """A phone or capture problem ends the scenario with a one-line verdict, never a traceback.

        What was captured until then is analysed first, so a leak before the failure is a leak;
        otherwise the scenario is unverified, naming what could not be done and why.
        """
        problem = None
        try:
            yield
        except PhonehomeError as exc:
            problem = f"{what} could not be completed: {exc}"
        if problem is None:
            return
        # failed outside the `except` block, so the report shows no chained exception
        if self.capture is not None and self.outcome is None:
            from harness.gate.evidence import failure_message

            pytest.fail(failure_message(self.session, self.stop(problem)), pytrace=False)
        self.session.errors.append(f"{self.name}: {problem}")
        pytest.fail(f"UNVERIFIED (not proven clean; no leak was seen): {self.session.id}, scenario {self.name}: "
                    f"{problem}", pytrace=False)

    def stop(self, problem: str | None = None) -> Outcome:
        """Send the canary, stop the capture, analyse it; `problem` makes a clean result unverified."""
        if self.capture is None:
            with self.failing_closed("starting the capture"):
                self.start()
        if self.outcome is None:
            if problem:
                self.reasons.append(problem)
            self.outcome = self._finish()
            self.session.outcomes.append(self.outcome)
            from harness.gate.evidence import allure_outcome

            allure_outcome(self.outcome)
        return self.outcome

    def abort(self) -> None:
        """Stop the capture without analysing it (a bug or Ctrl-C, not a verdict)."""
        self.aborted = True
        with contextlib.suppress(Exception):
            if self.capture is not None and self.outcome is None:
                self.capture.stop()

    def _preconditions(self) -> None:
        """Mobile data off for a gateway (traffic would bypass it), Private DNS off (names stay visible)."""
        report = self.device.preconditions(mobile_data_off=self.backend == "gateway", private_dns_off=True)
        self.notes += report.notes
        self.reasons += [f"precondition: {problem}" for problem in report.problems]

    def _finish(self) -> Outcome:
        assert self.capture is not None
        session = self.session
        with allure.step("canary and capture stop"):
            marker = None
            try:
                marker = self.capture.send_canary(self.device.adb).marker
            except PhonehomeError as exc:
                self.reasons.append(f"the canary could not be sent: {exc}")
            try:
                result = self.capture.stop()
            except PhonehomeError as exc:
                self.reasons.append(f"the capture did not stop cleanly: {exc}")
                result = self.capture.result()
        self.reasons += [f"capture: {error}" for error in result.errors]
        harvest = session.harvest
        assert harvest is not None
        if session.profile is None:  # the analyzer applies a profile's `require`; without one, the default
            self.reasons += self.device.missing_identifiers(harvest)
        try:
            report = analyze(result.path, harvest.identifiers, profile=session.profile, canary=marker,
                             exclude=result.exclude, blind_windows=result.blind_windows, coverage=harvest.coverage,
                             attribution=result.attribution)
        except PhonehomeError as exc:
            report = _unverified(str(result.path), [f"capture unreadable: {exc}"])
        report.findings += self.extra_findings
        self.timeline.attribute(report.findings, self._clock_offsets(result))
        report.reasons += self.reasons
        report.notes += self.notes + result.notes
        if report.findings:
            report.status = Status.LEAK
        elif report.reasons:
            report.status = Status.UNVERIFIED
        outcome = Outcome(self.name, session, report, list(self.timeline.marks), result, self.boots, self.steps)
        from harness.gate.evidence import write_outcome

        outcome.findings_path = write_outcome(session, outcome)
        return outcome

    def _clock_offsets(self, result: CaptureResult) -> list[tuple[float, float]]:
        """A phone-side capture stamps packets with the phone's clock: (since, offset) per boot segment."""
        if result.backend not in ("device", "pcapdroid"):
            return []
        segments = [(b.issued, b.clock_offset) for b in self.boots if b.clock_offset is not None]
        if not self.boots or self.start_offset is not None:
            start = self.start_offset if self.start_offset is not None else self.device.clock_offset()[0]
            segments.insert(0, (result.started or 0.0, start or 0.0))
        return segments

    # --- phases ------------------------------------------------------------------------------
    @contextmanager
    def phase(self, name: str, cycle: int = 1) -> Iterator[PhaseMark]:
        """Mark a phase (host time) and show it as an Allure step.

        A phone that fails the phase (did not boot, went offline for good, a step not verified)
        ends the recording: what was captured is still analysed, so a leak before the failure
        is reported as a leak; otherwise the scenario is unverified, naming the phase and why.
        """
        with self.failing_closed(f"{name} (cycle {cycle})"):
            self.start()
            with allure.step(f"{name} (cycle {cycle})"), self.timeline.phase(name, cycle) as mark:
                yield mark

    def _dwell(self, name: str) -> None:
        time.sleep(self.dwell.get(name, DEFAULT_DWELL.get(name, 10.0)))

    def sleep_through(self, name: str) -> None:
        """Wait a phase's dwell without recording it (after preparing the phone, before the capture)."""
        self._dwell(name)

    def power_up(self, cycle: int = 1) -> BootRecord:
        """Reset to first-registration state, reboot, wait boot_completed, then `settle` seconds."""
        with self.failing_closed("the reset before power-up"):
            self.device.reset()
        with self.failing_closed("starting the capture"):
            self.start()
        assert self.capture is not None
        self.capture.before_reboot()
        with self.phase("power-up", cycle):
            boot = self.device.reboot()
            self.boots.append(boot)
            self.capture.after_reboot()
            self._preconditions()
            self.session.reread_identifiers()
            time.sleep(self.settle)
        return boot

    def _step(self, name: str, cycle: int, action: Any) -> StepResult:
        with self.phase(name, cycle):
            step: StepResult = action()
            self.steps.append(step)
            self._dwell(name)
        return step

    def screen_on(self, cycle: int = 1) -> StepResult:
        return self._step("screen-on", cycle, self.device.screen_on)

    def unlock(self, cycle: int = 1) -> StepResult:
        return self._step("unlock", cycle, self.device.unlock)

    def lock(self, cycle: int = 1) -> StepResult:
        return self._step("lock", cycle, self.device.lock)

    def idle(self, cycle: int = 1) -> None:
        with self.phase("idle", cycle):
            self._dwell("idle")

    def connectivity_change(self, cycle: int = 1) -> None:
        """Wi-Fi off, then on again, then wait until it is connected (read back)."""
        with self.phase("connectivity-change", cycle):
            adb = self.device.adb
            if adb.is_tcp and not adb.serial.startswith(("127.", "localhost:", "[::1]:")):
                # adb itself rides on Wi-Fi: the phone turns it back on by itself, then adb reconnects
                adb.script(f"nohup sh -c 'svc wifi disable; sleep {WIFI_OFF_SECONDS:g}; svc wifi enable' "
                           ">/dev/null 2>&1 &", timeout=30)
                time.sleep(WIFI_OFF_SECONDS + 2)
                self.device.recover("Wi-Fi toggled under adb over Wi-Fi")
            else:
                try:
                    adb.script("svc wifi disable", timeout=30)
                    time.sleep(WIFI_OFF_SECONDS)
                finally:  # never leave the phone without Wi-Fi, also on Ctrl-C
                    adb.script("svc wifi enable", timeout=30)
            deadline = time.monotonic() + WIFI_BACK_TIMEOUT
            while not self.device.preconditions(enforce=False).wifi_connected:
                if time.monotonic() > deadline:
                    self.reasons.append(f"Wi-Fi did not reconnect within {WIFI_BACK_TIMEOUT:g} s after the "
                                        "connectivity change")
                    break
                time.sleep(1)
            self._dwell("connectivity-change")

    def cycle(self, cycle: int = 1) -> None:
        """One full cycle: power-up, screen-on, unlock, idle, lock, connectivity-change."""
        self.power_up(cycle)
        self.screen_on(cycle)
        self.unlock(cycle)
        self.idle(cycle)
        self.lock(cycle)
        self.connectivity_change(cycle)
