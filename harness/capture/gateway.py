"""Gateway capture: tcpdump on an interface the phone's traffic crosses, filtered to that phone.

The only backend that sees power-up traffic before adb exists, for every app and port; the
default for farms (a Wi-Fi AP, a bridge, a VLAN or switch port per phone) and, for a virtual
phone, its router namespace. What it cannot do, it reports:

* Cellular: traffic over mobile data never crosses the gateway. Mobile data is read after start
  and after every boot; while it is on (or unreadable) the `cellular` path is a blind window.
* Filter drift: a phone's MAC (per-network randomization) and IP (DHCP) can change across a
  reboot, and a filter on the old ones would silently miss the whole power-up. When the filter
  is built from the phone's addresses, an unfiltered spool runs from `before_reboot()` until the
  addresses are read again after boot; if they changed, the filter is rebuilt and the spool's
  packets from the new addresses are kept (merged in time order at stop). If the addresses
  cannot be re-read, the reboot is a blind window.
* The capture tool dying (the interface went away): restarted as soon as the interface is back,
  the gap a blind window (from a buffer timeout before the death: libpcap's open block is lost
  with it); packets the kernel dropped are a blind window too.

The harness's own adb-over-TCP connection to the phone is left out by the filter and listed in
`exclude` for the analyzer.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.analyzer.model import BlindWindow
from harness.capture.base import CaptureBackend, CaptureSetupError, Shell, sidecar
from harness.capture.pcap import FileInfo, PcapSink, inspect, merge
from harness.capture.tcpdump import BUFFER_TIMEOUT, TcpdumpProcess, netns_argv, run_filter, tcpdump_argv
from harness.device.preconditions import parse_data_connection
from harness.errors import CaptureError, PhonehomeError
from harness.identifiers import mask

log = logging.getLogger("phonehome.capture")

_MAC = re.compile(r"^[0-9a-f]{2}(?::[0-9a-f]{2}){5}$")
_SEP = "PHONEHOME-SEP"
WATCH_INTERVAL = 0.5
SPOOL_MAX_BYTES = 512 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PhoneAddress:
    """The link-layer and IP addresses a phone uses on the captured network."""

    macs: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()

    def bpf(self) -> str:
        terms = [f"ether host {mac}" for mac in self.macs] + [f"host {ip}" for ip in self.ips]
        return " or ".join(terms)

    def __bool__(self) -> bool:
        return bool(self.macs or self.ips)

    def describe(self) -> str:
        """The MAC masked (it is an identifier: `wifi_mac …:3f`); IPs are not identifiers."""
        parts = [mask("wifi_mac", None, mac) for mac in self.macs] + list(self.ips)
        return ", ".join(parts) or "none"


def parse_address(mac_text: str, addr_text: str) -> PhoneAddress:
    """`cat /sys/class/net/IF/address` and `ip -o addr show dev IF` -> the phone's addresses.

    Link-local IPv6 is left out (an `ether host` term covers it); a missing MAC leaves IP terms.
    """
    macs = tuple(m for m in (mac_text.strip().lower(),) if _MAC.match(m) and m != "00:00:00:00:00:00")
    ips: list[str] = []
    for match in re.finditer(r"\binet6?\s+([0-9a-fA-F.:]+)/\d+", addr_text):
        try:
            address = ipaddress.ip_address(match.group(1))
        except ValueError:
            continue
        if not (address.is_link_local or address.is_loopback):
            ips.append(str(address))
    return PhoneAddress(macs, tuple(dict.fromkeys(ips)))


def read_address(shell: Shell, interface: str = "wlan0", timeout: float = 20.0) -> PhoneAddress:
    """The phone's current addresses on `interface`, read through its shell (one call)."""
    result = shell.script(f"cat /sys/class/net/{interface}/address; echo {_SEP}; ip -o addr show dev {interface}",
                          timeout)
    mac_text, _, addr_text = result.stdout.partition(_SEP)
    return parse_address(mac_text, addr_text)


def read_mobile_data(shell: Shell, timeout: float = 30.0) -> bool | None:
    """True when mobile data is enabled or connected, False when off, None when unreadable."""
    result = shell.script(f"settings get global mobile_data; echo {_SEP}; dumpsys telephony.registry", timeout)
    flag, _, registry = result.stdout.partition(_SEP)
    enabled = {"1": True, "0": False}.get(flag.strip())
    connected = parse_data_connection(registry)
    if enabled or connected:
        return True
    if enabled is False or connected is False:
        return False
    return None


