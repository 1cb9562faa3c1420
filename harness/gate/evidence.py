"""What a gate run leaves behind: findings JSON, Allure attachments, JUnit properties, messages.

Nothing here holds a raw identifier: findings carry masked evidence only, logcat excerpts go
through the analyzer's redactor, and raw captures (owner-only, 0600) are pointed to by path.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import allure

from harness.analyzer.model import Finding, Status
from harness.analyzer.report import Redactor
from harness.errors import PhonehomeError

if TYPE_CHECKING:
    from harness.gate.recording import Outcome
    from harness.gate.session import DeviceSession

log = logging.getLogger(__name__)

LOGCAT_LINES = 200


# --- JSON --------------------------------------------------------------------------------------
def device_json(session: DeviceSession) -> dict[str, Any]:
    """Who the phone is, for reports: model, build, market, profile; its serial only masked."""
    info = session.info.to_json() if session.info is not None else {}
    info.pop("label", None)
    profile = session.profile
    return {"id": session.id, "spec": session.id if session.spec.startswith("virtual:") else None,
            "profile": profile.name if profile is not None else None, **info}


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def outcome_json(session: DeviceSession, outcome: Outcome) -> dict[str, Any]:
    """The analyzer's findings JSON plus the scenario's context (device, build, phases, boots, steps)."""
    data = outcome.report.to_json()
    data.update({
        "scenario": outcome.name,
        "device": device_json(session),
        "build": session.info.fingerprint if session.info is not None else None,
        "phases": [mark.to_json() for mark in outcome.timeline],
        "boots": [{**b.stages(), "issued": b.issued, "clock_offset": b.clock_offset} for b in outcome.boots],
        "steps": [{"step": s.step, "driver": s.driver, "verified": s.verified, "started": s.started, "ended": s.ended}
                  for s in outcome.steps],
        "capture_backend": outcome.capture.backend if outcome.capture is not None else None,
    })
    return data


def write_outcome(session: DeviceSession, outcome: Outcome) -> Path:
    return _write_json(session.artifacts / f"{outcome.name}.findings.json", outcome_json(session, outcome))


def combined_capture(session: DeviceSession) -> dict[str, Any]:
    """The analyzer's `capture` object over every capture of one phone (its artifacts folder as path)."""
    caps = [o.report.capture for o in session.outcomes]
    firsts = [c.first for c in caps if c.first is not None]
    lasts = [c.last for c in caps if c.last is not None]
    canaries = [c.canary for c in caps if c.canary is not None]
    return {
        "path": str(session.artifacts), "frames": sum(c.frames for c in caps), "bytes": sum(c.bytes for c in caps),
        "first": min(firsts) if firsts else None, "last": max(lasts) if lasts else None,
        "truncated": any(c.truncated for c in caps),
        "canary": {"marker_seen": all(c.marker_seen for c in canaries), "frames": []} if canaries else None,
        "blind_windows": [w.to_json() for c in caps for w in c.blind_windows],
        "excluded_flows": sum(c.excluded_flows for c in caps), "evicted_bytes": sum(c.evicted_bytes for c in caps),
    }


def device_summary(session: DeviceSession) -> dict[str, Any]:
    """The per-device findings JSON: the analyzer's schema over every recording on that phone."""
    findings = []
    for outcome in session.outcomes:
        findings += [{**f.to_json(), "scenario": outcome.name} for f in outcome.findings]
    findings += [{**f.to_json(), "scenario": None} for f in session.policy_findings]
    reasons = list(session.errors)
    for outcome in session.outcomes:
        reasons += [f"{outcome.name}: {reason}" for reason in outcome.report.reasons]
    if not session.outcomes and not session.errors:
        reasons.append("no scenario ran on this phone: nothing was verified")
    harvest = session.harvest
    return {
        "version": 1, "status": str(session.status), "reasons": reasons,
        "device": device_json(session),
        "build": session.info.fingerprint if session.info is not None else None,
        "coverage": harvest.coverage if harvest is not None else {},
        "capture": combined_capture(session),
        "captures": [{"scenario": o.name, "status": str(o.status), **o.report.capture.to_json(),
                      "findings_json": str(o.findings_path) if o.findings_path else None} for o in session.outcomes],
        "findings": findings,
        "destinations": sorted({json.dumps(d, sort_keys=True, default=str): d for o in session.outcomes
                                for d in o.report.destinations}.values(),
                               key=lambda d: (str(d.get("host") or d.get("dst")), d.get("dport") or 0)),
    }


def write_device_summary(session: DeviceSession) -> Path:
    return _write_json(session.artifacts / "findings.json", device_summary(session))


# --- words -------------------------------------------------------------------------------------
def _frames(frames: list[int]) -> str:
    if not frames:
        return ""
    return f"frame {frames[0]}" if len(frames) == 1 else f"frames {frames[0]}-{frames[-1]}"


def finding_line(finding: Finding) -> str:
    """One finding as one line: rule, masked evidence, app, phase and cycle, frames."""
    where = [part for part in (
        f"app {finding.app}" if finding.app else "",
        f"{finding.phase} (cycle {finding.cycle})" if finding.phase else "",
        _frames(finding.frames),
    ) if part]
    return f"{finding.rule}: {finding.evidence}" + (f" [{', '.join(where)}]" if where else "")


