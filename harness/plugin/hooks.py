"""The plugin's hooks: options, markers, one parametrization per phone, xdist grouping, reports."""

from __future__ import annotations

import json
import time
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from harness.adb_env import adb_port_problem
from harness.gate.evidence import allure_failure, write_device_summary
from harness.plugin.options import GateOptions, add_options, parse_options
from harness.plugin.state import OPTIONS_KEY, PROBLEM_KEY, SESSIONS_KEY, STARTED_KEY, SUMMARIES_KEY, ids_for
from harness.profile import PHASES

MARKERS = [
    "phonehome_after_scenarios: runs after every other test (it reads what they recorded, e.g. the baseline diff)",
    "phonehome_phases(*names): the phases a gate scenario drives (power-up, screen-on, unlock, idle, lock, "
    "connectivity-change); checked at collection",
]
DEVICE_FIXTURE = "device_session"


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    options = parse_options(config)
    problem = adb_port_problem()
    if problem and options.devices:
        raise pytest.UsageError(problem)
    if problem:  # adbutils was imported with it hidden (harness.adb_env): its default client took 5037
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(f"{problem}; adbutils' default client uses port 5037"), stacklevel=2)
    _check_files(options)
    config.stash[OPTIONS_KEY] = options
    config.stash[SESSIONS_KEY] = {}
    config.stash[STARTED_KEY] = time.time()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """pytest-xdist `-n N`: every test of one phone on one worker, phones in parallel.

    A scope per phone (its id in the test id), so one worker drives each phone from first test
    to last; tests without a phone are spread as usual. Only for the default `--dist load`.
    """
    if config.getoption("dist") not in ("load", "loadgroup"):
        return None
    from xdist.scheduler import LoadScopeScheduling

    try:
        names = list(ids_for(config, _devices(config)).values())
    except pytest.UsageError:
        names = []  # no phone: the collection reports it

    class PhoneScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            params = nodeid[nodeid.rfind("[") + 1 : -1] if nodeid.endswith("]") else ""
            for name in names:
                if params == name or params.startswith(f"{name}-") or params.endswith(f"-{name}") \
                        or f"-{name}-" in params:
                    return name
            return nodeid

    return PhoneScheduling(config, log)


def _check_files(options: GateOptions) -> None:
    """Bad setup is a usage error before any phone is touched: a profile or baseline (file, line and
    field), a virtual phone with no such profile, a baseline of another SKU, a phone with no capture."""
    from harness.errors import PhonehomeError
    from harness.gate.baseline import load_baseline
    from harness.gate.session import VIRTUAL, check_capture
    from harness.profile import load_profile

    try:
        profile = load_profile(options.profile) if options.profile is not None else None
        for spec in options.devices:
            virtual = spec.startswith(VIRTUAL)
            # a virtual phone without --ph-profile runs its own profile, which must exist
            own = load_profile(spec[len(VIRTUAL):]) if virtual and profile is None else profile
            check_capture(options.capture, own, virtual=virtual)
        if options.baseline is not None:
            header, _ = load_baseline(options.baseline)
            names = {profile.name} if profile is not None else \
                {spec[len(VIRTUAL):] for spec in options.devices if spec.startswith(VIRTUAL)}
            if header.get("profile") and names and header["profile"] not in names:
                raise PhonehomeError(f"--ph-baseline {options.baseline}: a baseline of profile {header['profile']}, "
                                     f"but the phones run {', '.join(sorted(names))} (one SKU per baseline)")
    except PhonehomeError as exc:
        raise pytest.UsageError(str(exc)) from None


