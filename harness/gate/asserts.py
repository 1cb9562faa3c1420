"""Assertion helpers for scenarios: a failure reads like a report, a leak and an unverified run differently.

    outcome = recording.stop()
    assert_gate_passes(outcome)                    # only `clean` passes
    assert_no_plaintext_identifiers(outcome)       # just the plaintext rule
    assert_no_unapproved_activation(outcome)       # just the activation/country/package rules
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from harness.analyzer.model import Finding, Rule, Status
from harness.gate.evidence import failure_message, finding_line

if TYPE_CHECKING:
    from harness.gate.recording import Outcome
    from harness.gate.session import DeviceSession

ACTIVATION_RULES = frozenset({Rule.UNAPPROVED_ACTIVATION_CLIENT, Rule.UNAPPROVED_COUNTRY,
                              Rule.ACTIVATION_PACKAGE_INSTALLED})


def _session(outcome: Outcome) -> DeviceSession:
    session = getattr(outcome, "session", None)
    assert session is not None, "an Outcome from Recording.stop()"
    return session


def assert_gate_passes(outcome: Outcome) -> None:
    """Fail unless the recording is `clean`: `leak` first (with every finding), else `unverified`."""
    if outcome.status is not Status.CLEAN:
        pytest.fail(failure_message(_session(outcome), outcome), pytrace=False)


def _fail_on(outcome: Outcome, findings: list[Finding], what: str) -> None:
    if findings:
        session = _session(outcome)
        lines = [f"LEAK: {session.id} {session.describe()}, scenario {outcome.name}: {len(findings)} {what}"]
        lines += [f"  - {finding_line(f)}" for f in findings]
        lines.append(f"  raw capture (owner-only): {outcome.report.capture.path}")
        pytest.fail("\n".join(lines), pytrace=False)


def assert_no_plaintext_identifiers(outcome: Outcome) -> None:
    _fail_on(outcome, [f for f in outcome.findings if f.rule == Rule.PLAINTEXT_IDENTIFIER],
             "identifier(s) readable on the wire")


def assert_no_unapproved_activation(outcome: Outcome) -> None:
    _fail_on(outcome, [f for f in outcome.findings if f.rule in ACTIVATION_RULES],
             "unapproved activation contact(s)")


def assert_verified(outcome: Outcome) -> None:
    """Fail when the recording could not prove anything (capture blind, canary missing...)."""
    if outcome.status is Status.UNVERIFIED:
        pytest.fail(failure_message(_session(outcome), outcome), pytrace=False)
