"""What the plugin keeps for one pytest run (in `config.stash`, never in globals)."""

from __future__ import annotations

import logging

import pytest

from harness.gate.session import VIRTUAL, DeviceSession
from harness.plugin.options import GateOptions

log = logging.getLogger(__name__)

OPTIONS_KEY = pytest.StashKey[GateOptions]()
SESSIONS_KEY = pytest.StashKey[dict[str, DeviceSession]]()  # --device value -> its session (this process)
MODELS_KEY = pytest.StashKey[dict[str, str | None]]()  # --device value -> model, read once for test ids
STARTED_KEY = pytest.StashKey[float]()
PROBLEM_KEY = pytest.StashKey[str]()  # a usage error found while parametrizing, raised after collection


def model_of(config: pytest.Config, spec: str) -> str | None:
    """The phone's model for readable test ids (`Pixel_7-…456`); None for virtual phones or on failure."""
    models = config.stash.setdefault(MODELS_KEY, {})
    if spec not in models:
        models[spec] = None if spec.startswith(VIRTUAL) else _read_model(spec)
    return models[spec]


def _read_model(spec: str) -> str | None:
    from harness.device.select import open_device, parse_spec
    from harness.errors import PhonehomeError

    try:
        adb = open_device(parse_spec(spec), timeout=10)
        return adb.script("getprop ro.product.model", timeout=10).stdout.strip() or None
    except PhonehomeError as exc:
        raise pytest.UsageError(f"--device: {exc}") from None
