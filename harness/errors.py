"""Errors a user can cause, each rendered as one line and exit code 2, never a traceback."""

from __future__ import annotations

from pathlib import Path


class PhonehomeError(Exception):
    """A user mistake or an unusable input: one line that says what is wrong and where."""

    exit_code = 2


class ConfigError(PhonehomeError):
    """A bad value in a file the user wrote (profile, IDS.json, baseline): file, line and field."""

    def __init__(self, path: Path | str, line: int | None, field: str | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        what = f"{field}: {message}" if field else message
        super().__init__(f"{where}: {what}")


class CaptureError(PhonehomeError):
    """A capture that cannot be read at all (missing, not a capture format)."""


class DeviceError(PhonehomeError):
    """A device that cannot be used: not attached, unauthorized, offline, unrecoverable."""