def exclusion_bpf(exclude: list[str]) -> str | None:
    """`not (...)` terms leaving out ADDR[:PORT] flows (the harness's adb-over-TCP connection)."""
    terms = []
    for item in exclude:
        host, port = split_endpoint(item)
        if host and port:
            terms.append(f"(host {host} and tcp port {port})")
        elif host:
            terms.append(f"host {host}")
        elif port:
            terms.append(f"tcp port {port}")
    return f"not ({' or '.join(terms)})" if terms else None


def split_endpoint(item: str) -> tuple[str | None, int | None]:
    """`ADDR`, `ADDR:PORT`, `[V6]:PORT` or `:PORT` -> (address, port)."""
    item = item.strip()
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        return host or None, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if item.count(":") == 1:
        host, _, port = item.partition(":")
        return host or None, int(port) if port.isdigit() else None
    return item or None, None


def combine(*terms: str | None) -> str | None:
    present = [t for t in terms if t]
    if not present:
        return None
    return present[0] if len(present) == 1 else " and ".join(f"({t})" for t in present)


def interface_exists(interface: str, netns: str | None) -> bool:
    argv = ["ip", *(["-n", netns] if netns else []), "link", "show", "dev", interface]
    return subprocess.run(argv, capture_output=True, check=False, timeout=10).returncode == 0


def netns_exists(netns: str) -> bool:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False, timeout=10)
    return any(line.split()[0] == netns for line in listing.stdout.splitlines() if line.strip())


