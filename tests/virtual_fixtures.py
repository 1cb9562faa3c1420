"""pytest fixtures that start virtual phones and connect them to the private adb server.

    def test_x(virtual_phones):
        phone, = virtual_phones("clean")                  # one phone, from devices/clean.yaml
        a, b = virtual_phones(spec, n=2, network=False)   # two, without network namespaces

Every phone is `adb connect`ed to the session's private adb server (`adb_server` fixture, never
5037) and stopped, disconnected and cleaned up when the test ends, pass or fail. A phone with its
network (the default) needs root and network namespaces: without them the test is skipped on a
desk and fails in CI (`netns_available`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from harness.virtual.phone import VirtualPhone

SDK = {9: 28, 11: 30, 14: 34}


def adb_client(adb_server: dict[str, str]) -> Any:
    import adbutils

    return adbutils.AdbClient(host="127.0.0.1", port=int(adb_server["ANDROID_ADB_SERVER_PORT"]))


def connect(client: Any, serial: str, timeout: float = 20.0) -> None:
    """`adb connect` until the server lists the phone as `device` (or unauthorized, when that is the point)."""
    deadline = time.monotonic() + timeout
    while True:
        client.connect(serial, timeout=5)
        states = {d.serial: d.state for d in client.list()}
        if states.get(serial) in ("device", "unauthorized"):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{serial} not listed by the adb server: {states}")
        time.sleep(0.2)


def make_spec(name: str = "clean", **changes: Any) -> Any:
    """A VirtualSpec from a shipped profile, with fields replaced (e.g. `android=14`)."""
    from harness.virtual.spec import load_virtual

    spec = load_virtual(name)
    if "android" in changes and "sdk" not in changes:
        changes["sdk"] = SDK[changes["android"]]
    return dataclasses.replace(spec, **changes) if changes else spec


@pytest.fixture
def virtual_phones(adb_server: dict[str, str], request: pytest.FixtureRequest) -> Iterator[
        Callable[..., list[VirtualPhone]]]:
    """A factory: `virtual_phones(spec_or_name, n=1, **VirtualPhone kwargs) -> [phones]`."""
    client = adb_client(adb_server)
    started: list[VirtualPhone] = []

    def start(spec_or_name: Any = "clean", n: int = 1, **kwargs: Any) -> list[VirtualPhone]:
        if kwargs.get("network", True):
            request.getfixturevalue("netns_available")
        phones = []
        for _ in range(n):
            phone = VirtualPhone(spec_or_name, **kwargs)
            started.append(phone)
            phone.start()
            connect(client, phone.serial)
            phones.append(phone)
        return phones

    yield start
    for phone in started:
        if phone.port is not None:
            with contextlib.suppress(Exception):  # already gone is fine at teardown
                client.disconnect(phone.serial)
        phone.stop()