def failure_message(session: DeviceSession, outcome: Outcome) -> str:
    """The assertion text: a leak and an unverified run read differently."""
    head = f"{session.id} {session.describe()}, scenario {outcome.name}"
    capture = f"raw capture (owner-only): {outcome.report.capture.path}"
    if outcome.status is Status.LEAK:
        lines = [f"LEAK: {head}: {len(outcome.findings)} finding(s)"]
        lines += [f"  - {finding_line(f)}" for f in outcome.findings]
    else:
        lines = [f"UNVERIFIED (not proven clean; no leak was seen): {head}"]
        lines += [f"  - {reason}" for reason in outcome.report.reasons]
    lines.append(f"  {capture}")
    if outcome.findings_path is not None:
        lines.append(f"  findings JSON: {outcome.findings_path}")
    return "\n".join(lines)


def findings_csv(findings: list[Finding]) -> str:
    """The findings table Allure shows (CSV attachments render as tables)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["rule", "identifier", "host", "dst", "proto", "encoding", "app", "phase", "cycle", "frames",
                     "evidence"])
    for f in findings:
        ident = f"{f.identifier}[{f.slot}]" if f.identifier and f.slot else (f.identifier or "")
        writer.writerow([f.rule, ident, f.host or "", f"{f.dst}:{f.dport}" if f.dst else "", f.proto or "",
                         " > ".join(f.encoding), f.app or "", f.phase or "", f.cycle or "", _frames(f.frames),
                         f.evidence])
    return out.getvalue()


# --- Allure and JUnit -------------------------------------------------------------------------
def allure_device(session: DeviceSession) -> None:
    """Device info as Allure parameters and labels."""
    info = session.info
    allure.dynamic.parameter("device_session", session.id)  # pytest's parameter is the raw --device value
    if info is not None:
        allure.dynamic.label("device_model", info.model or "?")
        allure.dynamic.label("android", info.release or "?")
        allure.dynamic.label("build", info.build_id or "?")
    if session.profile is not None:
        allure.dynamic.label("market", session.profile.market)


def allure_outcome(outcome: Outcome) -> None:
    """Findings table, the masked findings JSON and where the raw capture is (never the capture)."""
    if outcome.findings:
        allure.attach(findings_csv(outcome.findings), name=f"{outcome.name}: findings",
                      attachment_type=allure.attachment_type.CSV)
    if outcome.findings_path is not None:
        allure.attach.file(str(outcome.findings_path), name=f"{outcome.name}: findings JSON",
                           attachment_type=allure.attachment_type.JSON)
    allure.attach(f"raw capture (owner-only, not attached): {outcome.report.capture.path}\n",
                  name=f"{outcome.name}: capture", attachment_type=allure.attachment_type.TEXT)


def junit_properties(session: DeviceSession, outcome: Outcome | None) -> list[tuple[str, str]]:
    info = session.info
    props = [("phonehome_device", session.id),
             ("phonehome_model", (info.model if info else None) or "?"),
             ("phonehome_build", (info.fingerprint if info else None) or "?")]
    if outcome is not None:
        cap = outcome.report.capture
        canary = cap.canary.marker_seen if cap.canary is not None else None
        props += [("phonehome_status", str(outcome.status)),
                  ("phonehome_findings", str(len(outcome.findings))),
                  ("phonehome_capture", f"{cap.frames} frames, {cap.bytes} bytes, canary "
                                        f"{'seen' if canary else 'not seen' if canary is False else 'not sent'}, "
                                        f"{len(cap.blind_windows)} blind window(s)")]
    return props


# --- on failure ---------------------------------------------------------------------------------
def screenshot(session: DeviceSession) -> bytes | None:
    """A PNG of the phone's screen: uiautomator2 when it runs, else `screencap`."""
    device = session.device
    if device is None:
        return None
    ui = device.lifecycle._ui
    with contextlib.suppress(Exception):  # evidence is best effort: a failing phone may not answer
        if ui is not None and getattr(ui, "name", "") == "uiautomator2":
            png = ui.d.screenshot(format="raw")  # type: ignore[attr-defined]
            if isinstance(png, bytes | bytearray):
                return bytes(png)
    with contextlib.suppress(Exception):
        data = device.adb.device().shell(["screencap", "-p"], encoding=None, timeout=30)
        if isinstance(data, bytes) and data.startswith(b"\x89PNG"):
            return data
    return None


def logcat_excerpt(session: DeviceSession, lines: int = LOGCAT_LINES) -> str | None:
    """The last lines of logcat, every identifier of the phone replaced by its masked label."""
    device = session.device
    if device is None:
        return None
    try:
        text = device.adb.script(f"logcat -d -t {lines}", timeout=30).stdout
    except PhonehomeError:
        return None
    identifiers = session.harvest.identifiers if session.harvest is not None else None
    return Redactor(identifiers).text(text)


def allure_failure(session: DeviceSession) -> None:
    png = screenshot(session)
    if png:
        allure.attach(png, name="screen", attachment_type=allure.attachment_type.PNG)
    excerpt = logcat_excerpt(session)
    if excerpt:
        allure.attach(excerpt, name="logcat (masked)", attachment_type=allure.attachment_type.TEXT)
