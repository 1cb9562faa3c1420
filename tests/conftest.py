"""Shared test fixtures: a private adb server, and root/network-namespace requirements.

In CI (`CI=true`) a test whose setup is missing fails instead of skipping: a skip there would
hide a missing install step.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bundled_adb() -> str:
    import adbutils

    return str(Path(adbutils.__file__).parent / "binaries" / "adb")


@contextlib.contextmanager
def private_adb_server() -> Iterator[dict[str, str]]:
    """adbutils' bundled adb on a free port, never the user's on 5037; pointed at for its lifetime.

    Sets the environment variables adb, adbutils and uiautomator2 read, and rebinds adbutils'
    module-level client (made at import time for port 5037), which uiautomator2 falls back on.
    """
    import adbutils

    port = free_port()
    env = {"ANDROID_ADB_SERVER_PORT": str(port), "ADBUTILS_ADB_PATH": bundled_adb()}
    saved = {key: os.environ.get(key) for key in env}
    default_client = adbutils.adb
    os.environ.update(env)
    adbutils.adb = adbutils.AdbClient(host="127.0.0.1", port=port)
    subprocess.run([env["ADBUTILS_ADB_PATH"], "start-server"], env={**os.environ}, capture_output=True,
                   check=True, timeout=30)
    try:
        yield env
    finally:
        subprocess.run([env["ADBUTILS_ADB_PATH"], "kill-server"], env={**os.environ}, capture_output=True,
                       check=False, timeout=30)
        adbutils.adb = default_client
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def adb_server() -> Iterator[dict[str, str]]:
    """The session's private adb server (see private_adb_server); phones connected to it stay listed."""
    with private_adb_server() as env:
        yield env


@pytest.fixture
def empty_adb_server() -> Iterator[dict[str, str]]:
    """A private adb server of this test's own, with no phone ever connected to it."""
    with private_adb_server() as env:
        yield env
