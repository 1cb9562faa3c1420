"""The virtual phone's adbd (harness/virtual/adbd.py) through the real adb server.

Every check goes through a real adb server on a private port (never 5037), with adbutils' bundled
adb 36 and Debian's adb 29 where it is installed, and through unpatched adbutils. The device model
here is `FakeDevice`, a minimal `DeviceServices` written for these tests (a few sh-like commands,
an in-memory file system, an echo server on loopback): the transport is the unit under test, and
the real Android model (harness/virtual/android.py) has its own tests. The daemon runs on an
asyncio loop in a background thread, as in the virtual phone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import random
import re
import shlex
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import adbutils
import pytest

from conftest import bundled_adb, free_port
from harness.virtual.adbd import (
    A_CLSE,
    A_CNXN,
    A_OKAY,
    A_OPEN,
    A_VERSION_MIN,
    A_WRTE,
    AdbDaemon,
    pack_message,
    parse_tcp,
)
from harness.virtual.services import FileStat, ShellIO

ECHO_PORT = 7000  # the phone-side port FakeDevice.open_tcp answers with its echo server
BASE_FEATURES = "shell_v2,cmd"
SYNC_V2_FEATURES = "shell_v2,cmd,stat_v2,ls_v2,sendrecv_v2,fixed_push_mkdir"


# ----------------------------------------------------------------------------------------------
# A minimal device model


class FakeFS:
    """An in-memory tree: directories and regular files, writable only under /data/local/tmp."""

    def __init__(self) -> None:
        now = int(time.time())
        self.dirs: dict[str, int] = {d: now for d in ("/", "/data", "/data/local", "/data/local/tmp", "/system")}
        self.files: dict[str, tuple[int, bytes, int]] = {"/system/build.prop": (0o100644, b"ro.x=1\n", now)}

    @staticmethod
    def norm(path: str) -> str:
        return posixpath.normpath("/" + path.lstrip("/"))

    def stat(self, path: str) -> FileStat | None:
        path = self.norm(path)
        if path in self.dirs:
            return FileStat(0o040771, 4096, self.dirs[path])
        if path in self.files:
            mode, data, mtime = self.files[path]
            return FileStat(mode, len(data), mtime)
        return None

    def listdir(self, path: str) -> list[tuple[str, FileStat]] | None:
        path = self.norm(path)
        if path not in self.dirs:
            return None
        children = [p for p in [*self.dirs, *self.files] if p != path and posixpath.dirname(p) == path]
        return [(posixpath.basename(p), st) for p in sorted(children) if (st := self.stat(p)) is not None]

    def read(self, path: str) -> bytes | None:
        entry = self.files.get(self.norm(path))
        return None if entry is None else entry[1]

    def write(self, path: str, data: bytes, mode: int, mtime: int) -> str | None:
        """Store a pushed file, creating missing parent directories as adbd does."""
        path = self.norm(path)
        parent = posixpath.dirname(path)
        if path in self.dirs:
            return "Is a directory"
        if not parent.startswith("/data/local/tmp"):
            return "Read-only file system" if parent.startswith("/system") else "Permission denied"
        while parent not in self.dirs:
            self.dirs[parent] = int(time.time())
            parent = posixpath.dirname(parent)
        self.files[path] = (0o100000 | (mode & 0o7777), bytes(data), mtime)
        return None


@dataclass
class FakeDevice:
    """`DeviceServices` with just enough sh: `;`, `$?`, echo, true, false, exit, cat, err, blob, sleep."""

    echo_port: int
    features: str = BASE_FEATURES
    fs: FakeFS = field(default_factory=FakeFS)
    reboots: list[str] = field(default_factory=list)
    on_reboot: Callable[[str], Coroutine[Any, Any, None]] | None = None
    sleeping: threading.Event = field(default_factory=threading.Event)
    outcomes: list[int] = field(default_factory=list)  # exit codes of finished command lines

    def banner(self) -> str:
        return ("device::ro.product.name=fakeprod;ro.product.model=Fake Phone;ro.product.device=fakedev;"
                f"features={self.features}")

    async def run(self, command: str, io: ShellIO) -> int:
        if not command.strip():
            return await self.interactive(io) if io.pty else await self.script(io)
        status = 0
        for part in command.split(";"):
            argv = shlex.split(part.replace("$?", str(status)))
            if argv:
                status = await self.one(argv, io)
        self.outcomes.append(status)
        return status

    async def interactive(self, io: ShellIO) -> int:
        """A pty shell: a prompt, each line echoed (the tty's job) and run, until `exit` or EOF."""
        status, pending = 0, b""
        await io.write_stdout(b"$ ")
        while chunk := await io.read_stdin():
            pending += chunk.replace(b"\r", b"\n")
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                await io.write_stdout(line + b"\r\n")
                if line.strip() == b"exit":
                    return status
                status = await self.run(line.decode(), io)
                await io.write_stdout(b"$ ")
        return status

    async def script(self, io: ShellIO) -> int:
        """`sh` without a pty reads its script from stdin (`echo ... | adb shell`)."""
        script = b""
        while chunk := await io.read_stdin():
            script += chunk
        status = 0
        for line in script.decode().splitlines():
            status = await self.run(line, io)
        return status

    async def one(self, argv: list[str], io: ShellIO) -> int:
        name, args = argv[0], argv[1:]
        if name == "echo":
            await io.write_stdout((" ".join(args) + "\n").encode())
            return 0
        if name in ("true", "false"):
            return int(name == "false")
        if name == "exit":
            return int(args[0]) if args else 0
        if name == "err":  # a message on stderr, exit 3
            await io.write_stderr((" ".join(args) + "\n").encode())
            return 3
        if name == "tty":
            await io.write_stdout(b"pty\n" if io.pty else b"not a tty\n")
            return 0 if io.pty else 1
        if name == "cat":
            while chunk := await io.read_stdin():
                await io.write_stdout(chunk)
            return 0
        if name == "blob":  # `blob SIZE SEED`: deterministic bytes, in uneven writes
            size, seed = int(args[0]), int(args[1])
            data = blob(size, seed)
            pieces = random.Random(seed)
            start = 0
            while start < size:
                step = pieces.choice((1, 100, 4096, 70_000, 300_000))
                await io.write_stdout(data[start:start + step])
                start += step
            return 0
        if name == "sleep":
            self.sleeping.set()
            try:
                await asyncio.wait_for(io.closed.wait(), float(args[0]))
            except TimeoutError:
                return 0
            return 130
        await io.write_stderr(f"/system/bin/sh: {name}: not found\n".encode())
        return 127

    async def open_tcp(self, port: int, host: str | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if port != ECHO_PORT or host not in (None, "localhost", "127.0.0.1"):
            raise ConnectionRefusedError(f"connect to {host or 'localhost'}:{port} refused")
        return await asyncio.open_connection("127.0.0.1", self.echo_port)

    async def reboot(self, target: str) -> None:
        self.reboots.append(target)
        if self.on_reboot is not None:
            await self.on_reboot(target)


def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


# ----------------------------------------------------------------------------------------------
# Fixtures: a loop thread, adb servers, phones


class Loop:
    """An asyncio loop in a background thread; `call(coro)` runs a coroutine there and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="adbd-loop", daemon=True)
        self.thread.start()

    def call(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    runner = Loop()
    try:
        yield runner
    finally:
        runner.close()


@dataclass
class Adb:
    """One private adb server: its binary, port and a runner for adb commands against it."""

    name: str
    path: str
    port: int

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "ANDROID_ADB_SERVER_PORT": str(self.port), "ADBUTILS_ADB_PATH": self.path,
                "ADB_MDNS": "0"}  # no mDNS on the host LAN

    def __call__(self, *args: str, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run([self.path, *args], env=self.env, capture_output=True, timeout=timeout, **kwargs)

    @property
    def client(self) -> adbutils.AdbClient:
        return adbutils.AdbClient(host="127.0.0.1", port=self.port)

    def state(self, serial: str) -> str:
        return {d.serial: d.state for d in self.client.list()}.get(serial, "gone")

    def connect(self, serial: str, want: str = "device", timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self("connect", serial, timeout=15)
            if self.state(serial) == want:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{serial} is {self.state(serial)}, not {want}")
            time.sleep(0.2)


@pytest.fixture(scope="module")
def debian_adb(tool: Callable[[str], str]) -> Iterator[Adb]:
    """Debian's adb (29) as its own private server."""
    path = tool("adb")
    if os.path.realpath(path) == os.path.realpath(bundled_adb()):
        pytest.skip("the adb on PATH is the bundled one")
    adb = Adb("29", path, free_port())
    adb("start-server", timeout=30).check_returncode()
    try:
        yield adb
    finally:
        adb("kill-server", timeout=30)


@pytest.fixture(params=["36", "29"])
def adb(request: pytest.FixtureRequest) -> Adb:
    """Each test runs against adbutils' bundled adb 36 and Debian's adb 29."""
    if request.param == "36":
        server = request.getfixturevalue("adb_server")
        return Adb("36", server["ADBUTILS_ADB_PATH"], int(server["ANDROID_ADB_SERVER_PORT"]))
    adb: Adb = request.getfixturevalue("debian_adb")
    return adb


@dataclass
class Phone:
    loop: Loop
    device: FakeDevice
    daemon: AdbDaemon
    echo: asyncio.Server

    @property
    def serial(self) -> str:
        return f"127.0.0.1:{self.daemon.port}"

    def restart(self, port: int | None = None) -> None:
        """A fresh daemon (as after a reboot), on the same port unless told otherwise."""
        self.daemon = AdbDaemon(self.device, port=self.daemon.port if port is None else port,
                                auth=self.daemon.auth)
        self.loop.call(self.daemon.start())


@pytest.fixture
def make_phone(loop: Loop, adb: Adb) -> Iterator[Callable[..., Phone]]:
    """`make_phone(features=..., auth=...)`: a FakeDevice behind a started AdbDaemon, cleaned up after."""
    phones: list[Phone] = []

    def make(features: str = BASE_FEATURES, auth: str = "none", connect: bool = True) -> Phone:
        async def start() -> Phone:
            echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
            device = FakeDevice(echo_port=int(echo.sockets[0].getsockname()[1]), features=features)
            daemon = AdbDaemon(device, auth=auth)
            await daemon.start()
            return Phone(loop, device, daemon, echo)

        phone: Phone = loop.call(start())
        phones.append(phone)
        if connect:
            adb.connect(phone.serial, want="device" if auth == "none" else "unauthorized")
        return phone

    yield make
    for phone in phones:
        adb("disconnect", phone.serial, timeout=15)
        loop.call(phone.daemon.stop())
        phone.echo.close()


def until(what: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll until truthy (a deadline against hangs, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not (value := what()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.1)
    return value


# ----------------------------------------------------------------------------------------------
# Tests


def test_connect_lists_the_phone_with_its_banner(make_phone: Callable[..., Phone], adb: Adb) -> None:
    phone = make_phone()
    listing = adb("devices", "-l").stdout.decode()
    line = next(line for line in listing.splitlines() if line.startswith(phone.serial))
    assert re.search(r"\sdevice\s+product:fakeprod model:Fake_Phone device:fakedev\b", line), line
    assert adb("-s", phone.serial, "get-state").stdout.decode().strip() == "device"
    features = adb.client.device(phone.serial).get_features()
    assert set(features.split(",")) == set(BASE_FEATURES.split(","))  # no NUL glued to the last one


def test_banner_claims_only_what_adbd_implements(make_phone: Callable[..., Phone], adb: Adb) -> None:
    """A model advertising delayed-ack, abb or compressed sync would make adb send what adbd cannot serve."""
    phone = make_phone(features="shell_v2,cmd,delayed_ack,abb_exec,abb,ls_v2,sendrecv_v2_zstd\0")
    features = adb.client.device(phone.serial).get_features()
    assert set(features.split(",")) == {"shell_v2", "cmd", "ls_v2"}
    assert adb("-s", phone.serial, "shell", "echo", "ok").stdout == b"ok\n"


def test_shell_v2_output_streams_and_exit_codes(make_phone: Callable[..., Phone], adb: Adb) -> None:
    phone = make_phone()
    hi = adb("-s", phone.serial, "shell", "echo", "hi")
    assert (hi.returncode, hi.stdout, hi.stderr) == (0, b"hi\n", b"")
    assert adb("-s", phone.serial, "shell", "false").returncode == 1
    assert adb("-s", phone.serial, "shell", "exit 42").returncode == 42
    assert adb("-s", phone.serial, "shell", "exit 300").returncode == 300 & 0xFF
    err = adb("-s", phone.serial, "shell", "echo out; err oops")
    assert (err.returncode, err.stdout, err.stderr) == (3, b"out\n", b"oops\n")
    missing = adb("-s", phone.serial, "shell", "nosuchcmd")
    assert missing.returncode == 127 and b"nosuchcmd: not found" in missing.stderr


def test_shell_v2_stdin_and_close_stdin(make_phone: Callable[..., Phone], adb: Adb) -> None:
    phone = make_phone()
    data = blob(300_000, 5)
    cat = adb("-s", phone.serial, "shell", "cat", input=data, stdin=None)
    assert cat.returncode == 0 and cat.stdout == data
    scripted = adb("-s", phone.serial, "shell", input=b"echo one\nexit 4\n", stdin=None)  # raw, no command
    assert (scripted.returncode, scripted.stdout) == (4, b"one\n")


def test_pty_option_is_parsed(make_phone: Callable[..., Phone], adb: Adb) -> None:
    phone = make_phone()
    assert adb("-s", phone.serial, "shell", "-T", "tty").stdout == b"not a tty\n"
    forced = adb("-s", phone.serial, "shell", "-tt", "tty")
    assert forced.returncode == 0 and forced.stdout.strip() == b"pty"


def test_adbutils_shell_v1_shell2_and_v2(make_phone: Callable[..., Phone], adb: Adb) -> None:
    phone = make_phone()
    device = adb.client.device(phone.serial)
    assert device.shell("echo hi") == "hi"
    assert device.shell(["echo", "a b"]) == "a b"
    assert device.shell("err merged") == "merged"  # v1 merges stderr into stdout
    v1 = device.shell2("echo x; false")
    assert (v1.returncode, v1.output) == (1, "x\n")
    v2 = device.shell2("echo out; err bad", v2=True)
    assert (v2.returncode, v2.stdout, v2.stderr) == (3, "out\n", "bad\n")
    assert device.shell2("exit 7", v2=True).returncode == 7


def test_interactive_pty_shell_v1(make_phone: Callable[..., Phone], adb: Adb) -> None:
    """`shell:` with no command: a pty shell that runs each line it reads, until `exit`."""
    phone = make_phone()
    device = adb.client.device(phone.serial)
    conn = device.open_transport(timeout=20)
    try:
        conn.send_command("shell:")
        conn.check_okay()
        conn.conn.sendall(b"echo one\r")
        conn.conn.sendall(b"exit\r")
        output = b""
        while chunk := conn.conn.recv(65536):
            output += chunk
    finally:
        conn.close()
    assert output == b"$ echo one\r\none\n$ exit\r\n"


def test_exec_out_is_binary_exact_and_quoted(make_phone: Callable[..., Phone], adb: Adb) -> None:
    phone = make_phone()
    size = 5 * 1024 * 1024 + 17
    out = adb("-s", phone.serial, "exec-out", "blob", str(size), "11")
    assert out.returncode == 0
    assert out.stdout == blob(size, 11)  # CR/LF and NUL bytes untouched, nothing lost or added
    assert adb("-s", phone.serial, "exec-out", "echo", "a b", "c").stdout == b"a b c\n"
    device = adb.client.device(phone.serial)
    with device.open_transport(timeout=20) as conn:
        conn.send_command("exec:blob 100000 3")
        conn.check_okay()
        assert conn.read_until_close(encoding=None) == blob(100_000, 3)


@pytest.mark.parametrize("features", [BASE_FEATURES, SYNC_V2_FEATURES], ids=["sync-v1", "sync-v2"])
def test_push_pull_byte_exact(make_phone: Callable[..., Phone], adb: Adb, tmp_path: Path, features: str) -> None:
    phone = make_phone(features=features)
    data = blob(3 * 1024 * 1024 + 5, 21)
    local = tmp_path / "payload.bin"
    local.write_bytes(data)
    local.chmod(0o640)
    pushed = adb("-s", phone.serial, "push", str(local), "/data/local/tmp/payload.bin")
    assert pushed.returncode == 0, pushed.stderr
    mode, stored, mtime = phone.device.fs.files["/data/local/tmp/payload.bin"]
    assert stored == data and mode & 0o777 == 0o666  # adbd widens group/other from the owner bits
    assert mtime == int(local.stat().st_mtime)
    back = tmp_path / "back.bin"
    pulled = adb("-s", phone.serial, "pull", "/data/local/tmp/payload.bin", str(back))
    assert pulled.returncode == 0, pulled.stderr
    assert back.read_bytes() == data
    listing = adb("-s", phone.serial, "ls", "/data/local/tmp").stdout.decode()
    line = rf"^[0-9a-f]{{4}}81[a-f0-9]{{2}} {len(data):08x} [0-9a-f]{{8}} payload\.bin$"  # mode size mtime name
    assert re.search(line, listing, re.M), listing
    denied = adb("-s", phone.serial, "push", str(local), "/system/payload.bin")
    assert denied.returncode != 0 and b"Read-only file system" in denied.stderr + denied.stdout
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_bytes(b"a")
    (tree / "sub" / "b.bin").write_bytes(data[:70_000])
    assert adb("-s", phone.serial, "push", str(tree), "/data/local/tmp/").returncode == 0
    assert phone.device.fs.files["/data/local/tmp/tree/sub/b.bin"][1] == data[:70_000]
    copy = tmp_path / "copy"
    assert adb("-s", phone.serial, "pull", "/data/local/tmp/tree", str(copy)).returncode == 0
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*")) == ["a.txt", "sub", "sub/b.bin"]
    assert (copy / "sub" / "b.bin").read_bytes() == data[:70_000]
    missing = adb("-s", phone.serial, "pull", "/data/local/tmp/nothing", str(tmp_path / "x"))
    assert missing.returncode != 0 and not (tmp_path / "x").exists()


def test_adbutils_sync(make_phone: Callable[..., Phone], adb: Adb, tmp_path: Path) -> None:
    phone = make_phone()
    sync = adb.client.device(phone.serial).sync
    data = blob(2 * 1024 * 1024 + 3, 8)
    assert sync.push(data, "/data/local/tmp/u2.jar", 0o644, check=True) == len(data)
    assert phone.device.fs.files["/data/local/tmp/u2.jar"][1] == data
    assert sync.read_bytes("/data/local/tmp/u2.jar") == data
    info = sync.stat("/data/local/tmp/u2.jar")
    assert (info.mode & 0o170000, info.size) == (0o100000, len(data))
    assert sync.stat("/nope").mode == 0 and not sync.exists("/nope")
    names = [entry.path for entry in sync.list("/data/local/tmp")]
    assert names == [".", "..", "u2.jar"]
    pulled = tmp_path / "u2.jar"
    sync.pull("/data/local/tmp/u2.jar", pulled)
    assert pulled.read_bytes() == data
    with pytest.raises(adbutils.AdbError, match="No such file"):
        sync.read_bytes("/data/local/tmp/missing")
    with pytest.raises(adbutils.AdbError):
        sync.push(b"x", "/system/evil", 0o644)


def test_forward_to_a_phone_port(make_phone: Callable[..., Phone], adb: Adb) -> None:
    phone = make_phone()
    local = free_port()
    assert adb("-s", phone.serial, "forward", f"tcp:{local}", f"tcp:{ECHO_PORT}").returncode == 0
    data = blob(2 * 1024 * 1024, 4)
    with socket.create_connection(("127.0.0.1", local), timeout=20) as sock:
        received = bytearray()

        def reader() -> None:
            while len(received) < len(data) and (chunk := sock.recv(65536)):
                received.extend(chunk)

        thread = threading.Thread(target=reader)
        thread.start()
        sock.sendall(data)
        thread.join(30)
    assert bytes(received) == data
    refused_port = free_port()
    adb("-s", phone.serial, "forward", f"tcp:{refused_port}", "tcp:7001").check_returncode()
    with socket.create_connection(("127.0.0.1", refused_port), timeout=20) as sock:
        sock.sendall(b"hello")
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""  # the phone refused: the adb server closes the connection
    adb("-s", phone.serial, "forward", "--remove-all")
    device = adb.client.device(phone.serial)
    with device.create_connection(adbutils.Network.TCP, ECHO_PORT) as conn:
        conn.sendall(b"ping")
        assert conn.recv(4) == b"ping"
    with pytest.raises(adbutils.AdbError):
        device.create_connection(adbutils.Network.TCP, 7001)


def test_refused_services(make_phone: Callable[..., Phone], adb: Adb) -> None:
    phone = make_phone()
    device = adb.client.device(phone.serial)
    for service in ("localabstract:minitouch", "localreserved:x", "jdwp:1", "nonsense", "shellx:ls",
                    "tcp:notaport"):
        with device.open_transport(timeout=20) as conn:
            conn.send_command(service)
            with pytest.raises(adbutils.AdbError):
                conn.check_okay()
    assert device.shell("echo still here") == "still here"


def test_reboot_drops_the_transport(make_phone: Callable[..., Phone], adb: Adb, loop: Loop) -> None:
    phone = make_phone()
    stopped = threading.Event()

    async def power_cycle(target: str) -> None:  # what the phone does: adbd goes away while it boots
        async def later() -> None:
            await phone.daemon.stop()
            stopped.set()
        asyncio.get_running_loop().call_later(0.05, lambda: asyncio.ensure_future(later()))

    phone.device.on_reboot = power_cycle
    result = adb("-s", phone.serial, "reboot", "bootloader")
    assert result.returncode == 0, result.stderr
    assert phone.device.reboots == ["bootloader"]
    until(stopped.is_set)
    until(lambda: adb.state(phone.serial) != "device")
    phone.restart()
    adb.connect(phone.serial)
    assert adb("-s", phone.serial, "shell", "echo", "back").stdout == b"back\n"


def test_unauthorized(make_phone: Callable[..., Phone], adb: Adb) -> None:
    phone = make_phone(auth="reject")
    assert adb.state(phone.serial) == "unauthorized"
    result = adb("-s", phone.serial, "shell", "echo", "hi")
    assert result.returncode != 0 and b"unauthorized" in result.stderr
    assert phone.device.outcomes == []


def test_dropped_connection_mid_command_is_an_error_not_a_hang(make_phone: Callable[..., Phone], adb: Adb,
                                                             loop: Loop) -> None:
    phone = make_phone()
    proc = subprocess.Popen([adb.path, "-s", phone.serial, "shell", "echo started; sleep 60"], env=adb.env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        until(phone.device.sleeping.is_set)
        loop.loop.call_soon_threadsafe(phone.daemon.drop_connections)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out == b"started\n"
    if adb.name != "29":  # adb 29 returns 0 when no exit packet came (AOSP fa64cc2a fixed it, later)
        assert proc.returncode == 255
    until(lambda: phone.device.outcomes == [130])  # the command saw `closed` and stopped
    phone.device.sleeping.clear()
    adb.connect(phone.serial)  # the listener stayed: the server gets the phone back
    device = adb.client.device(phone.serial)
    errors: list[BaseException] = []

    def shell() -> None:
        try:
            device.shell2("sleep 60", v2=True, timeout=30)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=shell)
    thread.start()
    until(phone.device.sleeping.is_set)
    loop.loop.call_soon_threadsafe(phone.daemon.drop_connections)
    thread.join(40)
    assert not thread.is_alive()
    assert errors and isinstance(errors[0], (adbutils.AdbError, EOFError, OSError))  # adbutils: EOFError


def test_reconnect_service(make_phone: Callable[..., Phone], adb: Adb) -> None:
    phone = make_phone()
    adb("-s", phone.serial, "reconnect", "device", timeout=30)
    adb.connect(phone.serial)
    assert adb("-s", phone.serial, "shell", "echo", "again").stdout == b"again\n"


# ----------------------------------------------------------------------------------------------
# Without the adb server: what only a client talking to adbd directly exercises


def test_old_peer_gets_checksums_and_small_payloads(loop: Loop) -> None:
    """A peer announcing 0x01000000 and 4 KiB: adbd checksums every message and cuts WRTEs to 4 KiB."""

    async def run() -> list[tuple[int, int, int, bytes, int]]:
        echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
        device = FakeDevice(echo_port=int(echo.sockets[0].getsockname()[1]))
        daemon = AdbDaemon(device)
        await daemon.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
            messages: list[tuple[int, int, int, bytes, int]] = []

            async def receive() -> tuple[int, int, int, bytes, int]:
                command, arg0, arg1, length, check, magic = struct.unpack("<6I", await reader.readexactly(24))
                assert magic == command ^ 0xFFFFFFFF
                data = await reader.readexactly(length)
                messages.append((command, arg0, arg1, data, check))
                return command, arg0, arg1, data, check

            writer.write(pack_message(A_CNXN, A_VERSION_MIN, 4096, b"host::\0", checksum=True))
            writer.write(pack_message(A_OPEN, 5, 0, b"exec:blob 10000 2\0", checksum=True))
            while (message := await receive())[0] != A_CLSE:
                if message[0] == A_WRTE:
                    writer.write(pack_message(A_OKAY, 5, message[1], checksum=True))
            writer.close()
            return messages
        finally:
            await daemon.stop()
            echo.close()

    messages = loop.call(run())
    assert messages[0][0] == A_CNXN and messages[0][2] == 4096
    for _command, _arg0, _arg1, data, check in messages:
        assert check == sum(data) & 0xFFFFFFFF
    writes = [data for command, _a, _b, data, _c in messages if command == A_WRTE]
    assert max(map(len, writes)) <= 4096 and b"".join(writes) == blob(10_000, 2)


@pytest.mark.parametrize(("spec", "expected"), [
    ("9008", (9008, None)), ("localhost:8080", (8080, "localhost")), ("10.0.0.1:80", (80, "10.0.0.1")),
    ("[::1]:443", (443, "::1")), ("8080:127.0.0.1", (8080, "127.0.0.1")), ("0", None), ("70000", None),
    ("host", None), ("", None), ("[::1]", None),
])
def test_tcp_destinations(spec: str, expected: tuple[int, str | None] | None) -> None:
    assert parse_tcp(spec) == expected


def test_interactive_shell_on_a_terminal(make_phone: Callable[..., Phone], adb: Adb) -> None:
    """`adb shell` on a real terminal: a v2 pty shell; keystrokes go in, `exit` ends it."""
    import pty

    phone = make_phone()
    controller, terminal = pty.openpty()
    proc = subprocess.Popen([adb.path, "-s", phone.serial, "shell"], env=adb.env, stdin=terminal,
                            stdout=terminal, stderr=terminal, start_new_session=True)
    os.close(terminal)
    seen = bytearray()

    def read_until(marker: bytes) -> None:
        deadline = time.monotonic() + 30
        while marker not in seen:
            assert time.monotonic() < deadline, f"no {marker!r} in {bytes(seen)!r}"
            with contextlib.suppress(OSError):
                seen.extend(os.read(controller, 4096))

    try:
        read_until(b"$ ")
        os.write(controller, b"echo typed\r")
        read_until(b"typed\n")
        os.write(controller, b"exit\r")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
    assert b"echo typed\r\n" in seen  # the shell's own echo of the line
