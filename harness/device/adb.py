"""Every adb call the harness makes, each with a deadline, on one phone of one adb server.

A hung phone must never hang a gate: every call here has a hard deadline that covers connecting,
opening the service and reading the reply, and a call that misses it raises `AdbTimeout` naming
the command. Shell commands are built from argument lists and quoted (`sh_join`), so a value from
a profile or the command line reaches the phone's shell as one literal word, never as syntax.

adbutils sleeps 10 ms on every connection close, so work that reads many values batches them
into one shell call (`run_many`).
"""

from __future__ import annotations

import logging
import secrets
import shlex
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import adbutils

from harness.errors import DeviceError
from harness.identifiers import mask_serial

log = logging.getLogger("phonehome.device")

DEFAULT_TIMEOUT = 30.0
_CONNECT_TIMEOUT = 5.0
_SHELL_V2_STDIN, _SHELL_V2_STDOUT, _SHELL_V2_STDERR, _SHELL_V2_EXIT, _SHELL_V2_CLOSE_STDIN = 0, 1, 2, 3, 4


class AdbTimeout(DeviceError):
    """An adb call that missed its deadline (the phone or the server stopped answering)."""


class DeviceOffline(DeviceError):
    """The adb server has no usable transport to the phone (offline, gone, unauthorized)."""


class DeviceUnrecoverable(DeviceError):
    """Recovery gave up: an infrastructure failure, not a finding about the phone under test."""


class Secret:
    """A value that must not leak: its repr and str are masked, so a pytest traceback that prints a
    function's arguments, a log line or an exception message shows `Secret(***)`, never the value.

    Only `reveal()` gives the value; call it inline where the value is used, not into a local.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str | Secret) -> None:
        self._value = value.reveal() if isinstance(value, Secret) else str(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return "Secret(***)"

    def __bool__(self) -> bool:
        return bool(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and secrets.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", len(self._value)))

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a Secret is not pickled")


def label(serial: str, server: str | None = None) -> str:
    """`SERIAL[@HOST:PORT]` for humans: a hardware serial masked, an address and the server as they are."""
    shown = mask_serial(serial)
    return shown if server is None else f"{shown}@{server}"


def sh_quote(value: str) -> str:
    """One literal word for the phone's shell (mksh on Android 8-15 parses POSIX quoting)."""
    return shlex.quote(str(value))


def sh_join(argv: Iterable[str]) -> str:
    """A command line in which every argument is one literal word."""
    return " ".join(sh_quote(arg) for arg in argv)


def requote(command: str) -> str:
    """A profile's command string made inert: split like a shell would, every word re-quoted.

    `pm clear com.x; rm -rf /` becomes `pm clear 'com.x;' rm -rf /` with `;` a literal character
    of the package name, so the profile can name a command and its arguments but cannot chain,
    substitute or redirect.
    """
    try:
        words = shlex.split(command, comments=False, posix=True)
    except ValueError as exc:
        raise DeviceError(f"cannot parse command {command!r}: {exc}") from None
    if not words:
        raise DeviceError("empty command")
    return sh_join(words)


