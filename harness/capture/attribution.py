"""Which app sent it: socket-owner snapshots taken on the phone while the capture runs.

A capture says which address and port a packet came from, not which app. The phone knows: every
socket in `/proc/net/{tcp,tcp6,udp,udp6}` carries its owner's UID, and `pm list packages -U`
maps UIDs to packages (a shared UID such as `system` or `radio` maps to several: all are listed,
and the well-known AIDs are named). `SocketSampler` reads both through adb every `interval`
seconds and writes `<capture>.sockets.json` (owner-only) after every snapshot, so a killed run
keeps what it saw: every distinct socket once, with its owner and the host times it was first
and last seen. The analyzer joins it to flows by protocol and phone-side address and port.

Sampling is best effort by nature: a connection that opens and closes between two snapshots is
not seen (PCAPdroid's per-packet trailer has no such gap). Where `/proc/net` is unreadable,
`ss -tuna -e` is tried; if neither works, the file says so.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.capture.base import Shell, write_private_json
from harness.errors import PhonehomeError

log = logging.getLogger("phonehome.capture")

TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
              7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING"}
# AOSP system/core/libcutils/include/private/android_filesystem_config.h
AIDS = {0: "root", 1000: "system", 1001: "radio", 1002: "bluetooth", 1010: "wifi", 1013: "media", 1014: "dhcp",
        1016: "vpn", 1017: "keystore", 1021: "gps", 1027: "nfc", 1029: "clat", 1051: "dns", 1052: "dns_tether",
        1073: "network_stack", 2000: "shell", 9999: "nobody"}
_PROC_FILES = ("tcp", "tcp6", "udp", "udp6")
_MARK = "PHONEHOME-NET"


@dataclass(frozen=True, slots=True)
class SocketEntry:
    proto: str  # "tcp" | "udp"
    src: str  # the phone's side
    sport: int
    dst: str  # "0.0.0.0" / "::" when not connected
    dport: int
    state: str
    uid: int


def _hex_address(text: str) -> str:
    """`/proc/net` addresses: IPv4 as one little-endian word, IPv6 as four; v4-mapped v6 shown as v4."""
    raw = bytes.fromhex(text)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
    address = ipaddress.IPv6Address(words)
    return str(address.ipv4_mapped) if address.ipv4_mapped else str(address)


def parse_proc_net(text: str, proto: str) -> list[SocketEntry]:
    """One `/proc/net/{tcp,udp}[6]` table."""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8 or not fields[0].endswith(":") or ":" not in fields[1]:
            continue
        try:
            local, lport = fields[1].split(":")
            remote, rport = fields[2].split(":")
            state = int(fields[3], 16)
            entries.append(SocketEntry(proto, _hex_address(local), int(lport, 16), _hex_address(remote),
                                       int(rport, 16), TCP_STATES.get(state, str(state)) if proto == "tcp" else
                                       ("CONNECTED" if state == 1 else "UNCONN"), int(fields[7])))
        except ValueError:
            continue
    return entries


_SS_LINE = re.compile(r"^(tcp|udp)\s+(\S+)\s+\d+\s+\d+\s+(\S+):(\d+|\*)\s+(\S+):(\d+|\*)(.*)$")


def parse_ss(text: str) -> list[SocketEntry]:
    """`ss -tuna -e` lines (`uid:N` among the extended fields)."""
    entries = []
    for line in text.splitlines():
        match = _SS_LINE.match(line.strip())
        if not match:
            continue
        uid = re.search(r"\buid:(\d+)", match.group(7))
        if uid is None:
            continue
        proto, state, src, sport, dst, dport = match.group(1, 2, 3, 4, 5, 6)
        entries.append(SocketEntry(proto, _ss_address(src), int(sport) if sport != "*" else 0, _ss_address(dst),
                                   int(dport) if dport != "*" else 0, state, int(uid.group(1))))
    return entries


def _ss_address(text: str) -> str:
    """`ss` prints `*` for a wildcard address and brackets IPv6; `%iface` scopes are dropped."""
    text = text.strip("[]").split("%")[0]
    return str(ipaddress.IPv4Address(0)) if text == "*" else text


def parse_packages(text: str) -> dict[int, list[str]]:
    """`pm list packages -U` -> uid -> packages (`package:com.x uid:10123`; shared UIDs list several)."""
    owners: dict[int, list[str]] = {}
    for match in re.finditer(r"^package:(\S+)\s+uid:(\d+)", text, re.M):
        owners.setdefault(int(match.group(2)), []).append(match.group(1))
    return owners


def split_sections(text: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        if line.startswith(_MARK + " "):
            current = line.split(" ", 1)[1].strip()
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


class SocketSampler:
    """Samples the phone's socket table every `interval` seconds into a JSON file beside the capture."""

    def __init__(self, shell: Shell, path: Path, *, interval: float = 2.0) -> None:
        self.shell = shell
        self.path = path
        self.interval = interval
        self.packages: dict[int, list[str]] = {}
        self.sockets: dict[tuple[str, str, int, str, int, int], dict[str, Any]] = {}
        self.snapshots = 0
        self.source: str | None = None
        self.errors: list[str] = []
        self._paused = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._read_packages()
        self.snapshot()
        self._thread = threading.Thread(target=self._run, name="socket-sampler", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        """After a boot: installed packages may differ (an update applied at boot); read them again."""
        self._paused.clear()
        self._read_packages()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.interval + 30)
        if not self._paused.is_set():
            self.snapshot()
        self.write()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self._paused.is_set():
                self.snapshot()

    def _read_packages(self) -> None:
        try:
            result = self.shell.script("pm list packages -U", 60)
        except PhonehomeError as exc:
            self._error(f"packages not read: {exc}")
            return
        owners = parse_packages(result.stdout)
        if not owners:
            why = (result.stderr or result.stdout).strip().splitlines()[:1] or [f"exit {result.exit_code}"]
            self._error(f"packages not read (`pm list packages -U` listed no UIDs: {why[0][:120]})")
        self.packages.update(owners)

    def snapshot(self) -> None:
        """One reading of the socket table (errors are recorded, never raised: sampling is best effort)."""
        command = "; ".join(f"echo {_MARK} {name}; cat /proc/net/{name} 2>/dev/null" for name in _PROC_FILES)
        try:
            text = self.shell.script(command, 30).stdout
            entries = [e for name, body in split_sections(text).items()
                       for e in parse_proc_net(body, name.rstrip("6"))]
            source = "proc-net"
            if not entries:
                entries, source = parse_ss(self.shell.script("ss -tuna -e 2>/dev/null", 30).stdout), "ss"
        except PhonehomeError as exc:
            self._error(f"snapshot failed: {exc}")
            return
        if not entries:
            self._error("no socket table readable (/proc/net/{tcp,udp}[6] and `ss -tuna -e` gave nothing): "
                        "no app attribution from snapshots")
        now = time.time()
        with self._lock:
            self.snapshots += 1
            if entries:
                self.source = source
            for entry in entries:
                if entry.state in ("TIME_WAIT", "TIME-WAIT"):
                    continue  # a closed connection: the kernel shows uid 0 (root) for it, not its app
                key = (entry.proto, entry.src, entry.sport, entry.dst, entry.dport, entry.uid)
                seen = self.sockets.get(key)
                if seen is None:
                    self.sockets[key] = {"proto": entry.proto, "src": entry.src, "sport": entry.sport,
                                         "dst": entry.dst, "dport": entry.dport, "uid": entry.uid,
                                         "states": [entry.state], "first_seen": now, "last_seen": now}
                else:
                    seen["last_seen"] = now
                    if entry.state not in seen["states"]:
                        seen["states"].append(entry.state)
        with contextlib.suppress(OSError):
            self.write()

    def _error(self, message: str) -> None:
        if message not in self.errors:
            self.errors.append(message)
            log.warning("socket attribution: %s", message)

    def owners(self, uid: int) -> list[str]:
        return self.packages.get(uid) or ([AIDS[uid]] if uid in AIDS else [])

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            sockets = [{**s, "apps": self.owners(s["uid"])} for s in self.sockets.values()]
        return {"version": 1, "source": self.source, "interval": self.interval, "snapshots": self.snapshots,
                "packages": {str(uid): names for uid, names in sorted(self.packages.items())},
                "sockets": sockets, "errors": self.errors,
                "note": "sampled: connections shorter than the interval may be missing"}

    def write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        write_private_json(tmp, self.to_json())
        tmp.replace(self.path)


