"""The simulated internet: the servers a virtual phone's firmware talks to, inside its internet namespace.

One process (`ip netns exec ph-TAG-inet python -m harness.virtual.internet CONFIG`) serves:

- DNS on UDP/TCP 53 (and DNS over TLS on 853), authoritative for the zone: exact names and
  `*.suffix` wildcards; anything else is NXDOMAIN, a name without the asked type is NODATA.
- HTTP on 80, 8080, 6001, 9998, 9999; HTTPS on 443 and 8443 with real TLS (a CA made at start,
  see tls.py). Answers come from a reply table keyed by host and path: China Telecom's
  self-registration answers a non-zero resultCode by default, so the 2019 client stays
  unregistered and keeps sending; pass `replies=` to change that.
- NTP on UDP 123, CoAP on UDP 5683 (same reply table), echo on UDP and TCP 7.

Every address of the zone exists only inside the internet namespace (PhoneNetwork adds them).
Each request is logged (no payloads: they may hold identifiers) to a JSON-lines file that
`Internet.requests()` reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.errors import PhonehomeError

# Names the simulated internet answers for. Addresses are the simulation's own; 42.99.2.15 is the
# one some China Telecom clients hard-code (FACTS.md).
DEFAULT_ZONE: dict[str, str] = {
    "zzhc.vnet.cn": "42.99.2.15",                 # China Telecom self-registration
    "dm.wo.com.cn": "220.206.194.41",             # China Unicom device management (port 6001)
    "m.fxltsbl.com": "117.161.2.90",              # China Mobile LwM2M/CoAP registration
    "shipei.fxltsbl.com": "117.161.2.91",
    "time.android.com": "216.239.35.0",
    "2.android.pool.ntp.org": "129.240.2.6",
    "pool.ntp.org": "129.240.2.6",
    "connectivitycheck.gstatic.com": "142.250.74.3",
    "www.google.com": "142.250.74.4",
    "android.googleapis.com": "142.250.74.10",
    "play.googleapis.com": "142.250.74.10",
    "dns.google": "8.8.8.8",
    "one.one.one.one": "1.1.1.1",
    "activation.example.no": "193.71.27.10",      # the Norwegian market's approved activation endpoint
    "api.weather.example": "203.0.113.20",
    "collect.appmetrics.example": "203.0.113.50",  # the analytics SDK of devices/analytics-2021.yaml
    "*.b.appmetrics.example": "203.0.113.51",
    "*.canary.phonehome.test": "198.18.0.77",     # capture canaries: any fresh name answers
    "canary.phonehome.test": "198.18.0.77",
}
HTTP_PORTS = (80, 8080, 6001, 9998, 9999)
HTTPS_PORTS = (443, 8443)
DNS_TTL = 60
# Servers listen on every address of the internet namespace (all of them simulated, none elsewhere).
ANY_ADDRESS = "0.0.0.0"  # noqa: S104


@dataclass(frozen=True, slots=True)
class Reply:
    status: int = 200
    body: str = "ok\n"
    content_type: str = "text/plain"


_CT_FAILURE = Reply(200, '{"resultCode":"1","resultDesc":"Failed"}', "application/json")
# Keys: "host/path" (exact), "host/*" (any path), "*/path" (any host); see Internet.reply_for.
DEFAULT_REPLIES: dict[str, Reply] = {
    "zzhc.vnet.cn/*": _CT_FAILURE,
    "42.99.2.15/*": _CT_FAILURE,
    "dm.wo.com.cn/*": Reply(200, '{"resultCode":"1"}', "application/json"),
    "*/generate_204": Reply(204, "", "text/plain"),
    "activation.example.no/v1/activate": Reply(200, '{"status":"activated"}', "application/json"),
    "android.googleapis.com/checkin": Reply(200, "", "application/x-protobuf"),
}


def zone_lookup(zone: Mapping[str, str], name: str) -> str | None:
    """The address of `name`: an exact entry, else the longest matching `*.suffix` wildcard."""
    name = name.lower().rstrip(".")
    if name in zone:
        return zone[name]
    best: tuple[int, str] | None = None
    for key, address in zone.items():
        if key.startswith("*.") and name.endswith(key[1:]) and (best is None or len(key) > best[0]):
            best = (len(key), address)
    return best[1] if best else None


def reply_for(replies: Mapping[str, Reply], hosts: list[str], path: str) -> Reply:
    path = path.split("?", 1)[0] or "/"
    for host in hosts:
        for key in (f"{host}{path}", f"{host}/*"):
            if key in replies:
                return replies[key]
    return replies.get(f"*{path}", Reply())


# --- the parent's handle ---------------------------------------------------------------------

class Internet:
    """The servers of one phone's simulated internet, run as a subprocess inside its namespace."""

    def __init__(self, network: Any, zone: dict[str, str] | None = None, *,
                 replies: Mapping[str, Reply] | None = None, addresses: Iterable[str] = ()) -> None:
        self.network = network
        self.zone = {k.lower(): v for k, v in {**DEFAULT_ZONE, **(zone or {})}.items()}
        self.replies = {**DEFAULT_REPLIES, **(replies or {})}
        self.extra_addresses = set(addresses)
        self.directory = Path(network.run_dir) / "internet"
        self.log_path = self.directory / "requests.jsonl"
        self.ca_file = Path(network.run_dir) / "ca.pem"
        self._proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def for_spec(cls, network: Any, spec: Any, *, replies: Mapping[str, Reply] | None = None) -> Internet:
        """The internet a profile's firmware expects: its `zone:`, plus a server for every host and
        hard-coded address its clients use (a name nobody listed gets a free address), so a profile
        with new hosts works without editing this module."""
        zone = {k.lower(): v for k, v in {**DEFAULT_ZONE, **spec.zone}.items()}
        wanted = [c.host for c in spec.clients if c.host] + ([spec.private_dns_host] if spec.private_dns_host else [])
        taken = set(zone.values())
        free = (str(ipaddress.IPv4Address("198.18.1.0") + i) for i in range(1, 60000))
        for host in wanted:
            if zone_lookup(zone, host) is None:
                address = next(a for a in free if a not in taken)
                zone[host.lower().rstrip(".")] = address
                taken.add(address)
        return cls(network, zone, replies=replies, addresses=[c.address for c in spec.clients if c.address])

    def start(self) -> None:
        """Add the zone's addresses to the namespace, make certificates, start and wait for the servers."""
        if self._proc is not None:
            return
        from harness.virtual.tls import make_certificates

        addresses = sorted(set(self.zone.values()) | self.extra_addresses | {self.network.dns_server})
        self.network.add_public_addresses(addresses)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        ca, cert, key = make_certificates(self.directory, self.zone, addresses)
        self.ca_file.write_bytes(ca.read_bytes())
        self.log_path.write_text("")
        config = {"zone": self.zone, "replies": {k: asdict(v) for k, v in self.replies.items()},
                  "addresses": addresses, "cert": str(cert), "key": str(key), "log": str(self.log_path)}
        config_path = self.directory / "config.json"
        config_path.write_text(json.dumps(config))
        stderr_path = self.directory / "stderr.log"
        with stderr_path.open("wb") as stderr:
            # stdin stays open while we live: its end tells the servers to stop, even after a crash here
            self._proc = subprocess.Popen(
                self.network.internet_exec_argv([sys.executable, "-m", "harness.virtual.internet", str(config_path)]),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=_child_env())
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if line.strip() != b"ready":
            self.stop()
            detail = stderr_path.read_text(errors="replace").strip().splitlines()
            raise PhonehomeError(f"simulated internet did not start: {detail[-1] if detail else 'no output'}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def requests(self) -> list[dict[str, Any]]:
        """What the servers received so far (time, proto, client, dst, dport, host, path, status; no payloads)."""
        try:
            text = self.log_path.read_text()
        except OSError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def lookup(self, name: str) -> str | None:
        return zone_lookup(self.zone, name)

    def __enter__(self) -> Internet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _child_env() -> dict[str, str]:
    """The environment for our own subprocesses: this checkout's `harness` first on the path."""
    import os

    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


# --- wire formats (shared with the firmware) ----------------------------------------------------

def dns_name(data: bytes, offset: int) -> tuple[str, int]:
    """Read a (possibly compressed) name; returns it and the offset after it."""
    labels: list[str] = []
    end = None
    for _ in range(128):
        length = data[offset]
        if length & 0xC0 == 0xC0:
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | data[offset + 1]
            continue
        offset += 1
        if length == 0:
            break
        labels.append(data[offset:offset + length].decode("latin-1"))
        offset += length
    return ".".join(labels), end if end is not None else offset


def dns_encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode()
        if not 0 < len(raw) < 64:
            raise ValueError(f"DNS label of {len(raw)} bytes")
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def dns_answer(zone: Mapping[str, str], query: bytes) -> bytes | None:
    """The authoritative answer to one DNS query message, or None for garbage."""
    if len(query) < 12:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qdcount != 1:
        return None
    try:
        name, offset = dns_name(query, 12)
        qtype, qclass = struct.unpack("!HH", query[offset:offset + 4])
    except (IndexError, struct.error):
        return None
    question = query[12:offset + 4]
    address = zone_lookup(zone, name)
    rcode = 0 if address is not None else 3
    answers = b""
    if address is not None and qtype in (1, 255) and qclass == 1:
        answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, DNS_TTL, 4) + socket.inet_aton(address)
    header_flags = 0x8000 | 0x0400 | (flags & 0x0100) | 0x0080 | rcode  # QR AA RD(copied) RA
    header = struct.pack("!HHHHHH", ident, header_flags, 1, 1 if answers else 0, 0, 0)
    return header + question + answers


