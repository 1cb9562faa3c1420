"""The analyzer's Python API: `analyze(capture, identifiers, ...) -> Report`.

One pass over the capture (reader -> flows -> decoders/unwrapping/matcher), then policy. Host
names are attributed at the end, because a DNS answer or a later request may name a flow seen
earlier: a flow's own HTTP Host / TLS SNI / CoAP Uri-Host first, else the DNS answers that
mapped its destination address to a name, else none. The status follows DESIGN.md's table:
any finding is `leak`; otherwise anything that keeps the capture from proving the phone clean
(no packets, nothing analysable, canary missing, required identifier unknown, unacceptable blind
window) is `unverified` with its reason; else `clean`.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from harness.analyzer.model import (
    LOCATIONS,
    BlindWindow,
    CanaryResult,
    CaptureSummary,
    Contact,
    Finding,
    Flow,
    Hit,
    Report,
    Rule,
    Status,
    StreamUnit,
)
from harness.identifiers import IdentifierSet, Kind, mask

if TYPE_CHECKING:
    from harness.analyzer.matcher import Matcher
    from harness.policy.catalog import Catalog
    from harness.policy.policy import Destination
    from harness.profile import Profile

__all__ = ["analyze", "coverage_of", "merged_identifiers"]

BATCH_UNITS = 256  # units decoded per analyze_units call: small units share one scan
BATCH_BYTES = 4 << 20


def merged_identifiers(identifiers: IdentifierSet | None, profile: Profile | None) -> IdentifierSet | None:
    """The identifiers to look for: those given, with the profile's overrides winning."""
    if profile is None or not profile.identifiers.values:
        return identifiers
    return (identifiers or IdentifierSet()).merged(profile.identifiers)


def coverage_of(identifiers: IdentifierSet | None, profile: Profile | None) -> dict[str, str]:
    """Each kind: `read` (given by the caller), `profile` (the profile's override), or `unknown`."""
    coverage = {}
    for kind in Kind:
        if profile is not None and profile.identifiers.known(kind):
            coverage[str(kind)] = "profile"
        elif identifiers is not None and identifiers.known(kind):
            coverage[str(kind)] = "read"
        else:
            coverage[str(kind)] = "unknown"
    return coverage


@dataclass(slots=True)
class _Plain:
    """A plaintext hit being collected (deduplicated by flow, direction, identifier, chain, offset)."""

    hit: Hit
    flow: Flow
    frames: list[int]
    time: float
    app: str | None


class Assembler(Protocol):
    """Joins a field that several datagrams carry (coap_blocks, quic): units in, joined units out."""

    def feed(self, unit: StreamUnit) -> Iterable[StreamUnit]: ...

    def finish(self) -> Iterable[StreamUnit]: ...