class GatewayCapture(CaptureBackend):
    """tcpdump on `interface` (inside `netns` when given), filtered to one phone.

    The filter, in order of preference: `bpf` (the profile's `filter:`, used as given); else the
    phone's addresses (`address`, or read through `phone` from `phone_interface`), re-verified
    after every reboot; else none, for an interface that carries only this phone (a VLAN per
    phone, a virtual phone's router). `exclude` (ADDR[:PORT]) is left out either way.
    """

    name = "gateway"
    sees_power_up = True
    sees_cellular = False

    def __init__(self, output: Path, interface: str, *, netns: str | None = None, bpf: str | None = None,
                 phone: Shell | None = None, phone_interface: str = "wlan0", address: PhoneAddress | None = None,
                 exclude: list[str] | None = None, snaplen: int = 0, max_bytes: int | None = None,
                 tcpdump: str = "tcpdump", buffer_kib: int = 16384, check_mobile_data: bool = True) -> None:
        super().__init__(output, max_bytes=max_bytes)
        self.interface = interface
        self.netns = netns
        self.user_bpf = bpf
        self.phone = phone
        self.phone_interface = phone_interface
        self.address = address or PhoneAddress()
        self.by_address = bpf is None and (phone is not None or bool(address))
        self.exclude = list(exclude or [])
        self.snaplen = snaplen
        self.tcpdump = tcpdump
        self.buffer_kib = buffer_kib
        self.check_mobile_data = check_mobile_data and phone is not None
        self.sink = PcapSink(self.output, max_bytes=max_bytes)
        self.main: TcpdumpProcess | None = None
        self.retired: list[TcpdumpProcess] = []
        self.spool: TcpdumpProcess | None = None
        self.segments: list[Path] = []
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._down_window: BlindWindow | None = None
        self._cap_window: BlindWindow | None = None
        self._merged: FileInfo | None = None
        self.filters: list[dict[str, Any]] = []  # every filter in force, from when (recorded)

    # --- filter ---------------------------------------------------------------------------------
    def bpf(self, address: PhoneAddress | None = None) -> str | None:
        phone = self.user_bpf if self.user_bpf else (address or self.address).bpf() if self.by_address else None
        return combine(phone, exclusion_bpf(self.exclude))

    def _argv(self, bpf: str | None) -> list[str]:
        return netns_argv(self.netns, tcpdump_argv(self.interface, bpf, tcpdump=self.tcpdump, snaplen=self.snaplen,
                                                   buffer_kib=self.buffer_kib))

    # --- lifecycle ------------------------------------------------------------------------------
    def _start(self) -> None:
        where = f" in network namespace {self.netns}" if self.netns else ""
        if self.netns and not netns_exists(self.netns):
            raise CaptureSetupError(f"gateway capture: network namespace {self.netns} does not exist")
        if not interface_exists(self.interface, self.netns):
            raise CaptureSetupError(f"gateway capture: interface {self.interface}{where} does not exist "
                                    "(give the interface the phone's traffic crosses: --ph-capture gateway:IFACE)")
        if self.by_address and not self.address:
            try:
                self.address = self._read_address()
            except PhonehomeError as exc:
                raise CaptureSetupError(f"gateway capture: cannot read the phone's address: {exc}") from None
            if not self.address:
                raise CaptureSetupError(f"gateway capture: cannot read the phone's address on {self.phone_interface} "
                                        "to filter on; give the profile's capture filter instead")
        if self.user_bpf is None and not self.by_address:
            self.notes.append(f"unfiltered: {self.interface} must carry only this phone's traffic")
        if not self.check_mobile_data:
            self.notes.append("mobile data not checked: traffic over cellular, if any, never crosses the gateway")
        self.main = self._launch(self.bpf())
        self._record_filter()
        self._check_cellular()
        self._watcher = threading.Thread(target=self._watch, name="gateway-watch", daemon=True)
        self._watcher.start()

    def _launch(self, bpf: str | None) -> TcpdumpProcess:
        return TcpdumpProcess(self._argv(bpf), self.sink, name=f"tcpdump-{self.interface}").start()

    def _record_filter(self) -> None:
        self.filters.append({"from": time.time(), "address": self.address.describe() if self.by_address else None,
                             "user_filter": self.user_bpf is not None, "excluded": len(self.exclude)})

    def _read_address(self) -> PhoneAddress:
        assert self.phone is not None
        return read_address(self.phone, self.phone_interface)

    def _before_reboot(self) -> None:
        if not self.by_address:
            return
        spool_path = sidecar(self.output, f"spool{len(self.segments)}.pcap")
        spool_sink = PcapSink(spool_path, max_bytes=SPOOL_MAX_BYTES)
        try:
            self.spool = TcpdumpProcess(self._argv(exclusion_bpf(self.exclude)), spool_sink,
                                        name="tcpdump-spool").start()
        except CaptureSetupError as exc:
            self.spool = None
            self.notes.append(f"no spool across the reboot ({exc}): an address change would leave a blind window")

    def _after_reboot(self, since: float | None) -> None:
        spool, self.spool = self.spool, None
        try:
            if self.by_address:
                self._reverify(since, spool)
            self._check_cellular()
        finally:
            if spool is not None:  # it held other devices' traffic too: gone once used
                spool.stop()
                spool.sink.close()
                with contextlib.suppress(OSError):
                    spool.sink.path.unlink()

    def _reverify(self, since: float | None, spool: TcpdumpProcess | None) -> None:
        """Read the phone's addresses again; rebuild the filter and rescue the spool if they changed."""
        try:
            address = self._read_address()
        except PhonehomeError as exc:  # the phone did not answer (DeviceError) or could not be parsed
            address, problem = PhoneAddress(), str(exc)
        else:
            problem = "the phone reported no address"
        if not address:
            self.open_window(f"the phone's address could not be re-read after the reboot ({problem}): the filter "
                             "may no longer match it", since)
            return
        if address == self.address:
            self.notes.append(f"filter re-verified after reboot: phone address unchanged ({address.describe()})")
            return
        old = self.address
        self.address = address
        main = self.main
        if main is not None:
            main.stop()
            self.retired.append(main)
        self.main = self._launch(self.bpf())
        self._record_filter()
        message = f"phone address changed across the reboot ({old.describe()} -> {address.describe()}); filter rebuilt"
        if spool is None:
            self.open_window(f"{message}, but no spool ran: traffic from the new address before this was missed",
                             since).end = time.time()
            self.notes.append(message)
            return
        spool.stop()
        spool_sink = spool.sink
        spool_sink.close()
        segment = sidecar(self.output, f"reboot{len(self.segments) + 1}.pcap")
        rescued = PcapSink(segment)
        try:
            kept = run_filter(spool_sink.path, self.bpf(address) or "", rescued, tcpdump=self.tcpdump) \
                if spool_sink.packets else 0
        except CaptureError as exc:
            rescued.close()
            with contextlib.suppress(OSError):
                segment.unlink()
            self.open_window(f"{message}, but the reboot's packets could not be recovered from the spool ({exc})",
                             since).end = time.time()
            return
        rescued.close()
        if rescued.format is not None:
            self.segments.append(segment)
        if spool_sink.capped_at is not None:
            self.open_window("the spool across the reboot hit its size cap: later reboot traffic was not kept",
                             spool_sink.capped_at).end = time.time()
        self.notes.append(f"{message}; {kept} packets sent during the reboot recovered from the unfiltered spool")

    def _check_cellular(self) -> None:
        if not self.check_mobile_data or self.phone is None:
            return
        try:
            on = read_mobile_data(self.phone)
        except PhonehomeError as exc:
            on, why = None, str(exc)
        else:
            why = "mobile data state unreadable"
        open_now = self.open_windows("cellular")
        if on is False:
            for window in open_now:
                self.close_window(window)
            return
        if not open_now:
            reason = ("mobile data is on: traffic the phone sends over cellular never crosses the gateway"
                      if on else f"{why}: traffic over cellular would not cross the gateway")
            self.open_window(reason, path="cellular")

    def _watch(self) -> None:
        """Restart tcpdump when it dies (the interface went down and came back); the gap is blind."""
        while not self._watch_stop.wait(WATCH_INTERVAL):
            if not self._lock.acquire(blocking=False):
                continue  # a lifecycle call holds it (and may be waiting for this thread to end)
            try:
                self._watch_once()
            finally:
                self._lock.release()

    def _note_cap(self) -> None:
        if self.sink.capped_at is not None and self._cap_window is None:
            self._cap_window = self.open_window(f"the capture reached its size cap of {self.max_bytes} bytes: "
                                                "later traffic was not kept", self.sink.capped_at)

    def _note_death(self) -> bool:
        """Record a tcpdump that exited on its own (error + blind window); True when it is down."""
        main = self.main
        if main is None or main.alive or main.stopping:
            return False
        if self._down_window is None:
            why = main.why()
            self.errors.append(f"tcpdump on {self.interface} exited: {why}")
            # packets in libpcap's open block when tcpdump died never reached the file
            self._down_window = self.open_window(f"tcpdump on {self.interface} exited ({why})",
                                                 (main.ended_at or time.time()) - BUFFER_TIMEOUT)
        return True

    def _watch_once(self) -> None:
        self._note_cap()
        if not self._note_death():
            return
        main = self.main
        assert main is not None
        if not interface_exists(self.interface, self.netns):
            return
        try:
            restarted = self._launch(self.bpf())
        except CaptureSetupError:
            return
        self.retired.append(main)
        self.main = restarted
        if self._down_window is not None:
            self.close_window(self._down_window)
            self._down_window = None
        self.notes.append(f"tcpdump on {self.interface} restarted")

    def _stop(self) -> None:
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
        self._note_death()
        for process in (self.spool, self.main):
            if process is not None:
                process.stop()
        self.spool = None
        self._note_cap()
        self.sink.close()
        dropped = self._dropped()
        if dropped:
            self.blind_windows.append(BlindWindow(f"the kernel dropped {dropped} packets (the capture could not keep "
                                                  "up)", self.started, time.time()))
        if self.segments and self.sink.format is not None:
            merged = merge([self.output, *self.segments], self.output)
            for part in self.segments:
                with contextlib.suppress(OSError):
                    part.unlink()
            self.notes.append(f"{len(self.segments)} reboot segment(s) merged in time order ({merged} packets)")
            self._merged = inspect(self.output)

    def _dropped(self) -> int:
        return sum(p.dropped or 0 for p in [*self.retired, *([self.main] if self.main else [])])

    def _counts(self) -> tuple[int, int, float | None]:
        if self._merged is not None:
            return self._merged.packets, self._merged.bytes, self._merged.last
        return self.sink.packets, self.sink.bytes, self.sink.last

    def _problems(self) -> list[str]:
        main = self.main
        if main is not None and not main.alive and not main.stopping:
            return [f"tcpdump on {self.interface} is not running ({main.why()})"]
        return []

    def _settings(self) -> dict[str, Any]:
        return {"interface": self.interface, "netns": self.netns, "filter": "profile" if self.user_bpf else
                "phone address" if self.by_address else "none", "filters": self.filters, "snaplen": self.snaplen,
                "max_bytes": self.max_bytes, "kernel_dropped": self._dropped()}
