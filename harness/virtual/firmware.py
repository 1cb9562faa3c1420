"""The virtual phone's firmware: the clients of its profile, sending real traffic on their triggers.

The clients run in one subprocess inside the phone's network namespace
(`ip netns exec ph-TAG-phone python -m harness.virtual.firmware`), so they use real sockets, the
kernel does TCP, names resolve through the simulated DNS server (or DNS over TLS when Private DNS
names a host) and TLS is real. The parent talks to it over pipes, one JSON object per line:
events and `pm clear` go down; what was sent, registrations and log lines come up.

Registration state (a client whose server said "success" stops sending when the profile says
so) belongs to the parent, which writes it to the phone's state directory: it survives reboots
(runner restarts) until `clear_package()` (`pm clear`) forgets it, as an app's data would.
Nothing here logs an identifier: the sent() log holds templates, not rendered values.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import json
import os
import secrets
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from harness.errors import PhonehomeError
from harness.identifiers import Kind
from harness.virtual.internet import CoapMessage, _child_env, dns_encode_name, dns_name, ntp_timestamp
from harness.virtual.spec import ClientSpec, Success, VirtualSpec, encode, json_bytes, render, render_json

EVENTS = ("boot", "power-up", "screen-on", "unlock", "idle", "lock", "connectivity-change")
TIMEOUT = 8.0
KEEP_ALIVE_IDLE = 8.0  # seconds an HTTP connection stays open after its answer (OkHttp keeps 5 min)
SENT_KEPT = 10000  # a phone left running sends forever: keep the most recent records
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
# the app uid of the client whose request is being sent (each trigger runs in its own task)
_CLIENT_UID: contextvars.ContextVar[int | None] = contextvars.ContextVar("client_uid", default=None)


def static_values(spec: VirtualSpec) -> dict[str, str]:
    """Placeholder values that do not change while the phone runs (identifiers, build facts)."""

    def ident(kind: Kind, slot: int = 1) -> str:
        return spec.ident(kind, slot)

    serial = ident(Kind.SERIAL)
    if not serial:  # the device model's fallback, so both report the same serial
        import hashlib

        serial = hashlib.sha1(spec.name.encode()).hexdigest()[:12].upper()
    return {
        "imei1": ident(Kind.IMEI, 1), "imei2": ident(Kind.IMEI, 2), "meid": ident(Kind.MEID),
        "imsi1": ident(Kind.IMSI, 1), "imsi2": ident(Kind.IMSI, 2),
        "iccid1": ident(Kind.ICCID, 1), "iccid2": ident(Kind.ICCID, 2),
        "msisdn1": ident(Kind.MSISDN, 1), "msisdn2": ident(Kind.MSISDN, 2),
        "wifi_mac": ident(Kind.WIFI_MAC).lower(), "bt_mac": ident(Kind.BT_MAC).lower(), "serial": serial,
        "cell_id": ident(Kind.CELL_ID), "model": spec.model, "manufacturer": spec.manufacturer,
        "android": str(spec.android), "sdk": str(spec.sdk), "fingerprint": spec.fingerprint,
        "build_id": _build_id(spec), "mcc": spec.sim.mcc, "mnc": spec.sim.mnc, "operator": spec.sim.operator,
    }


def _build_id(spec: VirtualSpec) -> str:
    """The build ID in the fingerprint (brand/product/device:release/ID/incremental:type/tags)."""
    parts = spec.fingerprint.split("/")
    if len(parts) >= 5:
        return parts[3]
    from harness.virtual.android import release_for  # the device model's default build of that release

    return release_for(spec.android).build_id


def client_to_json(client: ClientSpec) -> dict[str, Any]:
    return asdict(client)


def client_from_json(data: dict[str, Any]) -> ClientSpec:
    data = dict(data)
    data["success"] = Success(**data["success"])
    return ClientSpec(**data)


# --- the parent's handle -------------------------------------------------------------------------

class FirmwareRunner:
    """The profile's clients on one virtual phone; start() at power-on, stop() at shutdown."""

    def __init__(self, spec: VirtualSpec, network: Any, state_dir: Path) -> None:
        self.spec = spec
        self.network = network
        self.state_dir = Path(state_dir)
        self.state_path = self.state_dir / "firmware-state.json"
        self.logcat: Callable[[str, str, str], Any] | None = None  # set by the device model
        self.package_uids: dict[str, int] = {}  # package -> app uid, set by the device model
        self._registered = self._load_state()
        self._sent: deque[dict[str, Any]] = deque(maxlen=SENT_KEPT)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- state ----------------------------------------------------------------------------------

    def _load_state(self) -> dict[str, str]:
        """client name -> package, for the clients that registered."""
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in data.get("registered", {}).items()} if isinstance(data, dict) else {}

    def _save_state(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"registered": self._registered}))
        tmp.replace(self.state_path)

    @property
    def registered(self) -> set[str]:
        with self._lock:
            return set(self._registered)

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Power-on: start the clients' process (the `boot` event comes once boot completed)."""
        if self.running:
            return
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        spec = self.spec
        values = static_values(spec)
        config = {
            "clients": [client_to_json(c) for c in spec.clients],
            "values": values,
            "android_ids": {c.package: spec.ssaid(c.package) for c in spec.clients},
            "registered": sorted(self._registered),
            "dns_server": self.network.dns_server,
            "private_dns_host": spec.private_dns_host,
            "ca_file": str(Path(self.network.run_dir) / "ca.pem"),
            "uids": dict(self.package_uids),
            "wifi_iface": getattr(self.network, "wifi_iface", "wlan0"),
            "cell_iface": getattr(self.network, "cell_iface", "rmnet_data0"),
            "user_agent": f"Dalvik/2.1.0 (Linux; U; Android {spec.android}; {spec.model} Build/{values['build_id']})",
            "timezone": spec.timezone,
            "clock_offset": spec.clock_offset,
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        stderr_path = self.state_dir / "firmware-stderr.log"
        with stderr_path.open("ab") as stderr:
            proc = subprocess.Popen(self.network.exec_argv([sys.executable, "-m", "harness.virtual.firmware"]),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=_child_env())
        assert proc.stdin is not None and proc.stdout is not None
        # identifiers travel over the pipe, never through a file
        proc.stdin.write(json.dumps(config).encode() + b"\n")
        proc.stdin.flush()
        if proc.stdout.readline().strip() != b'{"ready": true}':
            proc.kill()
            proc.wait()
            lines = stderr_path.read_text(errors="replace").strip().splitlines()
            raise PhonehomeError(f"virtual phone firmware did not start: {lines[-1] if lines else 'no output'}")
        self._proc = proc
        self._reader = threading.Thread(target=self._read, args=(proc,), name="firmware-reader", daemon=True)
        self._reader.start()

    def stop(self) -> None:
        """Shutdown: the clients stop mid-flight, as on a phone that powers off."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None

    def _send(self, message: dict[str, Any]) -> bool:
        proc = self._proc
        if proc is None or proc.poll() is not None or proc.stdin is None:
            return False
        try:
            proc.stdin.write(json.dumps(message).encode() + b"\n")
            proc.stdin.flush()
        except (OSError, ValueError):
            return False
        return True

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if "sent" in message:
                with self._changed:
                    self._sent.append(message["sent"])
                    self._changed.notify_all()
            elif "registered" in message:
                with self._changed:
                    entry = message["registered"]
                    self._registered[entry["client"]] = entry["package"]
                    self._save_state()
                    self._changed.notify_all()
            elif "log" in message:
                self._logcat(**message["log"])
        proc.stdout.close()

    def _logcat(self, level: str, tag: str, message: str) -> None:
        sink = self.logcat
        if sink is None:
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(sink, level, tag, message)
            return
        sink(level, tag, message)

    # -- what the phone tells it ------------------------------------------------------------------

    def event(self, name: str) -> None:
        """A trigger: boot (power-up clients fire after their delay), screen-on, unlock, idle, lock,
        connectivity-change. Ignored while the firmware is not running (the phone is off)."""
        if name not in EVENTS:
            raise ValueError(f"unknown firmware event {name!r} (known: {', '.join(EVENTS)})")
        self._send({"event": "power-up" if name == "boot" else name})

    def clear_package(self, package: str) -> bool:
        """`pm clear PACKAGE`: its clients forget they registered. True when a client belongs to it."""
        with self._changed:
            for client in [c for c, p in self._registered.items() if p == package]:
                del self._registered[client]
            self._save_state()
        self._send({"clear": package})
        return any(c.package == package for c in self.spec.clients)

    def sent(self) -> list[dict[str, Any]]:
        """What the clients sent: client, package, trigger, transport, host, port, time, outcome.

        Paths and DNS queries appear as the profile's templates, never with identifiers filled in.
        """
        with self._lock:
            return [dict(entry) for entry in self._sent]

    def wait_sent(self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float) -> bool:
        """Block until `predicate(sent())` holds (for tests and scripts driving a phone)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate([dict(e) for e in self._sent]):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(remaining)
            return True


# --- the clients (in the child, inside the phone's namespace) -------------------------------------

class Firmware:
    """The clients of one phone, scheduled on their triggers; runs in the child process."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.clients = [client_from_json(c) for c in config["clients"]]
        self.values: dict[str, str] = config["values"]
        self.android_ids: dict[str, str] = config["android_ids"]
        self.registered: set[str] = set(config["registered"])
        self.dns_server: str = config["dns_server"]
        self.private_dns_host: str | None = config["private_dns_host"]
        self.ca_file: str = config["ca_file"]
        self.uids: dict[str, int] = {str(k): int(v) for k, v in config.get("uids", {}).items()}
        self.wifi_iface: str = config["wifi_iface"]
        self.cell_iface: str = config["cell_iface"]
        self.user_agent: str = config["user_agent"]
        self.clock_offset: float = config["clock_offset"]
        try:
            self.timezone: dt.tzinfo = ZoneInfo(config["timezone"])
        except (ZoneInfoNotFoundError, ValueError):
            self.timezone = dt.UTC
        self.cache: dict[tuple[str, str | None], tuple[str, float]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.periodic_started = False
        self._tls: ssl.SSLContext | None = None

    # -- plumbing --------------------------------------------------------------------------------

    @staticmethod
    def emit(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    def log(self, level: str, tag: str, message: str) -> None:
        self.emit({"log": {"level": level, "tag": tag, "message": message}})

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @property
    def tls(self) -> ssl.SSLContext:
        if self._tls is None:
            cafile = self.ca_file if Path(self.ca_file).is_file() else None
            self._tls = ssl.create_default_context(cafile=cafile)
        return self._tls

    # -- events ----------------------------------------------------------------------------------

    def on_event(self, name: str) -> None:
        for client in self.clients:
            delay = client.triggers.get(name)
            if delay is not None:
                self.spawn(self.fire_later(client, name, delay))
        if name == "power-up" and not self.periodic_started:
            self.periodic_started = True
            for client in self.clients:
                if "periodic" in client.triggers:
                    self.spawn(self.periodic(client, client.triggers["periodic"]))

    def on_clear(self, package: str) -> None:
        for client in self.clients:
            if client.package == package:
                self.registered.discard(client.name)

    async def fire_later(self, client: ClientSpec, trigger: str, delay: float) -> None:
        await asyncio.sleep(delay)
        await self.fire(client, trigger)

    async def periodic(self, client: ClientSpec, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            await self.fire(client, "periodic")

    async def fire(self, client: ClientSpec, trigger: str) -> None:
        if client.stop_when_registered and client.name in self.registered:
            return
        record: dict[str, Any] = {
            "client": client.name, "package": client.package, "trigger": trigger, "transport": client.transport,
            "host": client.query if client.transport == "dns" else client.host, "address": client.address,
            "port": client.port, "network": client.network, "path": client.path if client.transport in
            ("http", "https", "coap") else None, "time": time.time(), "ok": False, "status": None, "error": None,
        }
        _CLIENT_UID.set(self.uids.get(client.package))
        try:
            status, body, record["dst"] = await asyncio.wait_for(self.send(client), TIMEOUT)
            record["status"] = status
            record["ok"] = True
        except Exception as exc:  # a failed send is recorded, as an app logs a failed request
            record["error"] = f"{type(exc).__name__}: {exc}"
            self.emit({"sent": record})
            self.log("W", client.log_tag, f"{client.transport} to {record['host']}:{client.port} failed "
                                          f"({type(exc).__name__}), trigger {trigger}")
            return
        self.log("I", client.log_tag, f"{client.transport} to {record['host']}:{client.port} sent, trigger {trigger}, "
                                      f"status {status}")
        if client.stop_when_registered and client.success.met(status, body):
            # before the sent record: whoever waits for that record finds the registration stored
            self.registered.add(client.name)
            record["registered"] = True
            self.emit({"registered": {"client": client.name, "package": client.package}})
            self.log("I", client.log_tag, "registration succeeded; not sending again until data is cleared")
        self.emit({"sent": record})

    # -- payloads --------------------------------------------------------------------------------

    def values_for(self, client: ClientSpec) -> dict[str, str]:
        now = time.time() + self.clock_offset  # the phone's clock
        values = dict(self.values)
        values.update({
            "package": client.package,
            "android_id": self.android_ids.get(client.package, ""),
            "wifi_mac_wire": _read(f"/sys/class/net/{self.wifi_iface}/address").strip().lower(),
            "access_type": "2" if client.network == "cellular" or not self._wifi_up() else "1",
            "regdate": dt.datetime.fromtimestamp(now, self.timezone).strftime("%Y-%m-%d %H:%M:%S"),
            "time": str(int(now)), "time_ms": str(int(now * 1000)), "nonce": secrets.token_hex(8),
        })
        return values

    def _wifi_up(self) -> bool:
        return _read(f"/sys/class/net/{self.wifi_iface}/operstate").strip() == "up"

    @staticmethod
    def body(client: ClientSpec, values: dict[str, str]) -> bytes:
        if client.body is None:
            data = b""
        elif client.body_format == "json":
            data = json_bytes(render_json(client.body, values))
        elif client.body_format == "form":
            data = urllib.parse.urlencode({k: render(v, values) for k, v in client.body.items()}).encode()
        else:
            data = render(client.body, values).encode()
        return encode(data, client.encode)

    # -- transports ------------------------------------------------------------------------------

    def device(self, client: ClientSpec) -> str | None:
        return self.cell_iface if client.network == "cellular" else None

    def new_socket(self, kind: int, device: str | None) -> socket.socket:
        """A socket owned by the sending client's app uid, as the kernel shows it in /proc/net and
        `ss -e` (Android's DnsResolver likewise fchown()s the sockets it opens for an app)."""
        sock = socket.socket(socket.AF_INET, kind)
        uid = _CLIENT_UID.get()
        if uid is not None:
            with contextlib.suppress(OSError):
                os.fchown(sock.fileno(), uid, -1)
        if device is not None:
            sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, device.encode())
        sock.setblocking(False)
        return sock

    async def connect(self, address: str, port: int, device: str | None) -> socket.socket:
        sock = self.new_socket(socket.SOCK_STREAM, device)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (address, port))
        except BaseException:
            sock.close()
            raise
        return sock

    async def exchange_udp(self, address: str, port: int, payload: bytes, device: str | None,
                           wait: float = 2.0) -> bytes | None:
        sock = self.new_socket(socket.SOCK_DGRAM, device)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_connect(sock, (address, port))
            await loop.sock_sendall(sock, payload)
            try:
                return await asyncio.wait_for(loop.sock_recv(sock, 65536), wait)
            except (TimeoutError, ConnectionRefusedError):
                return None
        finally:
            sock.close()

    async def resolve(self, host: str, device: str | None) -> str:
        """The address of `host`, through the phone's resolver (cached for the answer's TTL)."""
        cached = self.cache.get((host, device))
        if cached and cached[1] > time.monotonic():
            return cached[0]
        addresses, ttl, _server = await self.lookup(host, device)
        if not addresses:
            raise OSError(f"no address for {host}")
        self.cache[(host, device)] = (addresses[0], time.monotonic() + ttl)
        return addresses[0]

    async def lookup(self, name: str, device: str | None) -> tuple[list[str], int, str]:
        """One A query: DNS over TLS to the Private DNS host when set (strict mode), else plain UDP."""
        query = struct.pack("!HHHHHH", secrets.randbelow(65536), 0x0100, 1, 0, 0, 0) + dns_encode_name(name) + \
            struct.pack("!HH", 1, 1)
        if self.private_dns_host and name.rstrip(".").lower() != self.private_dns_host.lower():
            server = await self.resolve(self.private_dns_host, device)  # bootstrap over plain DNS
            sock = await self.connect(server, 853, device)
            reader, writer = await asyncio.open_connection(sock=sock, ssl=self.tls,
                                                           server_hostname=self.private_dns_host)
            try:
                writer.write(struct.pack("!H", len(query)) + query)
                await writer.drain()
                length = struct.unpack("!H", await reader.readexactly(2))[0]
                answer = await reader.readexactly(length)
            finally:
                writer.close()
        else:
            server = self.dns_server
            reply = await self.exchange_udp(server, 53, query, device)
            if reply is None:
                raise TimeoutError(f"DNS server {server} did not answer")
            answer = reply
        addresses, ttl = _parse_a_records(answer)
        return addresses, ttl, server

    async def send(self, client: ClientSpec) -> tuple[int | None, bytes, str | None]:
        """Send one request; returns (status, answer body, destination address)."""
        values = self.values_for(client)
        device = self.device(client)
        if client.transport == "dns":
            assert client.query is not None
            addresses, _ttl, server = await self.lookup(render(client.query, values), device)
            return (0 if addresses else 3), b"", server
        address = client.address or await self.resolve(client.host or "", device)
        payload = self.body(client, values)
        if client.transport in ("http", "https"):
            status, body = await self.http(client, values, address, payload, device)
            return status, body, address
        if client.transport == "coap":
            code, answer_body = await self.coap(client, values, address, payload, device)
            return code, answer_body, address
        if client.transport == "ntp":
            request = bytes([0x23]) + bytes(39) + ntp_timestamp(time.time())
            answer = await self.exchange_udp(address, client.port, request, device)
            return (None if answer is None else 0), b"", address
        if client.transport == "udp":
            answer = await self.exchange_udp(address, client.port, payload, device)
            return None, answer or b"", address
        sock = await self.connect(address, client.port, device)  # tcp
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(payload)
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                return None, await asyncio.wait_for(reader.read(65536), 1.0), address
            return None, b"", address
        finally:
            writer.close()

    async def http(self, client: ClientSpec, values: dict[str, str], address: str, payload: bytes,
                   device: str | None) -> tuple[int, bytes]:
        host = client.host or address
        default_port = 443 if client.transport == "https" else 80
        headers = {"Host": host if client.port == default_port else f"{host}:{client.port}",
                   "User-Agent": self.user_agent}
        headers.update({k: render(v, values) for k, v in client.headers.items()})
        if client.body is not None or client.method in ("POST", "PUT", "PATCH"):
            headers.setdefault("Content-Type", {"json": "application/json", "form":
                                                "application/x-www-form-urlencoded"}.get(client.body_format,
                                                                                          "text/plain"))
            headers["Content-Length"] = str(len(payload))
        headers.setdefault("Connection", "Keep-Alive")
        headers.setdefault("Accept-Encoding", "gzip")
        head = f"{client.method} {render(client.path, values)} HTTP/1.1\r\n" + \
            "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        sock = await self.connect(address, client.port, device)
        tls = self.tls if client.transport == "https" else None
        reader, writer = await asyncio.open_connection(sock=sock, ssl=tls,
                                                       server_hostname=client.host if tls else None)
        try:
            writer.write(head.encode("latin-1") + payload)
            await writer.drain()
            answer = await _read_http_response(reader)
        except BaseException:
            writer.close()
            raise
        # like Android's HTTP stacks, keep the idle connection pooled for a while (the socket, and its
        # owner in /proc/net, outlive the request), then close it
        asyncio.get_running_loop().call_later(KEEP_ALIVE_IDLE, writer.close)
        return answer

    async def coap(self, client: ClientSpec, values: dict[str, str], address: str, payload: bytes,
                   device: str | None) -> tuple[int | None, bytes]:
        options = [(11, segment.encode()) for segment in render(client.path, values).strip("/").split("/") if segment]
        if client.content_format is not None:
            cf = client.content_format
            options.append((12, cf.to_bytes(max(1, (cf.bit_length() + 7) // 8), "big") if cf else b""))
        code = {"GET": 1, "POST": 2, "PUT": 3, "DELETE": 4}.get(client.method, 2)
        request = CoapMessage(0, code, secrets.randbelow(65536), secrets.token_bytes(4), options, payload)
        answer = await self.exchange_udp(address, client.port, request.encode(), device)
        if answer is None:
            return None, b""
        reply = CoapMessage.decode(answer)
        return (reply.code >> 5) * 100 + (reply.code & 0x1F), reply.payload


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _parse_a_records(message: bytes) -> tuple[list[str], int]:
    if len(message) < 12:
        raise ValueError("short DNS answer")
    _ident, flags, qdcount, ancount = struct.unpack("!HHHH", message[:8])
    if flags & 0x000F not in (0, 3):
        raise ValueError(f"DNS error rcode {flags & 0x000F}")
    offset = 12
    for _ in range(qdcount):
        offset = dns_name(message, offset)[1] + 4
    addresses: list[str] = []
    ttl = 60
    for _ in range(ancount):
        offset = dns_name(message, offset)[1]
        rtype, _rclass, rttl, length = struct.unpack("!HHIH", message[offset:offset + 10])
        offset += 10
        if rtype == 1 and length == 4:
            addresses.append(socket.inet_ntoa(message[offset:offset + 4]))
            ttl = min(ttl, rttl)
        offset += length
    return addresses, ttl


async def _read_http_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    status_line = await reader.readline()
    parts = status_line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise ValueError("not an HTTP response")
    status = int(parts[1])
    headers: dict[str, str] = {}
    while (line := (await reader.readline()).decode("latin-1")) not in ("\r\n", "\n", ""):
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif status in (204, 304):
        body = b""
    else:
        body = await reader.read(1 << 20)
    return status, body


async def _child_main() -> int:
    config = json.loads(sys.stdin.buffer.readline())
    firmware = Firmware(config)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    firmware.emit({"ready": True})
    while line := await reader.readline():
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if "event" in message:
            firmware.on_event(message["event"])
        elif "clear" in message:
            firmware.on_clear(message["clear"])
    for task in list(firmware.tasks):
        task.cancel()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_child_main()))
