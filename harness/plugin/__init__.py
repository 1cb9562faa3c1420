"""The phonehome pytest plugin, registered through the `pytest11` entry point."""

from __future__ import annotations

import pytest

from harness.plugin.options import GateOptions, add_options, parse_options

OPTIONS_KEY = pytest.StashKey[GateOptions]()

MARKERS = [
    "phonehome_device: the test drives phones given with --device (the gate's scenarios)",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    config.stash[OPTIONS_KEY] = parse_options(config)
