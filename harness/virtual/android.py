"""The virtual phone's Android: its state, and the commands a real phone answers, in real formats.

`AndroidDevice` is the `DeviceServices` the adb transport (`adbd.py`) calls: the CNXN banner, a
file system for `sync:`, shell command lines, `tcp:` forwards and `reboot:`. Everything a client
can observe comes from the phone's profile (`VirtualSpec`) and its state machine (boot, screen,
keyguard, connectivity), rendered per Android version from the templates in `outputs/` (see
`outputs/SOURCES.md` for where each format comes from). Commands that touch the network (`ip`,
`ping`, `tcpdump`) run the real Debian tools inside the phone's network namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import inspect
import logging
import posixpath
import re
import signal
import struct
import time
import uuid
import zlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from harness.identifiers import IdentifierSet, Kind
from harness.virtual import lockpattern
from harness.virtual.services import FileStat, ShellIO
from harness.virtual.shell import (
    SH,
    BufferWriter,
    CommandTable,
    EmptyReader,
    Proc,
    ProcessTable,
    Reader,
    Shell,
    Writer,
    generic_table,
    quote,
)

log = logging.getLogger(__name__)

SHELL_UID = 2000
LAUNCHER = "com.android.launcher3"
LAUNCHER_ACTIVITY = "com.android.launcher3.uioverrides.QuickstepLauncher"
SYSTEMUI = "com.android.systemui"
PCAPDROID = "com.emanuelef.remote_capture"
U2_PORT_DEFAULT = 9008
# packages that run under a shared system UID (their manifests' sharedUserId; AIDs from AOSP
# system/core/libcutils/include/private/android_filesystem_config.h)
SHARED_UIDS = {"android": 1000, "com.android.providers.settings": 1000, "com.android.settings": 1000,
               "com.android.phone": 1001, "com.android.providers.telephony": 1001, "com.android.shell": 2000,
               "com.android.networkstack": 1073, "com.google.android.networkstack": 1073}
_USER_UIDS = {"root": 0, "system": 1000, "radio": 1001, "logd": 1036, "shell": 2000}
PROC_NET = ("tcp", "tcp6", "udp", "udp6")
# the header line of each table when the namespace has no socket of that kind (Linux net/ipv4, net/ipv6)
PROC_NET_EMPTY = {
    "tcp": "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
    "udp": "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref "
           "pointer drops\n",
    "tcp6": "  sl  local_address                         remote_address                        st tx_queue rx_queue "
            "tr tm->when retrnsmt   uid  timeout inode\n",
    "udp6": "  sl  local_address                         remote_address                        st tx_queue rx_queue "
            "tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n",
}


# ----------------------------------------------------------------------------------------------
# What the model needs from its collaborators (structural: spec.py, network.py, firmware.py)


class SimLike(Protocol):
    present: bool
    state: str
    mcc: str
    mnc: str
    operator: str


class SpecLike(Protocol):
    """The parts of `harness.virtual.spec.VirtualSpec` the device model reads."""

    name: str
    model: str
    manufacturer: str
    android: int
    sdk: int
    build_type: str
    fingerprint: str
    boot_seconds: float
    identifiers: IdentifierSet
    sim: SimLike
    packages: dict[str, str]
    pcapdroid: bool
    private_dns: Any
    mobile_data: bool
    faults: Any


class NetworkLike(Protocol):
    """The parts of `harness.virtual.network.PhoneNetwork` the device model uses."""

    phone_ip: str
    phone_mac: str

    def exec_argv(self, argv: list[str]) -> list[str]: ...

    async def open_connection(self, port: int, host: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...

    def set_wifi(self, on: bool) -> Any: ...

    def set_mobile_data(self, on: bool) -> Any: ...


class FirmwareLike(Protocol):
    def event(self, name: str) -> Any: ...

    def clear_package(self, pkg: str) -> Any: ...


async def settle(result: Any) -> Any:
    """Await `result` when a collaborator's method turned out to be a coroutine."""
    if inspect.isawaitable(result):
        return await result
    return result


async def off_loop(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a collaborator: a coroutine function is awaited, a blocking one (it runs `ip`, waits for
    subprocesses) runs in a worker thread so the phone's loop keeps serving adb meanwhile."""
    if inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)
    return await settle(await asyncio.to_thread(fn, *args, **kwargs))


# ----------------------------------------------------------------------------------------------
# Per-version facts


@dataclass(frozen=True, slots=True)
class Release:
    """What differs between Android releases, as far as a client can see."""

    version: int
    sdk: int
    build_id: str
    incremental: str
    security_patch: str
    kernel: str
    width: int
    height: int
    density: int
    # IPhoneSubInfo transaction codes -> (method, kind, identifier method?, argument kind)
    iphonesubinfo: dict[int, tuple[str, str, bool, str]]


def _subinfo_9() -> dict[int, tuple[str, str, bool, str]]:
    # IPhoneSubInfo.aidl, android-9: getDeviceId, getNaiForSubscriber, getDeviceIdForPhone, ...
    return {
        1: ("getDeviceId", "imei", True, ""),
        2: ("getNaiForSubscriber", "nai", True, "sub"),
        3: ("getDeviceIdForPhone", "imei", True, "phone"),
        4: ("getImeiForSubscriber", "imei", True, "sub"),
        5: ("getDeviceSvn", "svn", True, ""),
        6: ("getDeviceSvnUsingSubId", "svn", True, "sub"),
        7: ("getSubscriberId", "imsi", True, ""),
        8: ("getSubscriberIdForSubscriber", "imsi", True, "sub"),
        9: ("getGroupIdLevel1ForSubscriber", "gid1", False, "sub"),
        10: ("getIccSerialNumber", "iccid", True, ""),
        11: ("getIccSerialNumberForSubscriber", "iccid", True, "sub"),
        12: ("getLine1Number", "msisdn", False, ""),
        13: ("getLine1NumberForSubscriber", "msisdn", False, "sub"),
        14: ("getLine1AlphaTag", "alpha", False, ""),
        15: ("getLine1AlphaTagForSubscriber", "alpha", False, "sub"),
        16: ("getMsisdn", "msisdn", False, ""),
        17: ("getMsisdnForSubscriber", "msisdn", False, "sub"),
        18: ("getVoiceMailNumber", "voicemail", False, ""),
        19: ("getVoiceMailNumberForSubscriber", "voicemail", False, "sub"),
    }


def _subinfo_11() -> dict[int, tuple[str, str, bool, str]]:
    # IPhoneSubInfo.aidl, android-11 .. android-14: the ...WithFeature variants were added in R.
    return {
        1: ("getDeviceId", "imei", True, ""),
        2: ("getDeviceIdWithFeature", "imei", True, ""),
        3: ("getNaiForSubscriber", "nai", True, "sub"),
        4: ("getDeviceIdForPhone", "imei", True, "phone"),
        5: ("getImeiForSubscriber", "imei", True, "sub"),
        6: ("getDeviceSvn", "svn", True, ""),
        7: ("getDeviceSvnUsingSubId", "svn", True, "sub"),
        8: ("getSubscriberId", "imsi", True, ""),
        9: ("getSubscriberIdWithFeature", "imsi", True, ""),
        10: ("getSubscriberIdForSubscriber", "imsi", True, "sub"),
        11: ("getGroupIdLevel1ForSubscriber", "gid1", False, "sub"),
        12: ("getIccSerialNumber", "iccid", True, ""),
        13: ("getIccSerialNumberWithFeature", "iccid", True, ""),
        14: ("getIccSerialNumberForSubscriber", "iccid", True, "sub"),
        15: ("getLine1Number", "msisdn", False, ""),
        16: ("getLine1NumberForSubscriber", "msisdn", False, "sub"),
        17: ("getLine1AlphaTag", "alpha", False, ""),
        18: ("getLine1AlphaTagForSubscriber", "alpha", False, "sub"),
        19: ("getMsisdn", "msisdn", False, ""),
        20: ("getMsisdnForSubscriber", "msisdn", False, "sub"),
        21: ("getVoiceMailNumber", "voicemail", False, ""),
        22: ("getVoiceMailNumberForSubscriber", "voicemail", False, "sub"),
    }


RELEASES: dict[int, Release] = {
    9: Release(9, 28, "PPR1.180610.011", "00WW_3_22C", "2019-08-01", "4.4.153-perf+", 1080, 2160, 420, _subinfo_9()),
    11: Release(11, 30, "RQ3A.211001.001", "7641976", "2021-10-05", "4.19.157-perf+", 1080, 2340, 420, _subinfo_11()),
    14: Release(14, 34, "UQ1A.240205.004", "11269751", "2024-02-05", "5.15.110-android14-11", 1080, 2400, 420,
                _subinfo_11()),
}


def release_for(android: int) -> Release:
    """The nearest release we model at or below `android` (10 answers like 9, 12/13 like 11)."""
    known = sorted(RELEASES)
    chosen = known[0]
    for version in known:
        if version <= android:
            chosen = version
    return RELEASES[chosen]


@functools.lru_cache(maxsize=64)
def template(android: int, name: str) -> str:
    """A golden output template for the release (see outputs/SOURCES.md)."""
    release = release_for(android).version
    path = resources.files("harness.virtual").joinpath("outputs", f"android-{release}", name)
    return path.read_text(encoding="utf-8")


def render(text: str, values: dict[str, object]) -> str:
    """Fill `{{name}}` placeholders; a missing value is a bug, not an empty string."""

    def value(match: re.Match[str]) -> str:
        return str(values[match.group(1)])

    return re.sub(r"\{\{(\w+)\}\}", value, text)


# ----------------------------------------------------------------------------------------------
# Binder parcels, as `service call` prints them


def parcel_string16(value: str | None) -> bytes:
    """Parcel.writeString: int32 length (-1 for null), UTF-16LE, NUL, padded to 4 bytes."""
    if value is None:
        return struct.pack("<i", -1)
    data = value.encode("utf-16-le") + b"\0\0"
    data += b"\0" * (-len(data) % 4)
    return struct.pack("<i", len(value)) + data


def parcel_reply(value: str | None) -> bytes:
    """writeNoException() then writeString(value)."""
    return struct.pack("<i", 0) + parcel_string16(value)


def parcel_exception(message: str, code: int = -1) -> bytes:
    """writeException(): code (-1 SecurityException), message, a zero stack-trace header."""
    return struct.pack("<i", code) + parcel_string16(message) + struct.pack("<i", 0)


def format_parcel(data: bytes) -> str:
    """`Result: Parcel(...)` exactly as libbinder's Parcel::print / printHexData writes it."""
    if not data:
        return "Result: Parcel(NULL)\n"
    per_line = 16
    one_line = len(data) <= 16
    lines = []
    for offset in range(0, len(data), per_line):
        chunk = data[offset : offset + per_line]
        words = []
        for word_start in range(0, per_line, 4):
            word = chunk[word_start : word_start + 4]
            if word:
                words.append(word[::-1].hex())
            elif not one_line:
                words.append("        ")
            else:
                words.append("")
        ascii_part = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        if not one_line:
            ascii_part = ascii_part.ljust(per_line)
        body = " ".join(words) + " '" + ascii_part + "'"
        lines.append(body if one_line else f"0x{offset:08x}: {body}")
    if one_line:
        return f"Result: Parcel({lines[0]})\n"
    return "Result: Parcel(\n" + "\n".join("  " + line for line in lines) + ")\n"


# ----------------------------------------------------------------------------------------------
# File system


@dataclass(slots=True)
class Node:
    mode: int
    mtime: int
    data: bytes = b""
    host: Path | None = None
    dynamic: Callable[[], bytes] | None = None
    target: str | None = None  # symlink
    owner: int = 0  # uid allowed to write below a directory (0: root only)


READ_ONLY = ("/system/", "/vendor", "/product", "/apex", "/proc", "/sys")


class VirtualFS:
    """The phone's files: in memory, plus host-backed files (captures) and live /sys, /proc nodes.

    Shell-writable places are those of a real phone: /data/local/tmp and shared storage
    (/sdcard -> /storage/emulated/0). /system is read-only for everyone.
    """

    ROOT_ONLY = ("/data/system", "/data/misc", "/data/vendor", "/persist", "/data/data", "/data/app")

    def __init__(self, uid: int = SHELL_UID, nodes: dict[str, Node] | None = None) -> None:
        self._nodes: dict[str, Node] = nodes if nodes is not None else {"/": Node(0o040755, int(time.time()))}
        self.uid = uid  # whose permissions apply (adbd's sync runs as shell)

    def as_user(self, uid: int) -> VirtualFS:
        """The same files seen with another user's permissions (`su`)."""
        return VirtualFS(uid, self._nodes)

    def _hidden(self, real: str) -> bool:
        return self.uid != 0 and any(real == top or real.startswith(top + "/") for top in self.ROOT_ONLY)

    def _resolve(self, path: str, follow_last: bool = True) -> str:
        path = posixpath.normpath("/" + path.lstrip("/"))
        parts = [p for p in path.split("/") if p]
        current = "/"
        for index, part in enumerate(parts):
            current = posixpath.join(current, part)
            node = self._nodes.get(current)
            last = index == len(parts) - 1
            for _ in range(8):
                if node is None or node.target is None or (last and not follow_last):
                    break
                current = posixpath.normpath(posixpath.join(posixpath.dirname(current), node.target))
                node = self._nodes.get(current)
        return current

    def add_dir(self, path: str, mode: int = 0o040771, owner: int = 0) -> None:
        parent = posixpath.dirname(path)
        if parent != path and parent not in self._nodes:
            self.add_dir(parent)
        self._nodes.setdefault(path, Node(mode, int(time.time()), owner=owner))

    def add_file(self, path: str, data: bytes = b"", mode: int = 0o100644) -> None:
        self.add_dir(posixpath.dirname(path))
        self._nodes[path] = Node(mode, int(time.time()), data=data)

    def add_dynamic(self, path: str, producer: Callable[[], bytes], mode: int = 0o100444) -> None:
        self.add_dir(posixpath.dirname(path))
        self._nodes[path] = Node(mode, int(time.time()), dynamic=producer)

    def add_link(self, path: str, target: str) -> None:
        self.add_dir(posixpath.dirname(path))
        self._nodes[path] = Node(0o120777, int(time.time()), target=target)

    def add_host_file(self, path: str, host: Path) -> None:
        """A file whose bytes live on the host (a capture being written); pull reads it live.

        Missing directories are created like the app that writes it would, writable by whoever
        may write their parent (the shell, in shared storage)."""
        real = self._resolve(path)
        directory = posixpath.dirname(real)
        missing: list[str] = []
        while directory not in self._nodes and directory != "/":
            missing.insert(0, directory)
            directory = posixpath.dirname(directory)
        owner = self._nodes[directory].owner if directory in self._nodes else 0
        for item in missing:
            self._nodes[item] = Node(0o040771, int(time.time()), owner=owner)
        self._nodes[real] = Node(0o100660, int(time.time()), host=host)

    def stat(self, path: str) -> FileStat | None:
        real = self._resolve(path)
        node = self._nodes.get(real)
        if node is None or (self._hidden(real) and node.mode & 0o170000 != 0o040000):
            return None
        size = len(self._content(node) or b"") if node.mode & 0o170000 == 0o100000 else 4096
        mtime = node.mtime
        if node.host is not None:
            with contextlib.suppress(OSError):
                mtime = int(node.host.stat().st_mtime)
        return FileStat(node.mode, size, mtime)

    def listdir(self, path: str) -> list[tuple[str, FileStat]] | None:
        real = self._resolve(path)
        node = self._nodes.get(real)
        if node is None or node.mode & 0o170000 != 0o040000:
            return None
        if self._hidden(real) or (real in ("/data", "/data/local") and self.uid != 0):
            return None
        prefix = real.rstrip("/") + "/"
        out = []
        for child, child_node in self._nodes.items():
            if child.startswith(prefix) and "/" not in child[len(prefix):] and child != real:
                name = child[len(prefix):]
                if child_node.target is not None:
                    out.append((name, FileStat(child_node.mode, len(child_node.target), child_node.mtime)))
                else:
                    stat = self.stat(child)
                    if stat is not None:
                        out.append((name, stat))
        return sorted(out)

    def _content(self, node: Node) -> bytes | None:
        if node.host is not None:
            try:
                return node.host.read_bytes()
            except OSError:
                return b""
        if node.dynamic is not None:
            return node.dynamic()
        return node.data

    def read(self, path: str) -> bytes | None:
        real = self._resolve(path)
        node = self._nodes.get(real)
        if node is None or node.mode & 0o170000 not in (0o100000, 0o020000) or self._hidden(real):
            return None
        return self._content(node)

    def _writable_dir(self, directory: str) -> str | None:
        node = self._nodes.get(directory)
        if node is None:
            return "No such file or directory"
        if node.mode & 0o170000 != 0o040000:
            return "Not a directory"
        if directory == "/system" or directory.startswith(READ_ONLY):
            return "Read-only file system"
        if self.uid != 0 and node.owner != self.uid:
            return "Permission denied"
        return None

    def write(self, path: str, data: bytes, mode: int, mtime: int) -> str | None:
        """Store a file; missing parent directories are created, as adbd's push does (secure_mkdirs)."""
        real = self._resolve(path)
        parent = posixpath.dirname(real)
        missing: list[str] = []
        while parent not in self._nodes and parent != "/":
            missing.insert(0, parent)
            parent = posixpath.dirname(parent)
        problem = self._writable_dir(parent)
        if problem:
            return problem
        for directory in missing:
            self._nodes[directory] = Node(0o040771, int(time.time()), owner=self._nodes[parent].owner)
        existing = self._nodes.get(real)
        if existing is not None and existing.mode & 0o170000 == 0o040000:
            return "Is a directory"
        if existing is not None and existing.host is not None:
            existing.host.write_bytes(data)
            return None
        self._nodes[real] = Node(0o100000 | (mode & 0o7777 or 0o644), mtime or int(time.time()), data=bytes(data))
        return None

    def mkdir(self, path: str, mode: int = 0o771) -> str | None:
        real = self._resolve(path)
        if real in self._nodes:
            return "File exists"
        problem = self._writable_dir(posixpath.dirname(real))
        if problem:
            return problem
        parent = self._nodes[posixpath.dirname(real)]
        self._nodes[real] = Node(0o040000 | mode, int(time.time()), owner=parent.owner)
        return None

    def remove(self, path: str) -> str | None:
        real = self._resolve(path, follow_last=False)
        if real not in self._nodes:
            return "No such file or directory"
        problem = self._writable_dir(posixpath.dirname(real))
        if problem:
            return problem
        if any(p.startswith(real + "/") for p in self._nodes):
            return "Is a directory"
        del self._nodes[real]
        return None


