"""Reports for people and CI: the console table, the findings JSON, and the masking guard.

Findings already carry masked evidence; `Redactor` is the second line of defence: it runs the
analyzer's own matcher over every string that leaves phonehome (host names a phone built from
its IMEI, file names, error text) and replaces any identifier it finds with its kind and slot.
The findings JSON is written owner-only (0600) and atomically: it names hosts and the capture's
path, and CI readers should never see half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.analyzer.matcher import BOUNDARY_SETS, KEY_WINDOW, Matcher
from harness.analyzer.model import Finding, Report, Rule, Status
from harness.errors import PhonehomeError
from harness.identifiers import IdentifierSet, Kind, mask

_PRINTABLE = frozenset(range(0x20, 0x7F))


class Redactor:
    """Replaces every form of the given identifiers in text with `‹kind[slot]›`.

    Use one in one thread only: its compiled matcher's scratch space is the thread's own."""

    def __init__(self, identifiers: IdentifierSet | None, guesses: Iterable[tuple[str, str]] = ()) -> None:
        values = {k: list(v) for k, v in (identifiers.values.items() if identifiers else ())}
        self._labels: dict[tuple[str, str], str] = {}
        for kind, value in guesses:  # guessed values: labelled by kind only (no slot is known)
            known = values.setdefault(Kind(kind), [])
            if value not in known:
                known.append(value)
                self._labels[(kind, value)] = f"{kind}(guess)"
        self._matcher: Matcher | None = None
        if values and not self._labels:  # the phone's own identifiers: the analysis compiled them already
            from harness.analyzer import compiled_matcher

            self._matcher = compiled_matcher(IdentifierSet(values), False, None)
        elif values:  # guesses differ from capture to capture: no database compile (~0.1 s) for them
            self._matcher = Matcher(IdentifierSet(values), guess=False, canary=None, portable=True)

    def text(self, text: str) -> str:
        if self._matcher is None or not text:
            return text
        data = text.encode("utf-8", "surrogateescape")
        literals, _ = self._matcher.scan(data)
        spans: list[tuple[int, int, str]] = []
        for pid, end in literals:
            start = end - self._matcher.pattern_length[pid]
            for form in self._matcher.forms[pid]:
                if not set(form.pattern) <= _PRINTABLE:
                    continue
                fence = BOUNDARY_SETS[form.boundary]
                if fence and ((start > 0 and data[start - 1] in fence) or (end < len(data) and data[end] in fence)):
                    continue
                if form.keys and not any(key in data[max(0, start - KEY_WINDOW) : start].lower() for key in form.keys):
                    continue  # a short value is only that identifier after a key naming it (as the analyzer reads it)
                target = form.target
                label = self._labels.get((target.kind, target.value)) or mask(target.kind, target.slot, None)
                spans.append((start, end, label))
                break
        if not spans:
            return text
        spans.sort()
        out, pos = [], 0
        for start, end, label in spans:
            if start < pos:  # overlaps the previous replacement (an IMEI and its 14-digit core): widen it
                pos = max(pos, end)
                continue
            out.append(data[pos:start])
            out.append(f"‹{label}›".encode())
            pos = end
        out.append(data[pos:])
        return b"".join(out).decode("utf-8", "replace")

    def value(self, value: Any) -> Any:
        """A JSON-shaped value with every string (keys too) redacted; numbers are left alone."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value

    def finding(self, finding: Finding) -> None:
        """Redact a finding's free-text fields in place."""
        finding.host = self.text(finding.host) if finding.host else finding.host
        finding.src = self.text(finding.src) if finding.src else finding.src  # an address made from the MAC
        finding.dst = self.text(finding.dst) if finding.dst else finding.dst
        finding.evidence = self.text(finding.evidence)
        finding.app = self.text(finding.app) if finding.app else finding.app
        finding.detail = self.value(finding.detail)


# --- findings JSON -------------------------------------------------------------------------------

def write_json(report: Report, path: Path, redactor: Redactor | None = None) -> None:
    """Write the findings JSON atomically, owner-only; a path we cannot write is a user error."""
    data = report.to_json()
    if redactor is not None:
        data = redactor.value(data)
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp creates it 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            Path(tmp).replace(path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise PhonehomeError(f"{path}: cannot write the findings JSON: {exc.strerror or exc}") from None


# --- console -------------------------------------------------------------------------------------

_STATUS_WORD = {Status.CLEAN: "CLEAN", Status.LEAK: "LEAK", Status.UNVERIFIED: "UNVERIFIED"}


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    except (ValueError, OverflowError, OSError):  # a damaged record's timestamp: show the number
        return f"{epoch:.3f} (not a date)"


def _frames(frames: list[int], limit: int = 6) -> str:
    """1-based frame numbers as ranges: `12-14,20`."""
    if not frames:
        return "-"
    runs: list[list[int]] = []
    for number in sorted(set(frames)):
        if runs and number == runs[-1][1] + 1:
            runs[-1][1] = number
        else:
            runs.append([number, number])
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs]
    return ",".join(parts[:limit]) + (",…" if len(parts) > limit else "")


