"""The virtual phone's contained network: phone, router/access point and a simulated internet.

Three network namespaces per phone, joined by veth pairs that are created inside them, so no
interface ever exists in the host namespace and nothing can route to the host or beyond:

    ph-TAG-phone                 ph-TAG-router                 ph-TAG-inet
    wlan0 192.168.1.x  <──────>  ap0 192.168.1.1
                                 wan0 100.64.0.2   <──────>    uplink0 100.64.0.1
    rmnet_data0 10.120.0.2  <──────────────────────────────>   cell0 10.120.0.1
                                                               lo: 42.99.2.15, resolver, ...

The router forwards between its two links (a gateway capture listens on `ap0`); `rmnet_data0`
is mobile data, a second path out of the phone that the router never sees. Public addresses
exist only on the internet namespace's loopback; that namespace does not forward, so a packet to
an address nobody serves is dropped there. IPv6 is off everywhere so every path is the IPv4 one
described here.

A file under /run/phonehome/net/TAG names the owning process; `cleanup_leftovers()` removes the
namespaces of owners that are gone (a crashed run), and only those: several phones may live in
one process, and pytest-xdist workers run side by side.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import ipaddress
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from harness.errors import PhonehomeError

T = TypeVar("T")

RUN_ROOT = Path("/run/phonehome/net")
NETNS_RUN = Path("/run/netns")
NETNS_ETC = Path("/etc/netns")
CLONE_NEWNET = 0x40000000

PHONE_WIFI = "wlan0"
PHONE_CELL = "rmnet_data0"
ROUTER_LAN = "ap0"
ROUTER_WAN = "wan0"
INET_UPLINK = "uplink0"
INET_CELL = "cell0"

LAN = ipaddress.ip_network("192.168.1.0/24")
ROUTER_LAN_IP = "192.168.1.1"
WAN_ROUTER_IP = "100.64.0.2"
WAN_INET_IP = "100.64.0.1"
CELL_PHONE_IP = "10.120.0.2"
CELL_INET_IP = "10.120.0.1"
DNS_SERVER = "100.100.100.53"  # the resolver the access point's DHCP hands out (an ISP's)
WIFI_METRIC = 100  # below the cellular route: Android prefers Wi-Fi when both are up
CELL_METRIC = 200
_TAG = re.compile(r"[A-Za-z0-9]{1,24}")
_ROLES = ("phone", "router", "inet")

_libc = ctypes.CDLL(None, use_errno=True)


def _problem_without_root() -> str | None:
    if os.geteuid() != 0:
        return "the virtual phone's network needs root (network namespaces); run as root or without the network"
    if shutil.which("ip") is None:
        return "the virtual phone's network needs iproute2 (`ip` not found on PATH; apt-get install iproute2)"
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip ARGS`; a failure is a PhonehomeError naming the command and ip's own message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False, timeout=30)
    if check and done.returncode != 0:
        raise PhonehomeError(f"virtual network: `ip {' '.join(args)}` failed: {done.stderr.strip()}")
    return done


def in_netns(ns: str, fn: Callable[[], T]) -> T:
    """Run `fn` in a fresh thread switched into namespace `ns` (setns only moves the calling thread).

    Sockets created there stay in that namespace after the thread returns. Python 3.11 has no
    os.setns, hence libc.
    """
    result: list[T] = []
    failure: list[BaseException] = []

    def worker() -> None:
        try:
            with (Path("/proc/thread-self/ns/net").open("rb") as own,
                  (NETNS_RUN / ns).open("rb") as target):
                if _libc.setns(target.fileno(), CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
                try:
                    result.append(fn())
                finally:
                    # the thread dies next, but leave it where it came from all the same
                    _libc.setns(own.fileno(), CLONE_NEWNET)
        except BaseException as exc:  # re-raised in the caller
            failure.append(exc)

    thread = threading.Thread(target=worker, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


def _write_sysctls(ns: str, values: dict[str, str]) -> None:
    def write() -> None:
        for key, value in values.items():
            Path("/proc/sys", key.replace(".", "/")).write_text(value)

    in_netns(ns, write)


def _process_start(pid: int) -> str | None:
    """The start time (clock ticks since boot) of `pid`: with the pid, it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _owner_alive(run_dir: Path) -> bool:
    try:
        pid_text, start = (run_dir / "owner").read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return False
    return _process_start(pid) == start


