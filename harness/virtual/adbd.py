"""The virtual phone's adbd: the device side of adb's wire protocol over TCP, on the host's loopback.

The real adb server (`adb connect 127.0.0.1:PORT`) and everything above it (adbutils,
uiautomator2) talk to this exactly as to a phone's adbd in TCP mode; see AOSP
packages/modules/adb (`protocol.txt`, `adb.cpp` handle_packet, `daemon/services.cpp`,
`shell_protocol.h`). This module knows the wire and nothing about Android: every service is
answered by a `DeviceServices` (harness/virtual/services.py).

Wire: 24-byte little-endian headers (command, arg0, arg1, data length, data checksum, magic =
command ^ 0xffffffff). The host speaks first (CNXN); we answer CNXN (version 0x01000001, max
payload 1 MiB or the peer's if smaller, the model's banner) or, for a phone that refuses this
host, AUTH tokens forever. Streams: OPEN -> OKAY (accepted) or CLSE(0, id) (refused); at most one
WRTE in flight per stream and direction (the other side's OKAY releases the next), and we batch
what a service writes meanwhile into WRTEs of up to the max payload, so bulk output streams fast
and small writes coalesce. No delayed-ack, no TLS, no abb: the banner's feature list is trimmed
to what is implemented here (`transport_banner`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets
import socket
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from harness.virtual.adb_sync import serve_sync
from harness.virtual.services import DeviceServices

log = logging.getLogger(__name__)

A_CNXN = 0x4E584E43
A_AUTH = 0x48545541
A_OPEN = 0x4E45504F
A_OKAY = 0x59414B4F
A_CLSE = 0x45534C43
A_WRTE = 0x45545257

A_VERSION_MIN = 0x01000000
A_VERSION = 0x01000001  # also the first version whose peers skip the payload checksum
MAX_PAYLOAD = 1024 * 1024
MAX_PAYLOAD_V1 = 4096

AUTH_TOKEN, AUTH_SIGNATURE, AUTH_RSAPUBLICKEY = 1, 2, 3
TOKEN_SIZE = 20

# Shell protocol (v2) packet ids: 1-byte id, 4-byte little-endian length, data.
SHELL_STDIN, SHELL_STDOUT, SHELL_STDERR, SHELL_EXIT, SHELL_CLOSE_STDIN, SHELL_WINDOW_SIZE = range(6)
SHELL_ERROR_EXIT = 126  # what adbd reports when it cannot run the command at all

# Features a banner may not claim: this adbd does not implement them, and an adb server that saw
# them would send what it cannot serve (delayed-ack OPEN windows, abb/abb_exec installs,
# compressed sync transfers).
UNSUPPORTED_FEATURES = frozenset({"delayed_ack", "abb", "abb_exec", "sendrecv_v2_brotli", "sendrecv_v2_lz4",
                                  "sendrecv_v2_zstd"})

_HEADER = struct.Struct("<6I")
AUTH_MODES = ("none", "reject")
Service = Callable[["_Stream"], Awaitable[None]]


def pack_message(command: int, arg0: int, arg1: int, data: bytes = b"", *, checksum: bool = False) -> bytes:
    """One adb message; the checksum (byte sum) only for peers older than 0x01000001."""
    check = sum(data) & 0xFFFFFFFF if checksum else 0
    return _HEADER.pack(command, arg0, arg1, len(data), check, command ^ 0xFFFFFFFF) + data


def transport_banner(banner: str) -> str:
    """The model's CNXN banner without a trailing NUL and without features this adbd lacks."""
    state, colons, props = banner.rstrip("\0").partition("::")
    if not colons:
        return state
    parts = props.split(";")
    for index, part in enumerate(parts):
        if part.startswith("features="):
            kept = [f for f in part[len("features="):].split(",") if f and f not in UNSUPPORTED_FEATURES]
            parts[index] = "features=" + ",".join(kept)
    return f"{state}::{';'.join(parts)}"


