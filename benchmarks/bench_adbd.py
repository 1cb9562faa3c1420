"""The virtual phone's adbd transport, as ratios against a trivial loopback TCP server in the same run.

Three measurements, each with one small socket client used twice: once through the real adb server
(private port, never 5037) to `AdbDaemon`, once straight to a plain asyncio TCP server on loopback
doing the same job without adb:

1. shell calls/s: connect, `host:transport:SERIAL`, `shell:echo hi`, read to EOF (what every
   adbutils `shell()` does) vs connect, send, read the echo, close.
2. stream ping-pongs/s: one `exec:cat` stream, 64-byte write and read back, repeated (WRTE/OKAY
   latency through the server) vs the same on one echo connection.
3. bulk MB/s: `exec:bulk N` read to EOF (WRTE batching and flow control) vs a server writing N bytes.

The device model here is a stub answering just those commands, so the figures are the transport's,
not Android's. adbutils' own `shell()` adds two 10 ms sleeps per call on top (FACTS.md).
`run(quick=True)` stays under 20 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import adbutils

from harness.device.server import bundled_adb, private_adb_server
from harness.virtual.adbd import AdbDaemon
from harness.virtual.services import FileStat, ShellIO

PING = b"x" * 64
CHUNK = 1024 * 1024


class _NoFiles:
    def stat(self, path: str) -> FileStat | None:
        return None

    def listdir(self, path: str) -> list[tuple[str, FileStat]] | None:
        return None

    def read(self, path: str) -> bytes | None:
        return None

    def write(self, path: str, data: bytes, mode: int, mtime: int) -> str | None:
        return "Read-only file system"


class _Stub:
    """`echo WORDS`, `cat`, `bulk N`: the least a device model can do."""

    fs = _NoFiles()

    def banner(self) -> str:
        return "device::ro.product.name=bench;ro.product.model=bench;ro.product.device=bench;features=shell_v2,cmd"

    async def run(self, command: str, io: ShellIO) -> int:
        name, _, rest = command.partition(" ")
        if name == "echo":
            await io.write_stdout(rest.encode() + b"\n")
        elif name == "cat":
            while chunk := await io.read_stdin():
                await io.write_stdout(chunk)
        elif name == "bulk":
            left = int(rest)
            block = bytes(CHUNK)
            while left > 0:
                await io.write_stdout(block[:left])
                left -= CHUNK
        return 0

    async def open_tcp(self, port: int, host: str | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        raise ConnectionRefusedError(port)

    async def reboot(self, target: str) -> None:
        return None


async def _baseline(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The plain server: `bulk N` -> N bytes then close; `ping` -> echo until EOF; else echo once."""
    first = await reader.read(65536)
    if first.startswith(b"bulk "):
        left = int(first[5:])
        block = bytes(CHUNK)
        while left > 0:
            writer.write(block[:left])
            await writer.drain()
            left -= CHUNK
    elif first.startswith(b"ping"):
        writer.write(first[4:])
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    else:
        writer.write(first)
    writer.close()