def _devices(config: pytest.Config) -> list[str]:
    """`--device` values, else ANDROID_SERIAL, else every phone adb lists as ready."""
    options = config.stash[OPTIONS_KEY]
    if options.devices:
        return list(options.devices)
    from harness.device.select import resolve
    from harness.errors import PhonehomeError

    try:
        return [adb.serial for adb in resolve([])]
    except PhonehomeError as exc:
        raise pytest.UsageError(f"no phone to gate ({exc}): give --device SERIAL, IP:PORT, SERIAL@HOST:PORT or "
                                "virtual:NAME (e.g. --device virtual:nokia7plus-2019)") from None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if DEVICE_FIXTURE not in metafunc.fixturenames:
        return
    try:
        params = [pytest.param(spec, id=name) for spec, name in ids_for(metafunc.config,
                                                                         _devices(metafunc.config)).items()]
    except pytest.UsageError as exc:
        # raised here it would read as a collection error with a traceback: say it once, after collection
        metafunc.config.stash[PROBLEM_KEY] = str(exc)
        params = [pytest.param(None, id="no-phone")]
    metafunc.parametrize(DEVICE_FIXTURE, params, indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problem = config.stash.get(PROBLEM_KEY, None)
    if problem:
        raise pytest.UsageError(problem)
    # scenarios that compare what the others recorded (the baseline diff) run last, per phone too
    items.sort(key=lambda item: item.get_closest_marker("phonehome_after_scenarios") is not None)
    for item in items:
        marker = item.get_closest_marker("phonehome_phases")
        if marker is not None:
            unknown = [str(name) for name in marker.args if name not in PHASES]
            if unknown or not marker.args or marker.kwargs:
                raise pytest.UsageError(f"{item.nodeid}: @pytest.mark.phonehome_phases takes phase names "
                                        f"({', '.join(PHASES)}); got {', '.join(unknown) or 'none'}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    callspec = getattr(item, "callspec", None)
    if callspec is None or DEVICE_FIXTURE not in callspec.params:
        return report
    if report.when == "call" and report.passed:
        item.phonehome_call_passed = True  # type: ignore[attr-defined]
    session = item.config.stash[SESSIONS_KEY].get(callspec.params[DEVICE_FIXTURE])
    if report.failed and session is not None:
        # whatever the test's own verdict, the phone is not proven clean (a leak still wins)
        session.errors.append(f"{item.name} failed ({report.when})")
        if report.when == "call" and session.device is not None:
            allure_failure(session)
    return report


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Close every phone this process opened (settings restored, virtual phones off), write summaries.

    Runs last, after the interrupted test's own teardown (Ctrl-C) stopped its recording. The run
    fails when any phone is not clean, even if no test asserted it.
    """
    for device_session in session.config.stash.get(SESSIONS_KEY, {}).values():
        problems = device_session.close()
        device_session.errors += [f"restoring the phone: {p}" for p in problems]
        if device_session.opened_at is not None:
            write_device_summary(device_session)
    if hasattr(session.config, "workerinput"):
        return
    summaries = session.config.stash[SUMMARIES_KEY] = _summaries(session.config)  # read once, also for the console
    if session.exitstatus == 0 and any(data.get("status") != "clean" for data in summaries):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _summaries(config: pytest.Config) -> list[dict[str, Any]]:
    """Per-device findings.json written by this run (by this process or by xdist workers)."""
    options = config.stash.get(OPTIONS_KEY, None)
    if options is None or not options.artifacts.is_dir():
        return []
    started = config.stash.get(STARTED_KEY, 0.0)
    out = []
    for path in sorted(options.artifacts.glob("*/findings.json")):
        if path.stat().st_mtime >= started:
            try:
                out.append({**json.loads(path.read_text(encoding="utf-8")), "_path": str(path)})
            except (OSError, ValueError):
                continue
    return out


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    summaries = config.stash.get(SUMMARIES_KEY, [])
    if not summaries:
        return
    write = terminalreporter.write_line
    terminalreporter.section("phonehome")
    for data in summaries:
        device = data.get("device", {})
        findings = data.get("findings", [])
        write(f"{str(data.get('status')).upper():<11} {device.get('id')}  {device.get('model') or '?'}  "
              f"build {device.get('build_id') or '?'}  {len(findings)} finding(s)  {Path(data['_path']).parent}")
        for finding in findings[:20]:
            where = f" [{finding.get('phase')} cycle {finding.get('cycle')}]" if finding.get("phase") else ""
            write(f"    {finding.get('rule')}: {finding.get('evidence')}{where}")
        if len(findings) > 20:
            write(f"    ... {len(findings) - 20} more in {data['_path']}")
        if data.get("status") == "unverified":
            for reason in data.get("reasons", [])[:10]:
                write(f"    unverified: {reason}")

