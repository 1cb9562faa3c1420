"""Device-layer overhead on a virtual phone, as ratios against baselines measured in the same run.

1. Per step (screen-on, unlock, lock): the harness's verified step vs the bare adb commands that
   cause it (`input keyevent` / `input swipe` through the same adb server). The harness adds the
   state reads before and after (`dumpsys power` + `dumpsys window`) and the settle poll.
2. Reboot: the harness's full wait (gone, back, boot_completed, package manager, clock offset)
   vs the virtual phone's configured boot time, with Debian's adb 29 (if installed) and the adb
   adbutils bundles, each as a private server (never the user's 5037).

`run(quick=True)` takes well under 30 s: fewer rounds, one reboot per adb.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import adbutils

from harness.device.adb import Adb
from harness.device.lifecycle import Lifecycle, Timeouts
from harness.device.server import bundled_adb, private_adb_server
from harness.virtual.phone import VirtualPhone
from harness.virtual.spec import load_virtual


@contextlib.contextmanager
def _phone(port: int, boot_seconds: float) -> Iterator[tuple[Adb, float]]:
    spec = load_virtual("clean")
    with contextlib.suppress(TypeError, ValueError):
        spec = dataclasses.replace(spec, boot_seconds=boot_seconds)
    configured = float(getattr(spec, "boot_seconds", boot_seconds))
    with VirtualPhone(spec, network=False) as phone:
        client = adbutils.AdbClient(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 20
        while True:
            client.connect(phone.serial, timeout=5)
            if {d.serial: d.state for d in client.list()}.get(phone.serial) == "device":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"virtual phone {phone.serial} not listed by the adb server")
            time.sleep(0.2)
        try:
            yield Adb(client, phone.serial, timeout=30), configured
        finally:
            with contextlib.suppress(Exception):
                client.disconnect(phone.serial)


def _median(fn: Callable[[], object], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _steps(adb: Adb, rounds: int) -> None:
    life = Lifecycle(adb, sdk=int(adb.getprops().get("ro.build.version.sdk", "0") or 0), use_u2=False,
                     timeouts=Timeouts(state=5))
    print("step         bare adb (ms)  harness (ms)  ratio")

    def cycle_bare(step: str) -> Callable[[], object]:
        keys = {"screen-on": ["input keyevent 224"], "lock": ["input keyevent 223"],
                "unlock": ["input keyevent 224", "input swipe 540 1800 540 500 300"]}[step]
        return lambda: [adb.script(k) for k in keys]

    def prepare(step: str) -> None:
        # each measured call must change state, as in a gate: put the phone in the step's start state
        if step in {"screen-on", "unlock"}:
            life.lock(check=False)
        else:
            life.unlock("swipe", check=False)

    harness = {"screen-on": lambda: life.screen_on(), "unlock": lambda: life.unlock("swipe"),
               "lock": lambda: life.lock("swipe")}
    for step in ("screen-on", "unlock", "lock"):
        bare_times, harness_times = [], []
        for _ in range(rounds):
            prepare(step)
            bare_times.append(_median(cycle_bare(step), 1))
            prepare(step)
            harness_times.append(_median(harness[step], 1))
        bare, full = statistics.median(bare_times), statistics.median(harness_times)
        print(f"{step:<12} {bare * 1000:13.1f} {full * 1000:13.1f} {full / bare:6.1f}x")


def _reboot(adb: Adb, configured: float) -> float:
    life = Lifecycle(adb, sdk=0, use_u2=False, timeouts=Timeouts(gone=30, back=60, boot=60))
    record = life.reboot()
    assert record.total is not None
    return record.total


def run(quick: bool) -> None:
    rounds = 2 if quick else 7
    boot_seconds = 2.0 if quick else 3.0
    bundled = bundled_adb()
    adbs = [("bundled adb 36", bundled)]
    debian = shutil.which("adb", path="/usr/bin")
    if debian and Path(debian).resolve() != Path(bundled).resolve():
        adbs.append(("Debian adb 29", debian))
    else:
        print("Debian's adb not installed (apt-get install adb): reboot measured with the bundled adb only")
    for index, (name, path) in enumerate(adbs):
        with private_adb_server(path, activate=True) as server, \
                _phone(int(server["ANDROID_ADB_SERVER_PORT"]), boot_seconds) as (adb, configured):
            if index == 0:
                print(f"== per-step overhead ({name}, {rounds} rounds, adb input driver) ==")
                _steps(adb, rounds)
            reboots = 1 if quick else 3
            totals = [_reboot(adb, configured) for _ in range(reboots)]
            total = statistics.median(totals)
            print(f"== reboot wait, {name}: configured boot {configured:.1f} s, harness saw it done after "
                  f"{total:.2f} s: overhead {total - configured:+.2f} s, ratio {total / configured:.2f}x ==")


if __name__ == "__main__":
    import sys

    run(quick="--quick" in sys.argv)