@dataclass(frozen=True, slots=True)
class ShellResult:
    """What one shell command printed and how it exited (None when the protocol gives no code)."""

    command: str
    exit_code: int | None
    stdout: str
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class Adb:
    """One phone on one adb server; every method is bounded by a timeout.

    `serial` is the transport serial as that server lists it (a USB serial or `IP:PORT`);
    `client` talks to the server (the local one, or a farm host's for `SERIAL@HOST:PORT`).
    """

    def __init__(self, client: adbutils.AdbClient, serial: str, *, timeout: float = DEFAULT_TIMEOUT,
                 server_label: str | None = None) -> None:
        self.client = client
        self.serial = serial
        self.timeout = timeout
        self.server_label = server_label
        self._features: frozenset[str] | None = None

    # --- identity -------------------------------------------------------------------------
    @property
    def label(self) -> str:
        """The serial as humans may see it (masked when it is a hardware serial)."""
        return label(self.serial, self.server_label)

    @property
    def is_tcp(self) -> bool:
        """True for an `IP:PORT` transport, which the harness can disconnect and reconnect itself."""
        host, sep, port = self.serial.rpartition(":")
        return bool(sep and host and port.isdigit())

    def retarget(self, serial: str) -> None:
        """Follow the phone to a new transport serial (it came back on another port)."""
        self.serial = serial
        self._features = None

    def device(self) -> adbutils.AdbDevice:
        """The adbutils device for libraries that want one (uiautomator2)."""
        return adbutils.AdbDevice(self.client, serial=self.serial)

    # --- server-level queries -------------------------------------------------------------
    def _connection(self, deadline: float) -> adbutils.AdbConnection:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        conn = self.client.make_connection(timeout=min(remaining, _CONNECT_TIMEOUT))
        conn.conn.settimeout(max(0.05, remaining))
        return conn

    def host_query(self, request: str, timeout: float | None = None) -> str:
        """One `host:` request to the adb server (devices, connect, ...); returns its reply text."""
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            with self._connection(deadline) as conn:
                conn.send_command(request)
                conn.check_okay()
                return str(conn.read_string_block())
        except (TimeoutError, adbutils.AdbTimeout):
            raise AdbTimeout(f"adb server request {self._scrub(request)!r} for {self.label} timed out "
                             f"after {timeout or self.timeout:g} s") from None
        except (adbutils.AdbError, OSError, EOFError) as exc:
            raise DeviceOffline(f"adb server: {self._scrub(str(exc))} ({self.label})") from None

    def state(self, timeout: float = 5.0) -> str:
        """This phone's state as the server lists it: device, offline, unauthorized, ... or absent."""
        listing = self.host_query("host:devices", timeout=timeout)
        for serial, state in parse_devices(listing):
            if serial == self.serial:
                return state
        return "absent"

    def features(self) -> frozenset[str]:
        """adbd's feature list (shell_v2, cmd, ...), read once per transport."""
        if self._features is None:
            reply = self.host_query(f"host-serial:{self.serial}:features", timeout=5.0)
            self._features = frozenset(f for f in reply.strip().split(",") if f)
        return self._features

    # --- opening services -----------------------------------------------------------------
    def _open(self, service: str, deadline: float) -> adbutils.AdbConnection:
        conn = self._connection(deadline)
        try:
            conn.send_command(f"host:transport:{self.serial}")
            conn.check_okay()
            conn.send_command(service)
            conn.check_okay()
        except BaseException:
            conn.close()
            raise
        return conn

    def _scrub(self, text: str) -> str:
        """An adb error message with this phone's serial masked (servers echo it back)."""
        return text.replace(f"'{self.serial}'", self.label).replace(self.serial, self.label)

    def _failure(self, what: str, exc: BaseException, timeout: float) -> DeviceError:
        if isinstance(exc, (socket.timeout, adbutils.AdbTimeout, TimeoutError)):
            return AdbTimeout(f"{what} on {self.label} timed out after {timeout:g} s")
        message = self._scrub(str(exc) or type(exc).__name__)
        return DeviceOffline(f"{what} on {self.label} failed: {message}")

    # --- shell ----------------------------------------------------------------------------
    def script(self, text: str, timeout: float | None = None, *, shown: str | None = None) -> ShellResult:
        """Run a shell script the harness wrote itself (constants and `sh_quote`d values only).

        `shown` replaces the command in errors and logs when it carries a secret.
        """
        timeout = timeout or self.timeout
        label = shown if shown is not None else text
        what = f"adb shell {_short(label)!r}"
        deadline = time.monotonic() + timeout
        try:
            run = self._shell_v2 if "shell_v2" in self.features() else self._shell_v1
            result = run(text, deadline)
        except DeviceError as exc:
            raise type(exc)(f"{what}: {exc}") from None
        except (TimeoutError, adbutils.AdbError, OSError, EOFError) as exc:
            raise self._failure(what, exc, timeout) from None
        log.debug("%s on %s -> exit %s, %d bytes", _short(label), self.label, result.exit_code, len(result.stdout))
        return ShellResult(label, result.exit_code, result.stdout, result.stderr)

    def shell(self, argv: Sequence[str], timeout: float | None = None, *, shown: str | None = None) -> ShellResult:
        """Run one command given as arguments; each is quoted, so none can inject shell syntax."""
        return self.script(sh_join(argv), timeout, shown=shown)

    def _shell_v2(self, text: str, deadline: float, *, stdin: Secret | None = None) -> ShellResult:
        conn = self._open(f"shell,v2,raw:{text}", deadline)
        try:
            sock = conn.conn
            if stdin is not None:  # one stdin packet (id 0): the script, ending with a newline
                size = len(stdin.reveal().encode()) + 1
                sock.sendall(bytes([_SHELL_V2_STDIN]) + size.to_bytes(4, "little") + stdin.reveal().encode() + b"\n")
            sock.sendall(bytes([_SHELL_V2_CLOSE_STDIN]) + (0).to_bytes(4, "little"))
            out, err = bytearray(), bytearray()
            exit_code: int | None = None
            buffer = bytearray()
            while exit_code is None:
                chunk = _recv(sock, deadline)
                if not chunk:
                    break
                buffer += chunk
                while len(buffer) >= 5:
                    size = int.from_bytes(buffer[1:5], "little")
                    if len(buffer) < 5 + size:
                        break
                    kind, data = buffer[0], bytes(buffer[5:5 + size])
                    del buffer[:5 + size]
                    if kind == _SHELL_V2_STDOUT:
                        out += data
                    elif kind == _SHELL_V2_STDERR:
                        err += data
                    elif kind == _SHELL_V2_EXIT:
                        exit_code = data[0] if data else 0
            if exit_code is None:
                raise DeviceOffline("the stream closed before the command finished (connection dropped?)")
            return ShellResult("<stdin>" if stdin is not None else text, exit_code, _text(out), _text(err))
        finally:
            conn.close()

    def _shell_v1(self, text: str, deadline: float) -> ShellResult:
        marker = f"PHEXIT{secrets.token_hex(4)}:"
        conn = self._open(f"shell:( {text}\n); echo {marker}$?", deadline)
        try:
            data = bytearray()
            while chunk := _recv(conn.conn, deadline):
                data += chunk
        finally:
            conn.close()
        raw = data.replace(b"\r\n", b"\n")
        at = raw.rfind(marker.encode())
        if at < 0:  # the command line always ends by printing the marker: the stream was cut
            raise DeviceOffline("the stream closed before the command finished (connection dropped?)")
        code_text = raw[at + len(marker):].strip()
        code = int(code_text) if code_text.isdigit() else None
        return ShellResult(text, code, _text(raw[:at]))

    def script_stdin(self, script: Secret, timeout: float | None = None, *, shown: str) -> ShellResult:
        """Run a script that holds a secret by writing it to the phone's `sh` on stdin.

        The adb service is `shell,v2,raw:` with no command, so the script is in no command line:
        not in the service string the adb server and adbd see, not in `sh -c`'s argv on the phone.
        Errors and logs name only `shown`.
        """
        timeout = timeout or self.timeout
        what = f"adb shell {shown!r} (script on stdin)"
        deadline = time.monotonic() + timeout
        try:
            if "shell_v2" not in self.features():
                raise DeviceError("adbd does not offer shell_v2 (Android 7+), needed to pass a secret on stdin")
            result = self._shell_v2("", deadline, stdin=script)
        except DeviceError as exc:
            raise type(exc)(f"{what}: {exc}") from None
        except (TimeoutError, adbutils.AdbError, OSError, EOFError) as exc:
            raise self._failure(what, exc, timeout) from None
        log.debug("%s on %s -> exit %s", shown, self.label, result.exit_code)
        return ShellResult(shown, result.exit_code, result.stdout, result.stderr)

    def run_many(self, commands: Sequence[str], timeout: float | None = None) -> list[ShellResult]:
        """Several harness-written commands in one shell call, split back into one result each.

        Each command's stdout and stderr are merged; a random delimiter the commands cannot
        predict separates them.
        """
        if not commands:
            return []
        tag = f"PHSEP{secrets.token_hex(6)}"
        parts = [f"echo; echo {tag}:begin:{i}; ( {cmd} ) 2>&1; ph_rc=$?; echo; echo {tag}:end:{i}:$ph_rc"
                 for i, cmd in enumerate(commands)]
        result = self.script("; ".join(parts), timeout, shown=f"<{len(commands)} batched commands>")
        return split_batch(result.stdout, tag, commands)

    def getprops(self, timeout: float | None = None) -> dict[str, str]:
        """Every system property in one call (`getprop` prints `[key]: [value]` lines)."""
        return parse_getprop(self.script("getprop", timeout).stdout)

    # --- other services -------------------------------------------------------------------
    def reboot(self, timeout: float = 10.0) -> None:
        """Ask adbd to reboot (the `reboot:` service `adb reboot` opens)."""
        deadline = time.monotonic() + timeout
        try:
            conn = self._open("reboot:", deadline)
        except (TimeoutError, adbutils.AdbError, OSError, EOFError) as exc:
            raise self._failure("adb reboot", exc, timeout) from None
        try:
            while _recv(conn.conn, deadline):
                pass
        except (TimeoutError, OSError):
            pass  # adbd may go down before it closes the stream: the wait for "gone" decides
        finally:
            conn.close()

    def connect(self, timeout: float = 10.0) -> str:
        """`adb connect SERIAL` for an IP:PORT transport."""
        return self.host_query(f"host:connect:{self.serial}", timeout=timeout)

    def disconnect(self, timeout: float = 10.0) -> str:
        """`adb disconnect SERIAL` (also clears an offline IP:PORT transport)."""
        try:
            return self.host_query(f"host:disconnect:{self.serial}", timeout=timeout)
        except DeviceOffline as exc:
            return str(exc)

    def reconnect(self, timeout: float = 10.0) -> str:
        """`adb reconnect` for this transport: the server drops and re-opens it."""
        return self.host_query(f"host-serial:{self.serial}:reconnect", timeout=timeout)


