"""What the plugin keeps for one pytest run (in `config.stash`, never in globals)."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from harness.gate.session import VIRTUAL, DeviceSession, device_id
from harness.plugin.options import GateOptions

OPTIONS_KEY = pytest.StashKey[GateOptions]()
SESSIONS_KEY = pytest.StashKey[dict[str, DeviceSession]]()  # --device value -> its session (this process)
IDS_KEY = pytest.StashKey[dict[str, str]]()  # --device value -> its id in test ids and artifact paths
STARTED_KEY = pytest.StashKey[float]()
SUMMARIES_KEY = pytest.StashKey[list[dict[str, Any]]]()  # this run's per-phone findings.json, read at the end
PROBLEM_KEY = pytest.StashKey[str]()  # a usage error found while parametrizing, raised after collection


def ids_for(config: pytest.Config, specs: Sequence[str]) -> dict[str, str]:
    """Each phone's readable id: the profile's model (if one is given) and the masked serial.

    Computed without touching a phone, so every xdist worker gets the same ids and one offline
    phone cannot stop collection. Ids that would collide (same model, same last three serial
    characters) get a short hash of the serial, so no phone overwrites another's evidence.
    """
    ids = config.stash.setdefault(IDS_KEY, {})
    missing = [spec for spec in specs if spec not in ids]
    if missing:
        model = _profile_model(config)
        names = {spec: device_id(spec, None if spec.startswith(VIRTUAL) else model) for spec in specs}
        counts = Counter(names.values())
        for spec, name in names.items():
            if counts[name] > 1:
                name = f"{name}-{hashlib.sha256(spec.encode()).hexdigest()[:4]}"
            ids.setdefault(spec, name)
    return {spec: ids[spec] for spec in specs}


def _profile_model(config: pytest.Config) -> str | None:
    options = config.stash[OPTIONS_KEY]
    if options.profile is None:
        return None
    from harness.profile import load_profile

    return load_profile(options.profile).model  # already checked in pytest_configure
