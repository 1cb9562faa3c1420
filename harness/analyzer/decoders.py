"""Protocol decoders: cut a unit into the pieces worth scanning, and note the host names it used.

A unit (one direction of a flow: a UDP datagram or a reassembled TCP run) is recognised by its
bytes first and its ports second: HTTP/1.x (request or status line), a TLS record stream, DNS
(UDP or TCP with length prefixes, on 53/5353/5355), CoAP (RFC 7252, on 5683 or when it parses
strictly with URI options); anything else is one raw piece. Each piece keeps where it lies in the
unit (`Hit.start/end` are offsets into `unit.data`) and its location in the encoding chain
(`http-body`, `dns-qname`...). `unwrap` then scans the pieces and everything decoded from them.

Host attribution (`Contact`): DNS question names, TLS ClientHello SNI (over TCP, and QUIC's from
its Initial packets, see quic.py), HTTP `Host` (or an absolute request target), CoAP Uri-Host;
DNS answers give name -> addresses, CNAMEs followed.
"""

from __future__ import annotations

import re
import socket
import struct
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass, field

from harness.analyzer.matcher import Matcher, Trigger
from harness.analyzer.model import Contact, Encoding, Hit, StreamUnit
from harness.analyzer.unwrap import (
    DNS_NAME,
    MAX_INFLATE,
    NO_BINARY_MAC,
    Outcome,
    Piece,
    inflate,
    looks_json,
    unwrap,
)

DNS_PORTS = frozenset({53, 5353, 5355})  # DNS, mDNS, LLMNR
LOCAL_NAME_PORTS = frozenset({5353, 5355})  # link-local name service: no destination to attribute
COAP_PORTS = frozenset({5683})
MAC_CARRYING_UDP_PORTS = frozenset({67, 68, 546, 547})  # DHCP, DHCPv6 carry the MAC's octets
ICMPV6 = "58"
_URI_OPTIONS = {3: "host", 11: "path", 15: "query", 35: "proxy-uri"}


BATCH_DECODE_LIMIT = 32 << 20  # decoded bytes held for one analyze_units call: bounds memory


def decode_budget(size: int) -> int:
    """Decoded bytes allowed for a unit of `size` bytes: generous, but a zip bomb stops here."""
    return min(16 << 20, (1 << 20) + 8 * size)


@dataclass(slots=True)
class UnitResult:
    """What one unit held: identifier/canary hits, host names used, DNS answers seen."""

    hits: list[Hit] = field(default_factory=list)
    contacts: list[Contact] = field(default_factory=list)  # each (host, how) once: its first place
    dns_answers: dict[str, set[str]] = field(default_factory=dict)  # name -> addresses
    undecoded: int = 0  # encoded runs not decoded: the decode budget ran out (say so)


def analyze_unit(unit: StreamUnit, matcher: Matcher) -> UnitResult:
    """Hits, contacts and DNS answers of one unit."""
    return analyze_units([unit], matcher)[0]


def analyze_units(units: Sequence[StreamUnit], matcher: Matcher) -> list[UnitResult]:
    """`analyze_unit` for many units with one scan per decoding layer: cheaper for small units
    (DNS, short requests), where the per-call cost would otherwise dominate.

    HTTP is scanned as one raw piece first (its Host headers found by the same scan); only a
    unit where something was found, or whose bodies need framing undone (chunked, raw
    deflate), is cut into request line, headers and bodies and scanned again, so that its hits
    name their place. Everything the raw scan decodes the structured one decodes too.
    """
    results = [UnitResult() for _ in units]
    pool = [BATCH_DECODE_LIMIT]  # what the whole batch may still decode
    dissectors = [_Dissector(unit, owner, results[owner], pool) for owner, unit in enumerate(units)]
    for dissector in dissectors:
        dissector.run(fast=True)
    outcome = _scan(dissectors, matcher, pool)
    redo: list[_Dissector] = []
    for dissector, hits, undecoded, events in zip(dissectors, outcome.hits, outcome.undecoded,
                                                   outcome.events, strict=True):
        result = dissector.result
        result.hits = hits
        result.undecoded += undecoded
        if not dissector.http_candidate:
            continue
        if matcher.active and (hits or any(trig == Trigger.HTTP_FRAMING for trig, _ in events)):
            dissector.fast_hits = hits
            redo.append(dissector)
        else:
            dissector.contacts_from_landmarks(events)
    if redo:
        pool[0] = BATCH_DECODE_LIMIT  # the first pass's decoded bytes are gone
        for owner, dissector in enumerate(redo):
            dissector.restart(owner)
            dissector.run(fast=False)
        outcome = _scan(redo, matcher, pool)
        for dissector, hits, undecoded in zip(redo, outcome.hits, outcome.undecoded, strict=True):
            # fail closed: whatever the raw pass found and the structured one did not, stays
            named = {(h.kind, h.slot, h.value, h.guess) for h in hits}
            hits += [h for h in dissector.fast_hits if (h.kind, h.slot, h.value, h.guess) not in named]
            dissector.result.hits = hits
            dissector.result.undecoded += undecoded
    return results


