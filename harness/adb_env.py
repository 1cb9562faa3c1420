"""The environment variable adb and adbutils read for the adb server's port, checked once.

adbutils builds its default client when it is imported, from `ANDROID_ADB_SERVER_PORT`; a bad
value there raises inside that import. The pytest plugin is loaded into every pytest run of an
environment it is installed in, so it imports adbutils with a bad value hidden, and says what is
wrong (a usage error) only when a run asks for a phone.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

ADB_PORT = "ANDROID_ADB_SERVER_PORT"


def adb_port_problem() -> str | None:
    """One line saying what is wrong with ANDROID_ADB_SERVER_PORT, or None."""
    port = os.environ.get(ADB_PORT)
    if port is None or (port.isdigit() and 0 < int(port) < 65536):
        return None
    return f"{ADB_PORT}={port!r}: expected a port number, 1 to 65535"


@contextlib.contextmanager
def bad_adb_port_hidden() -> Iterator[None]:
    """Within: ANDROID_ADB_SERVER_PORT unset if its value is unusable (restored after)."""
    port = os.environ.get(ADB_PORT) if adb_port_problem() else None
    if port is not None:
        del os.environ[ADB_PORT]
    try:
        yield
    finally:
        if port is not None:
            os.environ[ADB_PORT] = port