def _kill_pids(pids: Iterable[int]) -> None:
    """TERM, then KILL after a grace period, the processes running in one of our namespaces."""
    alive = [pid for pid in pids if pid != os.getpid()]
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 2.0
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if Path(f"/proc/{pid}").exists() and not _is_zombie(pid)]
        if alive:
            time.sleep(0.02)
    for pid in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _netns_pids(ns: str) -> list[int]:
    done = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _remove_namespace(ns: str) -> None:
    _kill_pids(_netns_pids(ns))
    _ip("netns", "del", ns, check=False)
    shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)


def _netns_names() -> list[str]:
    done = _ip("netns", "list", check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def cleanup_leftovers(prefix: str = "ph-") -> list[str]:
    """Remove namespaces `prefix`TAG-{phone,router,inet} whose owning process is gone; return their names.

    Only names of exactly that form are touched, and only when the owner recorded for TAG is not
    running any more (or was never recorded), so phones of live processes are left alone.
    """
    if _problem_without_root():
        return []
    pattern = re.compile(re.escape(prefix) + r"(?P<tag>[A-Za-z0-9]{1,24})-(?:phone|router|inet)")
    removed: list[str] = []
    tags: set[str] = set()
    for name in _netns_names():
        match = pattern.fullmatch(name)
        if match is None or _owner_alive(RUN_ROOT / f"{prefix}{match['tag']}"):
            continue
        _remove_namespace(name)
        removed.append(name)
        tags.add(match["tag"])
    if RUN_ROOT.is_dir():  # run dirs of owners that died before making any namespace
        for run_dir in RUN_ROOT.iterdir():
            if run_dir.name.startswith(prefix) and not _owner_alive(run_dir) and _settled(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)
    return removed


def _settled(run_dir: Path) -> bool:
    """A run dir with an owner file, or one old enough that its creator cannot still be writing it."""
    try:
        return (run_dir / "owner").exists() or time.time() - run_dir.stat().st_mtime > 60
    except OSError:
        return False


class PhoneNetwork:
    """One phone's three namespaces; build with `PhoneNetwork.create(tag, wifi_mac=...)`."""

    def __init__(self, tag: str, *, wifi_mac: str, mobile_data: bool, prefix: str = "ph-") -> None:
        if not _TAG.fullmatch(tag):
            raise ValueError(f"network tag {tag!r}: expected 1 to 24 letters or digits")
        self.tag = tag
        self.phone_ns = f"{prefix}{tag}-phone"
        self.router_ns = f"{prefix}{tag}-router"
        self.internet_ns = f"{prefix}{tag}-inet"
        self.run_dir = RUN_ROOT / f"{prefix}{tag}"
        self.router_capture_iface = ROUTER_LAN
        self.wifi_iface = PHONE_WIFI
        self.cell_iface = PHONE_CELL
        self.router_ip = ROUTER_LAN_IP
        self.cell_ip = CELL_PHONE_IP
        self.dns_server = DNS_SERVER
        self.phone_ip = str(LAN.network_address + 100)
        self.phone_mac = _normal_mac(wifi_mac)
        self.wifi_on = True
        self.mobile_data = mobile_data
        self.public_addresses: set[str] = set()
        self._destroyed = False
        self._made: list[str] = []  # namespaces this object created: the only ones destroy() removes
        self._owns_run_dir = False
        self._lock = threading.Lock()

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def create(cls, tag: str, *, wifi_mac: str, mobile_data: bool = False) -> PhoneNetwork:
        """Build the namespaces, links, addresses and routes; on any failure nothing is left behind."""
        problem = _problem_without_root()
        if problem:
            raise PhonehomeError(problem)
        network = cls(tag, wifi_mac=wifi_mac, mobile_data=mobile_data)
        try:
            network._build()
        except BaseException:
            network.destroy()
            raise
        atexit.register(network.destroy)
        return network

    def _build(self) -> None:
        in_use = [ns for ns in self.namespaces if (NETNS_RUN / ns).exists()]
        if in_use or _owner_alive(self.run_dir):
            raise PhonehomeError(f"virtual network: tag {self.tag} is in use ({', '.join(in_use) or self.run_dir})")
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._owns_run_dir = True
        # the owner is recorded (atomically) before any namespace exists, so no other process's cleanup takes them
        partial = self.run_dir / f"owner.{os.getpid()}"
        partial.write_text(f"{os.getpid()} {_process_start(os.getpid())}\n")
        partial.replace(self.run_dir / "owner")
        for ns in self.namespaces:
            done = _ip("netns", "add", ns, check=False)
            if done.returncode != 0:
                raise PhonehomeError(f"virtual network: cannot create network namespace {ns}: "
                                     f"{done.stderr.strip()} (needs root and a kernel with network namespaces)")
            self._made.append(ns)
        base = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1",
                "net.ipv4.conf.all.rp_filter": "0", "net.ipv4.conf.default.rp_filter": "0"}
        # explicit: a new namespace inherits the host's IPv4 settings, forwarding included
        _write_sysctls(self.phone_ns, {**base, "net.ipv4.ip_forward": "0"})
        _write_sysctls(self.router_ns, {**base, "net.ipv4.ip_forward": "1"})
        _write_sysctls(self.internet_ns, {**base, "net.ipv4.ip_forward": "0"})
        for ns in self.namespaces:
            _ip("-n", ns, "link", "set", "lo", "up")
        # each pair is made inside a namespace with its peer placed in another: never in the host's
        _ip("-n", self.phone_ns, "link", "add", PHONE_WIFI, "type", "veth", "peer", "name", ROUTER_LAN,
            "netns", self.router_ns)
        _ip("-n", self.router_ns, "link", "add", ROUTER_WAN, "type", "veth", "peer", "name", INET_UPLINK,
            "netns", self.internet_ns)
        _ip("-n", self.phone_ns, "link", "add", PHONE_CELL, "type", "veth", "peer", "name", INET_CELL,
            "netns", self.internet_ns)
        _ip("-n", self.router_ns, "addr", "add", f"{ROUTER_LAN_IP}/{LAN.prefixlen}", "dev", ROUTER_LAN)
        _ip("-n", self.router_ns, "link", "set", ROUTER_LAN, "up")
        _ip("-n", self.router_ns, "addr", "add", f"{WAN_ROUTER_IP}/30", "dev", ROUTER_WAN)
        _ip("-n", self.router_ns, "link", "set", ROUTER_WAN, "up")
        _ip("-n", self.router_ns, "route", "add", "default", "via", WAN_INET_IP)
        _ip("-n", self.internet_ns, "addr", "add", f"{WAN_INET_IP}/30", "dev", INET_UPLINK)
        _ip("-n", self.internet_ns, "link", "set", INET_UPLINK, "up")
        _ip("-n", self.internet_ns, "route", "add", str(LAN), "via", WAN_ROUTER_IP)
        _ip("-n", self.internet_ns, "addr", "add", f"{CELL_INET_IP}/30", "dev", INET_CELL)
        _ip("-n", self.internet_ns, "link", "set", INET_CELL, "up")
        self.add_public_addresses([DNS_SERVER])
        etc = NETNS_ETC / self.phone_ns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(f"nameserver {DNS_SERVER}\n")
        (etc / "hosts").write_text("127.0.0.1 localhost\n::1 ip6-localhost\n")
        self._set_mac(self.phone_mac)
        self._wifi_up()
        if self.mobile_data:
            self._cell_up()

    @property
    def namespaces(self) -> tuple[str, str, str]:
        return (self.phone_ns, self.router_ns, self.internet_ns)

    # -- the phone's links ----------------------------------------------------------------------

    def _set_mac(self, mac: str) -> None:
        _ip("-n", self.phone_ns, "link", "set", PHONE_WIFI, "address", mac)

    def _wifi_up(self) -> None:
        _ip("-n", self.phone_ns, "addr", "flush", "dev", PHONE_WIFI)
        _ip("-n", self.phone_ns, "addr", "add", f"{self.phone_ip}/{LAN.prefixlen}", "dev", PHONE_WIFI)
        _ip("-n", self.phone_ns, "link", "set", PHONE_WIFI, "up")
        _ip("-n", self.phone_ns, "route", "replace", "default", "via", ROUTER_LAN_IP, "dev", PHONE_WIFI,
            "metric", str(WIFI_METRIC))
        # the access point forgets the old station (a new MAC or IP after a reboot)
        _ip("-n", self.router_ns, "neigh", "flush", "dev", ROUTER_LAN, check=False)

    def _wifi_down(self) -> None:
        _ip("-n", self.phone_ns, "link", "set", PHONE_WIFI, "down")
        _ip("-n", self.phone_ns, "addr", "flush", "dev", PHONE_WIFI)

    def _cell_up(self) -> None:
        _ip("-n", self.phone_ns, "addr", "flush", "dev", PHONE_CELL)
        _ip("-n", self.phone_ns, "addr", "add", f"{CELL_PHONE_IP}/30", "dev", PHONE_CELL)
        _ip("-n", self.phone_ns, "link", "set", PHONE_CELL, "up")
        _ip("-n", self.phone_ns, "route", "replace", "default", "via", CELL_INET_IP, "dev", PHONE_CELL,
            "metric", str(CELL_METRIC))

    def _cell_down(self) -> None:
        _ip("-n", self.phone_ns, "link", "set", PHONE_CELL, "down")
        _ip("-n", self.phone_ns, "addr", "flush", "dev", PHONE_CELL)

    def set_wifi(self, on: bool) -> None:
        """Wi-Fi on: the phone is on the access point's LAN with a default route through it."""
        with self._lock:
            self._check()
            if on:
                self._wifi_up()
            else:
                self._wifi_down()
            self.wifi_on = on

    def set_mobile_data(self, on: bool) -> None:
        """Mobile data: a direct link to the internet namespace that bypasses the router (and its capture)."""
        with self._lock:
            self._check()
            if on:
                self._cell_up()
            else:
                self._cell_down()
            self.mobile_data = on

    def renew(self, *, new_ip: bool | str | None = False, new_mac: bool | str | None = False) -> None:
        """What a reboot may bring: a new DHCP lease, a new (randomized) MAC.

        False keeps the current value; True or None picks a fresh one; a string is used as given.
        """
        with self._lock:
            self._check()
            if new_mac is not False:
                self.phone_mac = _normal_mac(new_mac) if isinstance(new_mac, str) else _random_mac()
            if new_ip is not False:
                self.phone_ip = self._lease(new_ip if isinstance(new_ip, str) else None)
            if new_mac is False and new_ip is False:
                return
            was_on = self.wifi_on
            _ip("-n", self.phone_ns, "link", "set", PHONE_WIFI, "down")
            self._set_mac(self.phone_mac)
            if was_on:
                self._wifi_up()
            else:
                _ip("-n", self.phone_ns, "addr", "flush", "dev", PHONE_WIFI)

    def _lease(self, wanted: str | None) -> str:
        if wanted is not None:
            address = ipaddress.ip_address(wanted)
            if address not in LAN or address in (LAN.network_address, LAN.broadcast_address) or \
                    str(address) == ROUTER_LAN_IP:
                raise ValueError(f"{wanted} is not a host address on the access point's LAN {LAN}")
            return str(address)
        while True:
            candidate = str(LAN.network_address + 100 + secrets.randbelow(150))
            if candidate != self.phone_ip:
                return candidate

    # -- the simulated internet's addresses ------------------------------------------------------

    def add_public_addresses(self, addresses: Iterable[str]) -> None:
        """Make addresses exist (only) inside the internet namespace, for its servers to answer on."""
        with self._lock:
            self._check()
            for address in addresses:
                ip = str(ipaddress.IPv4Address(address))
                if ip in self.public_addresses:
                    continue
                _ip("-n", self.internet_ns, "addr", "add", f"{ip}/32", "dev", "lo")
                self.public_addresses.add(ip)

    # -- running things inside -------------------------------------------------------------------

    def exec_argv(self, argv: list[str]) -> list[str]:
        """`argv` as a command that runs inside the phone's namespace (sees wlan0, its resolv.conf)."""
        return ["ip", "netns", "exec", self.phone_ns, *argv]

    def router_exec_argv(self, argv: list[str]) -> list[str]:
        """`argv` inside the router, e.g. a gateway capture on `router_capture_iface`."""
        return ["ip", "netns", "exec", self.router_ns, *argv]

    def internet_exec_argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.internet_ns, *argv]

    def proc_net(self, name: str) -> bytes:
        """The kernel's `/proc/net/NAME` (tcp, tcp6, udp, udp6) as seen inside the phone's namespace."""
        if name not in ("tcp", "tcp6", "udp", "udp6"):
            raise ValueError(name)
        self._check()
        return in_netns(self.phone_ns, lambda: Path("/proc/thread-self/net", name).read_bytes())

    def phone_socket(self, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A socket created inside the phone's namespace (it stays there)."""
        self._check()
        return in_netns(self.phone_ns, lambda: socket.socket(family, kind))

    async def open_connection(self, port: int, host: str = "127.0.0.1") -> tuple[asyncio.StreamReader,
                                                                                  asyncio.StreamWriter]:
        """A TCP connection made from inside the phone (adb `tcp:` forwards, tests)."""
        loop = asyncio.get_running_loop()
        sock = await loop.run_in_executor(None, self.phone_socket)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, (host, port))
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)

    # -- teardown ---------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._destroyed:
            raise PhonehomeError(f"virtual network {self.tag} was already destroyed")

    def destroy(self) -> None:
        """Kill what runs inside, delete the namespaces (their veths go with them); safe to repeat."""
        with self._lock:
            if self._destroyed:
                return
            self._destroyed = True
        for ns in self._made:
            _remove_namespace(ns)
        if self._owns_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        with contextlib.suppress(Exception):
            atexit.unregister(self.destroy)

    def __enter__(self) -> PhoneNetwork:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def __repr__(self) -> str:
        return f"PhoneNetwork({self.tag}, phone {self.phone_ip}{'' if not self._destroyed else ', destroyed'})"


def _normal_mac(mac: str) -> str:
    digits = re.sub(r"[^0-9A-Fa-f]", "", mac)
    if len(digits) != 12:
        raise ValueError("a Wi-Fi MAC needs 12 hex digits")
    if int(digits[:2], 16) & 1:
        raise ValueError("a Wi-Fi MAC must be unicast (first octet even)")
    return ":".join(digits[i:i + 2] for i in range(0, 12, 2)).lower()


def _random_mac() -> str:
    """A locally administered unicast MAC, as Android's per-network randomization picks."""
    first = (secrets.randbelow(64) << 2) | 0x02
    return ":".join([f"{first:02x}", *(f"{secrets.randbelow(256):02x}" for _ in range(5))])
