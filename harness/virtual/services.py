"""The contract between the virtual phone's adb transport (`adbd`) and its device model.

`adbd` speaks the wire protocol and knows nothing about Android; the device model knows Android
and nothing about the wire. adbd calls these methods when the adb server opens a stream.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol


class ShellIO(Protocol):
    """One stream's I/O, as a command running on the phone sees it.

    For `shell:` (v1) and `exec:` stderr is merged into stdout, as on a real phone.
    `write_stdout` returns once the peer has room again (adb's WRTE/OKAY flow control).
    """

    async def read_stdin(self) -> bytes:
        """Next chunk of stdin; b"" once the peer closed stdin or the stream."""

    async def write_stdout(self, data: bytes) -> None: ...

    async def write_stderr(self, data: bytes) -> None: ...

    @property
    def closed(self) -> asyncio.Event:
        """Set when the peer closed the stream: a long-running command should stop."""

    @property
    def pty(self) -> bool:
        """True for an interactive pty shell (v2 `pty` option or v1 with no command)."""


@dataclass(frozen=True, slots=True)
class FileStat:
    mode: int  # st_mode, with type bits (0o100644 file, 0o040755 directory, 0o120777 link)
    size: int
    mtime: int


class FileSystem(Protocol):
    """What `sync:` needs: stat, list, read, write (push/pull)."""

    def stat(self, path: str) -> FileStat | None: ...

    def listdir(self, path: str) -> list[tuple[str, FileStat]] | None: ...

    def read(self, path: str) -> bytes | None: ...

    def write(self, path: str, data: bytes, mode: int, mtime: int) -> str | None:
        """Store a pushed file; returns an error message (sent as FAIL) or None."""


class DeviceServices(Protocol):
    """What the device model offers adbd."""

    def banner(self) -> str:
        """CNXN banner: `device::ro.product.name=x;ro.product.model=y;ro.product.device=z;features=shell_v2,cmd`."""

    @property
    def fs(self) -> FileSystem: ...

    async def run(self, command: str, io: ShellIO) -> int:
        """Run a shell command line (sh syntax) to completion; returns its exit code."""

    async def open_tcp(self, port: int, host: str | None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """`tcp:PORT` forwards: connect to a port on the phone (raises OSError when refused)."""

    async def reboot(self, target: str) -> None:
        """`reboot:TARGET` ('' for a normal reboot). adbd drops its connections after calling it."""
