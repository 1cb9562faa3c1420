"""The device side of adb's file sync protocol (the `sync:` service), over a `FileSystem`.

After `sync:` is accepted the stream carries 8-byte requests (4-byte ASCII id, little-endian
length) until QUIT or until the peer closes it; see AOSP packages/modules/adb
`file_sync_protocol.h` and `docs/dev/sync.md`. v1 (STAT, LIST, SEND "path,mode", RECV) is what
adbutils and any adb client speak to a device that advertises no sync features; the v2 requests
(STA2, LST2, LIS2, SND2, RCV2) are what adb uses once a banner advertises `stat_v2`, `ls_v2` or
`sendrecv_v2`, so they are answered too (without compression: a banner must not advertise
`sendrecv_v2_brotli`/`_lz4`/`_zstd`). As in adbd, a failed request answers FAIL and ends the
session: the client opens a new `sync:` for the next file.
"""

from __future__ import annotations

import logging
import posixpath
import stat
import struct
import zlib
from typing import Protocol

from harness.virtual.services import FileStat, FileSystem

log = logging.getLogger(__name__)

SYNC_DATA_MAX = 64 * 1024  # a DATA chunk, both ways
MAX_PATH = 1024
ENOENT = 2  # Linux errno values: the wire carries them as they are

FLAG_BROTLI, FLAG_LZ4, FLAG_ZSTD = 1, 2, 4
FLAG_DRY_RUN = 0x8000_0000

_REQUEST = struct.Struct("<4sI")
_STAT_V1 = struct.Struct("<4sIII")  # id, mode, size, mtime
_DENT_V1 = struct.Struct("<4sIIII")  # id, mode, size, mtime, namelen
_STAT_V2 = struct.Struct("<4sIQQIIIIQqqq")  # id, error, dev, ino, mode, nlink, uid, gid, size, a/m/ctime
_DENT_V2 = struct.Struct("<4sIQQIIIIQqqqI")  # stat_v2 + namelen
_DEVICE = 0xFD05  # st_dev of /data on a typical phone; clients only compare it


class SyncStream(Protocol):
    """The byte stream `sync:` runs on (one adb stream)."""

    async def readexactly(self, n: int) -> bytes:
        """Exactly n bytes; raises EOFError when the peer closed first."""

    async def write(self, data: bytes) -> None: ...