NTP_EPOCH = 2208988800


def ntp_timestamp(now: float) -> bytes:
    seconds = int(now) + NTP_EPOCH
    return struct.pack("!II", seconds & 0xFFFFFFFF, int((now % 1) * 2**32))


def ntp_reply(request: bytes, now: float) -> bytes | None:
    if len(request) < 48 or request[0] & 0x07 != 3:
        return None
    version = (request[0] >> 3) & 0x07
    stamp = ntp_timestamp(now)
    return (bytes([(version << 3) | 4, 2, request[2], 0xEC]) + struct.pack("!II", 0x100, 0x200) + b"GOOG"
            + stamp + request[40:48] + stamp + stamp)


@dataclass(slots=True)
class CoapMessage:
    type: int       # 0 CON, 1 NON, 2 ACK, 3 RST
    code: int       # class << 5 | detail
    message_id: int
    token: bytes
    options: list[tuple[int, bytes]]
    payload: bytes

    def encode(self) -> bytes:
        out = bytearray([0x40 | (self.type << 4) | len(self.token), self.code])
        out += struct.pack("!H", self.message_id) + self.token
        last = 0
        for number, value in sorted(self.options, key=lambda o: o[0]):
            delta, length = number - last, len(value)
            last = number
            head = bytearray([0])
            for shift, part in ((4, delta), (0, length)):
                if part < 13:
                    head[0] |= part << shift
                elif part < 269:
                    head[0] |= 13 << shift
                    head.append(part - 13)
                else:
                    head[0] |= 14 << shift
                    head += struct.pack("!H", part - 269)
            out += head + value
        if self.payload:
            out += b"\xff" + self.payload
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> CoapMessage:
        if len(data) < 4 or data[0] >> 6 != 1:
            raise ValueError("not CoAP version 1")
        tkl = data[0] & 0x0F
        offset, number, options = 4 + tkl, 0, []
        while offset < len(data) and data[offset] != 0xFF:
            byte = data[offset]
            offset += 1
            parts = []
            for nibble in (byte >> 4, byte & 0x0F):
                if nibble == 13:
                    parts.append(data[offset] + 13)
                    offset += 1
                elif nibble == 14:
                    parts.append(struct.unpack("!H", data[offset:offset + 2])[0] + 269)
                    offset += 2
                elif nibble == 15:
                    raise ValueError("reserved CoAP option nibble")
                else:
                    parts.append(nibble)
            number += parts[0]
            options.append((number, data[offset:offset + parts[1]]))
            offset += parts[1]
        payload = data[offset + 1:] if offset < len(data) else b""
        return cls((data[0] >> 4) & 0x03, data[1], struct.unpack("!H", data[2:4])[0], data[4:4 + tkl], options,
                   payload)

    @property
    def path(self) -> str:
        return "/" + "/".join(v.decode("utf-8", "replace") for n, v in self.options if n == 11)