def _scan(dissectors: Sequence[_Dissector], matcher: Matcher, pool: list[int]) -> Outcome:
    pieces = [piece for dissector in dissectors for piece in dissector.pieces]
    return unwrap(pieces, matcher, [d.remaining() for d in dissectors], pool[0])


# --- the dissector ---------------------------------------------------------------------------

_REQUEST = re.compile(rb"([A-Z][A-Z0-9_\-]{1,19}) ([^\s]+) HTTP/[0-9]\.[0-9]\r?\n")
_STATUS = re.compile(rb"HTTP/[0-9]\.[0-9] ([0-9]{3})[^\n]*\n")
_MESSAGE_START = re.compile(rb"(?:^|\n)(?:[A-Z][A-Z0-9_\-]{1,19} [^\s]+ HTTP/1\.[01]\r?\n|HTTP/1\.[01] [0-9]{3})")
_HOST_CHARS = re.compile(r"[a-z0-9._\-:\[\]*]+")


_RAW_LOCATION = {"tcp": Encoding.TCP_PAYLOAD, "udp": Encoding.UDP_PAYLOAD}


class _Dissector:
    """One unit's pieces and host names. Built for every unit: kept cheap (slots, lazy sets)."""

    __slots__ = ("_contacted", "budget", "fast_hits", "flags", "http_candidate", "names_seen", "owner",
                 "pieces", "pool", "ports", "raw_location", "result", "unit")

    def __init__(self, unit: StreamUnit, owner: int, result: UnitResult, pool: list[int]) -> None:
        self.unit = unit
        self.owner = owner
        self.result = result
        self.pieces: list[Piece] = []
        self.pool = pool
        self.budget = -1  # decoded bytes this unit may still produce; set when first needed
        self.http_candidate = False
        self.fast_hits: list[Hit] = []
        flow = unit.flow
        self.raw_location = _RAW_LOCATION.get(flow.proto, Encoding.IP_PAYLOAD)
        self.ports = (flow.sport, flow.dport)
        self._contacted: set[tuple[str, str]] = set()
        self.names_seen: set[bytes] = set()
        self.flags = NO_BINARY_MAC if flow.proto == ICMPV6 or (flow.proto == "udp" and (
            flow.sport in MAC_CARRYING_UDP_PORTS or flow.dport in MAC_CARRYING_UDP_PORTS)) else 0

    def remaining(self) -> int:
        if self.budget < 0:
            self.budget = decode_budget(len(self.unit.data))
        return self.budget

    def serves(self, ports: frozenset[int]) -> bool:
        return self.ports[0] in ports or self.ports[1] in ports

    # pieces and contacts

    def add(self, start: int, end: int, chain: tuple[str, ...], data: bytes | None = None,
            flags: int = 0) -> None:
        if end <= start and data is None:
            return
        exact = data is None
        if data is None:
            data = self.unit.data[start:end]
        if data:
            self.pieces.append(Piece(data, chain, start, end, exact, self.owner, self.flags | flags))

    def contact(self, host: str, how: str, offset: int) -> None:
        """Note a host name the flow used; once per unit and kind (the first place it shows)."""
        host = host.strip().rstrip(".").lower()
        if (host, how) in self._contacted or not host or not _HOST_CHARS.fullmatch(host):
            return
        self._contacted.add((host, how))
        unit = self.unit
        if not unit.frames:
            frame, time = 0, 0.0
        else:
            at = max(bisect_right(unit.frame_offsets, offset) - 1, 0) if len(unit.frames) > 1 else 0
            frame, time = unit.frames[at], unit.times[at]
        self.result.contacts.append(Contact(host, how, frame, time))

    # dispatch

    def restart(self, owner: int) -> None:
        """Forget the pieces (and the results of the fast pass) before a structured pass."""
        self.owner = owner
        self.pieces = []
        self.budget = -1
        self.result.contacts.clear()
        self._contacted.clear()
        self.result.hits = []
        self.result.undecoded = 0

    def run(self, fast: bool) -> None:
        """Cut the unit into pieces; with `fast`, leave HTTP as one raw piece (see analyze_units)."""
        unit, data = self.unit, self.unit.data
        if not data:
            return
        if unit.location == Encoding.QUIC_INITIAL:
            self.quic_hello()
            return
        if unit.location is not None:  # one field joined from several packets (coap_blocks, websocket)
            self.add(0, len(data), (unit.location, *unit.steps))
            return
        proto = unit.flow.proto
        if proto == "udp":
            if self.serves(DNS_PORTS) and self.dns_message(0, len(data)):
                return
            if self.coap():
                return
        elif proto == "tcp":
            if _looks_tls(data) and self.tls():
                return
            if self.serves(DNS_PORTS) and not unit.gap_before and self.tcp_dns():
                return
            self.http_candidate = bool(_REQUEST.match(data) or _STATUS.match(data) or b"HTTP/1." in data)
            if self.http_candidate and not fast and self.http():
                return
        self.add(0, len(data), (self.raw_location,))

    def contacts_from_landmarks(self, events: list[tuple[int, int]]) -> None:
        """Host names of a raw-scanned HTTP unit, from where the scan saw Host headers and
        absolute request targets."""
        data = self.unit.data
        seen: set[bytes] = set()  # keep-alive: the same Host line in every request
        for trig, offset in events:
            if trig == Trigger.HTTP_HOST:
                eol = data.find(b"\n", offset)
                value = data[offset : eol if eol >= 0 else len(data)]
                if value not in seen and _in_request_head(data, offset):
                    seen.add(value)
                    self.contact(_strip_port(value.decode("latin-1")), "http-host", offset)
            elif trig == Trigger.HTTP_ABSOLUTE:
                start = data.rfind(b"\n", 0, offset) + 1
                request = _REQUEST.match(data, start)
                if request is not None and request.start(2) <= offset <= request.end(2):
                    self.target_contact(request, start)

    def target_contact(self, request: re.Match[bytes], offset: int) -> None:
        """The host of an absolute-form (proxy) or authority-form (CONNECT) request target."""
        target = request.group(2).decode("latin-1")
        if "://" in target:
            authority = target.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
            self.contact(_strip_port(authority), "http-host", offset)
        elif request.group(1) == b"CONNECT":
            self.contact(_strip_port(target), "http-host", offset)

    # --- HTTP/1.x ---------------------------------------------------------------------------

    def http(self) -> bool:
        data = self.unit.data
        if _REQUEST.match(data) or _STATUS.match(data):
            first = 0
        elif b"HTTP/1." in data and (found := _MESSAGE_START.search(data)) is not None:
            first = found.start() + (data[found.start()] == 0x0A)
        else:
            return False
        if first:
            self.add(0, first, (self.raw_location,))
        pos = first
        while pos < len(data):
            after = self.http_message(pos)
            if after is None:
                self.add(pos, len(data), (self.raw_location,))
                break
            pos = after
            while data[pos : pos + 1] in (b"\r", b"\n"):
                pos += 1
        return True

    def http_message(self, pos: int) -> int | None:
        """Pieces of the message at `pos`; where the next one starts, or None if none is here."""
        data = self.unit.data
        request = _REQUEST.match(data, pos)
        status = None if request else _STATUS.match(data, pos)
        if request is None and status is None:
            return None
        line = request or status
        assert line is not None
        line_end = line.end()
        self.add(pos, line_end, (Encoding.HTTP_REQUEST_LINE if request else Encoding.HTTP_HEADER,))
        head_end, body_start = _header_end(data, line_end)
        self.add(line_end, head_end, (Encoding.HTTP_HEADER,))
        headers = _parse_headers(data, line_end, head_end)
        if request:
            self.target_contact(request, pos)
            if "host" in headers:
                value, offset = headers["host"]
                self.contact(_strip_port(value), "http-host", offset)
        if body_start >= len(data):
            return len(data)
        chunked = "chunked" in headers.get("transfer-encoding", ("", 0))[0].lower()
        length_text = headers.get("content-length", ("", 0))[0].strip()
        if chunked:
            body, body_end = _dechunk(data, body_start)
        else:
            if length_text.isdigit():
                body_end = min(len(data), body_start + int(length_text))
            elif request or (status and status.group(1)[:1] == b"1") or (status and status.group(1) in
                                                                          (b"204", b"304")):
                body_end = body_start
            else:
                body_end = len(data)  # a response without length runs to the connection's end
            body = data[body_start:body_end]
        if body_end > body_start:
            chain: tuple[str, ...] = (Encoding.HTTP_BODY,)
            if chunked:
                chain += (Encoding.HTTP_CHUNKED,)
            coding = headers.get("content-encoding", ("", 0))[0].strip().lower()
            inflated = self.inflate(body, coding)
            if inflated is not None:
                chain += (inflated[1],)
                if looks_json(inflated[0]):
                    chain += (Encoding.JSON,)
                self.add(body_start, body_end, chain, inflated[0])
            elif chunked:
                self.add(body_start, body_end, chain, body)
            else:
                self.add(body_start, body_end, chain)
        return body_end

    def inflate(self, body: bytes, coding: str) -> tuple[bytes, str] | None:
        """A Content-Encoding undone (bounded); None when there is none or it does not decode."""
        if coding in ("gzip", "x-gzip"):
            attempts = [(31, Encoding.GZIP)]
        elif coding == "deflate":  # RFC says zlib; many servers send raw deflate
            attempts = [(15, Encoding.ZLIB), (-15, Encoding.DEFLATE)]
        else:
            return None
        limit = min(MAX_INFLATE, self.remaining(), self.pool[0])
        for wbits, step in attempts:
            inflated = inflate(body, wbits, limit)
            if inflated is None:
                continue
            out, _, truncated = inflated
            self.result.undecoded += truncated
            self.budget -= len(out)
            self.pool[0] -= len(out)
            return out, step
        return None

    # --- DNS --------------------------------------------------------------------------------

    def tcp_dns(self) -> bool:
        data = self.unit.data
        pos = 0
        parsed = False
        while pos + 2 <= len(data):
            length = int.from_bytes(data[pos : pos + 2], "big")
            if length < 12 or not self.dns_message(pos + 2, min(len(data), pos + 2 + length)):
                break
            parsed = True
            pos += 2 + length
        if not parsed:
            return False
        if pos < len(data):
            self.add(pos, len(data), (self.raw_location,))
        return True

    def dns_message(self, base: int, stop: int) -> bool:
        """Pieces and contacts of the DNS message at data[base:stop]; False when it is not one."""
        data = self.unit.data
        msg = data if base == 0 and stop == len(data) else data[base:stop]
        if len(msg) < 12:
            return False
        is_response = bool(msg[2] & 0x80)
        questions, answers, authority, additional = struct.unpack_from("!4H", msg, 4)
        records = answers + authority + additional
        if questions > 64 or questions + records > 1024:
            return False
        pos = 12
        local = self.serves(LOCAL_NAME_PORTS) and 53 not in self.ports
        aliases: dict[str, str] = {}
        addresses: list[tuple[str, str]] = []
        try:
            self.names_seen.clear()
            for _ in range(questions):
                labels, after = _read_name(msg, pos)
                name = self.dns_name(labels, base + pos, base + after, Encoding.DNS_QNAME)
                if name and not local and not is_response:
                    self.contact(name.decode("latin-1"), "dns-query", base + pos)
                pos = after + 4
            for _ in range(records):
                owner, after = _read_name(msg, pos)
                self.dns_name(owner, base + pos, base + after, Encoding.DNS_ANSWER)  # mDNS announces
                pos = after
                rtype = int.from_bytes(msg[pos : pos + 2], "big")
                rdlength = int.from_bytes(msg[pos + 8 : pos + 10], "big")
                rdata = pos + 10
                pos = rdata + rdlength
                if pos > len(msg):
                    raise ValueError("record past the end")
                self.dns_record(msg, base, owner, rtype, rdata, pos, aliases, addresses)
        except (ValueError, IndexError):
            if pos <= 12:
                return False
            self.add(base + min(pos, len(msg)), stop, (self.raw_location,))
        if is_response and not local:
            self.answers(aliases, addresses)
        return True

    def dns_name(self, labels: list[bytes], start: int, end: int, location: str) -> bytes:
        """Scan a name (once per message: answers repeat the question and each other); its text."""
        text = b".".join(labels)
        folded = text.lower()
        if not labels or folded in self.names_seen:
            return text
        self.names_seen.add(folded)
        self.add(start, end, (location,), text, DNS_NAME)
        # an identifier may be split over labels (hex or base32 in several labels): join them,
        # leaving out the last two labels (the domain that receives the query)
        inner = labels[:-2]
        for first in range(min(len(inner) - 1, 4)):
            joined = b"".join(inner[first:])
            if len(joined) >= 12:
                self.add(start, end, (location, Encoding.DNS_LABELS), joined, DNS_NAME)
        return text

    def dns_record(self, msg: bytes, base: int, owner: list[bytes], rtype: int, rdata: int, end: int,
                   aliases: dict[str, str], addresses: list[tuple[str, str]]) -> None:
        name = _name_text(owner)
        if rtype == 1 and end - rdata == 4:
            addresses.append((name, socket.inet_ntop(socket.AF_INET, msg[rdata:end])))
        elif rtype == 28 and end - rdata == 16:
            addresses.append((name, socket.inet_ntop(socket.AF_INET6, msg[rdata:end])))
        elif rtype in (2, 5, 12, 15, 33):  # NS, CNAME, PTR, MX, SRV: a name in the data
            skip = {15: 2, 33: 6}.get(rtype, 0)
            target, _ = _read_name(msg, rdata + skip)
            self.dns_name(target, base + rdata, base + end, Encoding.DNS_ANSWER)
            if rtype == 5:
                aliases[_name_text(target)] = name
        elif rtype == 16:  # TXT: character-strings
            strings, pos = [], rdata
            while pos < end:
                strings.append(msg[pos + 1 : pos + 1 + msg[pos]])
                pos += 1 + msg[pos]
            self.add(base + rdata, base + end, (Encoding.DNS_ANSWER,), b"".join(strings))
        elif end > rdata and rtype != 41:  # 41: the OPT pseudo-record (EDNS), scanned raw below
            self.add(base + rdata, base + end, (Encoding.DNS_ANSWER,))
        elif end > rdata:
            self.add(base + rdata, base + end, (self.raw_location,))

    def answers(self, aliases: dict[str, str], addresses: list[tuple[str, str]]) -> None:
        table = self.result.dns_answers
        for name, address in addresses:
            seen = set()
            while name and name not in seen:  # the address also answers every alias of the name
                seen.add(name)
                table.setdefault(name, set()).add(address)
                name = aliases.get(name, "")

    # --- TLS --------------------------------------------------------------------------------

    def tls(self) -> bool:
        """Walk the record stream: SNI from the ClientHello, other handshake bytes raw."""
        data = self.unit.data
        pos = 0
        handshake = bytearray()
        where: list[tuple[int, int]] = []  # (offset in `handshake`, offset in data) per fragment
        fragments: list[tuple[int, int]] = []
        while pos + 5 <= len(data):
            ctype, major = data[pos], data[pos + 1]
            if ctype not in (20, 21, 22, 23, 24) or major != 3:
                break
            length = int.from_bytes(data[pos + 3 : pos + 5], "big")
            body = pos + 5
            if ctype == 23 and self.unit.tls_elided and _elided(data, body):
                pos = body  # the reader kept the header and left the encrypted body out
                continue
            end = min(len(data), body + length)
            if ctype == 22:
                where.append((len(handshake), body))
                handshake += data[body:end]
                fragments.append((body, end))
            pos = body + length
        if not where:
            return False
        sni = _client_hello_sni(bytes(handshake))
        if sni is not None:  # first, so that a name found in it is reported as the SNI
            offset, name = sni
            at = next((data_offset + offset - hs_offset for hs_offset, data_offset in reversed(where)
                       if hs_offset <= offset), 0)
            contiguous = data[at : at + len(name)] == name
            self.add(at, at + len(name), (Encoding.TLS_SNI,), None if contiguous else name, DNS_NAME)
            self.contact(name.decode("latin-1"), "tls-sni", at)
        for start, end in fragments:
            self.add(start, end, (Encoding.TLS_HANDSHAKE,))
        if pos < len(data):
            self.add(pos, len(data), (self.raw_location,))
        return True

    def quic_hello(self) -> None:
        """A QUIC client's CRYPTO stream (quic.InitialAssembler): its SNI names the flow."""
        data = self.unit.data
        sni = _client_hello_sni(data)
        if sni is not None:
            offset, name = sni
            self.add(offset, offset + len(name), (Encoding.QUIC_INITIAL, Encoding.TLS_SNI), None, DNS_NAME)
            self.contact(name.decode("latin-1"), "quic-sni", offset)
        self.add(0, len(data), (Encoding.QUIC_INITIAL,))

    # --- CoAP -------------------------------------------------------------------------------

    def coap(self) -> bool:
        data = self.unit.data
        parsed = parse_coap(data)
        if parsed is None:
            return False
        code, options, payload = parsed
        uri = [(number, start, end) for number, start, end in options if number in _URI_OPTIONS]
        if not self.serves(COAP_PORTS) and not (
            uri and all(all(32 <= b < 127 for b in data[s:e]) for _, s, e in uri)):
            return False
        for number, start, end in options:
            self.add(start, end, (Encoding.COAP_URI if number in _URI_OPTIONS else self.raw_location,))
            if number == 3 and 1 <= code < 32:  # Uri-Host of a request
                self.contact(data[start:end].decode("latin-1"), "coap-uri-host", start)
        if payload is not None:
            self.add(payload, len(data), (Encoding.COAP_PAYLOAD,))
        return True


