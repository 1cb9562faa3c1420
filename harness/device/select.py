"""Which phones to drive, on which adb server, and making sure only one process drives each.

Forms accepted (DESIGN.md): `SERIAL` (USB), `IP:PORT` (adb over TCP; connected when not yet
listed), `SERIAL@HOST:PORT` (a phone on a farm host's adb server), nothing (`ANDROID_SERIAL`, else
every attached phone). A phone that is missing, offline or unauthorized is one error line that
lists what is attached and in which state, serials masked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import adbutils

from harness.device.adb import Adb, AdbTimeout, DeviceOffline, label, parse_devices
from harness.errors import DeviceError
from harness.identifiers import mask_serial

_TCP = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[\w.-]+):(?P<port>\d{1,5})")

_STATE_HELP = {
    "unauthorized": "accept the USB debugging prompt on the phone (or check ADB_VENDOR_KEYS)",
    "offline": "the transport is up but adbd does not answer: replug, or `adb reconnect`",
    "recovery": "the phone is in recovery mode",
    "bootloader": "the phone is in the bootloader",
    "sideload": "the phone is in sideload mode",
    "rescue": "the phone is in rescue mode",
    "authorizing": "the phone is still authorizing this host's key",
    "connecting": "the adb server is still connecting",
}


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A parsed `--device` value."""

    serial: str
    server_host: str | None = None  # None: the local server (ANDROID_ADB_SERVER_HOST/PORT)
    server_port: int | None = None

    @property
    def is_tcp(self) -> bool:
        return _TCP.fullmatch(self.serial) is not None

    @property
    def remote(self) -> bool:
        return self.server_host is not None

    @property
    def server_label(self) -> str | None:
        return None if self.server_host is None else f"{self.server_host}:{self.server_port}"

    def __str__(self) -> str:
        return self.serial if self.server_label is None else f"{self.serial}@{self.server_label}"

    @property
    def label(self) -> str:
        return label(self.serial, self.server_label)


def parse_spec(text: str) -> DeviceSpec:
    """`SERIAL`, `IP:PORT` or `SERIAL@HOST:PORT` (the serial may itself be `IP:PORT`)."""
    text = text.strip()
    if not text:
        raise DeviceError("empty device serial")
    if text.startswith("virtual:"):
        raise DeviceError(f"{text}: virtual phones are started by the gate (`--device {text}`) or by "
                          "`phonehome virtual start NAME`; pass the serial it prints")
    serial, at, server = text.rpartition("@")
    if not at:
        return DeviceSpec(text)
    match = _TCP.fullmatch(server)
    if not serial or match is None:
        raise DeviceError(f"{mask_serial(text)}: expected SERIAL@HOST:PORT (a phone on a remote adb server)")
    port = int(match["port"])
    if not 0 < port < 65536:
        raise DeviceError(f"{mask_serial(text)}: adb server port {port} out of range")
    return DeviceSpec(serial, match["host"].strip("[]"), port)


def client_for(spec: DeviceSpec, *, timeout: float = 10.0) -> adbutils.AdbClient:
    """An adbutils client for the server that holds this phone.

    A remote server is probed first: adbutils would otherwise start a *local* server when the
    remote one does not answer, which is never what a farm user meant.
    """
    if spec.server_host is None:
        return adbutils.AdbClient(socket_timeout=timeout)
    assert spec.server_port is not None
    try:
        with socket.create_connection((spec.server_host, spec.server_port), timeout=min(timeout, 5.0)):
            pass
    except OSError as exc:
        raise DeviceError(f"adb server {spec.server_label} not reachable ({exc.strerror or exc}) "
                          f"for {spec.label}") from None
    return adbutils.AdbClient(host=spec.server_host, port=spec.server_port, socket_timeout=timeout)


@dataclass(frozen=True, slots=True)
class Attached:
    serial: str
    state: str
    model: str | None = None

    def describe(self) -> str:
        model = f" {self.model}" if self.model else ""
        return f"{mask_serial(self.serial)} ({self.state}{model})"


def list_attached(client: adbutils.AdbClient, *, timeout: float = 10.0) -> list[Attached]:
    """What the server lists, with state and model (from `devices -l`)."""
    probe = Adb(client, "-", timeout=timeout)
    rows = parse_devices(probe.host_query("host:devices", timeout=timeout))
    models: dict[str, str] = {}
    with contextlib.suppress(DeviceError):
        for line in probe.host_query("host:devices-l", timeout=timeout).splitlines():
            match = re.search(r"\bmodel:(\S+)", line)
            if match:
                models[line.split()[0]] = match.group(1)
    return [Attached(serial, state, models.get(serial)) for serial, state in rows]


