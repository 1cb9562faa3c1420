"""On-device capture: the phone's own tcpdump, streamed over `adb exec-out` into the host file.

`tcpdump -i any -s 0 -U -w -` runs on the phone (root: userdebug/eng builds, or
a rooted phone's `su`) and its pcap stream arrives over an `exec:` stream through the adb server,
so it works with the local server and a farm's remote one alike. It sees every interface,
cellular included, but only from the moment adb is up: across a reboot the stream dies with the
phone and is restarted in `after_reboot()`, the gap recorded as a blind window. The records of
every restart go into the same file (one link type: `-i any` writes Linux cooked SLL or SLL2).

Block batching, not `--immediate-mode`, by default. The phone's tcpdump has the option (AOSP's
external/tcpdump defines HAVE_PCAP_SET_IMMEDIATE_MODE since its 4.9.0 upgrade in Android 8.0;
Android 7 and older ship 4.5.1 without it), but immediate mode makes libpcap fall back from
TPACKET_V3 blocks to a ring of snaplen-sized slots, and measured through the real adb server
(benchmarks/bench_capture.py, device streaming) it dropped 2.6 % of 20,000 packets/s and 93 % of
a top-speed burst where block batching kept every packet. Batching only delays packets, by at
most the 1 s buffer timeout: `stop()` waits that out before closing the stream (a canary sent
right before stop is kept), and a stream that dies (a reboot, a crash) is recorded blind from
one timeout before its end. `immediate=True` asks for the option; a tcpdump whose `-h` does not
offer it (Android 7 and older) gets batching and a note instead of a capture that fails to start.

`exec:` joins stderr to the stream, so tcpdump's messages go to a file on the phone, read back
only to explain a failure. Over adb-over-TCP, `-i any` would capture its own stream: the filter
leaves out the adb connection's port. A tcpdump that dies mid-capture leaves the file readable
(whole records only) and is an error (`check()` raises) with a blind window from its death.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import adbutils

from harness.analyzer.model import BlindWindow
from harness.capture.base import CaptureBackend, CaptureSetupError, State
from harness.capture.gateway import combine
from harness.capture.pcap import PcapSink, StreamPump
from harness.capture.tcpdump import BUFFER_TIMEOUT
from harness.device.adb import Adb, sh_join, sh_quote
from harness.device.identifiers import Root, detect_root
from harness.errors import DeviceError

log = logging.getLogger("phonehome.capture")

ERR_FILE = "/data/local/tmp/phonehome-tcpdump.err"
PID_FILE = "/data/local/tmp/phonehome-tcpdump.pid"
BUFFER_KIB = 8192  # the phone's capture ring: absorbs bursts while the adb stream catches up
_DROPPED = re.compile(r"(\d+) packets? dropped by kernel")
WATCH_INTERVAL = 0.5
REBOOT_GAP = "on-device capture down across the reboot (tcpdump restarts only once adb is back)"
_SEP = "PHONEHOME-SEP"


def has_immediate_mode(usage: str) -> bool:
    """Whether a tcpdump's `-h` text offers `--immediate-mode` (4.9 and later, where libpcap has it)."""
    return "--immediate-mode" in usage