@contextlib.contextmanager
def _loop() -> Iterator[Callable[[Coroutine[Any, Any, Any]], Any]]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield lambda coro: asyncio.run_coroutine_threadsafe(coro, loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _request(sock: socket.socket, text: str) -> None:
    """One adb smart-socket request: 4 hex digits of length, the text, then OKAY expected."""
    sock.sendall(f"{len(text):04x}{text}".encode())
    status = _exact(sock, 4)
    if status != b"OKAY":
        raise RuntimeError(f"adb server refused {text.split(':')[0]}: {status!r}")


def _exact(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"wanted {n} bytes, got {len(data)}")
        data += chunk
    return bytes(data)


def _drain(sock: socket.socket) -> int:
    total = 0
    while chunk := sock.recv(1 << 20):
        total += len(chunk)
    return total


class _Client:
    """The same three jobs, either through the adb server (serial set) or straight to a TCP port."""

    def __init__(self, port: int, serial: str | None) -> None:
        self.port = port
        self.serial = serial

    def open(self, service: str, payload: bytes) -> socket.socket:
        sock = _connect(self.port)
        if self.serial is None:
            sock.sendall(payload)
        else:
            _request(sock, f"host:transport:{self.serial}")
            _request(sock, service)
        return sock

    def call(self) -> None:
        with self.open("shell:echo hi", b"hi\n") as sock:
            if _exact(sock, 3) != b"hi\n" or sock.recv(1):
                raise RuntimeError("unexpected reply")

    def ping_pong(self, seconds: float) -> int:
        with self.open("exec:cat", b"ping") as sock:
            count, deadline = 0, time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                sock.sendall(PING)
                _exact(sock, len(PING))
                count += 1
            return count

    def bulk(self, size: int) -> float:
        start = time.perf_counter()
        with self.open(f"exec:bulk {size}", f"bulk {size}".encode()) as sock:
            got = _drain(sock)
        if got != size:
            raise RuntimeError(f"bulk: {got} of {size} bytes")
        return size / (time.perf_counter() - start) / 1e6


def _rate(job: Callable[[], None], seconds: float) -> float:
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        job()
        count += 1
    return count / (time.perf_counter() - start)


def _measure(adb: _Client, plain: _Client, seconds: float, size: int) -> list[tuple[str, float, float]]:
    adb.call()  # warm both paths once
    plain.call()
    return [
        ("shell calls/s", _rate(adb.call, seconds), _rate(plain.call, seconds)),
        ("ping-pongs/s", adb.ping_pong(seconds) / seconds, plain.ping_pong(seconds) / seconds),
        ("bulk MB/s", _median(lambda: adb.bulk(size)), _median(lambda: plain.bulk(size))),
    ]


def _median(job: Callable[[], float], runs: int = 3) -> float:
    """Median of a few runs after a warm-up one (loopback buffers grow on the first)."""
    job()
    return statistics.median(job() for _ in range(runs))


def _adbs() -> list[tuple[str, str]]:
    bundled = bundled_adb()
    found = [("adb 36 (adbutils)", bundled)]
    debian = shutil.which("adb")
    if debian and os.path.realpath(debian) != os.path.realpath(bundled):
        found.append(("adb 29 (Debian)", debian))
    return found


def run(quick: bool) -> None:
    seconds, size = (1.0, 64 * CHUNK) if quick else (5.0, 256 * CHUNK)
    adbs = _adbs()
    if len(adbs) == 1:
        print("Debian's adb not installed (apt-get install adb): measured with the bundled adb only")
    with _loop() as call:
        baseline = call(asyncio.start_server(_baseline, "127.0.0.1", 0))
        daemon = AdbDaemon(_Stub())
        call(daemon.start())
        plain = _Client(int(baseline.sockets[0].getsockname()[1]), None)
        try:
            for name, path in adbs:
                with private_adb_server(path) as env:
                    server = int(env["ANDROID_ADB_SERVER_PORT"])
                    serial = f"127.0.0.1:{daemon.port}"
                    client = adbutils.AdbClient(host="127.0.0.1", port=server)
                    client.connect(serial, timeout=10)
                    deadline = time.monotonic() + 10
                    while {d.serial: d.state for d in client.list()}.get(serial) != "device":
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{name}: the virtual adbd was not listed")
                        time.sleep(0.1)
                    rows = _measure(_Client(server, serial), plain, seconds, size)
                    print(f"== adbd through {name} vs plain loopback TCP ({seconds:g} s per rate, "
                          f"{size // CHUNK} MiB bulk) ==")
                    print(f"{'':16}{'via adb':>12}{'plain TCP':>12}{'ratio':>8}")
                    for label, through, direct in rows:
                        print(f"{label:<16}{through:12.1f}{direct:12.1f}{through / direct:8.3f}")
        finally:
            call(daemon.stop())
            baseline.close()
