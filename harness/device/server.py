"""A private adb server on a free loopback port: what the demo, the tests and the benchmarks use.

Never the default server on 5037, which a user's phones may be on. The server is killed when the
`with` block ends, pass or fail.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

ENV_KEYS = ("ANDROID_ADB_SERVER_PORT", "ADBUTILS_ADB_PATH", "ADB_MDNS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bundled_adb() -> str:
    """The adb binary adbutils ships (a known, recent version)."""
    import adbutils

    return str(Path(adbutils.__file__).parent / "binaries" / "adb")


@contextlib.contextmanager
def private_adb_server(adb_path: str | None = None, *, activate: bool = False,
                       timeout: float = 30.0) -> Iterator[dict[str, str]]:
    """Start `adb_path` (default: the bundled adb) as a server on a free port, mDNS off; yields its environment.

    With `activate`, this process uses it too while the block runs: os.environ is set, and
    adbutils' module-level client (made at import time for 5037, which uiautomator2 falls back
    on) is rebound to it.
    """
    import adbutils

    # ADB_MDNS=0: no mDNS discovery of wireless-debugging phones, which multicasts on the host's LAN
    env = {"ANDROID_ADB_SERVER_PORT": str(free_port()), "ADBUTILS_ADB_PATH": adb_path or bundled_adb(),
           "ADB_MDNS": "0"}
    saved = {key: os.environ.get(key) for key in ENV_KEYS}
    default_client = adbutils.adb
    if activate:
        os.environ.update(env)
        adbutils.adb = adbutils.AdbClient(host="127.0.0.1", port=int(env["ANDROID_ADB_SERVER_PORT"]))
    run_env = {**os.environ, **env}
    subprocess.run([env["ADBUTILS_ADB_PATH"], "start-server"], env=run_env, capture_output=True, check=True,
                   timeout=timeout)
    try:
        yield env
    finally:
        subprocess.run([env["ADBUTILS_ADB_PATH"], "kill-server"], env=run_env, capture_output=True, check=False,
                       timeout=timeout)
        if activate:
            adbutils.adb = default_client
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
