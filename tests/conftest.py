"""Shared test fixtures: a private adb server, and root/network-namespace requirements.

In CI (`CI=true`) a test whose setup is missing fails instead of skipping: a skip there would
hide a missing install step.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from harness.device.server import bundled_adb, free_port, private_adb_server

__all__ = ["bundled_adb", "free_port"]  # test modules import them from here

pytest_plugins = ["pytester", "virtual_fixtures"]

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing_setup(reason: str) -> None:
    """Skip on a desk, fail in CI."""
    if IN_CI:
        pytest.fail(f"setup missing in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def netns_problem() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2 (`ip`)"
    probe = f"phtest-probe-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, check=False)
    return None


@pytest.fixture(scope="session")
def netns_available() -> None:
    """Depend on this in any test that needs root and network namespaces."""
    problem = netns_problem()
    if problem:
        missing_setup(problem)


@pytest.fixture(scope="session")
def tool() -> object:
    """`tool("tcpdump")` -> its path, skipping on a desk / failing in CI when it is missing."""

    def find(name: str) -> str:
        path = shutil.which(name)
        if path is None:
            missing_setup(f"needs `{name}` on PATH")
            raise AssertionError("unreachable")
        return path

    return find


@pytest.fixture(scope="session")
def adb_server() -> Iterator[dict[str, str]]:
    """The session's private adb server (never 5037), used by this process too; phones stay listed on it."""
    with private_adb_server(activate=True) as env:
        yield env


@pytest.fixture
def empty_adb_server() -> Iterator[dict[str, str]]:
    """A private adb server of this test's own, with no phone ever connected to it."""
    with private_adb_server(activate=True) as env:
        yield env