@dataclass(slots=True)
class _Collector:
    """Everything one pass gathers; hosts are decided only when the whole capture was read."""

    plain: dict[tuple[object, ...], _Plain] = field(default_factory=dict)
    canary_frames: set[int] = field(default_factory=set)
    contacts: dict[Flow, list[Contact]] = field(default_factory=dict)  # flow -> names it used
    queries: list[tuple[Contact, Flow, str | None]] = field(default_factory=list)
    answers: dict[str, list[tuple[float, str]]] = field(default_factory=dict)  # address -> (time, name)
    answer_flows: dict[str, tuple[Flow, int, float]] = field(default_factory=dict)  # name -> first answer
    apps: dict[Flow, str] = field(default_factory=dict)
    undecoded: int = 0
    # (flow, direction, identifier, transforms) -> the frames that showed it
    reported: dict[tuple[object, ...], set[int]] = field(default_factory=dict)

    def feed(self, unit: StreamUnit, hits: list[Hit], contacts: list[Contact],
             dns_answers: dict[str, set[str]], undecoded: int) -> None:
        flow = unit.flow
        if unit.app:
            self.apps.setdefault(flow, unit.app)
        self.undecoded += undecoded
        for hit in hits:
            frames = unit.frames_between(hit.start, hit.end) if unit.frames else []
            if hit.kind == "canary":
                self.canary_frames.update(frames)
                continue
            what = (flow, unit.from_client, hit.kind, hit.slot, hit.value,
                    tuple(step for step in hit.encoding if step not in LOCATIONS))
            shown = self.reported.setdefault(what, set())
            if unit.location is not None:  # joined from several packets: what they showed, they reported
                if shown.intersection(frames):
                    continue
                where: object = tuple(frames)
            else:
                where = unit.stream_offset + hit.start
            shown.update(frames)
            key = (flow, unit.from_client, hit.kind, hit.slot, hit.value, hit.encoding, where)
            if key not in self.plain:
                time = unit.time_at(hit.start) if unit.times else 0.0
                self.plain[key] = _Plain(hit, flow, frames, time, unit.app)
        for contact in contacts:
            if contact.how == "dns-query":
                self.queries.append((contact, flow, unit.app))
            else:
                self.contacts.setdefault(flow, []).append(contact)
        if dns_answers:
            when = unit.times[0] if unit.times else 0.0
            frame = unit.frames[0] if unit.frames else 0
            for name, addresses in dns_answers.items():
                self.answer_flows.setdefault(name, (flow, frame, when))
                for address in addresses:
                    self.answers.setdefault(address, []).append((when, name))

    # --- host attribution (at the end) --------------------------------------------------------

    def attribute(self, flows: Iterable[object], attribution: Path | str) -> None:
        """Apps from socket-owner snapshots (`<capture>.sockets.json`) for flows the capture did not name."""
        from harness.capture.attribution import SocketOwners

        owners = SocketOwners.load(attribution)
        for record in flows:
            flow: Flow = record.flow  # type: ignore[attr-defined]
            if flow not in self.apps:
                when: float | None = record.first_time  # type: ignore[attr-defined]
                app = owners.app(flow.proto, flow.src, flow.sport, flow.dst, flow.dport, when)
                if app is not None:
                    self.apps[flow] = app
        for item in self.plain.values():
            item.app = item.app or self.apps.get(item.flow)
        self.queries = [(c, flow, app or self.apps.get(flow)) for c, flow, app in self.queries]

    def finish(self) -> None:
        for names in self.answers.values():
            names.sort()
        for contacts in self.contacts.values():
            contacts.sort(key=lambda c: c.frame)

    def named(self, flow: Flow, frame: int) -> Contact | None:
        """The name the flow itself used last at or before `frame` (else its first)."""
        contacts = self.contacts.get(flow)
        if not contacts:
            return None
        before = [c for c in contacts if c.frame <= frame]
        return before[-1] if before else contacts[0]

    def resolved(self, address: str, time: float | None) -> str | None:
        """The name a DNS answer gave for `address`: the latest answer before `time`, else the first."""
        names = self.answers.get(address)
        if not names:
            return None
        if time is None:
            return names[0][1]
        index = bisect_right(names, (time, "\U0010ffff")) - 1
        return names[index][1] if index >= 0 else names[0][1]

    def host(self, flow: Flow, frame: int, time: float | None) -> str | None:
        contact = self.named(flow, frame)
        return contact.host if contact is not None else self.resolved(flow.dst, time)


def _plaintext_findings(collector: _Collector) -> list[Finding]:
    findings = []
    for item in collector.plain.values():
        hit, flow = item.hit, item.flow
        first = item.frames[0] if item.frames else 0
        host = collector.host(flow, first, item.time)
        chain = list(hit.encoding)
        where = f"{host or flow.dst}:{flow.dport}"
        label = mask(hit.kind, hit.slot, hit.value) + (" (guess)" if hit.guess else "")
        findings.append(Finding(
            rule=Rule.PLAINTEXT_IDENTIFIER, identifier=hit.kind, slot=hit.slot, host=host, dst=flow.dst,
            dport=flow.dport, proto=flow.proto, frames=item.frames, encoding=chain, time=item.time,
            evidence=f"{label} in {' > '.join(chain)} to {where}", guess=hit.guess, src=flow.src,
            sport=flow.sport, app=item.app))
    return findings


def _destinations(collector: _Collector, flows: Iterable[object]) -> list[Destination]:
    """Every flow the capture kept (not excluded), with the names it is known by."""
    from harness.policy.policy import Destination

    destinations = []
    for record in flows:
        if getattr(record, "excluded", False):
            continue
        flow: Flow = record.flow  # type: ignore[attr-defined]
        frame: int = record.first_frame  # type: ignore[attr-defined]
        time: float | None = record.first_time  # type: ignore[attr-defined]
        # the names the flow used itself win; DNS answers for its address only when it used none
        names = list(dict.fromkeys((c.host, c.how) for c in collector.contacts.get(flow, []))) or \
            list(dict.fromkeys((name, "dns-answer") for _, name in collector.answers.get(flow.dst, [])))
        destinations.append(Destination(flow, frame, time, names, collector.host(flow, frame, time),
                                        collector.apps.get(flow)))
    return destinations


