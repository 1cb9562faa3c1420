"""The plugin's fixtures: every option is one, and each phone under test is a session-scoped session.

    def test_x(recording):                 # a capture running on this test's phone
        recording.screen_on()
        outcome = recording.stop()         # canary, stop, analyse: an Outcome (report + phases)

Fixtures: `phonehome_options`, `device_session` (parametrized per `--device`), `device`,
`identifiers` (values with coverage), `policy` (the profile), `recording` (the running capture),
`phase` (`with phase("screen-on"):`) and `findings` (stop and return the report).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import allure
import pytest

from harness.analyzer.model import Report, Status
from harness.device.device import Device
from harness.device.identifiers import Harvest
from harness.errors import PhonehomeError
from harness.gate.evidence import allure_device, failure_message, junit_properties, write_device_summary
from harness.gate.recording import Recording
from harness.gate.session import DeviceSession
from harness.plugin.options import GateOptions
from harness.plugin.state import OPTIONS_KEY, SESSIONS_KEY, ids_for
from harness.profile import Profile


@pytest.fixture(scope="session")
def phonehome_options(pytestconfig: pytest.Config) -> GateOptions:
    """The parsed `--device` / `--ph-*` options (and their `phonehome_*` ini keys)."""
    return pytestconfig.stash[OPTIONS_KEY]


@pytest.fixture(scope="session")
def phonehome_devices(phonehome_options: GateOptions) -> tuple[str, ...]:
    """`--device` / `phonehome_device`: the phones named on the command line (may be empty)."""
    return phonehome_options.devices


@pytest.fixture(scope="session")
def phonehome_profile(phonehome_options: GateOptions) -> str | None:
    """`--ph-profile` / `phonehome_profile`."""
    return phonehome_options.profile


@pytest.fixture(scope="session")
def phonehome_capture(phonehome_options: GateOptions) -> str | None:
    """`--ph-capture` / `phonehome_capture` (None: the profile's backend)."""
    return phonehome_options.capture


@pytest.fixture(scope="session")
def phonehome_cycles(phonehome_options: GateOptions) -> int:
    """`--ph-cycles` / `phonehome_cycles`."""
    return phonehome_options.cycles


@pytest.fixture(scope="session")
def phonehome_dwell(phonehome_options: GateOptions) -> float | None:
    """`--ph-dwell` / `phonehome_dwell` (None: the profile's dwell per phase)."""
    return phonehome_options.dwell


@pytest.fixture(scope="session")
def phonehome_boot_timeout(phonehome_options: GateOptions) -> float:
    """`--ph-boot-timeout` / `phonehome_boot_timeout`."""
    return phonehome_options.boot_timeout


@pytest.fixture(scope="session")
def phonehome_artifacts(phonehome_options: GateOptions) -> Path:
    """`--ph-artifacts` / `phonehome_artifacts`."""
    return phonehome_options.artifacts


@pytest.fixture(scope="session")
def phonehome_baseline(phonehome_options: GateOptions) -> Path | None:
    """`--ph-baseline` / `phonehome_baseline`."""
    return phonehome_options.baseline


@pytest.fixture
def device_session(request: pytest.FixtureRequest, phonehome_options: GateOptions) -> Iterator[DeviceSession]:
    """The phone this test is parametrized with (`--device`), opened on first use in this process.

    It stays open across tests in whatever order they run (xdist may interleave phones) and is
    closed, its settings restored, when the pytest session ends (`pytest_sessionfinish`).
    """
    spec = getattr(request, "param", None)
    if spec is None:
        raise pytest.UsageError("device_session needs a phone: run with --device SERIAL (or virtual:NAME)")
    sessions = request.config.stash[SESSIONS_KEY]
    session = sessions.get(spec)
    name = ids_for(request.config, [spec])[spec]
    allure.dynamic.parameter("device_session", name)  # pytest's own value is the raw --device value
    if session is None:
        session = sessions[spec] = DeviceSession(spec, phonehome_options, name=name)
        try:
            session.open()
        except PhonehomeError as exc:
            session.errors.append(f"the phone could not be opened: {exc}")
        except Exception as exc:  # a bug or the host (permissions, adb itself): still this phone's verdict
            session.errors.append(f"the phone could not be opened ({type(exc).__name__}): {exc}")
    if session.device is None:
        write_device_summary(session)
        reason = session.errors[0] if session.errors else "the phone is closed"
        pytest.fail(f"UNVERIFIED (not proven clean; no leak was seen): {session.id}: {reason}", pytrace=False)
    allure_device(session)
    try:
        yield session
    finally:
        write_device_summary(session)


@pytest.fixture
def device(device_session: DeviceSession) -> Device:
    """The locked phone (harness.device.Device): reboot, screen, unlock, lock, settings journal."""
    assert device_session.device is not None
    return device_session.device


@pytest.fixture
def identifiers(device_session: DeviceSession) -> Harvest:
    """The phone's identifiers with coverage: each read from the phone, from the profile, or unknown."""
    assert device_session.harvest is not None
    return device_session.harvest


@pytest.fixture
def policy(device_session: DeviceSession) -> Profile | None:
    """The device profile: market, approved endpoints, required identifiers (None: nothing approved)."""
    return device_session.profile


@pytest.fixture
def recording(request: pytest.FixtureRequest, device_session: DeviceSession) -> Iterator[Recording]:
    """A capture running on the phone for this test; `stop()` returns the analysed Outcome."""
    rec = device_session.record(recording_name(request.node.name, device_session.id))  # starts at its first phase
    yield rec
    passed = getattr(request.node, "phonehome_call_passed", False)
    if rec.started and rec.outcome is None and not rec.aborted:  # no stop(): analyse what was captured
        rec.stop(None if passed else f"{rec.name} did not run to the end")
    for key, value in junit_properties(device_session, rec.outcome):
        request.node.user_properties.append((key, value))
    declared = request.node.get_closest_marker("phonehome_phases")
    ran = {mark.name for mark in rec.timeline.marks}
    missing = [name for name in (declared.args if declared else ()) if name not in ran]
    if passed and missing:
        problem = f"{rec.name}: declared phase(s) never ran: {', '.join(missing)}"
        device_session.errors.append(problem)
        pytest.fail(f"UNVERIFIED (not proven clean; no leak was seen): {device_session.id}, {problem}", pytrace=False)
    if passed and rec.outcome is not None and rec.outcome.status is not Status.CLEAN:
        # a scenario that never asserted must not pass a phone its own capture does not prove clean
        pytest.fail(failure_message(device_session, rec.outcome), pytrace=False)


def recording_name(test_name: str, device: str) -> str:
    """`test_power_up[virtual-clean]` -> `power-up`; other parameters stay in the name."""
    base, _, params = test_name.removeprefix("test_").partition("[")
    rest = params.removesuffix("]").replace(device, "").replace("--", "-").strip("-")
    return base.replace("_", "-") + (f"[{rest}]" if rest else "")


@pytest.fixture
def phase(recording: Recording) -> Callable[..., contextlib.AbstractContextManager[Any]]:
    """`with phase("screen-on", cycle=1): ...` marks a phase of this test's recording (host time)."""
    return recording.phase


@pytest.fixture
def findings(recording: Recording) -> Callable[[], Report]:
    """`findings()` stops this test's recording and returns its report (findings, status, reasons)."""
    return lambda: recording.stop().report
