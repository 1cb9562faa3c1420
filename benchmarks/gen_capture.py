"""Synthetic captures for the analyzer benchmark, written with `struct` (no scapy: ~1 GB in seconds).

Two mixes, each a pcap (Ethernet, microsecond timestamps) of one phone talking to many servers
with realistic packet sizes (1448-byte segments, delayed ACKs, 16 KiB TLS records cut across
segments, several connections interleaved, some sequence numbers near 2^32):

* `tls`: mostly TLS (about 90 % of the bytes are application data: downloads, API calls), each
  connection after a DNS lookup, plus some plaintext HTTP;
* `plain`: all plaintext HTTP (text, JSON, chunked and gzip bodies, keep-alive) and DNS.

Both carry the same planted leaks (`LEAKS`): identifiers in URL parameters, Base64 of JSON (the
2019 incident, its segments delivered out of order), a JSON body, a SHA-256 header, hex, an
identifier cut in two by a segment boundary, a gzip body, a DNS query name, and a stream whose
sequence numbers wrap around 2^32 in the middle of the leak. `generate()` returns a manifest
saying which flow leaks which identifier kind and through which encoding step, so the benchmark
checks that the analyzer found every one.

Every address only ever exists inside the file: nothing is sent anywhere.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import random
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

VERSION = 4  # bump when the output changes: cached files are regenerated
MIXES = ("tls", "plain")

IDENTIFIERS: dict[str, list[str]] = {
    "imei": ["358240051111110", "358240051111128"],
    "imsi": ["242016000012345"],
    "iccid": ["8947080012345678900"],
    "msisdn": ["+4791234567"],
    "wifi_mac": ["a4:d9:90:3c:5e:71"],
    "bt_mac": ["a4:d9:90:3c:5e:72"],
    "serial": ["NB1GAD2910402519"],
    "android_id": ["9774d56d682e549c"],
    "cell_id": ["27447298"],
}

PHONE = bytes([10, 20, 0, 23])
RESOLVER = bytes([10, 20, 0, 1])
PHONE_MAC = bytes.fromhex("daa1195c2e03")  # a randomized MAC (Android 10+), not the factory one
ROUTER_MAC = bytes.fromhex("02005e100001")
MSS = 1448

_REC = struct.Struct("<IIII")
_ETH_IP = struct.Struct("!6s6sHBBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
_UDP = struct.Struct("!HHHH")

_WORDS = [
    "the", "phone", "sends", "data", "to", "server", "when", "screen", "turns", "on", "account", "device", "settings",
    "update", "version", "build", "android", "sync", "message", "photo", "video", "music", "store", "news", "weather",
    "mail", "calendar", "contact", "search", "result", "page", "item", "price", "user", "session", "token", "region",
    "language", "country", "network", "wifi", "mobile", "battery", "storage", "location", "notification",
]


@dataclass
class Leak:
    """A planted leak: which flow sends which identifier kinds, through which encoding step."""

    name: str
    kinds: list[str]
    step: str | None  # an Encoding value the finding's chain must hold, or None
    proto: str
    src: str
    sport: int
    dst: str
    dport: int
    needle: str  # hex of bytes that reassembly must deliver contiguously (the client's payload)


@dataclass
class Manifest:
    mix: str
    size: int
    frames: int
    identifiers: dict[str, list[str]]
    leaks: list[Leak] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        leaks = [Leak(**item) for item in raw.pop("leaks")]
        return cls(**raw, leaks=leaks)


def _ip_text(raw: bytes) -> str:
    return ".".join(map(str, raw))


class Writer:
    """A pcap writer that buffers records and writes them in large blocks."""

    def __init__(self, path: Path) -> None:
        self.file = path.open("wb")
        self.file.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        self.parts: list[bytes] = []
        self.pending = 0
        self.size = 24
        self.frames = 0
        self.clock = 1_700_000_000.0
        self.ident = 0

    def frame(self, data: bytes) -> None:
        self.clock += 0.00002
        sec = int(self.clock)
        usec = int((self.clock - sec) * 1e6)
        self.parts.append(_REC.pack(sec, usec, len(data), len(data)))
        self.parts.append(data)
        self.frames += 1
        size = 16 + len(data)
        self.size += size
        self.pending += size
        if self.pending > 8 << 20:
            self.flush()

    def ip(self, src: bytes, dst: bytes, proto: int, l4: bytes) -> None:
        self.ident = (self.ident + 1) & 0xFFFF
        mac = (ROUTER_MAC, PHONE_MAC) if src == PHONE else (PHONE_MAC, ROUTER_MAC)
        head = _ETH_IP.pack(mac[0], mac[1], 0x0800, 0x45, 0, 20 + len(l4), self.ident, 0x4000, 64, proto, 0,
                            src, dst)
        self.frame(head + l4)

    def flush(self) -> None:
        self.file.write(b"".join(self.parts))
        self.parts.clear()
        self.pending = 0

    def close(self) -> None:
        self.flush()
        self.file.close()


Packet = Iterator[None]


class Tcp:
    """One TCP connection: it writes its packets as the scheduler pulls them."""

    def __init__(self, w: Writer, server: bytes, sport: int, dport: int, isn: tuple[int, int] | None = None,
                 rng: random.Random | None = None) -> None:
        rng = rng or random.Random(sport)
        self.w, self.server, self.sport, self.dport = w, server, sport, dport
        self.seq = isn[0] if isn else rng.getrandbits(32)
        self.ack = isn[1] if isn else rng.getrandbits(32)

    def pkt(self, from_client: bool, flags: int, payload: bytes = b"", seq: int | None = None) -> None:
        mine, theirs = (self.seq, self.ack) if from_client else (self.ack, self.seq)
        sport, dport = (self.sport, self.dport) if from_client else (self.dport, self.sport)
        head = _TCP.pack(sport, dport, mine if seq is None else seq, theirs, 0x50, flags, 65535, 0, 0)
        src, dst = (PHONE, self.server) if from_client else (self.server, PHONE)
        self.w.ip(src, dst, 6, head + payload)
        if seq is None:
            step = len(payload) + (1 if flags & 0x03 else 0)
            if from_client:
                self.seq = (self.seq + step) & 0xFFFFFFFF
            else:
                self.ack = (self.ack + step) & 0xFFFFFFFF

    def open(self) -> Packet:
        self.pkt(True, 0x02)
        yield
        self.pkt(False, 0x12)
        yield
        self.pkt(True, 0x10)
        yield

    def send(self, from_client: bool, data: bytes, mss: int = MSS) -> Packet:
        """Segments of `data`, the other side ACKing every second one."""
        count = 0
        for offset in range(0, len(data), mss):
            self.pkt(from_client, 0x18 if offset + mss >= len(data) else 0x10, data[offset : offset + mss])
            count += 1
            if count % 2 == 0:
                self.pkt(not from_client, 0x10)
            yield
        if count % 2:
            self.pkt(not from_client, 0x10)
            yield

    def close(self) -> Packet:
        self.pkt(True, 0x11)
        yield
        self.pkt(False, 0x11)
        yield
        self.pkt(True, 0x10)
        yield


def dns(w: Writer, name: str, answer: bytes, sport: int) -> Packet:
    qname = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\x00"
    query = struct.pack("!HHHHHH", sport, 0x0100, 1, 0, 0, 0) + qname + b"\x00\x01\x00\x01"
    w.ip(PHONE, RESOLVER, 17, _UDP.pack(sport, 53, 8 + len(query), 0) + query)
    yield
    reply = (struct.pack("!HHHHHH", sport, 0x8180, 1, 1, 0, 0) + qname + b"\x00\x01\x00\x01"
             + b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x02\x58\x00\x04" + answer)
    w.ip(RESOLVER, PHONE, 17, _UDP.pack(53, sport, 8 + len(reply), 0) + reply)
    yield


def client_hello(name: str, rng: random.Random) -> bytes:
    host = name.encode()
    sni = struct.pack("!HHHBH", 0, len(host) + 5, len(host) + 3, 0, len(host)) + host
    versions = b"\x00\x2b\x00\x05\x04\x03\x04\x03\x03"
    exts = sni + versions + b"\x00\x15\x00\x80" + bytes(128)  # padding extension
    body = (b"\x03\x03" + rng.randbytes(32) + b"\x20" + rng.randbytes(32) + b"\x00\x06\x13\x01\x13\x02\xc0\x2f"
            + b"\x01\x00" + struct.pack("!H", len(exts)) + exts)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


class Pools:
    """Byte pools sliced for payloads: random bytes (ciphertext) and text."""

    def __init__(self, rng: random.Random) -> None:
        self.cipher = rng.randbytes(4 << 20)
        words = [rng.choice(_WORDS) if rng.random() < 0.9 else str(rng.randrange(100000)) for _ in range(700_000)]
        self.text = " ".join(words).encode()
        self.gz = [gzip.compress(self.text[i * 50_000 : i * 50_000 + size], 6)
                   for i, size in enumerate((8_000, 40_000, 120_000, 300_000))]

    def opaque(self, rng: random.Random, size: int) -> bytes:
        start = rng.randrange(len(self.cipher) - size) if size < len(self.cipher) else 0
        return self.cipher[start : start + size]

    def words(self, rng: random.Random, size: int) -> bytes:
        start = rng.randrange(len(self.text) - size) if size < len(self.text) else 0
        return self.text[start : start + size]


def tls_records(pools: Pools, rng: random.Random, size: int) -> bytes:
    out = []
    while size > 0:
        n = min(size, 16384)
        out.append(b"\x17\x03\x03" + struct.pack("!H", n + 17) + pools.opaque(rng, n + 17))
        size -= n
    return b"".join(out)


def server_address(rng: random.Random) -> bytes:
    return bytes([rng.choice((142, 172, 157, 31, 104, 151)), rng.randrange(256), rng.randrange(256),
                  rng.randrange(1, 255)])


def tls_session(w: Writer, pools: Pools, rng: random.Random, port: int, download: int) -> Packet:
    server = server_address(rng)
    name = f"{rng.choice(_WORDS)}{rng.randrange(100)}.example-cdn.net"
    yield from dns(w, name, server, (port + 7) & 0xFFFF)
    isn = None
    if rng.random() < 0.05:  # some streams wrap around 2^32
        isn = (0xFFFFFFFF - rng.randrange(200_000), 0xFFFFFFFF - rng.randrange(download + 1))
    conn = Tcp(w, server, port, 443, isn, rng)
    yield from conn.open()
    yield from conn.send(True, client_hello(name, rng))
    handshake = (b"\x16\x03\x03" + struct.pack("!H", 4000) + pools.opaque(rng, 4000)
                 + b"\x14\x03\x03\x00\x01\x01" + tls_records(pools, rng, 60))
    yield from conn.send(False, handshake)
    yield from conn.send(True, b"\x14\x03\x03\x00\x01\x01" + tls_records(pools, rng, 300))
    left = download
    while left > 0:
        chunk = min(left, rng.choice((30_000, 200_000, 1_000_000)))
        yield from conn.send(True, tls_records(pools, rng, rng.randrange(200, 800)))
        yield from conn.send(False, tls_records(pools, rng, chunk))
        left -= chunk
    yield from conn.close()


def http_session(w: Writer, pools: Pools, rng: random.Random, port: int, budget: int) -> Packet:
    server = server_address(rng)
    host = f"{rng.choice(_WORDS)}.example-news.org"
    yield from dns(w, host, server, (port + 11) & 0xFFFF)
    conn = Tcp(w, server, port, 80, None, rng)
    yield from conn.open()
    for _ in range(rng.randrange(1, 5)):
        path = "/" + "/".join(rng.choice(_WORDS) for _ in range(3))
        request = (f"GET {path}?page={rng.randrange(50)}&lang=en HTTP/1.1\r\nHost: {host}\r\n"
                   "User-Agent: Dalvik/2.1.0 (Linux; U; Android 10; Nokia 7 plus Build/QKQ1)\r\n"
                   f"Accept: */*\r\nCookie: session={pools.opaque(rng, 12).hex()}\r\n"
                   "Accept-Encoding: gzip\r\nConnection: keep-alive\r\n\r\n").encode()
        yield from conn.send(True, request)
        style = rng.random()
        size = max(2000, min(budget, int(rng.expovariate(1 / 60_000))))
        if style < 0.2:
            body = rng.choice(pools.gz)
            head = ("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Encoding: gzip\r\n"
                    f"Content-Length: {len(body)}")
        elif style < 0.4:
            text = pools.words(rng, size)
            body = b"".join(b"%x\r\n%s\r\n" % (len(text[i : i + 8192]), text[i : i + 8192])
                            for i in range(0, len(text), 8192)) + b"0\r\n\r\n"
            head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked"
        else:
            body = pools.words(rng, size)
            head = f"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {len(body)}"
        yield from conn.send(False, head.encode() + b"\r\nServer: nginx\r\nCache-Control: max-age=60\r\n\r\n" + body)
        budget -= len(body)
    yield from conn.close()


def dns_burst(w: Writer, rng: random.Random, port: int) -> Packet:
    for i in range(rng.randrange(1, 6)):
        name = f"{rng.choice(_WORDS)}{rng.randrange(1000)}.{rng.choice(_WORDS)}.example.com"
        yield from dns(w, name, server_address(rng), (port + i * 3) & 0xFFFF)


# --- planted leaks ---------------------------------------------------------------------------------


def _post(path: str, host: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def leak_payloads() -> list[tuple[str, list[str], str | None, bytes]]:
    """(name, kinds, required encoding step, the client's whole payload) per leak."""
    ids = IDENTIFIERS
    imei, imei2 = ids["imei"]
    report = {"REGVER": "4.0", "MEID": imei[:14], "MODEL": "HMD-Nokia 7 plus", "SIM1ICCID": ids["iccid"][0],
              "SIM1LTEIMSI": ids["imsi"][0], "IMEI1": imei, "IMEI2": imei2, "MACID": ids["wifi_mac"][0]}
    zzhc = base64.encodebytes(json.dumps(report, separators=(",", ":")).encode())
    zzhc_req = (b"POST / HTTP/1.1\r\nContent-Type: application/encrypted-json\r\nHost: zzhc.vnet.cn\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(zzhc), zzhc))
    gz = gzip.compress(json.dumps({"aid": ids["android_id"][0], "ts": 1}).encode())
    return [
        ("url-param", ["imei", "wifi_mac"], None,
         f"GET /api/v1/register?imei={imei}&mac={ids['wifi_mac'][0].replace(':', '%3A')}&v=2 HTTP/1.1\r\n"
         "Host: reg.example-oem.com\r\nUser-Agent: okhttp/3.12\r\n\r\n".encode()),
        ("base64-json", ["imei", "iccid", "imsi"], "base64", zzhc_req),
        ("json-body", ["iccid", "msisdn"], None,
         _post("/v2/device", "api.example-oem.com",
               json.dumps({"iccid": ids["iccid"][0], "msisdn": ids["msisdn"][0], "os": "10"}).encode())),
        ("sha256-header", ["imei"], "sha256",
         (f"GET /config HTTP/1.1\r\nHost: cfg.example-ads.com\r\nX-Device: "
          f"{hashlib.sha256(imei.encode()).hexdigest()}\r\n\r\n").encode()),
        ("hex-body", ["serial"], "hex",
         _post("/log", "log.example-oem.com", b'{"sn":"' + ids["serial"][0].encode().hex().encode() + b'"}')),
        ("split-segments", ["imei"], None,
         (f"GET /ping HTTP/1.1\r\nHost: ping.example-oem.com\r\nX-Imei: {imei2}\r\nX-Pad: "
          + "x" * 40 + "\r\n\r\n").encode()),
        ("gzip-body", ["android_id"], "gzip",
         _post("/telemetry", "t.example-oem.com", gz, "Content-Encoding: gzip\r\n")),
        ("seq-wraparound", ["bt_mac"], None,
         _post("/bt", "bt.example-oem.com", json.dumps({"bt": ids["bt_mac"][0]}).encode())),
    ]


def leak_session(w: Writer, index: int, port: int, leaks: list[Leak]) -> Packet:
    name, kinds, step, payload = leak_payloads()[index]
    server = bytes([198, 51, 100, 10 + index])
    isn = (0xFFFFFFFF - 60, 12345) if name == "seq-wraparound" else None
    conn = Tcp(w, server, port, 80, isn)
    leaks.append(Leak(name, kinds, step, "tcp", _ip_text(PHONE), port, _ip_text(server), 80, payload.hex()))
    yield from conn.open()
    if name == "split-segments":  # the IMEI is cut in two by the segment boundary
        cut = payload.index(IDENTIFIERS["imei"][1].encode()) + 7
        yield from conn.send(True, payload[:cut])
        yield from conn.send(True, payload[cut:])
    elif name == "base64-json":  # 160-byte segments; the second and third swapped on the wire
        base = conn.seq
        pieces = [(off, payload[off : off + 160]) for off in range(0, len(payload), 160)]
        order = pieces[:1] + pieces[2:3] + pieces[1:2] + pieces[3:]
        for off, piece in order:
            conn.pkt(True, 0x18, piece, seq=(base + off) & 0xFFFFFFFF)
            yield
        conn.pkt(True, 0x18, pieces[-1][1], seq=(base + pieces[-1][0]) & 0xFFFFFFFF)  # a retransmission
        conn.seq = (base + len(payload)) & 0xFFFFFFFF
        conn.pkt(False, 0x10)
        yield
    else:
        yield from conn.send(True, payload, mss=48 if name == "seq-wraparound" else MSS)
    yield from conn.send(False, b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}')
    yield from conn.close()


def dns_leak(w: Writer, port: int, leaks: list[Leak]) -> Packet:
    name = f"{IDENTIFIERS['android_id'][0]}.metrics.example-oem.com"
    leaks.append(Leak("dns-qname", ["android_id"], "dns-qname", "udp", _ip_text(PHONE), port,
                      _ip_text(RESOLVER), 53, name.split(".")[0].encode().hex()))
    yield from dns(w, name, bytes([198, 51, 100, 99]), port)


# --- the mix ---------------------------------------------------------------------------------------


def generate(path: Path, mix: str, size: int, seed: int = 1) -> Manifest:
    """Write a capture of about `size` bytes of `mix` to `path`; return what was planted."""
    if mix not in MIXES:
        raise ValueError(f"mix must be one of {MIXES}")
    rng = random.Random(seed)
    pools = Pools(rng)
    w = Writer(path)
    leaks: list[Leak] = []
    planted = len(leak_payloads()) + 1
    marks = [size * (i + 1) // (planted + 1) for i in range(planted)]
    active: list[Packet] = []
    port = 32768

    def next_port() -> int:
        nonlocal port
        port = port + 13 if port < 60000 else 32768 + rng.randrange(13)
        return port

    def new_session() -> Packet:
        roll = rng.random()
        if mix == "tls":
            if roll < 0.88:
                download = int(min(8 << 20, rng.expovariate(1 / 700_000)))
                return tls_session(w, pools, rng, next_port(), download)
            if roll < 0.97:
                return http_session(w, pools, rng, next_port(), 80_000)
            return dns_burst(w, rng, next_port())
        if roll < 0.85:
            return http_session(w, pools, rng, next_port(), 600_000)
        return dns_burst(w, rng, next_port())

    concurrency = 12
    leak_index = 0
    try:
        while True:
            while leak_index < planted and w.size >= marks[leak_index]:
                if leak_index < planted - 1:
                    active.append(leak_session(w, leak_index, next_port(), leaks))
                else:
                    active.append(dns_leak(w, next_port(), leaks))
                leak_index += 1
            while w.size < size and len(active) < concurrency:
                active.append(new_session())
            if not active:
                break
            i = rng.randrange(len(active))
            try:
                next(active[i])
            except StopIteration:
                active[i] = active[-1]
                active.pop()
    finally:
        w.close()
    if len(leaks) != planted:
        raise RuntimeError(f"planted {len(leaks)} of {planted} leaks: capture too small")
    return Manifest(mix, w.size, w.frames, IDENTIFIERS, leaks)


def cached(directory: Path, mix: str, size: int, seed: int = 1) -> tuple[Path, Manifest]:
    """A capture from the cache (benchmarks/.data/), generated when missing or stale."""
    directory.mkdir(parents=True, exist_ok=True)
    stem = f"{mix}-{size >> 20}M-s{seed}-v{VERSION}"
    path, meta = directory / f"{stem}.pcap", directory / f"{stem}.json"
    if path.exists() and meta.exists():
        manifest = Manifest.from_json(meta.read_text())
        if path.stat().st_size == manifest.size:
            return path, manifest
    partial = directory / f"{stem}.pcap.part"
    manifest = generate(partial, mix, size, seed)
    os.replace(partial, path)
    meta.write_text(manifest.to_json())
    return path, manifest


if __name__ == "__main__":
    import argparse
    import time

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("output", type=Path)
    parser.add_argument("--mix", choices=MIXES, default="tls")
    parser.add_argument("--size-mb", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    began = time.perf_counter()
    result = generate(args.output, args.mix, args.size_mb << 20, args.seed)
    print(f"{args.output}: {result.size >> 20} MB, {result.frames} frames, {len(result.leaks)} leaks, "
          f"{time.perf_counter() - began:.1f} s")