def _policy_findings(collector: _Collector, destinations: list[Destination], catalog: Catalog,
                     profile: Profile | None) -> list[Finding]:
    from harness.policy.geoip import CountryDatabase
    from harness.policy.policy import Lookup, activation_findings, country_findings

    lookups = [Lookup(c.host, flow, c.frame, c.time, "dns-query", app) for c, flow, app in collector.queries]
    asked = {c.host for c, _, _ in collector.queries}
    lookups += [Lookup(name, flow, frame, when, "dns-answer", collector.apps.get(flow))
                for name, (flow, frame, when) in collector.answer_flows.items() if name not in asked]
    findings = activation_findings(catalog, profile, lookups, destinations)
    if profile is not None and profile.countries is not None:
        rule = profile.countries
        assert rule.database is not None
        database = CountryDatabase(rule.database, rule.where)
        try:
            findings += country_findings(rule, database, profile, destinations)
        finally:
            database.close()
    return findings


def _reasons(cap: CaptureSummary, canary: str | None, identifiers: IdentifierSet | None,
             profile: Profile | None) -> list[str]:
    reasons = []
    if cap.frames == 0:
        reasons.append("the capture holds no packets: nothing was verified")
    elif cap.analysable_packets == 0:
        reasons.append("no analysable packet (no IPv4/IPv6 traffic phonehome can read): nothing was verified")
    if canary is not None and not (cap.canary and cap.canary.marker_seen):
        reasons.append("the canary marker was not seen: the capture may have missed the phone's traffic")
    if profile is not None:
        missing = [str(k) for k in profile.require if identifiers is None or not identifiers.known(k)]
        if missing:
            reasons.append(f"required identifier{'s' if len(missing) > 1 else ''} unknown: {', '.join(missing)} "
                           f"(profile {profile.name} requires them; give them in IDS.json or the profile)")
    for window in cap.blind_windows:
        if not window.acceptable:
            span = f" {window.start}..{window.end}" if window.start is not None else ""
            path = f" ({window.path})" if window.path else ""
            reasons.append(f"blind window{span}{path}: {window.reason}")
    return reasons


def analyze(capture: Path | str, identifiers: IdentifierSet | None = None, *, guess: bool = False,
            profile: Profile | None = None, canary: str | None = None, exclude: Sequence[str] = (),
            blind_windows: Sequence[BlindWindow] = (), catalog: Catalog | None = None,
            coverage: dict[str, str] | None = None, attribution: Path | str | None = None) -> Report:
    """Analyse one capture file and return the findings JSON as a typed `Report`.

    `identifiers` are the phone's (IDS.json shape); the profile's `identifiers:` override them.
    `coverage` (kind -> read/profile/unknown) defaults to: given -> read, profile -> profile.
    `attribution` is the capture's `<capture>.sockets.json`: apps for flows the capture did not name.
    Unreadable input raises `PhonehomeError` (exit 2); everything else is in the report.
    """
    from harness.analyzer.addresses import address_findings
    from harness.analyzer.coap_blocks import BlockAssembler
    from harness.analyzer.quic import InitialAssembler
    from harness.analyzer.reader import open_capture
    from harness.analyzer.report import Redactor
    from harness.analyzer.websocket import WebSocketReader
    from harness.policy.catalog import load_catalog

    ids = merged_identifiers(identifiers, profile)
    catalog = catalog or load_catalog()
    matcher = compiled_matcher(ids, guess, canary)
    collector = _Collector()
    stream = open_capture(Path(capture), list(exclude))
    websockets = WebSocketReader()
    try:
        batch: list[StreamUnit] = []
        size = 0
        for unit in _with_joined(stream.units(), (BlockAssembler(), InitialAssembler(), websockets)):
            batch.append(unit)
            size += len(unit.data)
            if len(batch) >= BATCH_UNITS or size >= BATCH_BYTES:
                _feed(collector, batch, matcher)
                batch, size = [], 0
        _feed(collector, batch, matcher)
        summary = stream.summary
        flows = list(stream.flows)
    finally:
        close = getattr(stream, "close", None)
        if callable(close):
            close()
    collector.finish()
    collector.undecoded += websockets.undecoded
    if attribution is not None:
        collector.attribute(flows, attribution)
    if canary is not None:
        summary.canary = CanaryResult(bool(collector.canary_frames), sorted(collector.canary_frames))
    summary.blind_windows = [*summary.blind_windows, *blind_windows]
    destinations = _destinations(collector, flows)
    findings = _plaintext_findings(collector) + _policy_findings(collector, destinations, catalog, profile)
    findings += address_findings(((r.flow, r.first_frame, r.first_time) for r in flows if not r.excluded), ids,
                                 collector.host)
    findings.sort(key=lambda f: (f.time if f.time is not None else float("inf"), f.frames[:1], f.rule))
    notes = []
    if summary.truncated:
        notes.append("the capture's last record is cut short (a killed capture?): what is there was analysed")
    if summary.evicted_bytes:
        notes.append(f"{summary.evicted_bytes} bytes left reassembly windows unscanned (caps on per-flow memory)")
    if collector.undecoded:
        notes.append(f"{collector.undecoded} encoded runs or messages were not decoded (whole): a decode budget "
                     "ran out, or a compressed WebSocket channel lost its window")
    reasons = _reasons(summary, canary, ids, profile)
    if not guess and (ids is None or not any(ids.known(kind) for kind in Kind)):
        reasons.append("no identifier to look for (none given, none in the profile, no --guess): "
                       "no plaintext leak could have been found")
    status = Status.LEAK if findings else Status.UNVERIFIED if reasons else Status.CLEAN
    guesses = [(str(p.hit.kind), p.hit.value) for p in collector.plain.values() if p.hit.guess]
    redactor = Redactor(ids, guesses)
    for finding in findings:
        redactor.finding(finding)
    summary.path = redactor.text(summary.path)
    return Report(status=status, reasons=[redactor.text(r) for r in reasons], capture=summary,
                  coverage=coverage or coverage_of(identifiers, profile), findings=findings, notes=notes,
                  destinations=redactor.value(_destination_summary(destinations)))