# --- helpers ---------------------------------------------------------------------------------


def _header_end(data: bytes, pos: int) -> tuple[int, int]:
    """(end of the header block, start of the body) for headers starting at `pos`."""
    if data[pos : pos + 2] == b"\r\n":
        return pos, pos + 2
    if data[pos : pos + 1] == b"\n":
        return pos, pos + 1
    crlf = data.find(b"\r\n\r\n", pos)
    lf = data.find(b"\n\n", pos, crlf if crlf >= 0 else len(data))  # bounded: no O(n^2)
    if lf >= 0:
        return lf + 1, lf + 2
    if crlf >= 0:
        return crlf + 2, crlf + 4
    return len(data), len(data)


def _parse_headers(data: bytes, start: int, end: int) -> dict[str, tuple[str, int]]:
    """The headers decoding needs (lowercase name -> (value, offset of the value))."""
    wanted = ("host", "content-length", "transfer-encoding", "content-encoding")
    out: dict[str, tuple[str, int]] = {}
    pos = start
    for line in data[start:end].split(b"\n"):
        name, colon, value = line.partition(b":")
        key = name.strip().lower().decode("latin-1")
        if colon and key in wanted and key not in out:
            out[key] = (value.strip().decode("latin-1"), pos + len(name) + 1)
        pos += len(line) + 1
    return out