def _where(f: Finding) -> str:
    host = f.host or f.dst or "-"
    if f.dport is None:
        return host
    if f.detail.get("contact") == "attempted":  # a DNS lookup: the name asked for, and of whom
        return f"{host} via {f.dst}:{f.dport}/{f.proto}"
    return f"{host}:{f.dport}/{f.proto}" if f.proto else f"{host}:{f.dport}"


def _what(f: Finding) -> str:
    if f.rule == Rule.PLAINTEXT_IDENTIFIER:
        label = f.evidence.split(" in ", 1)[0]
        return label + (" (guess)" if f.guess and "(guess)" not in label else "")
    if f.rule == Rule.UNAPPROVED_COUNTRY:
        return f"country {f.detail.get('country') or 'unknown'}"
    if f.rule == Rule.ACTIVATION_PACKAGE_INSTALLED:
        return str(f.detail.get("package", "-"))
    carrier, country = f.detail.get("carrier"), f.detail.get("country")
    return f"{carrier} ({country})" if carrier else f.rule


def _how(f: Finding) -> str:
    if f.rule == Rule.UNAPPROVED_ACTIVATION_CLIENT:
        kind = "DNS lookup" if f.detail.get("contact") == "attempted" else "connection"
        return f"{kind} [{f.detail.get('catalog')}]"
    return " > ".join(f.encoding) or "-"


def _groups(findings: list[Finding]) -> list[tuple[Finding, list[Finding]]]:
    """Findings that differ only in frames and time (repeated sends) as one row."""
    groups: dict[tuple[Any, ...], list[Finding]] = {}
    for f in findings:
        key = (f.rule, f.identifier, f.slot, f.guess, f.host, f.dst, f.dport, f.proto, tuple(f.encoding),
               f.detail.get("catalog"), f.detail.get("contact"), f.detail.get("package"), f.phase, f.evidence)
        groups.setdefault(key, []).append(f)
    return [(members[0], members) for members in groups.values()]


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]


def render_console(report: Report, redactor: Redactor | None = None) -> str:
    """The short table engineers read in CI logs: status first, findings grouped, then the capture."""
    cap = report.capture
    count = len(report.findings)
    lines = [f"phonehome: {_STATUS_WORD[report.status]} (exit {report.exit_code})"
             + (f": {count} finding{'s' if count != 1 else ''}" if count else "")]
    why = "why" if report.status == Status.UNVERIFIED else "also unverified"
    lines += [f"  {why}: {reason}" for reason in report.reasons]
    lines += [f"  note: {note}" for note in report.notes]
    if report.findings:
        rows = [["RULE", "WHAT", "WHERE", "HOW", "FRAMES", "TIMES"]]
        for first, members in _groups(report.findings):
            frames = sorted({n for m in members for n in m.frames})
            rows.append([first.rule, _what(first), _where(first), _how(first), _frames(frames), str(len(members))])
        lines += ["", "findings (grouped; evidence masked; raw bytes only in the capture file):", *_table(rows)]
    span = ""
    if cap.first is not None and cap.last is not None:
        span = f", {_when(cap.first)} .. {_when(cap.last)} ({cap.last - cap.first:.1f} s)"
    canary = "not requested" if cap.canary is None else (
        f"seen in frame {_frames(cap.canary.frames)}" if cap.canary.marker_seen else "NOT seen")
    blind = [w.reason + ("" if w.acceptable else " (not acceptable)") for w in cap.blind_windows]
    lines += [
        "",
        f"capture: {cap.path}",
        f"  {cap.frames} frames, {cap.bytes} bytes{span}",
        f"  truncated: {'yes' if cap.truncated else 'no'}; excluded flows: {cap.excluded_flows}; "
        f"evicted bytes: {cap.evicted_bytes}; canary: {canary}",
    ]
    if blind:
        lines.append("  blind windows: " + "; ".join(blind))
    by_state: dict[str, list[str]] = {}
    for kind, state in report.coverage.items():
        by_state.setdefault(state, []).append(kind)
    order = {"read": 0, "profile": 1, "unknown": 2}
    shown = sorted(by_state.items(), key=lambda item: order.get(item[0], 3))
    lines.append("coverage: " + "; ".join(f"{state}: {', '.join(kinds)}" for state, kinds in shown))
    text = "\n".join(lines) + "\n"
    return redactor.text(text) if redactor is not None else text