def _with_joined(units: Iterable[StreamUnit], assemblers: Sequence[Assembler]) -> Iterator[StreamUnit]:
    """The capture's units, each followed by what it completed of a field spread over several
    packets (a CoAP body, a QUIC ClientHello, WebSocket messages)."""
    for unit in units:
        yield unit
        for assembler in assemblers:
            yield from assembler.feed(unit)
    for assembler in assemblers:
        yield from assembler.finish()


_MATCHERS = threading.local()
_MATCHERS_KEPT = 4


def compiled_matcher(ids: IdentifierSet | None, guess: bool, canary: str | None) -> Matcher:
    """The gate analyses one phone's captures scenario after scenario: compile its patterns once.

    Kept per thread, because a hyperscan database's scratch space must not be shared by two
    scans at once; the few most recent sets only (a worker gates one phone after another).
    """
    from harness.analyzer.matcher import Matcher

    cache: dict[tuple[Any, ...], Matcher] = _MATCHERS.__dict__.setdefault("cache", {})
    key = (tuple(ids or ()), guess, canary)
    matcher = cache.pop(key, None) or Matcher(ids, guess=guess, canary=canary)
    cache[key] = matcher  # most recent last
    while len(cache) > _MATCHERS_KEPT:
        del cache[next(iter(cache))]
    return matcher


def _destination_summary(destinations: list[Destination]) -> list[dict[str, Any]]:
    """One entry per (host or address, port, protocol): what a baseline records and diffs."""
    seen: dict[tuple[str, int, str], dict[str, Any]] = {}
    for dest in destinations:
        flow = dest.flow
        key = (dest.host or flow.dst, flow.dport, flow.proto)
        entry = seen.get(key)
        if entry is None:
            seen[key] = {"host": dest.host, "dst": flow.dst, "dport": flow.dport, "proto": flow.proto,
                         "flows": 1, "first_frame": dest.frame, "time": dest.time, "app": dest.app}
        else:
            entry["flows"] += 1
    return sorted(seen.values(), key=lambda e: (e["host"] or e["dst"], e["dport"], e["proto"]))


def _feed(collector: _Collector, batch: list[StreamUnit], matcher: Matcher) -> None:
    from harness.analyzer.decoders import analyze_units

    if not batch:
        return
    results = analyze_units(batch, matcher)
    for unit, result in zip(batch, results, strict=True):
        collector.feed(unit, result.hits, result.contacts, result.dns_answers, result.undecoded)