def describe_attached(attached: Sequence[Attached], server: str | None = None) -> str:
    where = f" on adb server {server}" if server else ""
    if not attached:
        return f"no device attached{where}"
    return f"attached{where}: " + ", ".join(a.describe() for a in attached)


def _state_error(spec: DeviceSpec, state: str, attached: Sequence[Attached]) -> DeviceError:
    shown = spec.label
    hint = _STATE_HELP.get(state.split()[0] if state else "", "")
    if state.startswith("no permissions"):
        hint = "the USB device is not accessible to this user (udev rules / plugdev group)"
    what = "not found" if state == "absent" else f"is {state}"
    message = f"device {shown} {what}"
    if hint:
        message += f" ({hint})"
    return DeviceOffline(f"{message}; {describe_attached(attached, spec.server_label)}")


def open_device(spec: DeviceSpec, *, timeout: float = 30.0, connect_timeout: float = 15.0) -> Adb:
    """An `Adb` for a phone in state `device`, connecting an IP:PORT transport when needed."""
    client = client_for(spec, timeout=timeout)
    adb = Adb(client, spec.serial, timeout=timeout, server_label=spec.server_label)
    attached = list_attached(client)
    state = next((a.state for a in attached if a.serial == spec.serial), "absent")
    if state != "device" and spec.is_tcp:
        state = _connect_tcp(adb, connect_timeout)
        if state != "device":
            attached = list_attached(client)
    if state != "device":
        raise _state_error(spec, state, attached)
    return adb


def _connect_tcp(adb: Adb, timeout: float) -> str:
    """`adb connect`, then wait for the transport to leave `connecting`/`authorizing`."""
    deadline = time.monotonic() + timeout
    if adb.state() in {"offline", "unauthorized"}:
        adb.disconnect()
    try:
        adb.connect(timeout=max(1.0, deadline - time.monotonic()))
    except AdbTimeout:
        return "absent"
    state = "absent"
    while time.monotonic() < deadline:
        state = adb.state()
        if state in {"device", "unauthorized"}:
            return state
        time.sleep(0.2)
    return state


def resolve(specs: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None,
            timeout: float = 30.0) -> list[Adb]:
    """The phones to drive: the given specs, else `ANDROID_SERIAL`, else every attached phone."""
    env = os.environ if env is None else env
    texts = [s for s in (specs or []) if s.strip()]
    if not texts and env.get("ANDROID_SERIAL"):
        texts = [env["ANDROID_SERIAL"]]
    if texts:
        return [open_device(parse_spec(text), timeout=timeout) for text in texts]
    client = adbutils.AdbClient(socket_timeout=timeout)
    try:
        attached = list_attached(client)
    except DeviceError as exc:
        raise DeviceError(f"cannot list devices: {exc}") from None
    ready = [a for a in attached if a.state == "device"]
    if not ready:
        raise DeviceError(f"no usable device: {describe_attached(attached)}")
    return [Adb(client, a.serial, timeout=timeout) for a in ready]


# --- one driver per phone, across processes ---------------------------------------------------
def lock_dir() -> Path:
    """Shared among this user's processes: $XDG_RUNTIME_DIR, else /tmp (one dir per uid)."""
    runtime = os.environ.get("PHONEHOME_LOCK_DIR") or os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "phonehome-locks" if runtime else Path(f"/tmp/phonehome-locks-{os.getuid()}")  # noqa: S108
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return base


def lock_key(adb: Adb) -> str:
    """A file-name-safe key for one transport on one server; hashed, so no serial is on disk."""
    server = f"{adb.client.host}:{adb.client.port}"
    return hashlib.sha256(f"{server}/{adb.serial}".encode()).hexdigest()[:24]


def hardware_lock_key(hardware_serial: str) -> str:
    """The key of a phone itself (`ro.serialno`), whichever transport or adb server reaches it."""
    return hashlib.sha256(f"hw/{hardware_serial}".encode()).hexdigest()[:24]


class DeviceBusy(DeviceError):
    """Another process holds this phone."""


class SerialLock:
    """An exclusive, process-wide lock on one phone (fcntl; released when the process dies).

    Two pytest-xdist workers, or a gate and a stray `phonehome` command, never drive one phone
    at the same time.
    """

    def __init__(self, adb: Adb, *, wait: float = 0.0, key: str | None = None) -> None:
        self.adb = adb
        self.wait = wait
        self.path = lock_dir() / f"{key or lock_key(adb)}.lock"
        self._fd: int | None = None

    def acquire(self) -> SerialLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() >= deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise DeviceBusy(f"device {self.adb.label} is in use by another phonehome process"
                                     f"{f' (pid {holder})' if holder else ''}") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> SerialLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text.isdigit():
            return text
    return ""