# --- the servers (in the child) ---------------------------------------------------------------

class Servers:
    def __init__(self, config: dict[str, Any]) -> None:
        self.zone: dict[str, str] = config["zone"]
        self.replies = {k: Reply(**v) for k, v in config["replies"].items()}
        self.addresses: list[str] = config["addresses"]
        self.names_by_address: dict[str, list[str]] = {}
        for name, address in self.zone.items():
            if not name.startswith("*."):
                self.names_by_address.setdefault(address, []).append(name)
        self.log_file = Path(config["log"]).open("a", buffering=1)  # noqa: SIM115 (lives as long as the servers)
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.load_cert_chain(config["cert"], config["key"])

    def log(self, **entry: Any) -> None:
        entry["time"] = round(time.time(), 6)
        self.log_file.write(json.dumps(entry) + "\n")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        servers: list[asyncio.base_events.Server] = []
        for port in HTTP_PORTS:
            servers.append(await asyncio.start_server(self._http_handler("http", port), ANY_ADDRESS, port))
        for port in HTTPS_PORTS:
            servers.append(await asyncio.start_server(self._http_handler("https", port), ANY_ADDRESS, port,
                                                      ssl=self.tls))
        servers.append(await asyncio.start_server(self._dns_tcp("dns-tcp"), ANY_ADDRESS, 53))
        servers.append(await asyncio.start_server(self._dns_tcp("dot"), ANY_ADDRESS, 853, ssl=self.tls))
        servers.append(await asyncio.start_server(self._echo_tcp, ANY_ADDRESS, 7))
        for address in self.addresses:
            for port, handler in ((53, self._dns_udp), (123, self._ntp), (5683, self._coap), (7, self._echo_udp)):
                await loop.create_datagram_endpoint(lambda h=handler, p=port: _Datagram(h, p),  # type: ignore[misc]
                                                    local_addr=(address, port))
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        parent = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(parent), sys.stdin)
        watch = asyncio.ensure_future(parent.read())  # returns at EOF: our parent is gone
        watch.add_done_callback(lambda _: stop.set())
        print("ready", flush=True)
        await stop.wait()
        watch.cancel()
        for server in servers:
            server.close()

    # HTTP(S) ---------------------------------------------------------------------------------

    def _http_handler(self, proto: str, port: int) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername") or ("?", 0)
            local = writer.get_extra_info("sockname") or ("?", 0)
            try:
                while True:
                    request = await _read_http_request(reader)
                    if request is None:
                        break
                    method, path, headers, body = request
                    host = headers.get("host", "").split(":")[0].lower()
                    hosts = [h for h in (host, *self.names_by_address.get(local[0], []), local[0]) if h]
                    reply = reply_for(self.replies, hosts, path)
                    self.log(proto=proto, client=peer[0], dst=local[0], dport=port, host=host, method=method,
                             path=path.split("?", 1)[0], bytes=len(body), status=reply.status)
                    payload = reply.body.encode()
                    head = (f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'OK')}\r\n"
                            f"Content-Type: {reply.content_type}\r\nContent-Length: {len(payload)}\r\n"
                            "Server: phonehome-sim\r\n")
                    close = headers.get("connection", "").lower() == "close"
                    head += "Connection: close\r\n\r\n" if close else "\r\n"
                    writer.write(head.encode() + payload)
                    await writer.drain()
                    if close:
                        break
            except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError, ValueError):
                pass
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

        return handle

    # DNS -------------------------------------------------------------------------------------

    def _dns_udp(self, data: bytes, peer: tuple[str, int], local: tuple[str, int]) -> bytes | None:
        answer = dns_answer(self.zone, data)
        self._log_dns("dns", data, peer, local, answer)
        return answer

    def _log_dns(self, proto: str, data: bytes, peer: tuple[str, int], local: tuple[str, int],
                 answer: bytes | None) -> None:
        try:
            name = dns_name(data, 12)[0]
        except (IndexError, UnicodeDecodeError):
            name = ""
        rcode = answer[3] & 0x0F if answer else None
        self.log(proto=proto, client=peer[0], dst=local[0], dport=local[1], host=name, rcode=rcode)

    def _dns_tcp(self, proto: str) -> Any:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peername") or ("?", 0)
            local = writer.get_extra_info("sockname") or ("?", 0)
            try:
                while True:
                    length = struct.unpack("!H", await reader.readexactly(2))[0]
                    query = await reader.readexactly(length)
                    answer = dns_answer(self.zone, query)
                    self._log_dns(proto, query, peer, local, answer)
                    if answer is None:
                        break
                    writer.write(struct.pack("!H", len(answer)) + answer)
                    await writer.drain()
            except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        return handle

    # UDP services ----------------------------------------------------------------------------

    def _ntp(self, data: bytes, peer: tuple[str, int], local: tuple[str, int]) -> bytes | None:
        self.log(proto="ntp", client=peer[0], dst=local[0], dport=local[1])
        return ntp_reply(data, time.time())

    def _coap(self, data: bytes, peer: tuple[str, int], local: tuple[str, int]) -> bytes | None:
        try:
            request = CoapMessage.decode(data)
        except (ValueError, IndexError, struct.error):
            return None
        reply = reply_for(self.replies, [*self.names_by_address.get(local[0], []), local[0]], request.path)
        code = 0x44 if request.code == 2 else 0x45  # 2.04 Changed for POST, else 2.05 Content
        self.log(proto="coap", client=peer[0], dst=local[0], dport=local[1], path=request.path,
                 bytes=len(request.payload), status=(code >> 5) * 100 + (code & 0x1F))
        if request.type not in (0, 1):
            return None
        answer = CoapMessage(2 if request.type == 0 else 1, code, request.message_id, request.token,
                             [(12, b"\x32")] if reply.content_type == "application/json" else [],
                             reply.body.encode())
        return answer.encode()

    def _echo_udp(self, data: bytes, peer: tuple[str, int], local: tuple[str, int]) -> bytes | None:
        self.log(proto="udp-echo", client=peer[0], dst=local[0], dport=local[1], bytes=len(data))
        return data

    async def _echo_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        local = writer.get_extra_info("sockname") or ("?", 0)
        total = 0
        try:
            while data := await reader.read(65536):
                total += len(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.log(proto="tcp-echo", client=peer[0], dst=local[0], dport=local[1], bytes=total)
            writer.close()


class _Datagram(asyncio.DatagramProtocol):
    def __init__(self, handler: Any, port: int) -> None:
        self.handler = handler
        self.port = port
        self.transport: Any = None  # the selector datagram transport (not a DatagramTransport subclass)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        local = self.transport.get_extra_info("sockname")
        answer = self.handler(data, addr, local)
        if answer is not None:
            self.transport.sendto(answer, addr)


_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            500: "Internal Server Error"}
MAX_BODY = 16 * 1024 * 1024


async def _read_http_request(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes] | None:
    """One HTTP/1.1 request (Content-Length or chunked body); None at a clean end of the connection."""
    line = await reader.readline()
    if not line:
        return None
    parts = line.decode("latin-1").split()
    if len(parts) != 3:
        raise ValueError("bad request line")
    method, path, _version = parts
    headers: dict[str, str] = {}
    while True:
        header = (await reader.readline()).decode("latin-1")
        if header in ("\r\n", "\n", ""):
            break
        key, _, value = header.partition(":")
        headers[key.strip().lower()] = value.strip()
    body = b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                break
            body += await reader.readexactly(size)
            await reader.readline()
            if len(body) > MAX_BODY:
                raise ValueError("body too large")
    elif headers.get("content-length"):
        length = int(headers["content-length"])
        if length > MAX_BODY:
            raise ValueError("body too large")
        body = await reader.readexactly(length)
    return method, path, headers, body


def main(argv: list[str]) -> int:
    config = json.loads(Path(argv[0]).read_text())
    asyncio.run(Servers(config).run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
