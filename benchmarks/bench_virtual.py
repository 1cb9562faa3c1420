"""Virtual phones: start-to-`adb shell`-ready time, and 8 phones at once on this machine.

1. Start to ready: from `VirtualPhone.start()` to the first `adb shell echo` answered through the
   real adb server (private port, never 5037), for one phone with its network namespaces, side by
   side with the same phone without network (the namespaces' and firmware's share).
2. Eight phones at once, each with its own three namespaces and firmware: all reachable over adb
   (`getprop sys.boot_completed` answers 1 on each), and memory per phone (this process's RSS
   growth plus the phones' own processes, divided by 8).

Needs root (network namespaces). Quick mode starts 8 phones too: they boot in parallel.
"""

from __future__ import annotations

import contextlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import adbutils

from harness.device.server import private_adb_server
from harness.virtual.phone import VirtualPhone

PHONES = 8


def _ready(client: adbutils.AdbClient, phone: VirtualPhone, deadline: float) -> None:
    while True:
        with contextlib.suppress(Exception):
            client.connect(phone.serial, timeout=2)
            if client.device(phone.serial).shell("echo ready", timeout=5).strip() == "ready":
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"virtual phone {phone.serial} never answered `adb shell`")
        time.sleep(0.05)


def _start_to_shell(client: adbutils.AdbClient, network: bool) -> float:
    phone = VirtualPhone("clean", network=network)
    began = time.perf_counter()
    phone.start()
    try:
        _ready(client, phone, time.monotonic() + 60)
        return time.perf_counter() - began
    finally:
        with contextlib.suppress(Exception):
            client.disconnect(phone.serial)
        phone.stop()


def _rss_kib(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _many(client: adbutils.AdbClient, count: int) -> None:
    me = os.getpid()
    before = _rss_kib(me) + sum(_rss_kib(p) for p in _descendants(me))
    phones = [VirtualPhone("clean") for _ in range(count)]
    began = time.perf_counter()
    try:
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda p: p.start(), phones))
            deadline = time.monotonic() + 120
            list(pool.map(lambda p: _ready(client, p, deadline), phones))
        elapsed = time.perf_counter() - began
        booted = [client.device(p.serial).shell("getprop sys.boot_completed", timeout=10).strip() for p in phones]
        after = _rss_kib(me) + sum(_rss_kib(p) for p in _descendants(me))
        reachable = sum(1 for value in booted if value == "1")
        print(f"== {count} virtual phones at once, each with its network namespaces and firmware ==")
        print(f"all started and answering adb in {elapsed:.1f} s; reachable and booted: {reachable}/{count}")
        print(f"memory: {(after - before) / 1024:.0f} MiB in all, {(after - before) / 1024 / count:.1f} MiB per phone "
              "(this process's growth + the phones' own processes)")
        if reachable != count:
            raise RuntimeError(f"only {reachable} of {count} virtual phones were reachable")
    finally:
        for phone in phones:
            with contextlib.suppress(Exception):
                client.disconnect(phone.serial)
            phone.stop()


def run(quick: bool) -> None:
    if os.geteuid() != 0:
        raise RuntimeError("bench_virtual needs root (network namespaces)")
    rounds = 1 if quick else 3
    with private_adb_server() as server:
        client = adbutils.AdbClient(host="127.0.0.1", port=int(server["ANDROID_ADB_SERVER_PORT"]), socket_timeout=30)
        full = min(_start_to_shell(client, network=True) for _ in range(rounds))
        bare = min(_start_to_shell(client, network=False) for _ in range(rounds))
        print(f"== start to `adb shell` ready, profile clean (best of {rounds}) ==")
        print(f"without network (adbd + device model)   {bare:5.2f} s  (baseline)")
        print(f"with namespaces, servers and firmware    {full:5.2f} s  ratio {full / bare:.2f}x")
        _many(client, PHONES)