def _in_request_head(data: bytes, offset: int) -> bool:
    """Is `offset` in the header block of a request (after a request line, before a blank line)?"""
    line = data.rfind(b" HTTP/1.", 0, offset)
    return line >= 0 and data.find(b"\n\r\n", line, offset) < 0 and data.find(b"\n\n", line, offset) < 0


def _strip_port(host: str) -> str:
    host = host.strip()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        return host.split(":", 1)[0]
    return host


def _dechunk(data: bytes, pos: int) -> tuple[bytes, int]:
    """The body of a chunked message starting at `pos` (what there is of it) and where it ends."""
    parts: list[bytes] = []
    while True:
        eol = data.find(b"\n", pos)
        if eol < 0:
            break
        size_text = data[pos:eol].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            break
        start = eol + 1
        if size == 0:
            trailer = data.find(b"\n", start)
            while trailer >= 0 and data[start:trailer].strip():  # trailer fields until a blank line
                start = trailer + 1
                trailer = data.find(b"\n", start)
            return b"".join(parts), len(data) if trailer < 0 else trailer + 1
        parts.append(data[start : start + size])
        pos = start + size
        if pos >= len(data):
            return b"".join(parts), len(data)
        if data[pos : pos + 2] == b"\r\n":
            pos += 2
        elif data[pos : pos + 1] == b"\n":
            pos += 1
    return b"".join(parts), pos