def shell_packet(kind: int, data: bytes) -> bytes:
    return bytes([kind]) + len(data).to_bytes(4, "little") + data


class AdbDaemon:
    """adbd for one virtual phone: listens on host:port and serves every adb server that connects.

    `auth="reject"` plays a phone whose user never taps "Allow USB debugging": it answers CNXN with
    AUTH tokens, rejects every signature and ignores the public key, so adb lists it `unauthorized`.
    """

    def __init__(self, services: DeviceServices, *, host: str = "127.0.0.1", port: int = 0,
                 auth: str = "none") -> None:
        if auth not in AUTH_MODES:
            raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}, not {auth!r}")
        self.services = services
        self.host = host
        self.port = port
        self.auth = auth
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Listen; `self.port` is the bound port afterwards (SO_REUSEADDR: a reboot reuses it)."""
        self._server = await asyncio.start_server(self._accept, self.host, self.port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening and drop every connection (shutdown or reboot); services get `closed`."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort(hard=True)  # power off: the links die, nothing is flushed
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        pending = {task for task in self._tasks if task is not asyncio.current_task()}
        if pending:
            _, late = await asyncio.wait(pending, timeout=2)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=2)

    def drop_connections(self) -> None:
        """Fault injection: cut every connection now (RST), mid-command; the listener stays."""
        for conn in list(self._connections):
            conn.abort(hard=True)

    # -- plumbing ------------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        if handler is not None:  # stop() waits for it, so no connection outlives the daemon
            self._tasks.add(handler)
            handler.add_done_callback(self._tasks.discard)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(self, reader, writer)
        self._connections.add(conn)
        try:
            await conn.serve()
        finally:
            self._connections.discard(conn)

    # -- services ------------------------------------------------------------------------------

    def route(self, destination: str) -> Service | None:
        """The service for an OPEN destination, or None to refuse it (as adbd does unknown ones)."""
        if destination.startswith("shell") and destination[5:6] in (":", ","):
            options, colon, command = destination[5:].partition(":")
            if not colon:
                return None
            pty, v2 = not command, False  # adbd: a command runs raw, an empty one gets a pty
            for option in options.split(","):
                if option == "v2":
                    v2 = True
                elif option == "raw":
                    pty = False
                elif option == "pty":
                    pty = True
                # TERM=... and unknown options are ignored, as adbd does
            return functools.partial(self._shell, command=command, pty=pty, v2=v2)
        if destination.startswith("exec:"):
            return functools.partial(self._shell, command=destination[5:], pty=False, v2=False)
        if destination.startswith("sync:"):
            return self._sync
        if destination.startswith("tcp:"):
            target = parse_tcp(destination[4:])
            return None if target is None else functools.partial(self._forward, port=target[0], host=target[1])
        if destination == "reboot" or destination.startswith("reboot:"):
            return functools.partial(self._reboot, target=destination.partition(":")[2])
        if destination == "reconnect":
            return self._reconnect
        # localabstract:, localreserved:, localfilesystem:, jdwp:, framebuffer:, ... : nothing
        # in the device model answers them, so they are refused like a missing socket on a phone.
        return None

    async def _shell(self, stream: _Stream, *, command: str, pty: bool, v2: bool) -> None:
        stream.accept()
        io = _ShellIO(stream, pty=pty, v2=v2)
        try:
            code = await self.services.run(command, io)
        except Exception as exc:
            log.exception("adbd: the device model failed running a shell command")
            await io.write_stderr(f"error: {type(exc).__name__}: {exc}\n".encode(errors="replace"))
            code = SHELL_ERROR_EXIT
        if v2:
            await stream.write(shell_packet(SHELL_EXIT, bytes([int(code) & 0xFF])))

    async def _sync(self, stream: _Stream) -> None:
        stream.accept()
        await serve_sync(stream, self.services.fs)

    async def _forward(self, stream: _Stream, *, port: int, host: str | None) -> None:
        try:
            reader, writer = await self.services.open_tcp(port, host)
        except OSError as exc:
            log.debug("adbd: tcp:%d refused: %s", port, exc)
            return  # never accepted: finish() refuses the OPEN, as adbd does when connect() fails
        stream.accept()

        async def upstream() -> None:
            while chunk := await stream.read():
                writer.write(chunk)
                await writer.drain()

        async def downstream() -> None:
            while data := await reader.read(stream.conn.max_payload):
                await stream.write(data)

        pumps = {self.spawn(upstream()), self.spawn(downstream())}
        try:
            done, _ = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.debug("adbd: tcp:%d forward ended: %s", port, task.exception())
        finally:
            for task in pumps:
                task.cancel()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _reboot(self, stream: _Stream, *, target: str) -> None:
        stream.accept()
        try:
            await self.services.reboot(target)
        finally:
            for conn in list(self._connections):
                conn.abort(hard=False)

    async def _reconnect(self, stream: _Stream) -> None:
        """`adb reconnect device`: say done, then drop this transport so the server reconnects."""
        stream.accept()
        await stream.write(b"done")
        await stream.flush()
        stream.conn.abort(hard=False)


def parse_tcp(spec: str) -> tuple[int, str | None] | None:
    """`tcp:` forms: PORT, HOST:PORT, [V6]:PORT, and PORT:HOST; None when it is none of them."""
    if spec.isdigit():
        port, host = int(spec), None
    elif spec.startswith("["):
        address, bracket, rest = spec[1:].partition("]")
        if not bracket or not rest.startswith(":") or not rest[1:].isdigit():
            return None
        port, host = int(rest[1:]), address
    else:
        first, colon, last = spec.rpartition(":")
        if colon and last.isdigit() and first:
            port, host = int(last), first
        else:
            first, colon, last = spec.partition(":")
            if not (colon and first.isdigit() and last):
                return None
            port, host = int(first), last
    return (port, host) if 0 < port < 65536 else None


class _Connection:
    """One TCP connection from an adb server: the CNXN/AUTH handshake and the stream table."""

    def __init__(self, daemon: AdbDaemon, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.daemon = daemon
        self.reader = reader
        self.writer = writer
        self.streams: dict[int, _Stream] = {}
        self.online = False
        self.peer_version = A_VERSION_MIN
        self.max_payload = MAX_PAYLOAD_V1
        self._next_id = 1

    def send(self, command: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        if not self.writer.is_closing():
            self.writer.write(pack_message(command, arg0, arg1, data, checksum=self.peer_version < A_VERSION))

    async def serve(self) -> None:
        try:
            while True:
                header = await self.reader.readexactly(_HEADER.size)
                command, arg0, arg1, length, _check, magic = _HEADER.unpack(header)
                if magic != command ^ 0xFFFFFFFF or length > MAX_PAYLOAD:
                    log.warning("adbd: malformed message from the adb server; dropping the connection")
                    break
                data = await self.reader.readexactly(length) if length else b""
                self.handle(command, arg0, arg1, data)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except Exception:
            log.exception("adbd: connection handler failed")
        finally:
            self.abort(hard=False)

    def abort(self, *, hard: bool) -> None:
        """End the connection: every stream sees `closed`; hard = RST, as a cut link does."""
        self.online = False
        self.close_streams()
        if self.writer.transport.is_closing() and not hard:
            return
        if hard:
            sock = self.writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.writer.transport.abort()
        else:
            self.writer.close()

    def close_streams(self) -> None:
        for stream in list(self.streams.values()):
            stream.on_peer_close()

    def handle(self, command: int, arg0: int, arg1: int, data: bytes) -> None:
        if command == A_CNXN:
            self.on_connect(arg0, arg1)
        elif command == A_AUTH:
            self.on_auth(arg0)
        elif not self.online:
            return  # adbd ignores streams before the handshake completes
        elif command == A_OPEN:
            self.on_open(arg0, arg1, data)
        elif command in (A_OKAY, A_WRTE, A_CLSE):
            stream = self.streams.get(arg1)
            # arg0 is the peer's id for the stream; CLSE(0, id) is also a close (old adb servers).
            if stream is None or (arg0 != stream.remote_id and not (command == A_CLSE and arg0 == 0)):
                return
            if command == A_OKAY:
                stream.on_okay()
            elif command == A_WRTE:
                stream.on_write(data)
            else:
                stream.on_peer_close()
        else:
            log.debug("adbd: ignoring unknown command %08x", command)

    def on_connect(self, version: int, max_payload: int) -> None:
        """A (re)connect resets every stream, like adbd's handle_offline + handle_new_connection."""
        self.online = False
        self.close_streams()
        self.peer_version = version
        self.max_payload = max(256, min(max_payload, MAX_PAYLOAD))
        if self.daemon.auth == "reject":
            self.send(A_AUTH, AUTH_TOKEN, 0, secrets.token_bytes(TOKEN_SIZE))
            return
        self.online = True
        banner = transport_banner(self.daemon.services.banner())
        self.send(A_CNXN, A_VERSION, self.max_payload, banner.encode())

    def on_auth(self, kind: int) -> None:
        if self.daemon.auth != "reject":
            return
        if kind == AUTH_SIGNATURE:  # never verifies: ask the next key, until adb sends its public key
            self.send(A_AUTH, AUTH_TOKEN, 0, secrets.token_bytes(TOKEN_SIZE))
        elif kind != AUTH_RSAPUBLICKEY:  # the public key would raise the dialog nobody answers
            self.online = False
            self.close_streams()

    def on_open(self, remote_id: int, send_window: int, data: bytes) -> None:
        if remote_id == 0:
            return
        destination = data.rstrip(b"\0").decode(errors="replace")
        service = None if send_window else self.daemon.route(destination)  # a window means delayed-ack
        if service is None:
            log.debug("adbd: refusing service %r", destination.partition(":")[0])
            self.send(A_CLSE, 0, remote_id)
            return
        local_id = self._next_id
        self._next_id = self._next_id % 0x7FFFFFFF + 1
        stream = _Stream(self, local_id, remote_id)
        self.streams[local_id] = stream
        self.daemon.spawn(self.run_service(stream, service, destination.partition(":")[0]))

    async def run_service(self, stream: _Stream, service: Service, name: str) -> None:
        try:
            await service(stream)
        except asyncio.CancelledError:
            stream.finish_now()
            raise
        except Exception:
            log.exception("adbd: service %s failed", name)
        await stream.finish()


