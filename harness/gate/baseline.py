"""Baselines: the destinations the previous build of a SKU contacted, and the diff against them.

A baseline is JSON (`phonehome baseline write` makes one from a run's per-device findings.json):

    {"version": 1, "kind": "phonehome-baseline", "profile": "nokia7plus-fixed",
     "model": "...", "build": "<fingerprint>",
     "destinations": [{"host": "time.android.com", "dport": 123, "proto": "udp"}, ...]}

A destination is keyed by host name (the flow's own name, else a DNS answer), or by address
when no name is known, plus port and protocol. The gate's `new-destination` rule flags every
destination of the candidate build that the baseline does not hold.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from harness.analyzer.model import Finding, Rule
from harness.capture.canary import CANARY_DOMAIN
from harness.errors import ConfigError

KIND = "phonehome-baseline"
Key = tuple[str, int, str]


def key_of(destination: dict[str, Any]) -> Key:
    return (str(destination.get("host") or destination.get("dst")), int(destination.get("dport") or 0),
            str(destination.get("proto") or "tcp"))


def _where(text: str, key: str) -> int | None:
    """The line of a key in the file, for error messages."""
    for number, line in enumerate(text.splitlines(), 1):
        if f'"{key}"' in line:
            return number
    return None


def load_baseline(path: Path) -> tuple[dict[str, Any], set[Key]]:
    """(header, destination keys); a malformed file is one ConfigError naming file, line and field."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(path, None, None, f"cannot read the baseline ({exc.strerror or exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(path, exc.lineno, None, f"not JSON ({exc.msg})") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise ConfigError(path, _where(text, "kind"), "kind", f'expected "{KIND}" (write one with '
                          "`phonehome baseline write`)")
    if data.get("version") != 1:
        raise ConfigError(path, _where(text, "version"), "version", f"expected 1, got {data.get('version')!r}")
    items = data.get("destinations")
    if not isinstance(items, list):
        raise ConfigError(path, _where(text, "destinations"), "destinations", "expected a list")
    keys = set()
    for index, item in enumerate(items):
        if not isinstance(item, dict) or not (item.get("host") or item.get("dst")) or \
                not isinstance(item.get("dport"), int) or not isinstance(item.get("proto"), str):
            raise ConfigError(path, _where(text, "destinations"), f"destinations[{index}]",
                              'expected {"host": NAME, "dport": PORT, "proto": "tcp"|"udp"}')
        keys.add(key_of(item))
    return data, keys


def is_harness_traffic(destination: dict[str, Any]) -> bool:
    """The canary the harness made the phone send: a fresh name every run, never a destination to keep."""
    host = str(destination.get("host") or "")
    return host == CANARY_DOMAIN or host.endswith("." + CANARY_DOMAIN)


def new_destinations(baseline: set[Key], destinations: Iterable[dict[str, Any]], *, source: str) -> list[Finding]:
    """One `new-destination` finding per destination the baseline does not hold."""
    findings = []
    for dest in destinations:
        host, port, proto = key_of(dest)
        if (host, port, proto) in baseline or is_harness_traffic(dest):
            continue
        findings.append(Finding(
            rule=Rule.NEW_DESTINATION, identifier=None, slot=None, host=dest.get("host"), dst=dest.get("dst"),
            dport=port, proto=proto, frames=[dest["first_frame"]] if dest.get("first_frame") else [],
            encoding=[], time=dest.get("time"), app=dest.get("app"),
            evidence=f"{host}:{port}/{proto} is not in the baseline {source}"))
    return findings


def build_baseline(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A baseline from per-device findings.json contents (all from one SKU)."""
    profiles = {s.get("device", {}).get("profile") for s in summaries}
    if len(profiles) > 1:
        names = ", ".join(sorted(map(str, profiles)))
        raise ConfigError("findings", None, "device.profile", f"findings of several profiles ({names}): one SKU each")
    first = summaries[0].get("device", {}) if summaries else {}
    keys = sorted({key_of(d) for s in summaries for d in s.get("destinations", []) if not is_harness_traffic(d)})
    return {"version": 1, "kind": KIND, "profile": first.get("profile"), "model": first.get("model"),
            "build": summaries[0].get("build") if summaries else None,
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "destinations": [{"host": host, "dport": port, "proto": proto} for host, port, proto in keys]}