def _read_name(msg: bytes, pos: int) -> tuple[list[bytes], int]:
    """A DNS name's labels (compression followed, loops refused) and the offset after it."""
    labels: list[bytes] = []
    after = -1
    jumps = 0
    total = 0
    while True:
        length = msg[pos]
        if length >= 0xC0:
            if after < 0:
                after = pos + 2
            jumps += 1
            if jumps > 32:
                raise ValueError("compression loop")
            pos = ((length & 0x3F) << 8) | msg[pos + 1]
            continue
        if length > 63:
            raise ValueError("bad label")
        if length == 0:
            return labels, (after if after >= 0 else pos + 1)
        label = msg[pos + 1 : pos + 1 + length]
        if len(label) < length:
            raise ValueError("label past the end")
        labels.append(label)
        total += length + 1
        if total > 255:
            raise ValueError("name too long")
        pos += 1 + length


def _name_text(labels: list[bytes]) -> str:
    return b".".join(labels).decode("latin-1").lower()


def _looks_tls(data: bytes) -> bool:
    return len(data) >= 5 and data[0] in (22, 21, 20) and data[1] == 3 and data[2] <= 4


def _elided(data: bytes, body: int) -> bool:
    """After an application-data header: is the next thing another record header (body left out)?"""
    if body >= len(data):
        return True
    nxt = data[body : body + 3]
    return len(nxt) == 3 and nxt[0] in (20, 21, 22, 23, 24) and nxt[1] == 3 and nxt[2] <= 4