class _Session:
    def __init__(self, stream: SyncStream, fs: FileSystem) -> None:
        self.stream = stream
        self.fs = fs

    async def fail(self, message: str) -> bool:
        """FAIL with a message; the session ends, as in adbd."""
        data = message.encode(errors="replace")
        await self.stream.write(_REQUEST.pack(b"FAIL", len(data)) + data)
        return False

    async def request(self) -> bool:
        """Serve one request; False ends the session."""
        try:
            ident, length = _REQUEST.unpack(await self.stream.readexactly(_REQUEST.size))
            if length > MAX_PATH:
                return await self.fail("path too long")
            path = (await self.stream.readexactly(length)).decode(errors="surrogateescape")
        except EOFError:
            return False
        handler = {
            b"STAT": self.stat_v1, b"STA2": self.stat_v2, b"LST2": self.stat_v2,
            b"LIST": self.list_v1, b"LIS2": self.list_v2,
            b"SEND": self.send_v1, b"SND2": self.send_v2,
            b"RECV": self.recv_v1, b"RCV2": self.recv_v2,
        }.get(ident)
        if ident == b"QUIT":
            return False
        if handler is None:
            return await self.fail(f"unknown command {int.from_bytes(ident, 'little'):08x}")
        return await handler(ident, path)

    # -- stat and list -------------------------------------------------------------------------

    async def stat_v1(self, ident: bytes, path: str) -> bool:
        found = self.fs.stat(path)  # a missing file is all zeros, as adbd's lstat into a zeroed struct
        mode, size, mtime = (found.mode, found.size, found.mtime) if found else (0, 0, 0)
        await self.stream.write(_STAT_V1.pack(b"STAT", mode, size & 0xFFFFFFFF, mtime & 0xFFFFFFFF))
        return True

    async def stat_v2(self, ident: bytes, path: str) -> bool:
        found = self.fs.stat(path)
        if found is None:
            await self.stream.write(_STAT_V2.pack(ident, ENOENT, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
        else:
            await self.stream.write(_STAT_V2.pack(ident, 0, *_v2_fields(path, found)))
        return True

    def entries(self, path: str) -> list[tuple[str, FileStat]]:
        """A directory's entries as readdir gives them, with `.` and `..` first."""
        listing = self.fs.listdir(path)
        if listing is None:
            return []
        here = self.fs.stat(path)
        parent = self.fs.stat(posixpath.dirname(posixpath.normpath("/" + path.lstrip("/"))))
        dots = [(name, st) for name, st in ((".", here), ("..", parent)) if st is not None]
        return dots + [(name, st) for name, st in listing if name not in (".", "..")]

    async def list_v1(self, ident: bytes, path: str) -> bool:
        out = bytearray()
        for name, st in self.entries(path):
            raw = name.encode(errors="surrogateescape")
            out += _DENT_V1.pack(b"DENT", st.mode, st.size & 0xFFFFFFFF, st.mtime & 0xFFFFFFFF, len(raw)) + raw
        out += _DENT_V1.pack(b"DONE", 0, 0, 0, 0)
        await self.stream.write(bytes(out))
        return True

    async def list_v2(self, ident: bytes, path: str) -> bool:
        out = bytearray()
        for name, st in self.entries(path):
            raw = name.encode(errors="surrogateescape")
            out += _DENT_V2.pack(b"DNT2", 0, *_v2_fields(posixpath.join(path, name), st), len(raw)) + raw
        out += _DENT_V2.pack(b"DONE", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        await self.stream.write(bytes(out))
        return True

    # -- send (push) ---------------------------------------------------------------------------

    async def send_v1(self, ident: bytes, spec: str) -> bool:
        path, comma, mode_text = spec.rpartition(",")
        if not comma:
            return await self.fail("missing , in ID_SEND_V1")
        mode = _parse_mode(mode_text)
        if mode is None:
            return await self.fail("bad mode")
        return await self.send(path, mode, dry_run=False)

    async def send_v2(self, ident: bytes, path: str) -> bool:
        try:
            setup, mode, flags = struct.unpack("<4sII", await self.stream.readexactly(12))
        except EOFError:
            return False
        if setup != b"SND2":
            return await self.fail("invalid send_v2 setup packet")
        dry_run = bool(flags & FLAG_DRY_RUN)
        flags &= ~FLAG_DRY_RUN
        if flags & (FLAG_BROTLI | FLAG_LZ4 | FLAG_ZSTD):
            return await self.fail(f"compression not supported: {flags}")
        if flags:
            return await self.fail(f"unknown flags: {flags}")
        return await self.send(path, mode, dry_run=dry_run)

    async def send(self, path: str, mode: int, *, dry_run: bool) -> bool:
        if stat.S_ISLNK(mode):
            return await self.fail("symlink failed: Operation not supported")
        mode &= 0o777
        mode |= (mode >> 3) & 0o070  # adbd widens group/other from the owner bits the same way
        mode |= (mode >> 3) & 0o007
        data = bytearray()
        mtime = 0
        try:
            while True:
                ident, length = _REQUEST.unpack(await self.stream.readexactly(_REQUEST.size))
                if ident == b"DONE":
                    mtime = length
                    break
                if ident != b"DATA":
                    return await self.fail("invalid data message")
                chunk = await self.stream.readexactly(length)
                if not dry_run:
                    data += chunk
        except EOFError:
            return False
        if not dry_run:
            problem = self.fs.write(path, bytes(data), mode, mtime)
            if problem:
                return await self.fail(f"couldn't create file: {problem}")
        await self.stream.write(_REQUEST.pack(b"OKAY", 0))
        return True

    # -- recv (pull) ---------------------------------------------------------------------------

    async def recv_v1(self, ident: bytes, path: str) -> bool:
        return await self.recv(path)

    async def recv_v2(self, ident: bytes, path: str) -> bool:
        try:
            setup, flags = struct.unpack("<4sI", await self.stream.readexactly(8))
        except EOFError:
            return False
        if setup != b"RCV2":
            return await self.fail("invalid recv_v2 setup packet")
        if flags & (FLAG_BROTLI | FLAG_LZ4 | FLAG_ZSTD):
            return await self.fail(f"compression not supported: {flags}")
        if flags:
            return await self.fail(f"unknown flags: {flags}")
        return await self.recv(path)

    async def recv(self, path: str) -> bool:
        data = self.fs.read(path)
        if data is None:
            found = self.fs.stat(path)
            if found is None:
                return await self.fail("open failed: No such file or directory")
            if stat.S_ISDIR(found.mode):
                return await self.fail("read failed: Is a directory")
            return await self.fail("open failed: Permission denied")
        view = memoryview(data)
        for start in range(0, len(view), SYNC_DATA_MAX):
            chunk = view[start:start + SYNC_DATA_MAX]
            await self.stream.write(_REQUEST.pack(b"DATA", len(chunk)) + chunk)
        await self.stream.write(_REQUEST.pack(b"DONE", 0))
        return True


def _v2_fields(path: str, st: FileStat) -> tuple[int, ...]:
    """dev, ino, mode, nlink, uid, gid, size, atime, mtime, ctime for a v2 stat or dent."""
    inode = zlib.crc32(posixpath.normpath("/" + path.lstrip("/")).encode(errors="surrogateescape")) or 1
    nlink = 2 if stat.S_ISDIR(st.mode) else 1
    return (_DEVICE, inode, st.mode, nlink, 0, 0, st.size, st.mtime, st.mtime, st.mtime)


def _parse_mode(text: str) -> int | None:
    """The mode after SEND's last comma, read like strtoul(text, 0): decimal, 0octal or 0xhex."""
    text = text.strip()
    try:
        if text.lower().startswith("0x"):
            return int(text, 16)
        if text.startswith("0") and len(text) > 1:
            return int(text, 8)
        return int(text or "0", 10)
    except ValueError:
        return None


async def serve_sync(stream: SyncStream, fs: FileSystem) -> None:
    """Answer sync requests until QUIT, a failure, or the peer closing the stream."""
    session = _Session(stream, fs)
    while await session.request():
        pass
