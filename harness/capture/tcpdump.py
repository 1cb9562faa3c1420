"""A host tcpdump writing `-w -` into a `PcapSink`, started and stopped the way captures must be.

Debian's tcpdump (libpcap 1.10, TPACKET_V3) hands packets over a block at a time, a block being
retired when full or after the 1 s buffer timeout; a SIGINT within that second loses the open
block (FACTS.md: 0 of 14 written), which would cut off a canary sent just before stop. Two cures:
`--immediate-mode` (a wakeup and a write per packet: at 50,000 packets/s it costs a core and the
kernel drops packets, benchmarks/bench_capture.py) or waiting out the timeout before the SIGINT.
This module does the latter by default (`flush_wait`), keeping block batching and `-U` (each
packet written as soon as tcpdump has it, so the file grows as it goes); `immediate=True` is
there for tools without the wait. The stream goes through a pipe into the sink (not `-w FILE`)
so the file is created owner-only by the harness and counted as it grows; tcpdump's statistics
at exit give the packets the kernel dropped, which the backend reports.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from harness.capture.base import CaptureSetupError
from harness.capture.pcap import PcapSink, StreamPump

_F_SETPIPE_SZ = 1031
_PIPE_SIZE = 1 << 20
_STATS = re.compile(r"(\d+) packets? (captured|received by filter|dropped by kernel)")


def netns_argv(netns: str | None, argv: Sequence[str]) -> list[str]:
    """Run `argv` inside a named network namespace (`ip netns exec`), or as is."""
    return ["ip", "netns", "exec", netns, *argv] if netns else list(argv)


BUFFER_TIMEOUT = 1.0  # libpcap's timeout as tcpdump sets it: a block reaches us at most this late
FLUSH_WAIT = BUFFER_TIMEOUT + 0.2


def tcpdump_argv(interface: str, bpf: str | None, *, tcpdump: str = "tcpdump", snaplen: int = 0,
                 buffer_kib: int = 16384, immediate: bool = False) -> list[str]:
    """Live capture to stdout, each packet written (`-U`) as soon as libpcap delivers it."""
    argv = [tcpdump, "-i", interface, "-n", "-s", str(snaplen), "-U", *(["--immediate-mode"] if immediate else []),
            "-B", str(buffer_kib), "-w", "-"]
    return [*argv, bpf] if bpf else argv


class TcpdumpProcess:
    """One tcpdump process feeding one sink; `stop()` lets it flush (SIGINT) and reads its statistics."""

    def __init__(self, argv: Sequence[str], sink: PcapSink, *, name: str = "tcpdump",
                 flush_wait: float = FLUSH_WAIT) -> None:
        self.argv = list(argv)
        self.flush_wait = flush_wait
        self.sink = sink
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.pump: StreamPump | None = None
        self.stderr: list[str] = []
        self.captured: int | None = None
        self.received: int | None = None
        self.dropped: int | None = None
        self.stopping = False
        self._stderr_thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> TcpdumpProcess:
        """Start and wait for its pcap header; `CaptureSetupError` with tcpdump's own words if it fails."""
        try:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, start_new_session=True)
        except FileNotFoundError:
            raise CaptureSetupError(f"{self.argv[0]!r} not found: install tcpdump (Debian: apt-get install "
                                    "tcpdump)") from None
        assert self.proc.stdout is not None and self.proc.stderr is not None
        fd = self.proc.stdout.fileno()
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, _F_SETPIPE_SZ, _PIPE_SIZE)
        self.pump = StreamPump(lambda n: os.read(fd, n), self.sink, name=self.name).start()
        self._stderr_thread = threading.Thread(target=self._read_stderr, args=(self.proc.stderr,),
                                               name=f"{self.name}-stderr", daemon=True)
        self._stderr_thread.start()
        deadline = time.monotonic() + timeout
        while not self.pump.started.wait(0.05):
            if self.pump.done.is_set() or time.monotonic() > deadline:
                self.stop()
                raise CaptureSetupError(f"{self.name} did not start: {self.why()}")
        return self

    def _read_stderr(self, stream: object) -> None:
        for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
            line = raw.decode(errors="replace").strip()
            if line:
                self.stderr.append(line)
                for count, what in _STATS.findall(line):
                    setattr(self, {"captured": "captured", "received by filter": "received",
                                   "dropped by kernel": "dropped"}[what], int(count))

    def why(self) -> str:
        """tcpdump's last error line (or the pump's), for one-line errors."""
        errors = [line for line in self.stderr if not line.startswith(("listening on", "tcpdump: listening"))
                  and not _STATS.search(line) and "verbose output suppressed" not in line]
        if errors:
            return errors[-1]
        if self.pump is not None and self.pump.error:
            return self.pump.error
        if self.proc is not None and self.proc.poll() is not None:
            return f"exited with status {self.proc.returncode}"
        return "no pcap stream within the time limit"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self.pump is not None \
            and not self.pump.done.is_set()

    @property
    def ended_at(self) -> float | None:
        return self.pump.ended_at if self.pump is not None else None

    def stop(self, timeout: float = 5.0) -> None:
        """Wait out the buffer timeout, SIGINT (tcpdump flushes, prints its statistics), drain the stream.

        Everything that reached the interface before this call is in the sink afterwards.
        """
        self.stopping = True
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            time.sleep(self.flush_wait)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.pump is not None:
            self.pump.join(timeout)
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def run_filter(source: Path, bpf: str, sink: PcapSink, *, tcpdump: str = "tcpdump", timeout: float = 120.0) -> int:
    """Apply a BPF filter to a capture file (`tcpdump -r`), appending the matching packets to `sink`."""
    process = TcpdumpProcess([tcpdump, "-n", "-r", str(source), "-w", "-", bpf], sink, name="tcpdump-filter",
                             flush_wait=0)
    process.start(timeout)
    assert process.proc is not None and process.pump is not None
    process.proc.wait(timeout)
    process.pump.join(timeout)
    process.stop()
    return process.pump.packets