# --- reading it back: which app owned the phone's side of a flow --------------------------------

_WILDCARDS = frozenset({str(ipaddress.IPv4Address(0)), str(ipaddress.IPv6Address(0))})
PER_USER_RANGE = 100_000  # Android: uid = user id * 100000 + app id (AID_USER_OFFSET)
_SHARED_SHOWN = 3


@dataclass(frozen=True, slots=True)
class _Owned:
    local: str
    lport: int
    remote: str
    rport: int
    uid: int
    first: float | None
    last: float | None


class SocketOwners:
    """A `<capture>.sockets.json` as a lookup: `app(proto, src, sport, dst, dport, time)` -> package or None.

    A flow is tried with the phone as the client (`src`/`sport` its own side), then as the server.
    An exact socket (both ends) wins over a wildcard one (an unconnected UDP socket, a listener, a
    socket bound to any address). When several sockets fit (a port reused by another app between
    snapshots), the one seen nearest `time` (host time, seconds) wins. The name is the package; a
    UID shared by several packages (`system`, `radio`...) gives its name and the candidates
    (`system (uid 1000: android, com.x, com.y +4)`), a UID no package claims gives `uid N`.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self.packages: dict[int, list[str]] = {int(uid): list(names) for uid, names in
                                                (data.get("packages") or {}).items()}
        self.slack = float(data.get("interval") or 0.0)
        self._by_port: dict[tuple[str, int], list[_Owned]] = {}
        for socket in data.get("sockets") or []:
            try:
                owned = _Owned(_canonical(socket["src"], strict=True), int(socket["sport"]),
                               _canonical(socket["dst"], strict=True), int(socket["dport"]), int(socket["uid"]),
                               socket.get("first_seen"), socket.get("last_seen"))
            except (KeyError, TypeError, ValueError):
                continue
            self._by_port.setdefault((str(socket.get("proto")), owned.lport), []).append(owned)
        # the phone's own addresses, as its bound sockets show them: a wildcard socket only
        # claims a flow whose phone-side address is one of these (never the peer's port)
        self.addresses = {e.local for entries in self._by_port.values() for e in entries} - _WILDCARDS

    @classmethod
    def load(cls, path: Path | str) -> SocketOwners:
        """Read the file; a missing or unreadable one is an empty lookup (attribution is best effort)."""
        import json

        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            log.warning("socket attribution %s not read: %s", path, exc)
            data = {}
        return cls(data if isinstance(data, dict) else {})

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._by_port.values())

    def uid(self, proto: str, src: str, sport: int, dst: str, dport: int, time: float | None = None) -> int | None:
        """The UID that owned the phone's end of this flow, or None when no snapshot saw it."""
        src, dst = _canonical(src), _canonical(dst)
        for local, lport, remote, rport in ((src, sport, dst, dport), (dst, dport, src, sport)):
            entries = self._by_port.get((proto, lport), ())
            found = [e for e in entries if e.local == local and e.remote == remote and e.rport == rport]
            if not found and local in self.addresses:
                found = [e for e in entries if e.local in (local, *_WILDCARDS) and (
                    (e.remote == remote and e.rport == rport) or (e.remote in _WILDCARDS and not e.rport))]
            if found:
                return self._nearest(found, time).uid
        return None

    def app(self, proto: str, src: str, sport: int, dst: str, dport: int, time: float | None = None) -> str | None:
        uid = self.uid(proto, src, sport, dst, dport, time)
        return None if uid is None else self.name(uid)

    def name(self, uid: int) -> str:
        """The package behind a UID, as a finding shows it."""
        names = self.packages.get(uid) or self.packages.get(uid % PER_USER_RANGE) or []
        if len(names) == 1:
            return names[0]
        aid = AIDS.get(uid % PER_USER_RANGE)
        if not names:
            return aid or f"uid {uid}"
        shown = sorted(names)[:_SHARED_SHOWN]
        more = f" +{len(names) - len(shown)}" if len(names) > len(shown) else ""
        return f"{aid or 'shared'} (uid {uid}: {', '.join(shown)}{more})"

    def _nearest(self, entries: list[_Owned], time: float | None) -> _Owned:
        if time is None or len({e.uid for e in entries}) == 1:
            return entries[0]

        def distance(e: _Owned) -> float:
            first = e.first if e.first is not None else float("-inf")
            last = e.last if e.last is not None else float("inf")
            return max(first - self.slack - time, time - last - self.slack, 0.0)

        return min(entries, key=distance)


def _canonical(address: str, *, strict: bool = False) -> str:
    """The form the socket table uses: compressed IPv6, IPv4-mapped IPv6 as IPv4 (`%scope` dropped)."""
    try:
        parsed = ipaddress.ip_address(str(address).split("%")[0])
    except ValueError:
        if strict:
            raise
        return address
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)
