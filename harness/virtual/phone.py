"""A whole virtual phone: network, simulated internet, Android model, adbd and firmware, as one object.

    with VirtualPhone("nokia7plus-2019") as phone:
        adb connect phone.serial   # 127.0.0.1:PORT, through any real adb server

`start()` powers the phone on the way a phone boots: adbd appears part-way through the boot with
`sys.boot_completed` still empty, the property turns `1` after the profile's `boot_seconds`, and
only then does the firmware see its `boot` trigger. A reboot (adb `reboot:` or `shell reboot`)
takes adbd down, boots again (renewing IP/MAC or moving to a new port when those faults are on)
and brings it back. Everything runs on a private event loop in a daemon thread, so synchronous
callers (tests, the CLI, the pytest plugin) can drive it. `stop()`, the context manager, an
interpreter exit or a failed start remove namespaces, processes and the state directory; a
leftover from a crashed run is removed by the next start.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib
import logging
import secrets
import shutil
import tempfile
import threading
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from harness.errors import DeviceError, PhonehomeError
from harness.virtual.android import AndroidDevice, off_loop, settle
from harness.virtual.spec import FAULTS

log = logging.getLogger(__name__)

T = TypeVar("T")

ADBD_SHARE = 0.4  # adbd comes up after this share of the boot; boot_completed at the end


class _Loop:
    """A private asyncio loop in a daemon thread; `run()` executes a coroutine on it and waits."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Awaitable[T], timeout: float | None = None) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(_wrap(coro), self.loop)
        return future.result(timeout)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


async def _wrap(coro: Awaitable[T]) -> T:
    return await coro


