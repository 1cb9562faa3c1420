"""The analyzer's data model: what each stage hands the next, and the findings it reports.

Stages (one way): reader -> flows -> decoders/unwrapping/matcher -> policy -> Report.
  * `reader` and `flows` yield `StreamUnit`s: contiguous payload bytes of one direction of one
    flow, with the frame each byte came from.
  * decoders find `Hit`s (an identifier, or the canary, inside a unit, with its encoding chain)
    and `Contact`s (host names a flow used: DNS question, TLS SNI, HTTP Host, CoAP Uri-Host) and
    DNS answers (name -> addresses).
  * policy turns hits and contacts into `Finding`s; `Report` is the findings JSON.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any


class Status(StrEnum):
    """One meaning everywhere: CLI exit code, findings JSON, pytest gate."""

    CLEAN = "clean"
    LEAK = "leak"
    UNVERIFIED = "unverified"

    @property
    def exit_code(self) -> int:
        return {Status.CLEAN: 0, Status.LEAK: 1, Status.UNVERIFIED: 2}[self]


class ExitCode(IntEnum):
    CLEAN = 0
    LEAK = 1
    UNVERIFIED = 2
    INTERNAL_ERROR = 3


class Rule(StrEnum):
    """Why a finding was raised."""

    PLAINTEXT_IDENTIFIER = "plaintext-identifier"
    UNAPPROVED_ACTIVATION_CLIENT = "unapproved-activation-client"
    UNAPPROVED_COUNTRY = "unapproved-country"
    ACTIVATION_PACKAGE_INSTALLED = "activation-package-installed"
    NEW_DESTINATION = "new-destination"


class Encoding(StrEnum):
    """Steps of an encoding chain, outermost first: where in the traffic, then each transform.

    Locations say which part of which protocol held the bytes; transforms say what was undone
    to reach the identifier. `plain` means the identifier's text appeared as is.
    """

    # locations
    TCP_PAYLOAD = "tcp-payload"
    UDP_PAYLOAD = "udp-payload"
    IP_PAYLOAD = "ip-payload"
    HTTP_REQUEST_LINE = "http-request-line"
    HTTP_HEADER = "http-header"
    HTTP_BODY = "http-body"
    HTTP_CHUNKED = "http-chunked"
    DNS_QNAME = "dns-qname"
    DNS_ANSWER = "dns-answer"
    TLS_SNI = "tls-sni"
    COAP_URI = "coap-uri"
    COAP_PAYLOAD = "coap-payload"
    WEBSOCKET = "websocket"  # a ws:// message, unmasked
    IPV6_ADDRESS = "ipv6-address"  # the phone's own address, in every packet's header
    QUIC_INITIAL = "quic-initial"  # a QUIC client's ClientHello, from Initial packets anyone can decrypt
    # transforms
    PLAIN = "plain"
    URL = "url"
    FORM = "form"
    JSON = "json"
    JSON_ESCAPE = "json-escape"
    HEX = "hex"
    BASE64 = "base64"
    BASE64URL = "base64url"
    GZIP = "gzip"
    DEFLATE = "deflate"
    ZLIB = "zlib"
    MD5 = "md5"
    SHA1 = "sha1"
    SHA256 = "sha256"
    UTF16LE = "utf16le"
    UTF16BE = "utf16be"
    TBCD = "tbcd"
    BCD = "bcd"
    SEPARATED = "separated"
    DECIMAL = "decimal"
    # added by the analyzer-matcher engineer
    TLS_HANDSHAKE = "tls-handshake"  # location: other plaintext TLS handshake bytes (certificates)
    DNS_LABELS = "dns-labels"  # transform: the labels of a name joined (identifier split over labels)
    BASE32 = "base32"
    BINARY = "binary"  # the identifier's raw bytes (a MAC's 6 octets, a MEID's 7)
    ZIP = "zip"  # a zip archive member (raw deflate or stored)
    INT_BE = "int-be"  # a long digit identifier as a binary integer, big-endian (int64 fields)
    INT_LE = "int-le"  # the same, little-endian (a C struct on a phone's ARM CPU)
    VARINT = "varint"  # the same as a protobuf / LEB128 varint
    EUI64 = "eui64"  # a MAC as an IPv6 interface ID (U/L bit flipped, ff:fe inserted)


# the Encoding values that name a place in the traffic (the rest are transforms)
LOCATIONS = frozenset({
    Encoding.TCP_PAYLOAD, Encoding.UDP_PAYLOAD, Encoding.IP_PAYLOAD, Encoding.HTTP_REQUEST_LINE,
    Encoding.HTTP_HEADER, Encoding.HTTP_BODY, Encoding.HTTP_CHUNKED, Encoding.DNS_QNAME,
    Encoding.DNS_ANSWER, Encoding.TLS_SNI, Encoding.TLS_HANDSHAKE, Encoding.COAP_URI,
    Encoding.COAP_PAYLOAD, Encoding.WEBSOCKET, Encoding.QUIC_INITIAL, Encoding.IPV6_ADDRESS,
})


@dataclass(frozen=True, slots=True)
class Flow:
    """A flow oriented client -> server (the side that opened it, or sent first)."""

    proto: str  # "tcp", "udp", or the IP protocol number as text
    src: str
    sport: int
    dst: str
    dport: int

    def __str__(self) -> str:
        return f"{self.proto} {self.src}:{self.sport} -> {self.dst}:{self.dport}"


@dataclass(slots=True)
class StreamUnit:
    """Contiguous bytes of one direction of one flow (a UDP datagram, or a reassembled TCP run).

    `frame_offsets[i]` is where in `data` the bytes of frame `frames[i]` (1-based) start, sorted;
    `times[i]` is that frame's capture time. `gap_before` is true when bytes are missing before
    this unit (loss or eviction), so a decoder must not assume it starts at a message boundary.
    Consecutive units of one direction may overlap (a long stream is cut into windows that
    share a tail); dedupe hits by absolute offset, `stream_offset + start`.
    For a direction that is a TLS record stream, `data` holds its records except the bodies of
    application-data records (encrypted), whose byte count is `tls_elided`. A unit with a
    `location` (an `Encoding` location) is not a packet's bytes but a field put together from
    several (`coap_blocks`): scanned as that field, not dissected again.
    """

    flow: Flow
    from_client: bool
    data: bytes
    frame_offsets: list[int]
    frames: list[int]
    times: list[float]
    gap_before: bool = False
    stream_offset: int = 0  # where data[0] stands in this direction's whole stream
    tls_elided: int = 0  # bytes of TLS application-data records left out (encrypted, not scanned)
    app: str | None = None  # the sending app, where the capture says (PCAPdroid trailer, comments)
    location: str | None = None  # set when `data` is one field joined from several packets (CoAP, QUIC, WebSocket)
    steps: tuple[str, ...] = ()  # what was undone to make `data`, after `location` (a message inflated)
    extra: bool = False  # outside its direction's main run (a conflicting retransmission, a late hole filler)

    def frames_between(self, start: int, end: int) -> list[int]:
        """The frames that carried data[start:end]."""
        first = max(bisect_right(self.frame_offsets, start) - 1, 0)
        last = max(bisect_right(self.frame_offsets, max(end - 1, start)) - 1, 0)
        return sorted(set(self.frames[first : last + 1]))

    def time_at(self, offset: int) -> float:
        return self.times[max(bisect_right(self.frame_offsets, offset) - 1, 0)]


@dataclass(frozen=True, slots=True)
class Hit:
    """An identifier (or the canary) found in a unit: data[start:end] held it via `encoding`."""

    kind: str  # an identifiers.Kind value, or "canary"
    slot: int | None
    value: str  # the raw identifier value; never printed, only masked
    start: int
    end: int
    encoding: tuple[str, ...]  # Encoding values, outermost first
    guess: bool = False  # found by --guess shape rules, not from a known value


@dataclass(frozen=True, slots=True)
class Contact:
    """A host name a flow used or asked for, and how we know."""

    host: str
    how: str  # "dns-query", "tls-sni", "http-host", "coap-uri-host"
    frame: int
    time: float


@dataclass(slots=True)
class BlindWindow:
    """A span or path the capture could not see, with why."""

    reason: str
    start: float | None = None
    end: float | None = None
    path: str | None = None  # e.g. "cellular"
    acceptable: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "start": self.start, "end": self.end, "path": self.path,
                "acceptable": self.acceptable}


@dataclass(slots=True)
class Finding:
    rule: str  # a Rule value
    identifier: str | None
    slot: int | None
    host: str | None
    dst: str | None
    dport: int | None
    proto: str | None
    frames: list[int]
    encoding: list[str]
    time: float | None
    evidence: str  # masked, human-readable
    guess: bool = False
    src: str | None = None
    sport: int | None = None
    app: str | None = None
    phase: str | None = None
    cycle: int | None = None
    detail: dict[str, Any] = field(default_factory=dict)  # rule-specific, never raw identifiers

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "rule": self.rule, "identifier": self.identifier, "slot": self.slot, "host": self.host,
            "dst": self.dst, "dport": self.dport, "proto": self.proto, "frames": self.frames,
            "encoding": self.encoding, "time": self.time, "evidence": self.evidence,
            "guess": self.guess, "src": self.src, "sport": self.sport, "app": self.app,
            "phase": self.phase, "cycle": self.cycle,
        }
        out.update(self.detail)
        return out


@dataclass(slots=True)
class CanaryResult:
    marker_seen: bool
    frames: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"marker_seen": self.marker_seen, "frames": self.frames}


@dataclass(slots=True)
class CaptureSummary:
    path: str
    frames: int = 0
    bytes: int = 0
    first: float | None = None
    last: float | None = None
    truncated: bool = False
    analysable_packets: int = 0  # IP packets the analyzer could decode
    canary: CanaryResult | None = None
    blind_windows: list[BlindWindow] = field(default_factory=list)
    excluded_flows: int = 0
    evicted_bytes: int = 0
    link_types: list[int] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path, "frames": self.frames, "bytes": self.bytes, "first": self.first,
            "last": self.last, "truncated": self.truncated, "analysable_packets": self.analysable_packets,
            "canary": self.canary.to_json() if self.canary else None,
            "blind_windows": [w.to_json() for w in self.blind_windows],
            "excluded_flows": self.excluded_flows, "evicted_bytes": self.evicted_bytes,
            "link_types": self.link_types,
        }


@dataclass(slots=True)
class Report:
    """The findings JSON (version 1), DESIGN.md 'Contracts'."""

    status: Status
    reasons: list[str]
    capture: CaptureSummary
    coverage: dict[str, str]
    findings: list[Finding]
    notes: list[str] = field(default_factory=list)  # said to the user, e.g. "--guess implied"
    extra: dict[str, Any] = field(default_factory=dict)  # scenario context: device, build, phase...
    # where the phone's flows went: {host, dst, dport, proto, flows, first_frame, time, app}
    destinations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return self.status.exit_code

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": 1, "status": str(self.status), "reasons": self.reasons,
            "capture": self.capture.to_json(), "coverage": self.coverage,
            "findings": [f.to_json() for f in self.findings], "notes": self.notes,
            "destinations": self.destinations,
        }
        out.update(self.extra)
        return out