class _Stream:
    """One adb stream: flow-controlled writes, acknowledged reads, and the peer's close."""

    def __init__(self, conn: _Connection, local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self.accepted = False
        self.closed = asyncio.Event()  # the peer closed the stream, or the connection went away
        self._finished = False
        self._inbox: deque[bytes] = deque()
        self._inbox_ready = asyncio.Event()
        self._unread = bytearray()
        self._outbox = bytearray()
        self._in_flight = False
        self._progress = asyncio.Event()

    @property
    def dead(self) -> bool:
        return self._finished or self.closed.is_set()

    def accept(self) -> None:
        if not self.accepted and not self.dead:
            self.accepted = True
            self.conn.send(A_OKAY, self.local_id, self.remote_id)

    # -- from the peer -------------------------------------------------------------------------

    def on_write(self, data: bytes) -> None:
        if data:
            self._inbox.append(data)
            self._inbox_ready.set()
        elif not self.dead:
            self.conn.send(A_OKAY, self.local_id, self.remote_id)

    def on_okay(self) -> None:
        self._in_flight = False
        self._pump()
        self._progress.set()

    def on_peer_close(self) -> None:
        self.closed.set()
        self._progress.set()
        self._inbox_ready.set()
        self.conn.streams.pop(self.local_id, None)

    # -- reading -------------------------------------------------------------------------------

    async def read(self) -> bytes:
        """The peer's next WRTE payload (acknowledged now: that lets the next one come); b"" at close."""
        while not self._inbox:
            if self.dead:
                return b""
            self._inbox_ready.clear()
            await self._inbox_ready.wait()
        chunk = self._inbox.popleft()
        if not self.dead:
            self.conn.send(A_OKAY, self.local_id, self.remote_id)
        return chunk

    async def readexactly(self, n: int) -> bytes:
        """Exactly n bytes; EOFError when the stream closes first."""
        while len(self._unread) < n:
            chunk = await self.read()
            if not chunk:
                raise EOFError
            self._unread += chunk
        data = bytes(self._unread[:n])
        del self._unread[:n]
        return data

    # -- writing -------------------------------------------------------------------------------

    async def write(self, data: bytes) -> None:
        """Queue data; returns while less than one max payload waits (discarded once closed)."""
        if self.dead or not data:
            return
        self._outbox += data
        self._pump()
        while len(self._outbox) >= self.conn.max_payload and not self.dead:
            self._progress.clear()
            await self._progress.wait()

    def _pump(self) -> None:
        """Send the next WRTE when the previous one was acknowledged."""
        if self._in_flight or not self._outbox or self.dead:
            return
        size = self.conn.max_payload
        with memoryview(self._outbox) as view:
            chunk = bytes(view[:size])
        del self._outbox[:size]
        self._in_flight = True
        self.conn.send(A_WRTE, self.local_id, self.remote_id, chunk)

    async def flush(self) -> None:
        """Until everything written was acknowledged (or the stream died)."""
        while (self._outbox or self._in_flight) and not self.dead:
            self._progress.clear()
            await self._progress.wait()

    async def finish(self) -> None:
        """The service is done: refuse the OPEN if it never accepted, else flush and CLSE."""
        if self.accepted:
            await self.flush()
        self.finish_now()

    def finish_now(self) -> None:
        if not self.dead:
            self.conn.send(A_CLSE, self.local_id if self.accepted else 0, self.remote_id)
        self._finished = True
        self._progress.set()
        self._inbox_ready.set()
        self.conn.streams.pop(self.local_id, None)


class _ShellIO:
    """`ShellIO` over a stream: raw bytes (v1 `shell:`, `exec:`) or shell-protocol packets (v2).

    v2 stdin is parsed lazily, as the command reads it: stdin packets are its data, close-stdin
    is its EOF (ignored on a pty, as adbd ignores it: a pty cannot close input alone), window
    size changes are kept in `window_size`. On a pty (and in v1/exec) stderr joins stdout.
    """

    def __init__(self, stream: _Stream, *, pty: bool, v2: bool) -> None:
        self._stream = stream
        self._pty = pty
        self._v2 = v2
        self._stdin_eof = False
        self.window_size = ""  # "ROWSxCOLS,XPIXxYPIX" from the last window-size packet

    @property
    def closed(self) -> asyncio.Event:
        return self._stream.closed

    @property
    def pty(self) -> bool:
        return self._pty

    async def read_stdin(self) -> bytes:
        if not self._v2:
            return await self._stream.read()
        while not self._stdin_eof:
            try:
                head = await self._stream.readexactly(5)
                data = await self._stream.readexactly(int.from_bytes(head[1:], "little"))
            except EOFError:
                break
            if head[0] == SHELL_STDIN and data:
                return data
            if head[0] == SHELL_CLOSE_STDIN and not self._pty:
                break
            if head[0] == SHELL_WINDOW_SIZE:
                self.window_size = data.rstrip(b"\0").decode(errors="replace")
        self._stdin_eof = True
        return b""

    async def write_stdout(self, data: bytes) -> None:
        await self._write(SHELL_STDOUT, data)

    async def write_stderr(self, data: bytes) -> None:
        await self._write(SHELL_STDOUT if self._pty else SHELL_STDERR, data)

    async def _write(self, kind: int, data: bytes) -> None:
        if not self._v2:
            await self._stream.write(data)
            return
        room = max(1, self._stream.conn.max_payload - 5)
        for start in range(0, len(data), room):
            await self._stream.write(shell_packet(kind, data[start:start + room]))
