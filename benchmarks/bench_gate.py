"""The gate's own cost on virtual phones, as ratios measured side by side in one run.

1. Per cycle: one full cycle (power-up, screen-on, unlock, idle, lock, connectivity-change) with
   every dwell and the settle time at 0, through the gate (capture started and stopped, every
   step read back, canary, analysis) vs the same adb commands issued bare (`reboot` then polling
   `sys.boot_completed`, the key events, the swipe, `svc wifi`). The difference is what the
   harness adds per cycle beyond the dwell times.
2. Parallel phones: the shipped scenarios on N virtual phones with pytest-xdist `-n N` vs one
   worker driving them one after the other (wall-time ratio; 4 phones in full mode, 2 in quick).

Every adb call goes to a private adb server on a free port, never the user's 5037. Needs root.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import adbutils

from harness.device.server import private_adb_server
from harness.gate.session import DeviceSession
from harness.plugin.options import GateOptions

PARALLEL_PHONES = ("clean", "nokia7plus-fixed", "analytics-2021", "nokia7plus-2019")


def _bare_cycle(session: DeviceSession) -> float:
    """The adb commands a cycle needs, with no capture, no read-back and no analysis."""
    assert session.device is not None
    adb = session.device.adb
    client, serial = adbutils.AdbClient(socket_timeout=30), adb.serial
    start = time.perf_counter()
    with contextlib.suppress(Exception):  # the transport drops as the phone goes down
        client.device(serial).shell("reboot", timeout=10)
    time.sleep(0.2)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            client.connect(serial, timeout=2)
            if client.device(serial).shell("getprop sys.boot_completed", timeout=5).strip() == "1":
                break
        time.sleep(0.1)
    else:
        raise RuntimeError("the virtual phone did not come back after a bare reboot")
    for command in ("input keyevent 224", "input swipe 540 1800 540 500 300", "input keyevent 223",
                    "svc wifi disable", "svc wifi enable"):
        client.device(serial).shell(command, timeout=30)
    return time.perf_counter() - start


def _gate_cycle(session: DeviceSession) -> float:
    recording = session.record("bench-cycle")
    recording.settle = 0.0
    start = time.perf_counter()
    recording.cycle(1)
    outcome = recording.stop()
    elapsed = time.perf_counter() - start
    if outcome.report.reasons:
        raise RuntimeError(f"the benchmark cycle was not verified: {outcome.report.reasons}")
    return elapsed


def per_cycle(quick: bool, artifacts: Path) -> None:
    options = GateOptions(devices=("virtual:clean",), profile=None, capture=None, cycles=1, dwell=0.0,
                          boot_timeout=120.0, artifacts=artifacts, baseline=None)
    rounds = 1 if quick else 3
    with private_adb_server(activate=True):
        session = DeviceSession("virtual:clean", options).open()
        try:
            bare = [_bare_cycle(session) for _ in range(rounds)]
            gate = [_gate_cycle(session) for _ in range(rounds)]
        finally:
            session.close()
    b, g = min(bare), min(gate)
    print(f"== one cycle, dwell and settle 0, virtual phone 'clean' (best of {rounds}) ==")
    print(f"bare adb commands      {b:6.2f} s  (baseline)")
    print(f"the gate's cycle       {g:6.2f} s  ratio {g / b:.2f}x, the harness adds {g - b:.2f} s per cycle")


def _gate_run(phones: tuple[str, ...], workers: int, artifacts: Path, env: dict[str, str], scenarios: str,
              extra: list[str]) -> float:
    command = [sys.executable, "-m", "pytest", "--pyargs", "harness.scenarios", "-p", "no:cacheprovider", "-q",
               f"--ph-artifacts={artifacts}", "-k", scenarios, *extra, *[f"--device=virtual:{p}" for p in phones]]
    command += ["-n", str(workers)] if workers > 1 else ["-p", "no:xdist"]
    start = time.perf_counter()
    done = subprocess.run(command, env={**os.environ, **env}, cwd=artifacts.parent, capture_output=True, text=True,
                          check=False, timeout=1800)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise RuntimeError(f"pytest exited {done.returncode}: {done.stdout[-1500:]}")
    return elapsed


def parallel(quick: bool, base: Path) -> None:
    phones = PARALLEL_PHONES[:2] if quick else PARALLEL_PHONES
    scenarios = "screen_activation" if quick else "not cycles"
    with private_adb_server(activate=True) as env:
        dwell = ["--ph-dwell=1"] if quick else []
        one = _gate_run(phones, 1, base / "serial" / "artifacts", env, scenarios, dwell)
        many = _gate_run(phones, len(phones), base / "parallel" / "artifacts", env, scenarios, dwell)
    print(f"== {len(phones)} virtual phones, scenarios `{scenarios}`{' (dwell 1 s)' if quick else ''} ==")
    print(f"one worker, phones in turn   {one:6.1f} s  (baseline)")
    print(f"-n {len(phones)}, a worker per phone   {many:6.1f} s  speed-up {one / many:.2f}x "
          f"(ideal {len(phones)}x)")


def run(quick: bool) -> None:
    if os.geteuid() != 0:
        raise RuntimeError("bench_gate needs root (virtual phones' network namespaces)")
    with tempfile.TemporaryDirectory(prefix="phonehome-bench-gate-") as tmp:
        base = Path(tmp)
        for sub in ("serial", "parallel"):
            (base / sub).mkdir()
        per_cycle(quick, base / "cycle")
        parallel(quick, base)