class DeviceCapture(CaptureBackend):
    """tcpdump on the phone over `adb exec-out`; needs root (or a build whose shell may capture)."""

    name = "device"
    sees_power_up = False
    sees_cellular = True

    def __init__(self, output: Path, adb: Adb, *, interface: str = "any", bpf: str | None = None,
                 tcpdump: str | None = None, snaplen: int = 0, max_bytes: int | None = None,
                 root: Root | None = None, start_timeout: float = 20.0, immediate: bool = False) -> None:
        super().__init__(output, max_bytes=max_bytes)
        self.adb = adb
        self.interface = interface
        self.user_bpf = bpf
        self.tcpdump = tcpdump
        self.snaplen = snaplen
        self.root = root
        self.start_timeout = start_timeout
        self.immediate = immediate  # asked for --immediate-mode (kept only when the phone's tcpdump has it)
        self.late = 0.0 if immediate else BUFFER_TIMEOUT  # how late a packet can reach the stream
        self.sink = PcapSink(self.output, max_bytes=max_bytes)
        self.pump: StreamPump | None = None
        self.sock: socket.socket | None = None
        self.restarts = 0
        self.build_type = ""
        self.graceful = False  # the phone's shell has `$$`, `exec` and `kill`: tcpdump is stopped with SIGINT
        self.phone_dropped: int | None = None
        self._stopping = False
        self._down: BlindWindow | None = None
        self._cap_window: BlindWindow | None = None
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # --- the command ------------------------------------------------------------------------
    def bpf(self) -> str | None:
        adb_port = self.adb.serial.rpartition(":")[2] if self.adb.is_tcp else None
        return combine(self.user_bpf, f"not tcp port {adb_port}" if adb_port else None)

    def command(self) -> str:
        """The `exec:` command; with `graceful`, tcpdump's pid is kept so stop() can SIGINT it (statistics)."""
        assert self.tcpdump is not None
        argv = [self.tcpdump, "-i", self.interface, "-n", "-s", str(self.snaplen), "-U",
                *(["--immediate-mode"] if self.immediate else []), "-B", str(BUFFER_KIB), "-w", "-"]
        bpf = self.bpf()
        text = sh_join([*argv, bpf] if bpf else argv) + f" 2>{ERR_FILE}"
        if self.graceful:
            text = f"echo $$ > {PID_FILE}; exec {text}"
        return self._as_root(text)

    def _as_root(self, text: str) -> str:
        return self.root.wrap(text) if self.root is not None else text

    # --- lifecycle --------------------------------------------------------------------------
    def _start(self) -> None:
        self._probe()
        self._open_stream()
        self._watcher = threading.Thread(target=self._watch, name="device-capture-watch", daemon=True)
        self._watcher.start()

    def _probe(self) -> None:
        """Find tcpdump and a way to run it as root; one clear error when there is none."""
        try:
            if self.root is None:
                self.root = detect_root(self.adb)
            locate = f"ls {sh_quote(self.tcpdump)}" if self.tcpdump else "command -v tcpdump"
            found = self.adb.script(f"getprop ro.build.type; echo {_SEP}; {locate}", timeout=20)
        except DeviceError as exc:
            raise CaptureSetupError(f"device capture: cannot probe {self.adb.label}: {exc}") from None
        build, _, where = found.stdout.partition(_SEP)
        self.build_type = build.strip()
        path = where.strip().splitlines()[0].strip() if where.strip() else ""
        if not found.ok or not path.startswith("/"):
            raise CaptureSetupError(f"device capture: no tcpdump on {self.adb.label} (userdebug builds ship "
                                    "/system/bin/tcpdump; otherwise push one and set capture.tcpdump, or use "
                                    "--ph-capture gateway or pcapdroid)")
        self.tcpdump = path
        if self.immediate:
            usage = ""
            with contextlib.suppress(DeviceError):
                usage = self.adb.script(self._as_root(f"{sh_quote(path)} -h 2>&1"), timeout=20).stdout
            self.immediate = has_immediate_mode(usage)
            if not self.immediate:
                self.notes.append(f"the tcpdump on {self.adb.label} has no --immediate-mode (before Android 8): "
                                  f"block batching instead, packets up to {BUFFER_TIMEOUT:g} s late, waited out at "
                                  "stop")
        self.late = 0.0 if self.immediate else BUFFER_TIMEOUT
        with contextlib.suppress(DeviceError):
            probe = self.adb.script(self._as_root("echo $$; exec echo phonehome-exec-ok"), timeout=20).stdout.split()
            self.graceful = len(probe) == 2 and probe[0].isdigit() and probe[1] == "phonehome-exec-ok"
        if not self.graceful:
            self.notes.append(f"the shell on {self.adb.label} cannot run `exec`/`$$`: tcpdump is stopped by closing "
                              "its stream, so the phone's kernel drop count is unknown")
        if not self.root.available:
            self.notes.append(f"no root on {self.adb.label} ({self.build_type or 'unknown'} build): trying tcpdump "
                              "as the shell user")

    def _open_stream(self) -> None:
        """Open `exec:` with tcpdump and wait for its pcap header."""
        if self.adb.is_tcp and self.adb.serial not in self.exclude:
            self.exclude.append(self.adb.serial)  # the phone came back on another port
        try:
            conn = self.adb.device().open_transport(timeout=10)
            conn.send_command("exec:" + self.command())
            conn.check_okay()
        except (adbutils.AdbError, OSError, EOFError) as exc:
            raise CaptureSetupError(f"device capture: cannot open the stream on {self.adb.label}: {exc}") from None
        sock = conn.conn
        sock.settimeout(None)
        self.sock = sock
        self.pump = StreamPump(sock.recv, self.sink, name="device").start()
        deadline = time.monotonic() + self.start_timeout
        while not self.pump.done.is_set() and time.monotonic() < deadline:
            if self.pump.started.wait(0.05):
                return
        if self.pump.started.is_set():
            return
        self._close_stream()
        raise CaptureSetupError(f"device capture: tcpdump did not start on {self.adb.label}: {self._why()}"
                                f"{self._root_hint()}")

    def _root_hint(self) -> str:
        if self.root is not None and self.root.available:
            return ""
        if self.build_type == "user":
            return " (a user build has no root: use --ph-capture gateway or pcapdroid)"
        return " (no root: run `adb root` on a userdebug build, or use --ph-capture gateway or pcapdroid)"

    def _why(self) -> str:
        """tcpdump's own message, from the stream (an error instead of pcap) or its stderr file."""
        pump = self.pump
        text = pump.text.decode(errors="replace").strip() if pump is not None else ""
        with contextlib.suppress(DeviceError):
            err = self.adb.script(self._as_root(f"cat {ERR_FILE}"), timeout=10).stdout.strip()
            lines = [line for line in err.splitlines() if line.strip() and "listening on" not in line
                     and "packets" not in line]
            text = text or " ".join(lines[-2:])
        if pump is not None and pump.error and not text:
            text = pump.error
        return text or "no pcap stream within the time limit"

    def _close_stream(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        if self.pump is not None:
            self.pump.join(5)

    def _before_reboot(self) -> None:
        return None  # the stream dies with the phone; the watcher notes when

    def _after_reboot(self, since: float | None) -> None:
        """Restart tcpdump on the phone; the span it was down is a blind window."""
        pump = self.pump
        if pump is not None and not pump.done.is_set():
            if since is None:
                return  # still streaming: the phone did not actually reboot
            self._close_stream()  # the old stream outlived the announced reboot; start clean
        ended = (pump.ended_at if pump is not None and pump.ended_at is not None else time.time()) - self.late
        window = self._down or self.open_window(REBOOT_GAP, ended)
        self._down = None
        try:
            self._open_stream()
        except CaptureSetupError:
            window.reason = "on-device capture could not be restarted after the reboot"
            raise
        self.restarts += 1
        self.close_window(window)

    def _watch(self) -> None:
        while not self._watch_stop.wait(WATCH_INTERVAL):
            if not self._lock.acquire(blocking=False):
                continue
            try:
                self._watch_once()
            finally:
                self._lock.release()

    def _watch_once(self) -> None:
        if self.sink.capped_at is not None and self._cap_window is None:
            self._cap_window = self.open_window(f"the capture reached its size cap of {self.max_bytes} bytes: "
                                                "later traffic was not kept", self.sink.capped_at)
        pump = self.pump
        if pump is None or not pump.done.is_set() or self._down is not None or self._stopping:
            return
        ended = (pump.ended_at or time.time()) - self.late  # the open libpcap block died with it
        if self.state is State.REBOOTING:
            self._down = self.open_window(REBOOT_GAP, ended)
            return
        why = self._why()
        self.errors.append(f"tcpdump on {self.adb.label} stopped mid-capture: {why}")
        self._down = self.open_window(f"on-device tcpdump stopped ({why})", ended)

    def _stop(self) -> None:
        self._watch_stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
        self._watch_once()
        self._stopping = True
        if self.pump is not None and not self.pump.done.is_set():
            time.sleep(self.late + 0.2 if self.late else 0.2)  # let the last libpcap block reach us
            if self.graceful:
                self._interrupt()
        self._close_stream()
        if self.phone_dropped is None:
            self._read_statistics(wait=2.0)  # some phones still SIGINT it when the stream closes
        if self.pump is not None and self.pump.partial:
            self.notes.append(f"{self.pump.partial} bytes of a packet cut off when the stream ended")
        self.sink.close()

    def _interrupt(self) -> None:
        """SIGINT the phone's tcpdump: it flushes and prints its statistics; a kernel drop is a blind window."""
        try:
            self.adb.script(self._as_root(f"kill -INT $(cat {PID_FILE})"), timeout=15)
        except DeviceError as exc:
            self.notes.append(f"could not stop tcpdump on {self.adb.label} gracefully ({exc})")
            return
        if self.pump is not None:
            self.pump.done.wait(5)
        self._read_statistics(wait=0.0)

    def _read_statistics(self, wait: float) -> None:
        """tcpdump's exit statistics from its stderr file on the phone; a kernel drop is a blind window."""
        deadline = time.monotonic() + wait
        while True:
            with contextlib.suppress(DeviceError):
                match = _DROPPED.search(self.adb.script(self._as_root(f"cat {ERR_FILE}"), timeout=15).stdout)
                if match:
                    self.phone_dropped = int(match.group(1))
                    break
            if time.monotonic() >= deadline:
                return
            time.sleep(0.2)
        if self.phone_dropped:
            self.blind_windows.append(BlindWindow(f"the phone's kernel dropped {self.phone_dropped} packets (its "
                                                  "tcpdump could not keep up)", self.started, time.time()))

    def _counts(self) -> tuple[int, int, float | None]:
        return self.sink.packets, self.sink.bytes, self.sink.last

    def _problems(self) -> list[str]:
        pump = self.pump
        if self.state is State.RUNNING and pump is not None and pump.done.is_set():
            return [f"tcpdump on {self.adb.label} is not running"]
        return []

    def _settings(self) -> dict[str, Any]:
        return {"interface": self.interface, "tcpdump": self.tcpdump, "root": self.root.form if self.root else None,
                "filter": self.bpf(), "snaplen": self.snaplen, "max_bytes": self.max_bytes, "restarts": self.restarts,
                "immediate_mode": self.immediate, "graceful_stop": self.graceful,
                "phone_kernel_dropped": self.phone_dropped,
                "linktype": self.sink.format.linktype if self.sink.format else None}