# ----------------------------------------------------------------------------------------------
# The screen: a small view tree shared by uiautomator, `input tap` and screenshots


@dataclass(slots=True)
class View:
    """One node of the window hierarchy, with the attributes uiautomator dumps."""

    cls: str
    package: str
    bounds: tuple[int, int, int, int]
    text: str = ""
    resource_id: str = ""
    desc: str = ""
    clickable: bool = False
    enabled: bool = True
    focusable: bool = False
    scrollable: bool = False
    checkable: bool = False
    checked: bool = False
    selected: bool = False
    long_clickable: bool = False
    password: bool = False
    action: Callable[[], Awaitable[None]] | None = None
    color: tuple[int, int, int] | None = None
    children: list[View] = field(default_factory=list)

    def walk(self) -> Iterable[View]:
        yield self
        for child in self.children:
            yield from child.walk()

    def hit(self, x: float, y: float) -> View | None:
        """The deepest clickable view under (x, y)."""
        left, top, right, bottom = self.bounds
        if not (left <= x < right and top <= y < bottom):
            return None
        for child in reversed(self.children):
            found = child.hit(x, y)
            if found is not None:
                return found
        return self if self.clickable else None


@dataclass(slots=True)
class Dialog:
    """An activity window on top of the current app (PCAPdroid consent, VPN consent)."""

    package: str
    activity: str
    build: Callable[[int, int], View]
    shown_at: float = field(default_factory=time.monotonic)


def png(width: int, height: int, background: tuple[int, int, int],
        rects: list[tuple[int, int, int, int, tuple[int, int, int]]]) -> bytes:
    """A real PNG (RGB, zlib) of a background with filled rectangles; rows are reused."""
    cache: dict[tuple[int, ...], bytes] = {}
    rows = []
    for y in range(height):
        key = tuple(i for i, (_l, t, _r, b, _c) in enumerate(rects) if t <= y < b)
        row = cache.get(key)
        if row is None:
            pixels = bytearray(bytes(background) * width)
            for index in key:
                left, _top, right, _bottom, color = rects[index]
                left, right = max(0, left), min(width, right)
                if right > left:
                    pixels[left * 3 : right * 3] = bytes(color) * (right - left)
            row = b"\0" + bytes(pixels)
            cache[key] = row
        rows.append(row)

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"".join(rows), 6))
            + chunk(b"IEND", b""))


# ----------------------------------------------------------------------------------------------
# Logcat


@dataclass(frozen=True, slots=True)
class LogEntry:
    when: float
    pid: int
    tid: int
    level: str
    tag: str
    message: str
    buffer: str = "main"


KEYCODES = {
    "UNKNOWN": 0, "SOFT_LEFT": 1, "SOFT_RIGHT": 2, "HOME": 3, "BACK": 4, "CALL": 5, "ENDCALL": 6,
    **{str(d): 7 + d for d in range(10)},
    "STAR": 17, "POUND": 18, "DPAD_UP": 19, "DPAD_DOWN": 20, "DPAD_LEFT": 21, "DPAD_RIGHT": 22,
    "DPAD_CENTER": 23, "VOLUME_UP": 24, "VOLUME_DOWN": 25, "POWER": 26, "CAMERA": 27, "CLEAR": 28,
    "TAB": 61, "SPACE": 62, "ENTER": 66, "DEL": 67, "MENU": 82, "NOTIFICATION": 83, "SEARCH": 84,
    "ESCAPE": 111, "FORWARD_DEL": 112, "VOLUME_MUTE": 164, "APP_SWITCH": 187, "SLEEP": 223, "WAKEUP": 224,
}
KEYNAMES = {code: name for name, code in KEYCODES.items()}
U2_KEYS = {
    "home": 3, "back": 4, "left": 21, "right": 22, "up": 19, "down": 20, "center": 23, "menu": 82,
    "search": 84, "enter": 66, "delete": 67, "del": 67, "recent": 187, "volume_up": 24, "volume_down": 25,
    "volume_mute": 164, "camera": 27, "power": 26,
}


# ----------------------------------------------------------------------------------------------
# The device