class VirtualPhone:
    """One virtual phone from a `virtual:` profile (a name in devices/, a path, or a VirtualSpec).

    `faults` adds to the profile's faults (see FAULTS). `network=False` runs without network
    namespaces (no root needed): adb, the shell and uiautomator2 work, but there is no traffic,
    no firmware and no `ip`/`ping`/`tcpdump`.
    """

    def __init__(self, spec_or_name: Any, *, port: int = 0, faults: Iterable[str] = (),
                 network: bool = True, state_dir: Path | None = None) -> None:
        unknown = sorted(set(faults) - FAULTS)
        if unknown:
            raise PhonehomeError(f"unknown virtual phone fault(s): {', '.join(unknown)} "
                                 f"(known: {', '.join(sorted(FAULTS))})")
        self._spec_source = spec_or_name
        self._requested_port = port
        self._extra_faults = set(faults)
        self._use_network = network
        self._state_dir_given = state_dir
        self.spec: Any = None
        self.state_dir: Path | None = None
        self.network: Any = None
        self.internet: Any = None
        self.firmware: Any = None
        self.device: AndroidDevice | None = None
        self.adbd: Any = None
        self.port: int | None = None
        self._loop: _Loop | None = None
        self._boot_task: asyncio.Task[None] | None = None
        self._rebooting = False
        self._stopped = False
        self._booted = threading.Event()
        self._serial_listeners: list[Callable[[str], None]] = []
        self.reboots = 0

    # -- public, synchronous -------------------------------------------------------------------

    @property
    def serial(self) -> str:
        """The adb serial, `127.0.0.1:PORT` (changes after a reboot with the `new-port` fault)."""
        if self.port is None:
            raise DeviceError("virtual phone is not running")
        return f"127.0.0.1:{self.port}"

    @property
    def faults(self) -> set[str]:
        return set(self.device.faults) if self.device is not None else set(self._extra_faults)

    def on_serial_change(self, listener: Callable[[str], None]) -> None:
        """Call `listener(serial)` whenever adbd comes back on another port."""
        self._serial_listeners.append(listener)

    def start(self, *, wait_boot: bool = True, timeout: float = 120.0) -> VirtualPhone:
        """Power on; returns once adbd listens (and, by default, once boot completed)."""
        if self._loop is not None:
            return self
        self._stopped = False
        self._loop = _Loop(f"virtual-phone-{secrets.token_hex(3)}")
        atexit.register(self.stop)
        try:
            self._loop.run(self._start(), timeout)
            if wait_boot and "boot-never-completes" not in self.faults and not self._booted.wait(timeout):
                raise DeviceError(f"virtual phone {self.serial} did not finish booting within {timeout:g} s")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Power off and remove everything this phone created; safe to call twice."""
        if self._stopped or self._loop is None:
            return
        self._stopped = True
        with contextlib.suppress(Exception):
            self._loop.run(self._stop(), 60)
        self._loop.close()
        self._loop = None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self.state_dir is not None and self._state_dir_given is None:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def reboot(self, *, wait: bool = True, timeout: float = 120.0) -> None:
        """Reboot as `adb reboot` would; waits for boot completed unless told not to."""
        assert self._loop is not None, "not started"
        self._booted.clear()
        self._loop.run(self._reboot(""), timeout)
        if wait and "boot-never-completes" not in self.faults and not self._booted.wait(timeout):
            raise DeviceError(f"virtual phone {self.serial} did not come back within {timeout:g} s")

    def wait_booted(self, timeout: float) -> bool:
        return self._booted.wait(timeout)

    def call(self, fn: Callable[[AndroidDevice], Awaitable[T]], timeout: float = 60.0) -> T:
        """Run `fn(device)` on the phone's loop (for the harness's own hooks, not for tests)."""
        assert self._loop is not None and self.device is not None, "not started"
        return self._loop.run(fn(self.device), timeout)

    def __enter__(self) -> VirtualPhone:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        name = getattr(self.spec, "name", self._spec_source)
        where = f"127.0.0.1:{self.port}" if self.port else "stopped"
        return f"VirtualPhone({name}, {where})"

    # -- on the loop ---------------------------------------------------------------------------

    def _load_spec(self) -> Any:
        source = self._spec_source
        if isinstance(source, (str, Path)):
            from harness.virtual.spec import load_virtual

            return load_virtual(source)
        return source

    async def _start(self) -> None:
        spec = self._load_spec()
        faults = set(getattr(spec, "faults", None) or ()) | self._extra_faults
        updates: dict[str, Any] = {}
        if hasattr(spec, "faults"):
            updates["faults"] = frozenset(faults) if isinstance(spec.faults, frozenset) else type(spec.faults)(faults)
        if "mobile-data-on" in faults and hasattr(spec, "mobile_data"):
            updates["mobile_data"] = True
        if "user-build" in faults and hasattr(spec, "build_type"):
            updates["build_type"] = "user"
        if "private-dns-on" in faults and hasattr(spec, "private_dns") and not spec.private_dns:
            updates["private_dns"] = True
        with contextlib.suppress(TypeError, ValueError):
            spec = replace(spec, **updates) if updates else spec
        self.spec = spec
        self.state_dir = self._state_dir_given or Path(tempfile.mkdtemp(prefix="phonehome-virtual-"))
        self.state_dir.chmod(0o700)
        device = AndroidDevice(spec, state_dir=self.state_dir, faults=faults, on_reboot=self._reboot,
                               on_drop=self._drop)
        self.device = device
        if self._use_network:
            network_module = importlib.import_module("harness.virtual.network")
            await off_loop(network_module.cleanup_leftovers)
            tag = secrets.token_hex(3)
            try:
                self.network = await off_loop(network_module.PhoneNetwork.create, tag, wifi_mac=device.wire_mac(),
                                              mobile_data=device.mobile_data)
            except PhonehomeError:
                raise
            except (OSError, RuntimeError) as exc:
                raise DeviceError(f"cannot create the virtual phone's network: {exc}") from exc
            device.network = self.network
            from harness.virtual.internet import Internet

            self.internet = Internet(self.network)
            await off_loop(self.internet.start)
            from harness.virtual.firmware import FirmwareRunner

            self.firmware = FirmwareRunner(spec, self.network, self.state_dir)
            device.firmware = self.firmware
            if hasattr(self.firmware, "package_uids"):  # its sockets belong to their apps' uids
                self.firmware.package_uids = {name: pkg.uid for name, pkg in device.packages.items()}
            if hasattr(self.firmware, "logcat"):  # its clients' log lines go to the phone's logcat
                self.firmware.logcat = device.log
        await self._boot()

    def _new_adbd(self, port: int) -> Any:
        from harness.virtual.adbd import AdbDaemon

        assert self.device is not None
        auth = "reject" if "unauthorized" in self.device.faults else "none"
        return AdbDaemon(self.device, host="127.0.0.1", port=port, auth=auth)

    async def _boot(self) -> None:
        """Power-on: init and adbd, then (after boot_seconds) boot_completed and the firmware's `boot`."""
        device = self.device
        assert device is not None
        device.begin_boot()
        boot_seconds = max(0.2, float(getattr(self.spec, "boot_seconds", 3.0) or 3.0))
        if self.firmware is not None:
            await settle(self.firmware.start())
        await asyncio.sleep(boot_seconds * ADBD_SHARE)
        port = self._requested_port if self.port is None else self.port
        if self.port is not None and "new-port" in device.faults:
            port = 0
        self.adbd = self._new_adbd(port)
        await settle(self.adbd.start())
        old, self.port = self.port, int(self.adbd.port)
        if old is not None and old != self.port:
            for listener in list(self._serial_listeners):
                with contextlib.suppress(Exception):
                    listener(self.serial)
        log.info("virtual phone %s: adbd on %s, booting", getattr(self.spec, "name", "?"), self.serial)
        self._boot_task = asyncio.ensure_future(self._finish_boot(boot_seconds * (1 - ADBD_SHARE)))

    async def _finish_boot(self, remaining: float) -> None:
        device = self.device
        assert device is not None
        if "boot-never-completes" in device.faults:
            return
        await asyncio.sleep(remaining)
        await device.complete_boot()
        self._booted.set()
        await device.event("boot")

    async def _reboot(self, target: str) -> None:
        """Shut down (adbd goes away), renew the network per faults, boot again."""
        if self._rebooting or self._stopped:
            return
        self._rebooting = True
        self._booted.clear()
        task = asyncio.ensure_future(self._reboot_cycle(target))
        task.add_done_callback(_report_failure)
        await asyncio.sleep(0)

    async def _reboot_cycle(self, target: str) -> None:
        device = self.device
        assert device is not None
        try:
            await asyncio.sleep(0.05)  # let `reboot:`'s reply leave before the transport goes
            if self._boot_task is not None:
                self._boot_task.cancel()
            await device.power_off()
            if self.firmware is not None:
                await settle(self.firmware.stop())
            await settle(self.adbd.stop())
            if self.network is not None and "new-ip-mac" in device.faults:
                await off_loop(self.network.renew, new_ip=None, new_mac=_random_mac())
            self.reboots += 1
            if not self._stopped:
                await self._boot()
        finally:
            self._rebooting = False

    async def _drop(self) -> None:
        if self.adbd is not None:
            await settle(self.adbd.drop_connections())

    async def _stop(self) -> None:
        if self._boot_task is not None:
            self._boot_task.cancel()
        steps: list[tuple[str, Callable[[], Any]]] = []
        if self.device is not None:
            steps.append(("device", self.device.power_off))
        if self.firmware is not None:
            steps.append(("firmware", self.firmware.stop))
        if self.adbd is not None:
            steps.append(("adbd", self.adbd.stop))
        if self.internet is not None:
            steps.append(("internet", self.internet.stop))
        if self.network is not None:
            steps.append(("network", self.network.destroy))
        for name, step in steps:
            try:
                blocking = name in ("internet", "network")
                await asyncio.wait_for(off_loop(step) if blocking else settle(step()), 30)
            except Exception as exc:  # keep tearing down: a leftover is worse than a log line
                log.warning("virtual phone: stopping %s failed: %s", name, exc)
        self.port = None


def _report_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("virtual phone reboot failed: %s", task.exception())


def _random_mac() -> str:
    """A locally administered unicast MAC, as Android's per-network randomization picks."""
    first = (secrets.randbelow(64) << 2) | 0x02
    return ":".join([f"{first:02x}", *(f"{secrets.randbelow(256):02x}" for _ in range(5))])