def _client_hello_sni(hs: bytes) -> tuple[int, bytes] | None:
    """(offset in the handshake bytes, host name) of the first ClientHello's server_name."""
    pos = 0
    while pos + 4 <= len(hs):
        mtype = hs[pos]
        length = int.from_bytes(hs[pos + 1 : pos + 4], "big")
        if mtype == 1:
            return _sni_in_hello(hs, pos + 4, min(len(hs), pos + 4 + length))
        pos += 4 + length
    return None


def _sni_in_hello(hs: bytes, pos: int, end: int) -> tuple[int, bytes] | None:
    try:
        pos += 2 + 32  # version, random
        pos += 1 + hs[pos]  # session id
        pos += 2 + int.from_bytes(hs[pos : pos + 2], "big")  # cipher suites
        pos += 1 + hs[pos]  # compression methods
        ext_end = min(end, pos + 2 + int.from_bytes(hs[pos : pos + 2], "big"))
        pos += 2
        while pos + 4 <= ext_end:
            etype = int.from_bytes(hs[pos : pos + 2], "big")
            elen = int.from_bytes(hs[pos + 2 : pos + 4], "big")
            body = pos + 4
            if etype == 0:  # server_name: list length, then (type, length, name) entries
                item = body + 2
                while item + 3 <= body + elen:
                    nlen = int.from_bytes(hs[item + 1 : item + 3], "big")
                    if hs[item] == 0:
                        name = hs[item + 3 : item + 3 + nlen]
                        return (item + 3, name) if len(name) == nlen and nlen else None
                    item += 3 + nlen
                return None
            pos = body + elen
    except IndexError:
        return None
    return None


def parse_coap(data: bytes) -> tuple[int, list[tuple[int, int, int]], int | None] | None:
    """(code, [(option number, value start, value end)], payload start) or None if not CoAP."""
    if len(data) < 4 or data[0] >> 6 != 1 or data[0] & 0x0F > 8:
        return None
    code = data[1]
    if code >> 5 not in (0, 2, 4, 5):
        return None
    pos = 4 + (data[0] & 0x0F)
    number = 0
    options: list[tuple[int, int, int]] = []
    while pos < len(data):
        head = data[pos]
        if head == 0xFF:
            return (code, options, pos + 1) if pos + 1 < len(data) else None
        pos += 1
        values = []
        for nibble in (head >> 4, head & 0x0F):
            if nibble == 13:
                if pos >= len(data):
                    return None
                values.append(13 + data[pos])
                pos += 1
            elif nibble == 14:
                if pos + 2 > len(data):
                    return None
                values.append(269 + int.from_bytes(data[pos : pos + 2], "big"))
                pos += 2
            elif nibble == 15:
                return None
            else:
                values.append(nibble)
        number += values[0]
        if pos + values[1] > len(data):
            return None
        options.append((number, pos, pos + values[1]))
        pos += values[1]
    return code, options, None