class AndroidDevice:
    """One virtual Android phone: state machine, file system, command table, `DeviceServices`."""

    def __init__(
        self,
        spec: SpecLike,
        *,
        network: NetworkLike | None = None,
        firmware: FirmwareLike | None = None,
        state_dir: Path | None = None,
        faults: Iterable[str] = (),
        on_reboot: Callable[[str], Awaitable[None]] | None = None,
        on_drop: Callable[[], Any] | None = None,
    ) -> None:
        self.spec = spec
        self.network = network
        self.firmware = firmware
        self.state_dir = state_dir
        self.release = release_for(spec.android)
        self.faults = set(faults) | set(getattr(spec, "faults", None) or ())
        self.on_reboot = on_reboot
        self.on_drop = on_drop
        self._pending_faults = {f for f in self.faults if f == "drop-connection"}
        self.user_build = spec.build_type == "user" or "user-build" in self.faults
        self.sim_present = bool(spec.sim.present) and "no-sim" not in self.faults
        self.ids = spec.identifiers
        self.tz = self._timezone(getattr(spec, "timezone", None) or "UTC")
        self.clock_offset = float(getattr(spec, "clock_offset", 0.0) or 0.0)
        self.width, self.height, self.density = self.release.width, self.release.height, self.release.density
        self.override_size: tuple[int, int] | None = None
        self.fs = VirtualFS()
        self.logs: deque[LogEntry] = deque(maxlen=4000)
        self._log_event = asyncio.Event()
        self.appops: dict[tuple[str, str], str] = {}
        self.runtime_props: dict[str, str] = {}
        self.settings = self._default_settings()
        self.wifi_on = True
        self.mobile_data = bool(spec.mobile_data) or "mobile-data-on" in self.faults
        self.settings["global"]["mobile_data"] = "1" if self.mobile_data else "0"
        self.booting = False
        self.boot_completed = False
        self.boot_started = time.monotonic()
        self.screen_on = False
        self.locked = True
        self.bouncer = False
        self.pin_typed = ""
        self.keyguard_message = ""  # the bouncer's message area after a failed attempt ("Wrong pattern")
        self.failed_unlocks = 0
        self.last_wake = 0.0
        self.last_sleep = 0.0
        self.sleep_reason = "unknown"
        self.foreground = (LAUNCHER, LAUNCHER_ACTIVITY)
        self.dialogs: list[Dialog] = []
        self._motion: list[tuple[float, float]] = []
        self.background: set[asyncio.Task[Any]] = set()
        self.procs = ProcessTable(4000, others=lambda: {pid: _user_uid(user)
                                                        for user, pid, _pp, _n in self._static_processes()})
        self._ui_listeners: list[Callable[[], None]] = []
        self.packages = self._packages()
        self.u2: Any = None  # uiautomator.U2Server while app_process runs it
        self.pcapdroid: Any = None  # pcapdroid.Pcapdroid when installed
        self.table = self._commands()
        self._build_fs()
        if spec.pcapdroid:
            from harness.virtual.pcapdroid import Pcapdroid

            self.pcapdroid = Pcapdroid(self)

    # -- identity ------------------------------------------------------------------------------

    @staticmethod
    def _timezone(name: str) -> dt.tzinfo:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            return dt.UTC

    def ident(self, kind: Kind, slot: int = 1) -> str | None:
        values = self.ids.values.get(kind, [])
        return values[slot - 1] if 0 < slot <= len(values) and values[slot - 1] else None

    @property
    def slots(self) -> int:
        """SIM slots: one per IMEI the profile gives (dual-SIM phones have two)."""
        return max(1, min(2, len(self.ids.values.get(Kind.IMEI, []))))

    @property
    def serial(self) -> str:
        return self.ident(Kind.SERIAL) or hashlib.sha1(self.spec.name.encode()).hexdigest()[:12].upper()

    @property
    def product(self) -> str:
        return re.sub(r"[^A-Za-z0-9_]", "_", self.spec.name)

    @property
    def device_name(self) -> str:
        return re.sub(r"[^A-Za-z0-9_]", "_", self.spec.model).lower() or self.product

    @property
    def debuggable(self) -> bool:
        return not self.user_build

    def _build_parts(self) -> dict[str, str]:
        release = self.release
        fingerprint = self.spec.fingerprint
        build_id, incremental = release.build_id, release.incremental
        match = re.fullmatch(r"[^/]+/[^/]+/[^:]+:[^/]+/([^/]+)/([^:]+):[^/]+/.+", fingerprint or "")
        if match:
            build_id, incremental = match.group(1), match.group(2)
        build_type = "user" if self.user_build else "userdebug"
        tags = "release-keys" if self.user_build else "test-keys"
        if not fingerprint or self.user_build != (":user/" in fingerprint):
            fingerprint = (f"{self.spec.manufacturer}/{self.product}/{self.device_name}:{self.spec.android}/"
                           f"{build_id}/{incremental}:{build_type}/{tags}")
        return {"fingerprint": fingerprint, "build_id": build_id, "incremental": incremental,
                "build_type": build_type, "tags": tags}

    def props(self) -> dict[str, str]:
        """Every system property, as `getprop` lists them."""
        parts = self._build_parts()
        sim = self.spec.sim
        numeric = f"{sim.mcc}{sim.mnc}" if self.sim_present else ""
        iso = _mcc_iso(sim.mcc) if self.sim_present else ""
        values: dict[str, object] = {
            **parts,
            "boot_completed": "1" if self.boot_completed else "",
            "bootanim": "stopped" if self.boot_completed else "running",
            "bootanim_exit": "1" if self.boot_completed else "0",
            "network_type": "LTE" if self.sim_present else "Unknown",
            "net_operator": sim.operator if self.sim_present else "",
            "net_iso": iso,
            "net_numeric": numeric,
            "sim_operator": sim.operator if self.sim_present else "",
            "sim_iso": iso,
            "sim_numeric": numeric + "," * (self.slots - 1),
            "sim_state": ",".join([(sim.state or "LOADED") if self.sim_present else "ABSENT"]
                                  + ["ABSENT"] * (self.slots - 1)),
            "multisim": "dsds" if self.slots > 1 else "ssss",
            "baseband": "MPSS.AT.2.0.c4.7-00070-SDM660_GEN_PACK-2.153255.1.153738.1",
            "hostname": f"android-{hashlib.sha1(self.serial.encode()).hexdigest()[:16]}",
            "timezone": getattr(self.tz, "key", "UTC"),
            "platform": "sdm660",
            "hardware": "qcom",
            "serial": self.serial,
            "build_date": "Tue Feb  5 12:00:00 UTC 2019",
            "build_date_utc": "1549368000",
            "description": f"{self.product}-{parts['build_type']} {self.spec.android} {parts['build_id']} "
                           f"{parts['incremental']} {parts['tags']}",
            "display_id": f"{parts['build_id']}.{parts['incremental']}",
            "flavor": f"{self.product}-{parts['build_type']}",
            "device": self.device_name,
            "release": str(self.spec.android),
            "sdk": str(self.spec.sdk),
            "security_patch": self.release.security_patch,
            "debuggable": "1" if self.debuggable else "0",
            "brand": self.spec.manufacturer,
            "manufacturer": self.spec.manufacturer,
            "model": self.spec.model,
            "product": self.product,
            "first_api": str(self.spec.sdk),
            "density": str(self.density),
            "min_target": "23",
        }
        props: dict[str, str] = {}
        for line in render(template(self.spec.android, "props.txt"), values).splitlines():
            key, _, value = line.partition("=")
            if key:
                props[key] = value
        props.update(self.runtime_props)
        return props

    def banner(self) -> str:
        """What adbd of this release advertises (only features the virtual adbd implements)."""
        features = "shell_v2,cmd,stat_v2"
        if self.spec.android >= 10:
            features += ",ls_v2,fixed_push_mkdir,fixed_push_symlink_timestamp,sendrecv_v2"
        return (f"device::ro.product.name={self.product};ro.product.model={self.spec.model};"
                f"ro.product.device={self.device_name};features={features}")

    # -- settings and packages -----------------------------------------------------------------

    def _default_settings(self) -> dict[str, dict[str, str]]:
        android_id = self.ident(Kind.ANDROID_ID) or hashlib.sha256(self.serial.encode()).hexdigest()[:16]
        # Android 9+: unset means opportunistic; `off` and `hostname` (+ specifier) are explicit choices
        private = getattr(self.spec, "private_dns", None)
        if "private-dns-on" in self.faults and private in (None, False, "off", "opportunistic"):
            private = True
        mode: str | None = None
        specifier = None
        if private is True:
            mode, specifier = "hostname", "dns.google"
        elif isinstance(private, str) and private not in ("off", "opportunistic", ""):
            mode, specifier = "hostname", private
        elif private in ("off", False):
            mode = "off"
        global_ = {
            "adb_enabled": "1", "airplane_mode_on": "0", "auto_time": "1", "auto_time_zone": "1",
            "device_provisioned": "1", "development_settings_enabled": "1", "mobile_data": "0",
            "package_verifier_enable": "1", "stay_on_while_plugged_in": "0", "wifi_on": "1",
            "wifi_sleep_policy": "2", "data_roaming": "0", "bluetooth_on": "1",
        }
        if mode:
            global_["private_dns_mode"] = mode
        if specifier:
            global_["private_dns_specifier"] = specifier
        secure = {
            "android_id": android_id, "bluetooth_name": self.spec.model, "default_input_method":
            "com.android.inputmethod.latin/.LatinIME", "install_non_market_apps": "1",
            "location_mode": "3", "lockscreen.disabled": "0", "user_setup_complete": "1",
            "screensaver_enabled": "0",
        }
        bt = self.ident(Kind.BT_MAC)
        if bt and self.spec.android <= 9:
            secure["bluetooth_address"] = bt.upper()
        system = {
            "screen_off_timeout": "60000", "screen_brightness": "102", "screen_brightness_mode": "1",
            "accelerometer_rotation": "1", "font_scale": "1.0", "haptic_feedback_enabled": "1",
            "sound_effects_enabled": "1", "time_12_24": "24",
        }
        return {"global": global_, "secure": secure, "system": system}

    @dataclass(slots=True)
    class Package:
        name: str
        version_name: str
        version_code: int
        system: bool
        path: str
        uid: int
        label: str
        activity: str | None = None

    def _packages(self) -> dict[str, AndroidDevice.Package]:
        base = {
            "android": ("framework", "/system/framework/framework-res.apk", None),
            "com.android.phone": ("Phone Services", "/system/priv-app/TeleService/TeleService.apk", None),
            "com.android.systemui": ("System UI", "/system/priv-app/SystemUI/SystemUI.apk", None),
            "com.android.settings": ("Settings", "/system/priv-app/Settings/Settings.apk", ".Settings"),
            "com.android.shell": ("Shell", "/system/priv-app/Shell/Shell.apk", None),
            "com.android.providers.settings": ("Settings Storage",
                                               "/system/priv-app/SettingsProvider/SettingsProvider.apk", None),
            "com.android.providers.telephony": ("Phone and Messaging Storage",
                                                "/system/priv-app/TelephonyProvider/TelephonyProvider.apk", None),
            "com.android.vpndialogs": ("VpnDialogs", "/system/app/VpnDialogs/VpnDialogs.apk", None),
            "com.android.dialer": ("Phone", "/system/priv-app/Dialer/Dialer.apk", ".main.impl.MainActivity"),
            "com.android.messaging": ("Messaging", "/system/app/messaging/messaging.apk", ".ui.conversationlist"
                                                                                          ".ConversationListActivity"),
            "com.android.chrome": ("Chrome", "/system/app/Chrome/Chrome.apk", "com.google.android.apps.chrome.Main"),
            LAUNCHER: ("Launcher", "/system/priv-app/Launcher3QuickStep/Launcher3QuickStep.apk", LAUNCHER_ACTIVITY),
        }
        packages: dict[str, AndroidDevice.Package] = {}
        uid = 10020
        for name, (label, path, activity) in base.items():
            uid += 1
            packages[name] = self.Package(name, str(self.spec.android), self.spec.sdk * 1000, True, path,
                                          SHARED_UIDS.get(name, uid), label, activity)
        for name, version in (self.spec.packages or {}).items():
            uid += 1
            short = name.rsplit(".", 1)[-1]
            digits = re.sub(r"\D", "", str(version)) or "1"
            packages[name] = self.Package(name, str(version), int(digits[:9]), True,
                                          f"/system/priv-app/{short}/{short}.apk", SHARED_UIDS.get(name, uid), short)
        if self.spec.pcapdroid:
            packages[PCAPDROID] = self.Package(
                PCAPDROID, "1.7.5", 78, False, self._data_app_path(PCAPDROID), 10180, "PCAPdroid",
                "com.emanuelef.remote_capture.activities.MainActivity")
        return packages

    def _data_app_path(self, pkg: str) -> str:
        digest = hashlib.sha256(pkg.encode()).digest()
        if self.spec.android >= 11:
            import base64

            a = base64.urlsafe_b64encode(digest[:16]).decode()
            b = base64.urlsafe_b64encode(digest[16:32]).decode()
            return f"/data/app/~~{a}/{pkg}-{b}/base.apk"
        return f"/data/app/{pkg}-{hashlib.md5(pkg.encode()).hexdigest()[:22]}==/base.apk"

    # -- file system ---------------------------------------------------------------------------

    def _build_fs(self) -> None:
        fs = self.fs
        for path in ("/system/bin", "/system/xbin", "/system/app", "/system/priv-app", "/system/framework",
                     "/vendor/bin", "/proc", "/sys/class/net", "/dev", "/data/app", "/data/data",
                     "/storage/emulated", "/mnt"):
            fs.add_dir(path, 0o040755)
        fs.add_dir("/data/local", 0o040751)
        fs.add_dir("/data/local/tmp", 0o040771, owner=SHELL_UID)
        fs.add_dir("/storage/emulated/0", 0o040771, owner=SHELL_UID)
        for sub in ("Download", "DCIM", "Pictures", "Music", "Movies", "Documents", "Android", "Alarms"):
            fs.add_dir(f"/storage/emulated/0/{sub}", 0o040771, owner=SHELL_UID)
        fs.add_link("/sdcard", "/storage/emulated/0")
        fs.add_link("/storage/self/primary", "/storage/emulated/0")
        fs.add_file("/dev/null", b"", 0o020666)
        self.boot_id = str(uuid.uuid4())
        fs.add_dynamic("/proc/sys/kernel/random/boot_id", lambda: (self.boot_id + "\n").encode())
        fs.add_dynamic("/data/system/users/0/settings_ssaid.xml", self._ssaid_file, 0o100600)
        factory = self.factory_mac()
        if factory and self.spec.android >= 10:
            fs.add_file("/persist/wlan_mac.bin", (f"Intf0MacAddress={factory.replace(':', '').upper()}\n"
                                                  "END\n").encode(), 0o100600)
        for name in self.table.names():
            binary = self.table.path(name)
            if binary:
                fs.add_file(binary, b"\x7fELF", 0o100755)
        for pkg in self.packages.values():
            fs.add_file(pkg.path, b"PK\x03\x04", 0o100644)
        fs.add_file("/system/build.prop", "".join(f"{k}={v}\n" for k, v in self.props().items()
                                                  if k.startswith("ro.")).encode())
        for name in PROC_NET:  # the kernel's socket tables of the phone's namespace (owner uid included)
            fs.add_dynamic(f"/proc/net/{name}", functools.partial(self._proc_net, name))
        fs.add_dynamic("/sys/class/net/wlan0/address", lambda: (self.wlan_mac() + "\n").encode())
        fs.add_dynamic("/proc/uptime", lambda: f"{self.uptime():.2f} {self.uptime() * 1.7:.2f}\n".encode())
        fs.add_dynamic("/proc/version", lambda: (
            f"Linux version {self.release.kernel} (android-build@build-host) (clang version 12.0.5) "
            "#1 SMP PREEMPT Tue Feb 5 12:00:00 UTC 2019\n").encode())

    def _proc_net(self, name: str) -> bytes:
        reader = getattr(self.network, "proc_net", None)
        if reader is not None:
            with contextlib.suppress(Exception):  # destroyed mid-reboot: the tables are empty
                return reader(name)
        return PROC_NET_EMPTY[name].encode()

    def factory_mac(self) -> str | None:
        """The burned-in Wi-Fi MAC (identifiers wifi_mac[0])."""
        values = self.ids.values.get(Kind.WIFI_MAC, [])
        return _colon_mac(values[0]) if values and values[0] else None

    def wire_mac(self) -> str:
        """The MAC the phone uses on its Wi-Fi network: randomized per network since Android 10."""
        values = self.ids.values.get(Kind.WIFI_MAC, [])
        chosen = values[1] if self.spec.android >= 10 and len(values) > 1 else (values[0] if values else "")
        return _colon_mac(chosen) if chosen else "02:00:00:00:00:00"

    def wlan_mac(self) -> str:
        if self.network is not None:
            return self.network.phone_mac.lower()
        return self.wire_mac()

    def ssaids(self) -> dict[str, str]:
        """package -> Android ID (SSAID): the shell's is `settings get secure android_id`."""
        shell_id = self.settings["secure"]["android_id"]
        out = {"com.android.shell": shell_id}
        per_app = getattr(self.spec, "ssaid", None)  # the spec says what each firmware client sends
        values = [v.lower() for v in self.ids.values.get(Kind.ANDROID_ID, []) if v]
        for index, pkg in enumerate(sorted(self.spec.packages or {})):
            if callable(per_app):
                out[pkg] = per_app(pkg)
            else:
                out[pkg] = values[(index + 1) % len(values)] if values else \
                    hashlib.sha256((shell_id + pkg).encode()).hexdigest()[:16]
        return out

    def _ssaid_file(self) -> bytes:
        entries = self.ssaids()
        if self.spec.android >= 12:
            # Android 12+ stores it as ABX (binary XML): `cat` shows no <setting>, `abx2xml` converts it.
            blob = b"ABX\x00" + b"".join(b"\x2f" + bytes([len(k)]) + k.encode() + b"\x00" + v.encode()
                                         for k, v in entries.items())
            return blob
        return self.ssaid_xml().encode()

    def ssaid_xml(self) -> str:
        lines = ["<?xml version='1.0' encoding='UTF-8' standalone='yes' ?>", "<settings version=\"-1\">",
                 '  <setting id="0" name="userkey" value="{}" package="android" defaultValue="{}" '
                 'defaultSysSet="true" tag="null" />'.format(*[hashlib.sha256(self.serial.encode()).hexdigest()
                                                              .upper()] * 2)]
        for index, (pkg, value) in enumerate(sorted(self.ssaids().items()), start=1):
            uid = self.packages[pkg].uid if pkg in self.packages else 2000
            lines.append(f'  <setting id="{index}" name="{uid}" value="{value}" package="{pkg}" '
                         f'defaultValue="{value}" defaultSysSet="false" tag="null" />')
        lines.append("</settings>")
        return "\n".join(lines) + "\n"

    # -- clock and logs ------------------------------------------------------------------------

    def now(self) -> float:
        return time.time() + self.clock_offset

    def uptime(self) -> float:
        return max(0.0, time.monotonic() - self.boot_started)

    def log(self, level: str, tag: str, message: str, *, pid: int = 1234, buffer: str = "main") -> None:
        """Add a line to the phone's logcat ring (its own events; firmware may add its client's lines)."""
        self.logs.append(LogEntry(self.now(), pid, pid + sum(tag.encode()) % 40, level, tag, message, buffer))
        self._log_event.set()
        self._log_event = asyncio.Event()

    # -- the state machine ---------------------------------------------------------------------

    def begin_boot(self) -> None:
        """Power on: everything volatile starts over; boot_completed stays empty until `complete_boot`."""
        self.booting = True
        self.boot_completed = False
        self.boot_started = time.monotonic()
        self.boot_id = str(uuid.uuid4())
        self.screen_on = False
        self.locked = True
        self.bouncer = False
        self.pin_typed = ""
        self.keyguard_message = ""
        self.dialogs.clear()
        self.foreground = (LAUNCHER, LAUNCHER_ACTIVITY)
        self.override_size = None
        self.runtime_props.clear()
        self._pending_faults = {f for f in self.faults if f == "drop-connection"}
        self.logs.clear()
        self.log("I", "init", "init first stage started!", pid=1, buffer="system")
        self.log("I", "Zygote", "System server process 1024 has been created", pid=612, buffer="system")

    async def complete_boot(self) -> None:
        """sys.boot_completed=1: the framework is up, the screen is on and the keyguard shows."""
        self.booting = False
        self.boot_completed = True
        self.screen_on = True
        self.locked = self.lock_method != "none"
        self.last_wake = self.uptime()
        self.log("I", "ActivityManager", "System now ready", pid=1024, buffer="system")
        self.log("I", "SystemServer", "Boot is finished", pid=1024, buffer="system")
        self.log("D", "KeyguardViewMediator", "onSystemReady", pid=1567)
        if self.sim_present:
            self.log("D", "ServiceStateTracker", f"Poll ServiceState done: oldSS=[0 home] newSS=[0 home "
                     f"{self.spec.sim.operator} {self.spec.sim.mcc}{self.spec.sim.mnc} LTE]", pid=1890, buffer="radio")

    async def power_off(self) -> None:
        """Shutdown: stop what runs on the phone (u2 server, captures, shell jobs)."""
        self.log("I", "ShutdownThread", "Shutting down activity manager...", pid=1024, buffer="system")
        self.boot_completed = False
        self.booting = False
        self.screen_on = False
        if self.u2 is not None:
            await self.u2.stop()
            self.u2 = None
        if self.pcapdroid is not None:
            await self.pcapdroid.shutdown()
        current = asyncio.current_task()
        running = [task for task in self.background if task is not current]
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(BaseException):
                await task
        self.background.difference_update(running)

    def ui_changed(self) -> None:
        for listener in list(self._ui_listeners):
            listener()

    def on_ui_change(self, listener: Callable[[], None]) -> None:
        self._ui_listeners.append(listener)

    async def event(self, name: str) -> None:
        """Tell the firmware what just happened (screen-on, unlock, lock, connectivity-change)."""
        self.ui_changed()
        if self.firmware is None:
            return
        try:
            await settle(self.firmware.event(name))
        except Exception:  # a firmware bug must not take the phone's shell down
            log.exception("firmware event %s failed", name)

    @property
    def lock_method(self) -> str:
        method = getattr(self.spec, "lock", None) or getattr(self.spec, "unlock", None) or "swipe"
        if not isinstance(method, str):
            method = getattr(method, "method", "swipe")
        return method

    @property
    def pin(self) -> str:
        return str(getattr(self.spec, "pin", None) or "1234")

    @property
    def pattern(self) -> str:
        """The pattern secret as cell digits ("14789"), like `pin` read from the spec."""
        return re.sub(r"[\s,-]", "", str(getattr(self.spec, "pattern", None) or "14789"))

    @property
    def pattern_bouncer(self) -> bool:
        """Whether LockPatternView is on screen and takes touches."""
        return self.screen_on and self.locked and self.bouncer and self.lock_method == "pattern"

    def pattern_view_bounds(self) -> tuple[int, int, int, int]:
        return lockpattern.view_bounds(*self.size)

    async def draw_pattern(self, points: list[tuple[float, float]]) -> None:
        """One touch gesture on the pattern bouncer (its DOWN and MOVE points), checked on UP the way
        KeyguardPatternViewController does: too short is wrong but not counted, else it must match."""
        if not self.pattern_bouncer:
            return
        cells = lockpattern.cells_drawn(self.pattern_view_bounds(), points)
        if not cells:
            return  # the finger never touched a dot: LockPatternView reports nothing
        if "".join(map(str, cells)) == self.pattern:
            self.failed_unlocks = 0
            await self.unlock()
            return
        if len(cells) >= lockpattern.MIN_PATTERN_REGISTER_FAIL:
            self.failed_unlocks += 1
            self.log("W", "KeyguardUpdateMonitor", f"Wrong pattern entered (failed attempts: {self.failed_unlocks})",
                     pid=1567)
        self.keyguard_message = "Wrong pattern"
        self.ui_changed()

    async def gesture(self, points: list[tuple[float, float]], up: tuple[float, float]) -> None:
        """A finished touch gesture (DOWN and MOVE points, then UP at `up`): the pattern bouncer reads
        every point; elsewhere it is a tap or a swipe from DOWN to UP."""
        if not points:
            return
        if self.pattern_bouncer:
            await self.draw_pattern(points)
            return
        (x0, y0), (x, y) = points[0], up
        if abs(x - x0) + abs(y - y0) < 40:
            await self.tap(x, y)
        else:
            await self.swipe(x0, y0, x, y)

    async def wake(self, reason: str = "android.policy:POWER") -> None:
        if self.screen_on or not self.boot_completed:
            return
        self.screen_on = True
        self.last_wake = self.uptime()
        self.log("I", "PowerManagerService", f"Waking up from Asleep (uid=1000, reason={reason}, details=...)...",
                 pid=1024, buffer="system")
        if self.lock_method == "none":
            self.locked = False
        await self.event("screen-on")

    async def sleep(self, reason: str = "power_button") -> None:
        if not self.screen_on:
            return
        self.screen_on = False
        self.last_sleep = self.uptime()
        self.sleep_reason = reason
        self.bouncer = False
        self.keyguard_message = ""
        self.log("I", "PowerManagerService", f"Going to sleep due to {reason} (uid 1000)...", pid=1024,
                 buffer="system")
        was_locked = self.locked
        if self.lock_method != "none":
            self.locked = True
            self.log("D", "KeyguardViewMediator", "doKeyguardLocked", pid=1567)
        if not was_locked and self.locked:
            await self.event("lock")
        else:
            self.ui_changed()

    async def unlock(self) -> None:
        if not self.locked or not self.screen_on:
            return
        self.locked = False
        self.bouncer = False
        self.pin_typed = ""
        self.keyguard_message = ""
        self.log("D", "KeyguardViewMediator", "handleHide", pid=1567)
        await self.event("unlock")

    async def swipe(self, x1: float, y1: float, x2: float, y2: float) -> None:
        """A swipe up across the keyguard dismisses it (swipe lock) or opens the PIN bouncer."""
        if not self.screen_on or not self.locked or self.bouncer:
            return
        if y1 - y2 < self.height * 0.25:
            return
        if self.lock_method in ("pin", "password", "pattern"):
            self.bouncer = True
            self.ui_changed()
        else:
            await self.unlock()

    async def type_text(self, text: str) -> None:
        if self.bouncer and self.lock_method != "pattern":
            self.pin_typed += text
            self.ui_changed()

    async def key(self, code: int) -> None:
        """One key press, as InputManager would dispatch it."""
        name = KEYNAMES.get(code, str(code))
        self.log("D", "InputDispatcher", f"Key {name} down/up", pid=1024, buffer="system")
        if code == 224:
            await self.wake("android.policy:KEY")
        elif code == 223:
            await self.sleep("sleep_button")
        elif code == 26:
            if self.screen_on:
                await self.sleep("power_button")
            else:
                await self.wake("android.policy:POWER")
        elif not self.screen_on:
            return
        elif code == 82 and self.locked and not self.bouncer and self.lock_method == "swipe":
            await self.unlock()
        elif self.bouncer and 7 <= code <= 16:
            await self.type_text(str(code - 7))
        elif self.bouncer and code == 67:
            self.pin_typed = self.pin_typed[:-1]
        elif self.bouncer and code == 66 and self.lock_method != "pattern":
            await self.submit_pin()
        elif code == 4:
            if self.bouncer:
                self.bouncer = False
                self.pin_typed = ""
                self.keyguard_message = ""
                self.ui_changed()
            elif self.dialogs and not self.locked:
                dialog = self.dialogs.pop()
                if self.pcapdroid is not None:
                    await self.pcapdroid.dismissed(dialog)
                self.ui_changed()
        elif code == 3 and not self.locked:
            self.foreground = (LAUNCHER, LAUNCHER_ACTIVITY)
            self.ui_changed()

    async def submit_pin(self) -> None:
        if self.pin_typed == self.pin:
            await self.unlock()
        else:
            self.log("W", "KeyguardUpdateMonitor", "Wrong PIN entered", pid=1567)
            self.pin_typed = ""
            self.ui_changed()

    async def tap(self, x: float, y: float) -> bool:
        """Tap the screen; returns whether a clickable view took it."""
        if not self.screen_on:
            return False
        view = self.ui_tree().hit(x, y)
        if view is None or not view.enabled or view.action is None:
            return False
        await view.action()
        self.ui_changed()
        return True

    async def set_wifi(self, on: bool) -> None:
        if on == self.wifi_on:
            return
        self.wifi_on = on
        self.settings["global"]["wifi_on"] = "1" if on else "0"
        if self.network is not None:
            await off_loop(self.network.set_wifi, on)
        self.log("I", "WifiService", f"setWifiEnabled package=com.android.shell uid=2000 enable={str(on).lower()}",
                 pid=1024, buffer="system")
        await self.event("connectivity-change")

    async def set_mobile_data(self, on: bool) -> None:
        if on == self.mobile_data:
            return
        self.mobile_data = on
        self.settings["global"]["mobile_data"] = "1" if on else "0"
        if self.network is not None:
            await off_loop(self.network.set_mobile_data, on)
        self.log("D", "DataEnabledSettings", f"setUserDataEnabled: {str(on).lower()}", pid=1890, buffer="radio")
        await self.event("connectivity-change")

    # -- the screen ----------------------------------------------------------------------------

    @property
    def size(self) -> tuple[int, int]:
        return self.override_size or (self.width, self.height)

    def current_window(self) -> tuple[str, str]:
        """(package, window title) of the focused window: keyguard, a dialog or the top app."""
        if self.locked:
            return SYSTEMUI, "StatusBar" if self.spec.android < 11 else "NotificationShade"
        if self.dialogs:
            return self.dialogs[-1].package, self.dialogs[-1].activity
        return self.foreground

    def ui_tree(self) -> View:
        width, height = self.size
        if self.locked or not self.screen_on:
            return self._keyguard(width, height)
        root = self._home(width, height) if self.foreground[0] == LAUNCHER else self._app(width, height)
        if self.dialogs:
            root.children.append(self.dialogs[-1].build(width, height))
        return root

    def _keyguard(self, width: int, height: int) -> View:
        now = dt.datetime.fromtimestamp(self.now(), self.tz)
        root = View("android.widget.FrameLayout", SYSTEMUI, (0, 0, width, height), color=(12, 20, 40))
        frame = View("android.widget.FrameLayout", SYSTEMUI, (0, 0, width, height),
                     resource_id=f"{SYSTEMUI}:id/notification_panel")
        root.children.append(frame)
        if self.bouncer and self.lock_method == "pattern":
            frame.children.append(self._pattern_bouncer(width, height))
            return root
        if self.bouncer:
            pad = View("android.widget.LinearLayout", SYSTEMUI, (0, height // 3, width, height),
                       resource_id=f"{SYSTEMUI}:id/keyguard_pin_view", color=(30, 30, 34))
            pad.children.append(View("android.widget.TextView", SYSTEMUI, (0, height // 3, width, height // 3 + 120),
                                     text="Enter PIN", resource_id=f"{SYSTEMUI}:id/keyguard_message_area"))
            pad.children.append(View("android.widget.EditText", SYSTEMUI,
                                     (width // 6, height // 3 + 140, width * 5 // 6, height // 3 + 280),
                                     text="•" * len(self.pin_typed), resource_id=f"{SYSTEMUI}:id/pinEntry",
                                     password=True, focusable=True))
            key_h = (height - (height // 3 + 320)) // 4
            for index, label in enumerate(["1", "2", "3", "4", "5", "6", "7", "8", "9", "", "0", "OK"]):
                if not label:
                    continue
                row, col = divmod(index, 3)
                top = height // 3 + 320 + row * key_h
                left = col * width // 3
                rid = f"{SYSTEMUI}:id/key{label}" if label.isdigit() else f"{SYSTEMUI}:id/key_enter"

                def press(label: str = label) -> Awaitable[None]:
                    return self.submit_pin() if label == "OK" else self.type_text(label)

                pad.children.append(View("android.widget.TextView" if label.isdigit() else "android.widget.ImageButton",
                                         SYSTEMUI, (left, top, left + width // 3, top + key_h), text=label,
                                         desc="Enter" if label == "OK" else "", resource_id=rid, clickable=True,
                                         action=press))
            frame.children.append(pad)
            return root
        frame.children.append(View("android.widget.TextClock", SYSTEMUI, (0, height // 8, width, height // 8 + 260),
                                   text=now.strftime("%H:%M"), resource_id=f"{SYSTEMUI}:id/clock_view",
                                   color=(230, 230, 240)))
        frame.children.append(View("android.widget.TextView", SYSTEMUI,
                                   (0, height // 8 + 280, width, height // 8 + 360), text=now.strftime("%a, %b %-d"),
                                   resource_id=f"{SYSTEMUI}:id/date_view"))
        frame.children.append(View("android.widget.ImageView", SYSTEMUI,
                                   (width // 2 - 60, height - 420, width // 2 + 60, height - 300),
                                   desc="Unlock", resource_id=f"{SYSTEMUI}:id/lock_icon", color=(200, 200, 210)))
        frame.children.append(View("android.widget.TextView", SYSTEMUI, (0, height - 260, width, height - 180),
                                   text="Swipe up to unlock", resource_id=f"{SYSTEMUI}:id/keyguard_indication_text"))
        return root

    def _pattern_bouncer(self, width: int, height: int) -> View:
        """KeyguardPatternView: message area, LockPatternView (3x3 dots), emergency button."""
        left, top, right, bottom = self.pattern_view_bounds()
        container = View("android.widget.LinearLayout", SYSTEMUI, (0, height * 3 // 10, width, height),
                         resource_id=f"{SYSTEMUI}:id/keyguard_pattern_view", color=(30, 30, 34))
        container.children.append(View("android.widget.TextView", SYSTEMUI,
                                       (0, height * 3 // 10 + 60, width, height * 3 // 10 + 180),
                                       text=self.keyguard_message or "Draw your pattern",
                                       resource_id=f"{SYSTEMUI}:id/keyguard_message_area"))
        container.children.append(View("android.view.View", SYSTEMUI, (left, top, right, bottom),
                                       desc="Pattern area", resource_id=f"{SYSTEMUI}:id/lockPatternView",
                                       focusable=True, color=(44, 44, 52)))
        container.children.append(View("android.widget.Button", SYSTEMUI,
                                       (width // 3, height - 200, width * 2 // 3, height - 80),
                                       text="Emergency", resource_id=f"{SYSTEMUI}:id/emergency_call_button",
                                       clickable=True))
        return container

    def _home(self, width: int, height: int) -> View:
        root = View("android.widget.FrameLayout", LAUNCHER, (0, 0, width, height), color=(20, 90, 110))
        workspace = View("android.widget.ScrollView", LAUNCHER, (0, 120, width, height - 360),
                         resource_id=f"{LAUNCHER}:id/workspace", scrollable=True)
        root.children.append(workspace)
        apps = [p for p in self.packages.values() if p.activity and p.name != LAUNCHER]
        cell = width // 4
        for index, pkg in enumerate(apps):
            row, col = divmod(index, 4)
            top = height - 360 - (row + 1) * 300
            left = col * cell

            async def launch(pkg: AndroidDevice.Package = pkg) -> None:
                await self.start_app(pkg.name)

            workspace.children.append(View("android.widget.TextView", LAUNCHER, (left, top, left + cell, top + 280),
                                           text=pkg.label, desc=pkg.label, clickable=True, long_clickable=True,
                                           focusable=True, action=launch, color=(240, 240, 240)))
        root.children.append(View("android.view.View", LAUNCHER, (0, height - 340, width, height - 200),
                                  resource_id=f"{LAUNCHER}:id/search_container_hotseat", desc="Search",
                                  clickable=True, color=(245, 245, 245)))
        return root

    def _app(self, width: int, height: int) -> View:
        pkg, _activity = self.foreground
        label = self.packages[pkg].label if pkg in self.packages else pkg
        root = View("android.widget.FrameLayout", pkg, (0, 0, width, height), color=(250, 250, 250))
        root.children.append(View("android.widget.TextView", pkg, (40, 160, width - 40, 300), text=label,
                                  resource_id="android:id/title", color=(60, 60, 60)))
        return root

    async def start_app(self, pkg: str, activity: str | None = None) -> bool:
        info = self.packages.get(pkg)
        if info is None or not (activity or info.activity):
            return False
        full = activity or info.activity or ""
        if full.startswith("."):
            full = pkg + full
        self.foreground = (pkg, full)
        self.log("I", "ActivityTaskManager", f"START u0 {{cmp={pkg}/{full}}} from uid 2000", pid=1024,
                 buffer="system")
        self.ui_changed()
        return True

    def screenshot_png(self) -> bytes:
        width, height = self.size
        if not self.screen_on:
            return png(width, height, (0, 0, 0), [])
        tree = self.ui_tree()
        rects = [(*v.bounds, v.color) for v in tree.walk() if v.color is not None and v is not tree]
        rects += [(*v.bounds, (80, 160, 220) if v.enabled else (90, 90, 90)) for v in tree.walk()
                  if v.clickable and v.color is None]
        return png(width, height, tree.color or (0, 0, 0), rects)

    # -- DeviceServices ------------------------------------------------------------------------

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Run something on the phone in the background (shell `&`, servers); stopped at power off."""
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    def shell(self, uid: int = SHELL_UID) -> Shell:
        env = {
            "PATH": "/product/bin:/apex/com.android.runtime/bin:/apex/com.android.art/bin:/system_ext/bin:"
                    "/system/bin:/system/xbin:/odm/bin:/vendor/bin:/vendor/xbin",
            "HOME": "/", "ANDROID_DATA": "/data", "ANDROID_ROOT": "/system", "EXTERNAL_STORAGE": "/sdcard",
            "HOSTNAME": self.device_name, "TMPDIR": "/data/local/tmp", "USER": "shell" if uid else "root",
            "LOGNAME": "shell" if uid else "root", "SHELL": "/bin/sh", "TERM": "dumb",
        }
        return Shell(self.table, self.fs, uid=uid, env=env, spawn=self.spawn, procs=self.procs)

    async def run(self, command: str, io: ShellIO) -> int:
        """Run a command line for adbd; stops it when the peer closes the stream."""
        out: Writer = _IOWriter(io.write_stdout)
        err: Writer = _IOWriter(io.write_stderr)
        stdin: Reader = _IOReader(io)
        sh = self.shell()
        if not command.strip():  # `adb shell` with no command: sh reads its commands from stdin
            return await self._interactive(sh, io, out, err)
        if "drop-connection" in self._pending_faults and self.boot_completed:
            self._pending_faults.discard("drop-connection")
            return await self._dropped(sh, command, io)
        task = self.spawn(sh.run(command, stdin, out, err))
        closed = asyncio.ensure_future(io.closed.wait())
        try:
            done, _ = await asyncio.wait({task, closed}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            closed.cancel()
            raise
        closed.cancel()
        if task not in done:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            return 130
        if task.cancelled():  # killed by a power-off
            return 137
        return task.result()

    async def _dropped(self, sh: Shell, command: str, io: ShellIO) -> int:
        """Fault `drop-connection`: half the output, then the transport goes away mid-command."""
        buffer = BufferWriter()
        await sh.run(command, EmptyReader(), buffer, buffer)
        await io.write_stdout(bytes(buffer.data[: len(buffer.data) // 2]))
        self.log("E", "adbd", "remote usb: read terminated (message): Connection reset by peer", pid=567,
                 buffer="system")
        if self.on_drop is not None:
            await settle(self.on_drop())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(io.closed.wait(), 5)
        return 255

    async def _interactive(self, sh: Shell, io: ShellIO, out: Writer, err: Writer) -> int:
        """Line by line from stdin; on a pty with mksh's prompt, echo and `\r\n` line ends."""
        prompt = f"{self.device_name}:/ {'#' if sh.uid == 0 else '$'} ".encode()
        if io.pty:
            out, err = _CrLf(out), _CrLf(out)
            await io.write_stdout(prompt)
        pending = b""
        while True:
            chunk = await io.read_stdin()
            if not chunk:
                if pending.strip():
                    await sh.run(pending.decode(errors="replace"), EmptyReader(), out, err)
                return sh.status
            pending += chunk.replace(b"\r", b"\n") if io.pty else chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if io.pty:
                    await io.write_stdout(line + b"\r\n")
                await sh.run(line.decode(errors="replace"), EmptyReader(), out, err)
                if sh.exited:
                    return sh.status
                if io.pty:
                    await io.write_stdout(prompt)

    async def open_tcp(self, port: int, host: str | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if port == (self.u2.port if self.u2 is not None else None) and host in (None, "", "localhost", "127.0.0.1"):
            return await self.u2.connect()
        if self.network is None or (not self.boot_completed and not self.booting):
            raise ConnectionRefusedError(f"connect to port {port} refused")
        return await self.network.open_connection(port, host or "127.0.0.1")

    async def reboot(self, target: str) -> None:
        self.log("I", "ShutdownThread", f"Rebooting, reason: {target or 'null'}", pid=1024, buffer="system")
        if self.on_reboot is not None:
            await self.on_reboot(target)

    # -- commands ------------------------------------------------------------------------------

    def _commands(self) -> CommandTable:
        from harness.virtual import uiautomator

        handlers: dict[str, Callable[[Proc], Awaitable[int]]] = {
            "getprop": self._getprop, "setprop": self._setprop, "settings": self._settings,
            "service": self._service, "dumpsys": self._dumpsys, "pm": self._pm, "cmd": self._cmd,
            "input": self._input, "wm": self._wm, "screencap": self._screencap, "logcat": self._logcat,
            "svc": self._svc, "am": self._am, "appops": self._appops, "monkey": self._monkey,
            "id": self._id, "whoami": self._whoami, "uname": self._uname, "getenforce": self._getenforce,
            "date": self._date, "uptime": self._uptime, "ps": self._ps, "pidof": self._pidof,
            "ip": self._ip, "ss": self._ss, "ifconfig": self._ifconfig, "ping": self._ping, "tcpdump": self._tcpdump,
            "reboot": self._reboot, "app_process": lambda p: uiautomator.app_process(self, p),
            "uiautomator": lambda p: uiautomator.uiautomator_cmd(self, p), "stat": self._stat,
            "content": self._content, "abx2xml": self._abx2xml,
        }
        table = generic_table(handlers.items())
        if not self.user_build:
            table.add("su", self._su, "/system/xbin/su")
        return table

    async def _framework(self, p: Proc, service: str, *, via_cmd: bool = True) -> bool:
        """Framework services exist once the system server is up (boot completed)."""
        if self.boot_completed:
            return True
        await p.err(f"cmd: Can't find service: {service}\n" if via_cmd else f"Can't find service: {service}\n")
        return False

    async def _getprop(self, p: Proc) -> int:
        props = self.props()
        args = [a for a in p.argv[1:] if not a.startswith("-")]
        if not args:
            await p.out("".join(f"[{k}]: [{v}]\n" for k, v in sorted(props.items())))
            return 0
        default = args[1] if len(args) > 1 else ""
        await p.out(props.get(args[0], default) + "\n")
        return 0

    async def _setprop(self, p: Proc) -> int:
        if len(p.argv) != 3:
            await p.err("usage: setprop NAME VALUE\n\nSets an Android system property.\n")
            return 1
        name, value = p.argv[1], p.argv[2]
        if (not p.root and not name.startswith(("debug.", "log.", "persist.log.", "persist.debug."))) or \
                (name.startswith("ro.") and name in self.props()):
            await p.err(f"Failed to set property '{name}' to '{value}'.\nSee dmesg for error reason.\n")
            return 1
        self.runtime_props[name] = value
        return 0

    async def _settings(self, p: Proc) -> int:
        if not await self._framework(p, "settings"):
            return 20
        args = p.argv[1:]
        while args and args[0] in ("--user", "--lineage"):
            args = args[2:] if args[0] == "--user" else args[1:]
        if not args:
            await p.err("usage:  settings [--user <USER_ID> | current] get namespace key\n")
            return 1
        verb = args[0]
        if verb in ("get", "put", "delete", "list", "reset") and len(args) >= 2:
            namespace = args[1]
            if namespace not in self.settings:
                await p.err(f"Invalid namespace '{namespace}'\n")
                return 1
            store = self.settings[namespace]
            if verb == "list":
                await p.out("".join(f"{k}={v}\n" for k, v in sorted(store.items())))
                return 0
            if len(args) < 3:
                await p.err(f"settings: {verb}: missing key\n")
                return 1
            key = args[2]
            if verb == "get":
                await p.out(store.get(key, "null") + "\n")
                return 0
            if verb == "delete":
                existed = store.pop(key, None) is not None
                await p.out(f"Deleted {1 if existed else 0} rows\n")
                return 0
            if verb == "put":
                if len(args) < 4:
                    await p.err("settings: put: missing value\n")
                    return 1
                await self._put_setting(namespace, key, args[3])
                return 0
        await p.err("usage:  settings [--user <USER_ID> | current] get namespace key\n")
        return 1

    async def _put_setting(self, namespace: str, key: str, value: str) -> None:
        self.settings[namespace][key] = value
        if (namespace, key) == ("global", "mobile_data"):
            await self.set_mobile_data(value == "1")
        elif (namespace, key) == ("global", "wifi_on"):
            await self.set_wifi(value == "1")

    # service call iphonesubinfo ----------------------------------------------------------------

    def _subinfo_value(self, kind: str, slot: int) -> str | None:
        sim_kinds = {"imsi", "iccid", "msisdn", "gid1", "nai", "alpha", "voicemail"}
        if kind in sim_kinds and not self.sim_present:
            return None
        if kind == "imei":
            return self.ident(Kind.IMEI, slot)
        if kind == "svn":
            return "01"
        if kind == "imsi":
            return self.ident(Kind.IMSI, slot)
        if kind == "iccid":
            return self.ident(Kind.ICCID, slot)
        if kind == "msisdn":
            return self.ident(Kind.MSISDN, slot)
        return None

    async def _service(self, p: Proc) -> int:
        args = p.argv[1:]
        if not args:
            await p.err("Usage: service [-h|-?]\n       service list\n       service check SERVICE\n"
                        "       service call SERVICE CODE [i32 N | i64 N | f N | d N | s16 STR | null | fd f"
                        " | nfd n | afd f ] ...\n")
            return 0
        services = ["iphonesubinfo", "phone", "isub", "package", "power", "window", "activity", "display",
                    "input", "wifi", "connectivity", "settings", "telephony.registry", "uimode", "statusbar"]
        if args[0] == "list":
            if not self.boot_completed:
                services = []
            await p.out(f"Found {len(services)} services:\n" + "".join(
                f"{i}\t{name}: [{_descriptor(name)}]\n" for i, name in enumerate(services)))
            return 0
        if args[0] == "check" and len(args) > 1:
            found = self.boot_completed and args[1] in services
            await p.out(f"Service {args[1]}: {'found' if found else 'not found'}\n")
            return 0
        if args[0] != "call" or len(args) < 3:
            await p.err("service: Unknown command\n")
            return 0
        name = args[1]
        if not self.boot_completed or name not in services:
            await p.err(f"service: Service {name} does not exist\n")
            return 0
        try:
            code = int(args[2], 0)
        except ValueError:
            await p.out('Result: Parcel(Error: 0xffffffb6 "Not a data message")\n')
            return 0
        ints = [int(args[i + 1], 0) for i, a in enumerate(args[3:-1], start=3) if a == "i32"
                and re.fullmatch(r"-?\d+|0x[0-9a-fA-F]+", args[i + 1])]
        if name != "iphonesubinfo":
            await p.out('Result: Parcel(Error: 0xffffffb6 "Not a data message")\n')
            return 0
        method = self.release.iphonesubinfo.get(code)
        if method is None:
            await p.out('Result: Parcel(Error: 0xffffffb6 "Not a data message")\n')
            return 0
        method_name, kind, identifier, argument = method
        slot = 1
        if argument == "phone" and ints:
            slot = ints[0] + 1 if 0 <= ints[0] < 2 else 1
        elif argument == "sub" and ints:
            slot = ints[0] if 1 <= ints[0] <= 2 else 1
        if identifier and self.spec.android >= 10 and p.shell.uid not in (0, 1000, 1001):
            message = (f"{method_name.replace('WithFeature', '')}: The user {p.shell.uid} does not meet the "
                       "requirements to access device identifiers.")
            await p.out(format_parcel(parcel_exception(message)))
            return 0
        await p.out(format_parcel(parcel_reply(self._subinfo_value(kind, slot))))
        return 0

    # dumpsys -----------------------------------------------------------------------------------

    def _since(self, when: float) -> str:
        """TimeUtils.formatUptime: `123456 (7890 ms ago)`."""
        now = self.uptime()
        return f"{int(when * 1000)} ({int((now - when) * 1000)} ms ago)"

    def _state_values(self) -> dict[str, object]:
        width, height = self.size
        pkg, title = self.current_window()
        return {
            "wakefulness": "Awake" if self.screen_on else "Asleep",
            "screen_on": str(self.screen_on).lower(),
            "boot_completed": str(self.boot_completed).lower(),
            "battery": 100,
            "stay_on": str(self.settings["global"].get("stay_on_while_plugged_in", "0") != "0").lower(),
            "stay_on_setting": self.settings["global"].get("stay_on_while_plugged_in", "0"),
            "user_activity": "0x1" if self.screen_on else "0x0",
            "last_wake": self._since(self.last_wake),
            "last_sleep": self._since(self.last_sleep),
            "last_activity": self._since(self.last_wake),
            "uptime": int(self.uptime() * 1000),
            "sleep_reason": self.sleep_reason,
            "screen_off_timeout": self.settings["system"].get("screen_off_timeout", "60000"),
            "display_refs": 1 if self.screen_on else 0,
            "display_state": "ON" if self.screen_on else "OFF",
            "policy": "BRIGHT" if self.screen_on else "OFF",
            "brightness": "0.39763778" if self.spec.android >= 11 and self.screen_on else
                          ("102" if self.screen_on else "0"),
            "fade": "1.0" if self.screen_on else "0.0",
            "keyguard": str(self.locked).lower(),
            "keyguard_visible": str(self.locked and self.screen_on).lower(),
            "secure": str(self.lock_method in ("pin", "password", "pattern")).lower(),
            "screen_state": "SCREEN_STATE_ON" if self.screen_on else "SCREEN_STATE_OFF",
            "interactive_state": "INTERACTIVE_STATE_AWAKE" if self.screen_on else "INTERACTIVE_STATE_SLEEP",
            "statusbar_hash": _hash("statusbar"),
            "navbar_hash": _hash("navbar"),
            "current_focus": f"Window{{{_hash(title)} u0 {title if pkg == SYSTEMUI else pkg + '/' + title}}}",
            "focused_app": self._focused_app(),
            "width": width, "height": height, "density": self.density,
            "width_dp": width * 160 // self.density, "height_dp": height * 160 // self.density,
            "config_seq": 12,
        }

    def _focused_app(self) -> str:
        pkg, activity = self.foreground
        short = activity[len(pkg):] if activity.startswith(pkg + ".") else activity
        if self.spec.android < 10:
            return (f"AppWindowToken{{{_hash(pkg)} token=Token{{{_hash(activity)} ActivityRecord{{{_hash(short)} "
                    f"u0 {pkg}/{short} t12}}}}}}")
        return f"ActivityRecord{{{_hash(short)} u0 {pkg}/{short} t12}}"

    def _windows(self) -> str:
        names = ["NavigationBar", "StatusBar" if self.spec.android < 11 else "NotificationShade"]
        if self.dialogs and not self.locked:
            names.append(f"{self.dialogs[-1].package}/{self.dialogs[-1].activity}")
        names.append(f"{self.foreground[0]}/{self.foreground[1]}")
        lines = []
        for index, name in enumerate(names):
            owner = SYSTEMUI if "/" not in name else name.split("/")[0]
            lines.append(f"  Window #{len(names) - 1 - index} Window{{{_hash(name)} u0 {name}}}:")
            lines.append(f"    mDisplayId=0 rootTaskId=1 mSession=Session{{{_hash(owner)} 1567:u0a10{index}}} "
                         f"mClient=android.os.BinderProxy@{_hash(name + 'c')}")
            lines.append(f"    mOwnerUid=10{index:03d} showForAllUsers=false package={owner} appop=NONE")
        return "\n".join(lines)

    async def _dumpsys(self, p: Proc) -> int:
        args = p.argv[1:]
        if args and args[0] == "-l":
            await p.out("Currently running services:\n" + "".join(
                f"  {s}\n" for s in ("activity", "battery", "bluetooth_manager", "connectivity", "display",
                                      "iphonesubinfo", "isub", "package", "phone", "power", "telephony.registry",
                                      "wifi", "window")))
            return 0
        if not args:
            await p.out("Currently running services:\n  activity\n  power\n  window\n")
            return 0
        service, rest = args[0], args[1:]
        if not self.boot_completed:
            await p.err(f"Can't find service: {service}\n")
            return 0
        values = self._state_values()
        android = self.spec.android
        if service == "power":
            await p.out(render(template(android, "dumpsys-power.txt"), values))
        elif service == "window":
            values["windows"] = self._windows()
            policy = render(template(android, "dumpsys-window-policy.txt"), values)
            windows = render(template(android, "dumpsys-window-windows.txt"), values)
            if rest[:1] in (["windows"], ["w"]):
                await p.out(windows)
            elif rest[:1] in (["policy"], ["p"]):
                await p.out(policy)
            elif rest[:1] in (["displays"], ["d"]):
                await p.out(f"WINDOW MANAGER DISPLAY CONTENTS (dumpsys window displays)\n  Display: "
                            f"mDisplayId=0\n    init={self.width}x{self.height} {self.density}dpi cur="
                            f"{values['width']}x{values['height']} app={values['width']}x{values['height']}\n"
                            f"  mCurrentFocus={values['current_focus']}\n")
            else:
                await p.out(policy + "\n" + windows)
        elif service == "display":
            await p.out(render(template(android, "dumpsys-display.txt"), values))
        elif service == "telephony.registry":
            await p.out(render(template(android, "dumpsys-telephony.registry.txt"), self._telephony_values()))
        elif service == "iphonesubinfo":
            pass  # PhoneSubInfoController has no dump(): real phones print nothing.
        elif service == "package":
            return await self._dumpsys_package(p, rest)
        elif service == "battery":
            await p.out("Current Battery Service state:\n  AC powered: false\n  USB powered: true\n"
                        "  Wireless powered: false\n  Max charging current: 500000\n  Max charging voltage: "
                        "5000000\n  Charge counter: 3000000\n  status: 5\n  health: 2\n  present: true\n"
                        "  level: 100\n  scale: 100\n  voltage: 4350\n  temperature: 250\n  technology: Li-ion\n")
        elif service == "wifi":
            await p.out(self._dumpsys_wifi())
        elif service == "isub":
            await p.out(self._dumpsys_isub())
        elif service == "bluetooth_manager":
            bt = self.ident(Kind.BT_MAC)
            await p.out("Bluetooth Status\n  enabled: true\n  state: ON\n"
                        f"  address: {bt.upper() if bt else '02:00:00:00:00:00'}\n  name: {self.spec.model}\n"
                        "  time since enabled: 00:10:00.000\n")
        elif service == "connectivity":
            await p.out(self._connectivity())
        elif service == "activity":
            activity = self.current_window()[1]
            await p.out(f"ACTIVITY MANAGER ACTIVITIES (dumpsys activity activities)\n"
                        f"  ResumedActivity: {self._focused_app()}\n"
                        f"  mResumedActivity: ActivityRecord{{{_hash(activity)} u0 {self.foreground[0]}/"
                        f"{self.foreground[1]} t12}}\n"
                        f"  KeyguardController:\n    mKeyguardShowing={str(self.locked).lower()}\n"
                        f"    mAodShowing=false\n    mKeyguardGoingAway=false\n")
        else:
            await p.err(f"Can't find service: {service}\n")
        return 0

    SSID = "phonehome"

    def _wifi_info(self) -> str:
        if not self.wifi_on:
            return ('SSID: <unknown ssid>, BSSID: 02:00:00:00:00:00, MAC: 02:00:00:00:00:00, '
                    'Supplicant state: DISCONNECTED')
        return (f'SSID: "{self.SSID}", BSSID: 02:1a:11:00:00:01, MAC: {self.wlan_mac()}, Supplicant state: COMPLETED, '
                'Wi-Fi standard: 4, RSSI: -50, Link speed: 433Mbps, Frequency: 5180MHz, Net ID: 0, Metered hint: '
                'false, score: 60')

    def _dumpsys_wifi(self) -> str:
        lines = [f"Wi-Fi is {'enabled' if self.wifi_on else 'disabled'}", "Verbose logging is off",
                 "Stay-awake conditions: 0", f"mWifiInfo {self._wifi_info()}",
                 f"curState={'L2ConnectedState' if self.wifi_on else 'DisconnectedState'}", "",
                 "WifiConfigManager - Configured networks Begin ----",
                 f' ID: 0 SSID: "{self.SSID}" PROVIDER-NAME: null BSSID: null FQDN: null PRIO: 0 HIDDEN: false '
                 "PMF: false CarrierId: -1 SubscriptionId: -1",
                 " NetworkSelectionStatus NETWORK_SELECTION_ENABLED", " KeyMgmt: WPA_PSK Protocols: WPA RSN"]
        if self.spec.android >= 10:
            lines += [" macRandomizationSetting: 1", f" mRandomizedMacAddress: {self.wlan_mac()}"]
        lines += ["WifiConfigManager - Configured networks End ----", ""]
        return "\n".join(lines) + "\n"

    def _dumpsys_isub(self) -> str:
        sim = self.spec.sim
        iccid = self.ident(Kind.ICCID) or ""
        if self.user_build and len(iccid) > 9:
            iccid = iccid[:9] + "[****]"
        number = self.ident(Kind.MSISDN) or ""
        if self.spec.android >= 14:
            active = (f"    [SubscriptionInfoInternal: id=1 iccId={iccid} simSlotIndex=0 portIndex=0 isEmbedded=0 "
                      f"isRemovableEmbedded=0 carrierId=1 displayName={sim.operator} carrierName={sim.operator} "
                      f"isOpportunistic=0 groupUuid= groupOwner= displayNameSource=SIM_SPN iconTint=-16746133 "
                      f"number={number if not self.user_build else '[****]'} dataRoaming=0 mcc={sim.mcc} "
                      f"mnc={sim.mnc} ehplmns= hplmns= cardString={iccid} cardId=0 nativeAccessRules= "
                      "carrierConfigAccessRules= countryIso= profileClass=-1 type=LOCAL_SIM "
                      "areUiccApplicationsEnabled=1"
                      " usageSetting=DEFAULT isActive=1]")
            head = ["SubscriptionManagerService:", "  Active modem count=" + str(self.slots),
                    "  Default sub id=1", "", "  Active subscriptions:"]
        else:
            active = (f"  {{id=1 iccId={iccid} simSlotIndex=0 carrierId=1 displayName={sim.operator} "
                      f"carrierName={sim.operator} nameSource=0 iconTint=-16746133 number="
                      f"{number if not self.user_build else '[****]'} dataRoaming=0 "
                      f"iconBitmap=android.graphics.Bitmap@{_hash('icon')} mcc {sim.mcc} mnc {sim.mnc} countryIso="
                      f"{_mcc_iso(sim.mcc)} isEmbedded false nativeAccessRules null cardString={iccid} cardId=0 "
                      "isOpportunistic false groupUUID null isGroupDisabled false profileClass -1 subscriptionType=0 "
                      "carrierConfigAccessRules null areUiccApplicationsEnabled true}")
            head = ["SubscriptionController:", " defaultSubId=1", " defaultDataSubId=1", " defaultVoiceSubId=1",
                    " defaultSmsSubId=1", " defaultDataPhoneId=0", " defaultVoicePhoneId=0", " defaultSmsPhoneId=0",
                    "++++++++++++++++++++++++++++++++", " ActiveSubInfoList:"]
        body = [active] if self.sim_present and self.boot_completed else []
        return "\n".join(head + body + ["++++++++++++++++++++++++++++++++"]) + "\n"

    def _connectivity(self) -> str:
        lines = ["NetworkFactories for:", "", "Active default network: " + ("100" if self.wifi_on else
                                                                           ("101" if self.mobile_data else "none")),
                 "", "Current Networks:"]
        if self.wifi_on:
            lines.append("  NetworkAgentInfo{ ni{[type: WIFI[], state: CONNECTED/CONNECTED, reason: (unspecified),"
                         " extra: (none), failover: false, available: true, roaming: false]}  network{100}"
                         "  lp{{InterfaceName: wlan0}}  nc{[ Transports: WIFI Capabilities: "
                         "NOT_METERED&INTERNET&NOT_RESTRICTED&TRUSTED&VALIDATED]}}")
        if self.mobile_data and self.sim_present:
            lines.append("  NetworkAgentInfo{ ni{[type: MOBILE[LTE], state: CONNECTED/CONNECTED, reason: "
                         "connected, extra: internet, failover: false, available: true, roaming: false]}  "
                         "network{101}  lp{{InterfaceName: rmnet_data0}}  nc{[ Transports: CELLULAR Capabilities:"
                         " INTERNET&NOT_RESTRICTED&TRUSTED&VALIDATED]}}")
        mode = self.settings["global"].get("private_dns_mode", "opportunistic")
        lines += ["", f"Private DNS mode: {mode}", ""]
        return "\n".join(lines) + "\n"

    def _telephony_values(self) -> dict[str, object]:
        sim = self.spec.sim
        cell = self.ident(Kind.CELL_ID)
        ci = (int(cell, 16) if cell.lower().startswith("0x") else int(cell)) if cell else 2147483647
        tac = (ci >> 8) % 65535 if cell else 2147483647
        pci = ci % 504 if cell else 2147483647
        registered = self.sim_present
        identity = (f"CellIdentityLte:{{ mCi={ci} mPci={pci} mTac={tac} mEarfcn=1850"
                    + (" mBands=[3]" if self.spec.android >= 11 else "")
                    + f" mBandwidth=20000 mMcc={sim.mcc} mMnc={sim.mnc} mAlphaLong={sim.operator} "
                      f"mAlphaShort={sim.operator}"
                    + (" mAdditionalPlmns={} mCsgInfo=null}" if self.spec.android >= 11 else "}"))
        now_ns = int(self.uptime() * 1e9)
        info = (f"[CellInfoLte:{{mRegistered=YES mTimeStamp={now_ns}ns mCellConnectionStatus=1 {identity} "
                "CellSignalStrengthLte: rssi=-61 rsrp=-90 rsrq=-10 rssnr=130 cqi=2147483647 ta=2147483647 level=4}]")
        return {
            "reg_state": "0(IN_SERVICE)" if registered else "1(OUT_OF_SERVICE)",
            "data_reg_state": "0(IN_SERVICE)" if registered and self.mobile_data else "1(OUT_OF_SERVICE)",
            "operator": sim.operator if registered else "",
            "rat": "14(LTE)" if registered else "0(Unknown)",
            "earfcn": 1850 if registered else -1,
            "data_state": 2 if registered and self.mobile_data else 0,
            "cell_location": (f"Bundle[{{lac={tac}, cid={ci}, psc=-1}}]" if registered else "Bundle[{}]"),
            "cell_identity": identity if registered else "null",
            "cell_info": info if registered else "[]",
            "mobile_data": str(self.mobile_data).lower(),
            "sub_id": 1 if registered else 2147483647,
        }

    async def _dumpsys_package(self, p: Proc, rest: list[str]) -> int:
        names = [a for a in rest if not a.startswith("-")]
        if not names:
            await p.out("Packages:\n" + "".join(f"  Package [{n}] ({_hash(n)}):\n" for n in sorted(self.packages)))
            return 0
        pkg = self.packages.get(names[0])
        if pkg is None:
            await p.out("Dexopt state:\n  Unable to find package: " + names[0] + "\n")
            return 0
        flags = "SYSTEM HAS_CODE ALLOW_CLEAR_USER_DATA" if pkg.system else "HAS_CODE ALLOW_CLEAR_USER_DATA ALLOW_BACKUP"
        await p.out(render(template(self.spec.android, "dumpsys-package.txt"), {
            "package": pkg.name, "activity": pkg.activity or ".Main", "hash1": _hash(pkg.name + "1"),
            "hash2": _hash(pkg.name + "2"), "hash3": _hash(pkg.name + "3"), "hash4": _hash(pkg.name + "4"),
            "hash5": _hash(pkg.name + "5"), "hash6": _hash(pkg.name + "6"), "keyset": 1 + len(pkg.name) % 9,
            "uid": pkg.uid, "code_path": posixpath.dirname(pkg.path), "version_code": pkg.version_code,
            "target_sdk": self.spec.sdk, "version_name": pkg.version_name, "flags": flags,
            "timestamp": "2019-01-01 00:00:00", "signature": _hash(pkg.name + "sig"), "inode": 100000 + pkg.uid,
        }))
        return 0

    # pm / cmd ----------------------------------------------------------------------------------

    async def _pm(self, p: Proc) -> int:
        if not await self._framework(p, "package"):
            return 20
        args = p.argv[1:]
        verb = args[0] if args else ""
        if verb == "list" and args[1:2] == ["packages"]:
            return await self._pm_list(p, args[2:])
        if verb == "path" and len(args) > 1:
            pkg = self.packages.get(args[-1])
            if pkg is None:
                return 1
            await p.out(f"package:{pkg.path}\n")
            return 0
        if verb == "clear" and len(args) > 1:
            name = args[-1]
            if name not in self.packages:
                await p.out("Failed\n")
                return 1
            if self.firmware is not None:
                try:
                    await settle(self.firmware.clear_package(name))
                except Exception:
                    log.exception("firmware clear_package failed")
            self.log("I", "ActivityManager", f"Force stopping {name} appid={self.packages[name].uid} user=0: "
                     "clear data", pid=1024, buffer="system")
            await p.out("Success\n")
            return 0
        if verb in ("grant", "revoke", "disable-user", "enable", "set-app-links"):
            return 0
        if verb == "uninstall":
            await p.out("Failure [DELETE_FAILED_INTERNAL_ERROR]\n")
            return 1
        if verb == "install":
            await p.out("Failure [INSTALL_FAILED_INVALID_APK: virtual phone]\n")
            return 1
        await p.err(f"Unknown command: {verb}\n")
        return 1

    async def _pm_list(self, p: Proc, args: list[str]) -> int:
        show_path = "-f" in args
        system_only = "-s" in args
        third_only = "-3" in args
        versions = "--show-versioncode" in args
        show_uid = "-U" in args
        skip_next = False
        filt = None
        for arg in args:
            if skip_next:
                skip_next = False
            elif arg == "--user":
                skip_next = True
            elif not arg.startswith("-"):
                filt = arg
        lines = []
        for pkg in sorted(self.packages.values(), key=lambda x: x.name):
            if (system_only and not pkg.system) or (third_only and pkg.system) or (filt and filt not in pkg.name):
                continue
            line = f"package:{pkg.path}={pkg.name}" if show_path else f"package:{pkg.name}"
            if versions:
                line += f" versionCode:{pkg.version_code}"
            if show_uid:  # PackageManagerShellCommand.runListPackages, Android 8+
                line += f" uid:{pkg.uid}"
            lines.append(line + "\n")
        await p.out("".join(lines))
        return 0

    async def _cmd(self, p: Proc) -> int:
        if len(p.argv) < 2:
            await p.err("cmd: No service specified; use -l to list all running services.\n")
            return 20
        service, rest = p.argv[1], p.argv[2:]
        if service == "-l":
            await p.out("Currently running services:\n  activity\n  package\n  settings\n  wifi\n  window\n")
            return 0
        if not await self._framework(p, service):
            return 20
        mapping = {"package": "pm", "settings": "settings", "activity": "am", "window": "wm", "input": "input",
                   "appops": "appops"}
        if service in mapping:
            return await p.shell.run_argv([mapping[service], *rest], p.stdin, p.stdout, p.stderr)
        if service == "wifi" and self.spec.android >= 11:
            if rest[:1] == ["set-wifi-enabled"] and len(rest) > 1:
                await self.set_wifi(rest[1] == "enabled")
                return 0
            if rest[:1] == ["status"]:
                if not self.wifi_on:
                    await p.out("Wifi is disabled\n")
                else:
                    await p.out(f"Wifi is enabled\nWifi scanning is always available\n==== Primary "
                                f"ClientModeManager instance ====\nWifi is connected to \"{self.SSID}\"\n"
                                f"WifiInfo: {self._wifi_info()}\n")
                return 0
        if service == "connectivity" and rest[:1] == ["airplane-mode"] and len(rest) > 1:
            on = rest[1] == "enable"
            self.settings["global"]["airplane_mode_on"] = "1" if on else "0"
            await self.set_wifi(not on)
            return 0
        await p.err(f"cmd: Can't find service: {service}\n")
        return 20

    # input / wm / screencap --------------------------------------------------------------------

    async def _input(self, p: Proc) -> int:
        if not await self._framework(p, "input"):
            return 20
        args = p.argv[1:]
        if args and args[0] in ("touchscreen", "keyboard", "mouse", "touchpad", "dpad", "gamepad", "stylus",
                                "trackball", "joystick", "touchnavigation"):
            args = args[1:]
        if args[:1] == ["-d"]:
            args = args[2:]
        if not args:
            await p.err("Usage: input [<source>] <command> [<arg>...]\n")
            return 1
        verb, rest = args[0], args[1:]
        try:
            if verb == "keyevent":
                codes = [a for a in rest if a not in ("--longpress", "--doubletap", "--async")]
                for arg in codes:
                    code = _keycode(arg)
                    if code is None:
                        await p.err(f"Error: Unknown keycode: {arg}\n")
                        return 1
                    await self.key(code)
                return 0
            if verb == "tap" and len(rest) >= 2:
                await self.tap(float(rest[0]), float(rest[1]))
                return 0
            if verb in ("swipe", "draganddrop") and len(rest) >= 4:
                await self.swipe(*(float(v) for v in rest[:4]))
                return 0
            if verb == "text" and rest:
                await self.type_text(" ".join(rest).replace("%s", " "))
                return 0
            if verb == "press":
                await self.key(23)
                return 0
            if verb == "motionevent" and len(rest) >= 3 and self.spec.android >= 11:
                action, x, y = rest[0].upper(), float(rest[1]), float(rest[2])
                if action == "DOWN":
                    self._motion = [(x, y)]
                elif action == "MOVE":
                    self._motion.append((x, y))
                elif action in ("UP", "CANCEL") and self._motion:
                    points, self._motion = self._motion, []
                    if action == "UP":
                        await self.gesture(points, (x, y))
                return 0
        except ValueError as exc:
            await p.err(f"Error: {exc}\n")
            return 1
        await p.err(f"Error: Unknown command: {verb}\n")
        return 1

    async def _wm(self, p: Proc) -> int:
        if not await self._framework(p, "window"):
            return 20
        args = p.argv[1:]
        if args[:1] == ["size"]:
            if len(args) == 1:
                out = f"Physical size: {self.width}x{self.height}\n"
                if self.override_size:
                    out += f"Override size: {self.override_size[0]}x{self.override_size[1]}\n"
                await p.out(out)
                return 0
            if args[1] == "reset":
                self.override_size = None
                return 0
            match = re.fullmatch(r"(\d+)x(\d+)", args[1])
            if match:
                self.override_size = (int(match.group(1)), int(match.group(2)))
                return 0
            await p.err(f"Error: bad size {args[1]}\n")
            return 1
        if args[:1] == ["density"]:
            await p.out(f"Physical density: {self.density}\n")
            return 0
        await p.err("usage: wm [size|density] ...\n")
        return 1

    async def _screencap(self, p: Proc) -> int:
        args = p.argv[1:]
        as_png = "-p" in args
        files = [a for a in args if not a.startswith("-") and not a.isdigit()]
        if files and files[0].endswith(".png"):
            as_png = True
        if as_png:
            data = self.screenshot_png()
        else:
            width, height = self.size
            color = b"\0\0\0\xff" if not self.screen_on else b"\x14\x5a\x6e\xff"
            header = struct.pack("<IIII", width, height, 1, 0) if self.spec.android >= 9 else \
                struct.pack("<III", width, height, 1)
            data = header + color * (width * height)
        if files:
            problem = self.fs.write(p.shell.abspath(files[0]), data, 0o644, int(time.time()))
            if problem:
                await p.err(f"Error opening file: {files[0]} ({problem})\n")
                return 1
            return 0
        await p.out(data)
        return 0

    # logcat ------------------------------------------------------------------------------------

    def _format_log(self, entry: LogEntry, fmt: str) -> str:
        stamp = dt.datetime.fromtimestamp(entry.when, self.tz)
        clock = stamp.strftime("%m-%d %H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"
        if fmt == "brief":
            return f"{entry.level}/{entry.tag}({entry.pid:5d}): {entry.message}"
        if fmt == "time":
            return f"{clock} {entry.level}/{entry.tag}({entry.pid:5d}): {entry.message}"
        if fmt == "tag":
            return f"{entry.level}/{entry.tag}: {entry.message}"
        if fmt == "raw":
            return entry.message
        if fmt == "process":
            return f"{entry.level}({entry.pid:5d}) {entry.message}  ({entry.tag})"
        return f"{clock} {entry.pid:5d} {entry.tid:5d} {entry.level} {entry.tag:<8}: {entry.message}"

    async def _logcat(self, p: Proc) -> int:
        args = p.argv[1:]
        dump = False
        fmt = "threadtime"
        buffers = {"main", "system", "crash"}
        tail: int | None = None
        regex: re.Pattern[str] | None = None
        specs: list[tuple[str, str]] = []
        pid: int | None = None
        order = "VDIWEFS"
        i = 0
        while i < len(args):
            arg = args[i]
            value = args[i + 1] if i + 1 < len(args) else ""
            if arg == "-d":
                dump = True
            elif arg == "-c":
                self.logs.clear()
                return 0
            elif arg in ("-v", "--format"):
                fmt = value.split(",")[0]
                i += 1
            elif arg in ("-b", "--buffer"):
                if value == "all":
                    buffers = {"main", "system", "radio", "events", "crash"}
                elif value == "default":
                    buffers = {"main", "system", "crash"}
                else:
                    buffers = set(value.split(","))
                i += 1
            elif arg in ("-t", "-T"):
                dump = dump or arg == "-t"
                tail = int(value) if value.isdigit() else None
                i += 1
            elif arg in ("-e", "--regex"):
                regex = re.compile(value)
                i += 1
            elif arg.startswith("--pid="):
                pid = int(arg.split("=", 1)[1])
            elif arg == "--pid":
                pid = int(value)
                i += 1
            elif arg == "-s":
                specs.append(("*", "S"))
            elif not arg.startswith("-"):
                tag, _, level = arg.partition(":")
                specs.append((tag, level.upper()[:1] or "V"))
            i += 1

        def wanted(entry: LogEntry) -> bool:
            if entry.buffer not in buffers or (pid is not None and entry.pid != pid):
                return False
            if regex is not None and not regex.search(entry.message):
                return False
            minimum = "V"
            for tag, level in specs:
                if tag == entry.tag:
                    minimum = level
                    break
            else:
                for tag, level in specs:
                    if tag == "*":
                        minimum = level
            return minimum != "S" and order.index(entry.level) >= order.index(minimum)

        entries = [e for e in self.logs if wanted(e)]
        if tail is not None:
            entries = entries[-tail:]
        header_done: set[str] = set()
        chunks = []
        for entry in entries:
            if entry.buffer not in header_done and fmt != "raw":
                header_done.add(entry.buffer)
                chunks.append(f"--------- beginning of {entry.buffer}\n")
            chunks.append(self._format_log(entry, fmt) + "\n")
        await p.out("".join(chunks))
        if dump:
            return 0
        seen = len(self.logs)
        last = self.logs[-1] if self.logs else None
        while True:
            await self._log_event.wait()
            fresh = list(self.logs)
            start = fresh.index(last) + 1 if last in fresh else max(0, len(fresh) - (len(fresh) - seen))
            for entry in fresh[start:]:
                if wanted(entry):
                    await p.out(self._format_log(entry, fmt) + "\n")
            last = fresh[-1] if fresh else None
            seen = len(fresh)

    # svc / am / appops / monkey ----------------------------------------------------------------

    async def _svc(self, p: Proc) -> int:
        args = p.argv[1:]
        if len(args) >= 2 and args[0] in ("wifi", "data") and args[1] in ("enable", "disable"):
            if not await self._framework(p, args[0] if args[0] == "wifi" else "phone"):
                return 20
            on = args[1] == "enable"
            if args[0] == "wifi":
                await self.set_wifi(on)
            else:
                await self.set_mobile_data(on)
            return 0
        if len(args) >= 2 and args[0] == "power" and args[1] == "stayon":
            value = args[2] if len(args) > 2 else "true"
            self.settings["global"]["stay_on_while_plugged_in"] = {"true": "7", "false": "0", "usb": "2",
                                                                    "ac": "1", "wireless": "4"}.get(value, "0")
            return 0
        await p.out("Available commands:\n    help     Show information about the subcommands\n"
                    "    power    Control the power manager\n    data     Control mobile data connectivity\n"
                    "    wifi     Control the Wi-Fi manager\n    usb      Control Usb state\n")
        return 0

    async def _am(self, p: Proc) -> int:
        if not await self._framework(p, "activity"):
            return 20
        args = p.argv[1:]
        verb = args[0] if args else ""
        if verb in ("start", "start-activity"):
            return await self._am_start(p, args[1:])
        if verb == "force-stop" and len(args) > 1:
            if self.foreground[0] == args[-1]:
                self.foreground = (LAUNCHER, LAUNCHER_ACTIVITY)
                self.ui_changed()
            return 0
        if verb == "broadcast":
            action = args[args.index("-a") + 1] if "-a" in args[:-1] else ""
            await p.out(f"Broadcasting: Intent {{ act={action} flg=0x400000 }}\nBroadcast completed: result=0\n")
            return 0
        if verb == "get-current-user":
            await p.out("0\n")
            return 0
        if verb == "stack" or verb == "task":
            return 0
        await p.err(f"Error: Unknown command: {verb}\n")
        return 1

    async def _am_start(self, p: Proc, args: list[str]) -> int:
        intent: dict[str, Any] = {"extras": {}, "categories": []}
        i = 0
        while i < len(args):
            arg = args[i]
            nxt = args[i + 1] if i + 1 < len(args) else ""
            if arg == "-a":
                intent["action"] = nxt
                i += 1
            elif arg == "-c":
                intent["categories"].append(nxt)
                i += 1
            elif arg == "-n":
                intent["component"] = nxt
                i += 1
            elif arg == "-d":
                intent["data"] = nxt
                i += 1
            elif arg in ("-e", "--es", "--ei", "--ez", "--el", "--ef", "--eu"):
                value: Any = args[i + 2] if i + 2 < len(args) else ""
                if arg == "--ez":
                    value = value.lower() in ("true", "1")
                elif arg in ("--ei", "--el") and re.fullmatch(r"-?\d+", value):
                    value = int(value)
                intent["extras"][nxt] = value
                i += 2
            elif arg in ("-f", "--user", "--windowingMode", "--activityType", "--display"):
                i += 1
            i += 1
        parts = []
        if "action" in intent:
            parts.append(f"act={intent['action']}")
        if intent["categories"]:
            parts.append("cat=[" + ",".join(intent["categories"]) + "]")
        if "data" in intent:
            parts.append(f"dat={intent['data']}")
        if "component" in intent:
            parts.append(f"cmp={intent['component']}")
        if intent["extras"]:
            parts.append("(has extras)")
        await p.out(f"Starting: Intent {{ {' '.join(parts)} }}\n")
        component = intent.get("component", "")
        if component:
            pkg, _, cls = component.partition("/")
            if cls.startswith("."):
                cls = pkg + cls
            if pkg == PCAPDROID and self.pcapdroid is not None and cls.endswith("CaptureCtrl"):
                await self.pcapdroid.control(intent["extras"])
                return 0
            if pkg not in self.packages or not await self.start_app(pkg, cls):
                await p.out(f"Error type 3\nError: Activity class {{{pkg}/{cls}}} does not exist.\n")
            return 0
        if "android.intent.category.HOME" in intent["categories"] and not self.locked:
            self.foreground = (LAUNCHER, LAUNCHER_ACTIVITY)
            self.ui_changed()
        return 0

    async def _appops(self, p: Proc) -> int:
        args = [a for a in p.argv[1:]]
        if "--user" in args:
            index = args.index("--user")
            del args[index : index + 2]
        if len(args) >= 4 and args[0] == "set":
            self.appops[(args[1], args[2])] = args[3]
            return 0
        if len(args) >= 2 and args[0] == "get":
            ops = [(op, mode) for (pkg, op), mode in sorted(self.appops.items()) if pkg == args[1]
                   and (len(args) < 3 or op == args[2])]
            if not ops:
                await p.out("No operations.\n")
            for op, mode in ops:
                await p.out(f"{op}: {mode}\n")
            return 0
        if len(args) >= 2 and args[0] == "reset":
            self.appops = {k: v for k, v in self.appops.items() if k[0] != args[1]}
            return 0
        await p.err("usage: appops set|get|reset ...\n")
        return 1

    async def _monkey(self, p: Proc) -> int:
        args = p.argv[1:]
        pkg = args[args.index("-p") + 1] if "-p" in args[:-1] else None
        if pkg is None or pkg not in self.packages or not await self.start_app(pkg):
            await p.out("** No activities found to run, monkey aborted.\n")
            return 252
        await p.out(f"  bash arg: -p\n  bash arg: {pkg}\n  bash arg: -c\n  bash arg: android.intent.category."
                    "LAUNCHER\n  bash arg: 1\nargs: [-p, " + pkg + ", -c, android.intent.category.LAUNCHER, 1]\n"
                    "Events injected: 1\n## Network stats: elapsed time=12ms (0ms mobile, 0ms wifi, 12ms "
                    "not connected)\n")
        return 0

    # identity / clock / processes --------------------------------------------------------------

    async def _id(self, p: Proc) -> int:
        flags = "".join(a[1:] for a in p.argv[1:] if a.startswith("-"))
        if "u" in flags or "g" in flags:
            name = ("root" if p.root else "shell") if "n" in flags else str(0 if p.root else SHELL_UID)
            await p.out(name + "\n")
            return 0
        groups = ("1004(input),1007(log),1011(adb),1015(sdcard_rw),1028(sdcard_r),3001(net_bt_admin),"
                  "3002(net_bt),3003(inet),3006(net_bw_stats),3009(readproc),3011(uhid)")
        if p.root:
            await p.out(f"uid=0(root) gid=0(root) groups=0(root),{groups} context=u:r:su:s0\n")
        else:
            await p.out(f"uid=2000(shell) gid=2000(shell) groups=2000(shell),{groups} context=u:r:shell:s0\n")
        return 0

    async def _whoami(self, p: Proc) -> int:
        await p.out("root\n" if p.root else "shell\n")
        return 0

    async def _uname(self, p: Proc) -> int:
        kernel = self.release.kernel
        if "-a" in p.argv:
            await p.out(f"Linux localhost {kernel} #1 SMP PREEMPT Tue Feb 5 12:00:00 UTC 2019 aarch64 Toybox\n")
        elif "-r" in p.argv:
            await p.out(kernel + "\n")
        elif "-m" in p.argv:
            await p.out("aarch64\n")
        else:
            await p.out("Linux\n")
        return 0

    async def _getenforce(self, p: Proc) -> int:
        await p.out("Enforcing\n")
        return 0

    async def _date(self, p: Proc) -> int:
        args = p.argv[1:]
        utc = "-u" in args
        args = [a for a in args if a != "-u"]
        now = self.now()
        if args and not args[0].startswith("+"):
            if not p.root:
                await p.err("date: cannot set date: Operation not permitted\n")
                return 1
            target = _parse_date_arg(args[-1], self.tz)
            if target is None:
                await p.err(f"date: bad date '{args[-1]}'\n")
                return 1
            self.clock_offset += target - now
            now = target
        stamp = dt.datetime.fromtimestamp(now, dt.UTC if utc else self.tz)
        fmt = args[0][1:] if args and args[0].startswith("+") else "%a %b %e %H:%M:%S %Z %Y"
        fmt = fmt.replace("%N", f"{int((now % 1) * 1e9):09d}").replace("%s", str(int(now)))
        await p.out(stamp.strftime(fmt) + "\n")
        return 0

    async def _uptime(self, p: Proc) -> int:
        up = int(self.uptime())
        stamp = dt.datetime.fromtimestamp(self.now(), self.tz).strftime("%H:%M:%S")
        await p.out(f" {stamp} up {up // 86400} days, {up % 86400 // 3600:2d}:{up % 3600 // 60:02d},  0 users,  "
                    "load average: 0.52, 0.58, 0.59\n")
        return 0

    def processes(self) -> list[tuple[str, int, int, str]]:
        """(user, pid, ppid, name) of what runs on the phone, for `ps`: its services and the shell's jobs."""
        rows = self._static_processes()
        for job in self.procs.running():
            rows.append(("root" if job.uid == 0 else "shell", job.pid, 567, job.name))
        return rows

    def _static_processes(self) -> list[tuple[str, int, int, str]]:
        rows = [("root", 1, 0, "init"), ("root", 2, 0, "[kthreadd]"), ("logd", 420, 1, "logd"),
                ("shell", 567, 1, "adbd"), ("root", 612, 1, "zygote64")]
        if self.boot_completed:
            rows += [("system", 1024, 612, "system_server"), ("u0_a34", 1567, 612, SYSTEMUI),
                     ("radio", 1890, 612, "com.android.phone"), ("u0_a40", 2210, 612, LAUNCHER)]
            for index, pkg in enumerate(sorted(self.spec.packages or {})):
                rows.append((f"u0_a{60 + index}", 2400 + index * 17, 612, pkg))
            if self.pcapdroid is not None and self.pcapdroid.running:
                rows.append(("u0_a180", 3100, 612, PCAPDROID))
            if self.u2 is not None:
                rows.append(("shell", self.u2.pid, 567, "app_process"))
        return rows

    async def _ps(self, p: Proc) -> int:
        lines = ["USER           PID  PPID     VSZ    RSS WCHAN            ADDR S NAME"]
        for user, pid, ppid, name in self.processes():
            lines.append(f"{user:<10} {pid:>6} {ppid:>5} {12345678:>7} {65432:>6} SyS_epoll_wait      0 S {name}")
        await p.out("\n".join(lines) + "\n")
        return 0

    async def _pidof(self, p: Proc) -> int:
        found = [str(pid) for _u, pid, _pp, name in self.processes() if name in p.argv[1:]]
        if not found:
            return 1
        await p.out(" ".join(found) + "\n")
        return 0

    async def _stat(self, p: Proc) -> int:
        status = 0
        for name in (a for a in p.argv[1:] if not a.startswith("-")):
            st = self.fs.stat(p.shell.abspath(name))
            if st is None:
                await p.err(f"stat: '{name}': No such file or directory\n")
                status = 1
                continue
            kind = "directory" if st.mode & 0o170000 == 0o040000 else "regular file"
            await p.out(f"  File: {name}\n  Size: {st.size}\t Blocks: {(st.size + 511) // 512}\t IO Blocks: 512\t"
                        f"{kind}\nAccess: ({st.mode & 0o7777:04o}/{_mode(st.mode)})\n")
        return status

    async def _content(self, p: Proc) -> int:
        """`content query --uri content://telephony/siminfo` (needs a privileged caller since Android 10)."""
        args = p.argv[1:]
        uri = args[args.index("--uri") + 1] if "--uri" in args[:-1] else ""
        if args[:1] != ["query"] or not uri:
            await p.err("usage: adb shell content [subcommand] [options]\n")
            return 1
        if not self.boot_completed:
            await p.err("Error while accessing provider:telephony\njava.lang.IllegalArgumentException: Unknown "
                        "authority telephony\n")
            return 1
        if not uri.startswith("content://telephony/siminfo"):
            await p.out("No result found.\n")
            return 0
        if not p.root and self.spec.android >= 10:
            await p.err("Error while accessing provider:telephony\njava.lang.SecurityException: No permission to "
                        "access APN settings\n")
            return 1
        if not self.sim_present:
            await p.out("No result found.\n")
            return 0
        sim = self.spec.sim
        await p.out(f"Row: 0 _id=1, icc_id={self.ident(Kind.ICCID) or ''}, sim_id=0, display_name={sim.operator}, "
                    f"carrier_name={sim.operator}, name_source=0, color=-16746133, number="
                    f"{self.ident(Kind.MSISDN) or ''}, display_number_format=1, data_roaming=0, mcc={int(sim.mcc)}, "
                    f"mnc={int(sim.mnc)}, mcc_string={sim.mcc}, mnc_string={sim.mnc}, card_id={self.ident(Kind.ICCID)}"
                    ", is_embedded=0, is_removable=0\n")
        return 0

    async def _abx2xml(self, p: Proc) -> int:
        args = [a for a in p.argv[1:] if not a.startswith("-") or a == "-"]
        source = args[0] if args else ""
        data = p.shell.fs.read(p.shell.abspath(source))
        if data is None:
            await p.err(f"Failed to open {source}\n")
            return 1
        text = self.ssaid_xml().encode() if data.startswith(b"ABX\x00") else data
        if len(args) > 1 and args[1] != "-":
            return 1 if p.shell.fs.write(p.shell.abspath(args[1]), text, 0o644, int(time.time())) else 0
        await p.out(text)
        return 0

    async def _su(self, p: Proc) -> int:
        """AOSP's userdebug `su [WHO [COMMAND...]]`, plus the `-c CMD` form rooted phones accept."""
        if self.user_build:
            await p.err(f"{SH}: su: inaccessible or not found\n")
            return 127
        args = p.argv[1:]
        root = p.shell.child(uid=0, pid=p.pid)  # su execs the shell or command: it keeps su's pid
        if args[:1] == ["-c"]:
            return await root.run(" ".join(args[1:]), p.stdin, p.stdout, p.stderr)
        if args and args[0] in ("0", "root", "-", "shell", "2000"):
            if args[0] in ("shell", "2000"):
                root = p.shell.child(uid=SHELL_UID, pid=p.pid)
            args = args[1:]
        if args[:1] == ["-c"]:
            return await root.run(" ".join(args[1:]), p.stdin, p.stdout, p.stderr)
        if not args:
            script = (await p.read_all()).decode(errors="replace")
            return await root.run(script, EmptyReader(), p.stdout, p.stderr)
        return await root.run(" ".join(quote(a) for a in args), p.stdin, p.stdout, p.stderr)

    async def _reboot(self, p: Proc) -> int:
        """`reboot [TARGET]`: the shell's stream dies with adbd, as on a phone."""
        target = p.argv[1] if len(p.argv) > 1 and not p.argv[1].startswith("-") else ""
        self.spawn_detached(self.reboot(target))
        await asyncio.sleep(max(5.0, float(self.spec.boot_seconds) + 5))
        return 0

    def spawn_detached(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """A task that survives power-off (the reboot orchestration itself)."""
        task = asyncio.ensure_future(coro)
        _DETACHED.add(task)
        task.add_done_callback(_DETACHED.discard)
        return task

    # network tools -----------------------------------------------------------------------------

    async def run_in_netns(self, argv: list[str], p: Proc, *, transform: Callable[[bytes], bytes] | None = None,
                           kill_after: float | None = None) -> int:
        """Run a real tool inside the phone's network namespace, streaming its output to the command."""
        assert self.network is not None
        proc = await asyncio.create_subprocess_exec(
            *self.network.exec_argv(argv), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None

        async def pump(stream: asyncio.StreamReader, write: Callable[[bytes], Awaitable[None]]) -> None:
            while chunk := await stream.read(256 * 1024):
                await write(transform(chunk) if transform else chunk)

        p.shell.procs.on_signal(p.pid, functools.partial(_send_signal, proc))  # `kill PID` reaches the tool
        killer = None
        if kill_after is not None:
            killer = asyncio.get_running_loop().call_later(kill_after, _kill, proc)
        try:
            await asyncio.gather(pump(proc.stdout, p.out), pump(proc.stderr, p.err))
            return await proc.wait()
        finally:
            if killer is not None:
                killer.cancel()
            await _finish(proc)

    async def _ip(self, p: Proc) -> int:
        if self.network is None:
            await p.err("Cannot open netlink socket: Permission denied\n")
            return 1
        factory = self.factory_mac()
        permaddr = factory if self.spec.android >= 12 and factory and factory != self.wlan_mac() else None

        def transform(data: bytes) -> bytes:
            data = _strip_veth_peer(data)
            if permaddr:
                data = re.sub(rb"(wlan0:[^\n]*\n\s+link/ether [0-9a-f:]{17} brd [0-9a-f:]{17})",
                              rb"\1 permaddr " + permaddr.encode(), data)
            return data

        return await self.run_in_netns(["ip", *p.argv[1:]], p, transform=transform)

    async def _ifconfig(self, p: Proc) -> int:
        if self.network is None:
            await p.err("ifconfig: socket: Permission denied\n")
            return 1
        buffer = BufferWriter()
        sub = Proc(["ip"], p.env, EmptyReader(), buffer, _Discard(), p.shell)
        await self.run_in_netns(["ip", "-j", "addr", "show"], sub)
        import json

        try:
            interfaces = json.loads(bytes(buffer.data) or b"[]")
        except ValueError:
            interfaces = []
        wanted = [a for a in p.argv[1:] if not a.startswith("-")]
        out = []
        for iface in interfaces:
            name = iface.get("ifname", "")
            if wanted and name != wanted[0]:
                continue
            if not wanted and "UP" not in iface.get("flags", []):
                continue
            if wanted and len(p.argv) > 2:
                continue
            out.append(_toybox_ifconfig(iface))
        if wanted and not out:
            await p.err(f"ifconfig: {wanted[0]}: No such device\n")
            return 1
        await p.out("".join(out))
        return 0

    async def _ss(self, p: Proc) -> int:
        """iproute2's `ss` (in /system/bin since Android 9), run on the phone's namespace."""
        if self.network is None:
            await p.out("Netid State  Recv-Q Send-Q Local Address:Port  Peer Address:Port Process\n")
            return 0
        return await self.run_in_netns(["ss", *p.argv[1:]], p)

    async def _ping(self, p: Proc) -> int:
        if self.network is None:
            host = next((a for a in reversed(p.argv[1:]) if not a.startswith("-")), "")
            await p.err(f"ping: unknown host {host}\n")
            return 2
        return await self.run_in_netns(["ping", *p.argv[1:]], p)

    async def _tcpdump(self, p: Proc) -> int:
        """The real tcpdump on the phone's interfaces; user builds deny it (no CAP_NET_RAW for shell)."""
        if self.user_build and not p.root:
            await p.err("tcpdump: any: You don't have permission to capture on that device\n"
                        "(socket: Operation not permitted)\n")
            return 1
        if self.network is None:
            await p.err("tcpdump: any: No such device exists\n")
            return 1
        args = list(p.argv[1:])
        if "-w" in args[:-1]:
            index = args.index("-w") + 1
            target = args[index]
            if target != "-":
                host = self._host_file_for(p.shell.abspath(target))
                if host is None:
                    await p.err(f"tcpdump: {target}: Permission denied\n")
                    return 1
                args[index] = str(host)
        kill_after = 1.5 if "tcpdump-dies" in self.faults else None
        return await self.run_in_netns(["tcpdump", *args], p, kill_after=kill_after)

    def _host_file_for(self, path: str) -> Path | None:
        """Back a phone path with a real host file (captures written by tools we run on the host)."""
        if self.state_dir is None:
            return None
        probe = self.fs.write(path, b"", 0o644, int(time.time()))
        if probe is not None:
            return None
        host = self.state_dir / "files" / path.lstrip("/").replace("/", "_")
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(b"")
        host.chmod(0o600)
        self.fs.add_host_file(path, host)
        return host


# ----------------------------------------------------------------------------------------------
# helpers

_DETACHED: set[asyncio.Task[Any]] = set()


class _IOWriter:
    def __init__(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        self._write = write

    async def write(self, data: bytes) -> None:
        if data:
            await self._write(data)


class _IOReader:
    def __init__(self, io: ShellIO) -> None:
        self._io = io

    async def read(self) -> bytes:
        return await self._io.read_stdin()


class _CrLf:
    """A pty's output post-processing (ONLCR): `\n` becomes `\r\n`."""

    def __init__(self, inner: Writer) -> None:
        self._inner = inner

    async def write(self, data: bytes) -> None:
        await self._inner.write(data.replace(b"\n", b"\r\n"))


class _Discard:
    async def write(self, data: bytes) -> None:
        return None


def _user_uid(user: str) -> int:
    """`ps` user name -> uid (`u0_a34` is 10034)."""
    if user.startswith("u0_a") and user[4:].isdigit():
        return 10000 + int(user[4:])
    return _USER_UIDS.get(user, 9999)


def _send_signal(proc: asyncio.subprocess.Process, sig: int) -> None:
    if sig and proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


async def _finish(proc: asyncio.subprocess.Process) -> None:
    """Stop a tool (SIGINT lets tcpdump flush), reap it and drain its pipes so nothing outlives it."""
    try:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 3)
            except TimeoutError:
                _kill(proc)
                await proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(stream.read(), 3)
    finally:
        close_transport(proc)  # kills it too if we were interrupted before it exited


def close_transport(proc: asyncio.subprocess.Process) -> None:
    """Close the process's transport now: left to the garbage collector it complains once the loop is gone."""
    transport = getattr(proc, "_transport", None)
    if transport is not None:
        transport.close()


def _colon_mac(value: str) -> str:
    digits = re.sub(r"[^0-9A-Fa-f]", "", value).lower()
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2)) if len(digits) == 12 else value.lower()


def _hash(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()[:7]


def _mode(mode: int) -> str:
    kind = "d" if mode & 0o170000 == 0o040000 else "-"
    return kind + "".join(c if mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))


def _descriptor(name: str) -> str:
    return {"iphonesubinfo": "com.android.internal.telephony.IPhoneSubInfo", "phone":
            "com.android.internal.telephony.ITelephony", "isub": "com.android.internal.telephony.ISub",
            "package": "android.content.pm.IPackageManager", "power": "android.os.IPowerManager",
            "window": "android.view.IWindowManager", "activity": "android.app.IActivityManager"}.get(name, "")


def _keycode(arg: str) -> int | None:
    if re.fullmatch(r"\d+", arg):
        return int(arg)
    name = arg.upper()
    name = name[len("KEYCODE_"):] if name.startswith("KEYCODE_") else name
    return KEYCODES.get(name)


_MCC_ISO = {"242": "no", "240": "se", "238": "dk", "244": "fi", "460": "cn", "310": "us", "311": "us", "234": "gb",
            "262": "de", "208": "fr", "222": "it", "214": "es", "204": "nl", "440": "jp", "450": "kr", "001": ""}


def _mcc_iso(mcc: str) -> str:
    return _MCC_ISO.get(str(mcc), "")


def _strip_veth_peer(data: bytes) -> bytes:
    """`wlan0@if7:` -> `wlan0:`, no `link-netns ...`: a phone's interfaces are not veth pairs."""
    data = re.sub(rb"(\d+: [\w.-]+)@[\w.-]+:", rb"\1:", data)
    return re.sub(rb" link-netns(?:id)? \S+", b"", data)


def _toybox_ifconfig(iface: dict[str, Any]) -> str:
    name = iface.get("ifname", "?")
    mac = iface.get("address", "")
    lines = [f"{name:<10}Link encap:{'Local Loopback' if name == 'lo' else 'Ethernet'}  "
             + (f"HWaddr {mac}" if name != "lo" else "")]
    for info in iface.get("addr_info", []):
        if info.get("family") == "inet":
            prefix = int(info.get("prefixlen", 32))
            mask_bits = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
            netmask = ".".join(str((mask_bits >> s) & 0xFF) for s in (24, 16, 8, 0))
            bcast = info.get("broadcast")
            lines.append(f"          inet addr:{info.get('local')}  " + (f"Bcast:{bcast}  " if bcast else "")
                         + f"Mask:{netmask}")
        elif info.get("family") == "inet6":
            scope = {"link": "Link", "global": "Global", "host": "Host"}.get(info.get("scope", ""), "")
            lines.append(f"          inet6 addr: {info.get('local')}/{info.get('prefixlen')} Scope: {scope}")
    present = set(iface.get("flags", []))
    if {"UP", "LOWER_UP"} <= present:
        present.add("RUNNING")
    flags = [f for f in ("UP", "BROADCAST", "LOOPBACK", "RUNNING", "MULTICAST") if f in present]
    lines.append(f"          {' '.join(flags)}  MTU:{iface.get('mtu', 1500)}  Metric:1")
    lines.append("          RX packets:0 errors:0 dropped:0 overruns:0 frame:0 ")
    lines.append("          TX packets:0 errors:0 dropped:0 overruns:0 carrier:0 ")
    lines.append("          collisions:0 txqueuelen:1000 ")
    lines.append("          RX bytes:0 TX bytes:0 ")
    return "\n".join(lines) + "\n\n"


def _parse_date_arg(text: str, tz: dt.tzinfo) -> float | None:
    """toybox `date MMDDhhmm[[CC]YY][.ss]` or `@EPOCH`."""
    if text.startswith("@"):
        try:
            return float(text[1:])
        except ValueError:
            return None
    match = re.fullmatch(r"(\d\d)(\d\d)(\d\d)(\d\d)(\d{2}|\d{4})?(?:\.(\d\d))?", text)
    if not match:
        return None
    month, day, hour, minute = (int(match.group(i)) for i in range(1, 5))
    year_text = match.group(5)
    year = dt.datetime.now(tz).year if not year_text else int(year_text) + (2000 if len(year_text) == 2 else 0)
    second = int(match.group(6) or 0)
    try:
        return dt.datetime(year, month, day, hour, minute, second, tzinfo=tz).timestamp()
    except ValueError:
        return None