def _recv(sock: socket.socket, deadline: float) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    sock.settimeout(remaining)
    return sock.recv(65536)


def _text(data: bytes | bytearray) -> str:
    return bytes(data).decode("utf-8", errors="replace").replace("\r\n", "\n")


def _short(command: str, limit: int = 80) -> str:
    command = " ".join(command.split())
    return command if len(command) <= limit else command[:limit - 1] + "…"


def parse_devices(listing: str) -> list[tuple[str, str]]:
    """`host:devices` reply -> (serial, state); a state may contain spaces ("no permissions (...)")."""
    rows = []
    for line in listing.splitlines():
        serial, sep, state = line.partition("\t")
        if sep and serial.strip():
            rows.append((serial.strip(), state.strip()))
    return rows


def parse_getprop(text: str) -> dict[str, str]:
    """`getprop` output -> {key: value}; multi-line values are joined with newlines."""
    props: dict[str, str] = {}
    key: str | None = None
    for line in text.splitlines():
        if line.startswith("[") and "]: [" in line:
            key, _, value = line[1:].partition("]: [")
            if value.endswith("]"):
                props[key] = value[:-1]
                key = None
            else:
                props[key] = value
        elif key is not None:
            props[key] += "\n" + (line[:-1] if line.endswith("]") else line)
            if line.endswith("]"):
                key = None
    return props


def split_batch(output: str, tag: str, commands: Sequence[str]) -> list[ShellResult]:
    """Cut `run_many` output back into one result per command; a missing one has exit None."""
    results: list[ShellResult] = []
    for i, command in enumerate(commands):
        begin = f"{tag}:begin:{i}\n"
        end = f"\n{tag}:end:{i}:"
        start = output.find(begin)
        stop = output.find(end, start + len(begin)) if start >= 0 else -1
        if start < 0 or stop < 0:
            results.append(ShellResult(command, None, ""))
            continue
        body = output[start + len(begin):stop]
        code_text = output[stop + len(end):].split("\n", 1)[0].strip()
        code = int(code_text) if code_text.isdigit() else None
        body = body[:-1] if body.endswith("\n") else body
        results.append(ShellResult(command, code, body))
    return results
