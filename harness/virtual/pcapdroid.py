"""PCAPdroid on the virtual phone: its intent API, its consent dialogs and a real capture.

Driven like the real app (emanuele-f/PCAPdroid `CaptureCtrl`): `am start -e action start
-e pcap_dump_mode pcap_file -e pcap_name NAME.pcap -n com.emanuelef.remote_capture/.activities.CaptureCtrl`.
Started from a shell there is no calling package, so every start shows the "PCAPdroid control
request" dialog (its Allow button is enabled 1.5 s after it appears, as in the app); the first
capture also shows Android's VPN consent unless `appops set ... ACTIVATE_VPN allow` was run. Once
allowed, the phone's traffic is captured for real (tcpdump in its network namespace) and written
as PCAPdroid writes it, raw IP packets (LINKTYPE_RAW), to `Download/PCAPdroid/NAME.pcap`, which
`adb pull` reads while it grows. Dialogs only show on an awake, unlocked phone.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.virtual.android import PCAPDROID, Dialog, View, close_transport

if TYPE_CHECKING:
    from harness.virtual.android import AndroidDevice

CTRL_ACTIVITY = "com.emanuelef.remote_capture.activities.CaptureCtrl"
VPN_PACKAGE = "com.android.vpndialogs"
VPN_ACTIVITY = "com.android.vpndialogs.ConfirmDialog"
ALLOW_DELAY = 1.5  # seconds before the Allow button is enabled (CaptureCtrl.onCreate)
DOWNLOAD_DIR = "/storage/emulated/0/Download/PCAPdroid"
LINKTYPE_RAW = 101
_SLL, _SLL2 = 113, 276


class PcapToRawIp:
    """Rewrites a `tcpdump -i any -w -` stream (SLL/SLL2) into a LINKTYPE_RAW pcap, IP packets only."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._linktype: int | None = None
        self._endian = "<"

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = bytearray()
        if self._linktype is None:
            if len(self._buffer) < 24:
                return b""
            magic = self._buffer[:4]
            self._endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
            header = bytes(self._buffer[:24])
            self._linktype = struct.unpack(self._endian + "I", header[20:24])[0]
            out += header[:16] + struct.pack(self._endian + "II", 262144, LINKTYPE_RAW)
            del self._buffer[:24]
        while len(self._buffer) >= 16:
            sec, frac, caplen, length = struct.unpack(self._endian + "IIII", self._buffer[:16])
            if len(self._buffer) < 16 + caplen:
                break
            frame = bytes(self._buffer[16 : 16 + caplen])
            del self._buffer[: 16 + caplen]
            if self._linktype == _SLL:
                skip, proto = 16, frame[14:16]
            elif self._linktype == _SLL2:
                skip, proto = 20, frame[0:2]
            else:
                skip, proto = 14, frame[12:14]
            if proto not in (b"\x08\x00", b"\x86\xdd") or len(frame) <= skip:
                continue
            payload = frame[skip:]
            out += struct.pack(self._endian + "IIII", sec, frac, len(payload), max(0, length - skip)) + payload
        return bytes(out)


class Pcapdroid:
    """The app's state on one phone: pending consent, the running capture and its file."""

    def __init__(self, device: AndroidDevice) -> None:
        self.device = device
        self.running = False
        self.path: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._pump: asyncio.Task[None] | None = None
        self.stats = {"pkts_sent": 0, "bytes_dumped": 0}

    # -- intents -----------------------------------------------------------------------------

    async def control(self, extras: dict[str, Any]) -> None:
        """`am start ... CaptureCtrl`: without a calling package, ask the user every time."""
        action = extras.get("action")
        device = self.device
        if action is None:
            device.log("E", "CaptureCtrl", "no action provided", pid=3100)
            return
        if action not in ("start", "stop", "get_status"):
            device.log("E", "CaptureCtrl", f"unknown action: {action}", pid=3100)
            return
        dialog = Dialog(PCAPDROID, CTRL_ACTIVITY, lambda w, h: self._consent_view(dialog, extras, w, h))
        device.dialogs.append(dialog)
        device.log("I", "ActivityTaskManager", f"START u0 {{cmp={PCAPDROID}/.activities.CaptureCtrl (has extras)}} "
                   "from uid 2000", pid=1024, buffer="system")
        device.ui_changed()

    async def dismissed(self, dialog: Dialog) -> None:
        """BACK on a dialog: PCAPdroid's onBackPressed aborts (denied); the VPN dialog cancels."""
        self.device.log("W", "CaptureCtrl", "PCAPdroid: the control request was denied", pid=3100)

    def _consent_view(self, dialog: Dialog, extras: dict[str, Any], width: int, height: int) -> View:
        top = height // 3
        margin = 30
        enabled = time.monotonic() - dialog.shown_at >= ALLOW_DELAY
        root = View("android.widget.FrameLayout", PCAPDROID, (margin, top, width - margin, top + 720),
                    resource_id="android:id/content", color=(42, 42, 42))
        layout = View("android.widget.LinearLayout", PCAPDROID, root.bounds)
        root.children.append(layout)
        layout.children.append(View("android.widget.TextView", PCAPDROID,
                                    (margin, top + 45, width - margin, top + 110), text="PCAPdroid control request"))
        layout.children.append(View("android.widget.TextView", PCAPDROID,
                                    (margin, top + 230, width - margin, top + 380),
                                    text="An app wants to capture your device traffic.\nDeny it if you are not sure"))
        row = View("android.widget.LinearLayout", PCAPDROID, (margin + 60, top + 440, width - margin - 60, top + 600))
        layout.children.append(row)
        middle = width // 2

        async def deny() -> None:
            self._close(dialog)
            self.device.log("W", "CaptureCtrl", "PCAPdroid: the control request was denied", pid=3100)

        async def allow() -> None:
            self._close(dialog)
            await self._allowed(extras)

        row.children.append(View("android.widget.Button", PCAPDROID, (margin + 60, top + 460, middle, top + 590),
                                 text="Deny", resource_id=f"{PCAPDROID}:id/deny_btn", clickable=True,
                                 focusable=True, action=deny))
        row.children.append(View("android.widget.Button", PCAPDROID,
                                 (middle, top + 460, width - margin - 60, top + 590), text="Allow",
                                 resource_id=f"{PCAPDROID}:id/allow_btn", clickable=True, focusable=True,
                                 enabled=enabled, action=allow))
        return root

    def _close(self, dialog: Dialog) -> None:
        if dialog in self.device.dialogs:
            self.device.dialogs.remove(dialog)
        self.device.ui_changed()

    async def _allowed(self, extras: dict[str, Any]) -> None:
        device = self.device
        device.log("I", "CaptureCtrl", "PCAPdroid: the control request was allowed", pid=3100)
        action = extras.get("action")
        if action == "stop":
            device.log("D", "CaptureCtrl", "Stopping capture", pid=3100)
            await self.stop()
            return
        if action != "start":
            device.log("D", "CaptureCtrl", "Returning status", pid=3100)
            return
        device.log("D", "CaptureCtrl", "Starting capture, caller=null", pid=3100)
        if device.appops.get((PCAPDROID, "ACTIVATE_VPN")) == "allow":
            await self.start(extras)
            return
        dialog = Dialog(VPN_PACKAGE, VPN_ACTIVITY, lambda w, h: self._vpn_view(dialog, extras, w, h))
        device.dialogs.append(dialog)
        device.ui_changed()

    def _vpn_view(self, dialog: Dialog, extras: dict[str, Any], width: int, height: int) -> View:
        top = height // 3
        root = View("android.widget.FrameLayout", VPN_PACKAGE, (60, top, width - 60, top + 760),
                    resource_id="android:id/content", color=(250, 250, 250))
        root.children.append(View("android.widget.TextView", VPN_PACKAGE, (120, top + 60, width - 120, top + 140),
                                  text="Connection request", resource_id="android:id/alertTitle"))
        root.children.append(View("android.widget.TextView", VPN_PACKAGE, (120, top + 170, width - 120, top + 520),
                                  text="PCAPdroid wants to set up a VPN connection that allows it to monitor network "
                                       "traffic. Only accept if you trust the source.",
                                  resource_id="com.android.vpndialogs:id/warning"))

        async def cancel() -> None:
            self._close(dialog)
            self.device.log("W", "CaptureService", "VPN permission denied", pid=3100)

        async def ok() -> None:
            self._close(dialog)
            self.device.appops[(PCAPDROID, "ACTIVATE_VPN")] = "allow"
            await self.start(extras)

        root.children.append(View("android.widget.Button", VPN_PACKAGE,
                                  (width // 2 - 260, top + 600, width // 2, top + 720), text="Cancel",
                                  resource_id="android:id/button2", clickable=True, action=cancel))
        root.children.append(View("android.widget.Button", VPN_PACKAGE, (width // 2, top + 600, width - 100, top + 720),
                                  text="OK", resource_id="android:id/button1", clickable=True, action=ok))
        return root

    # -- the capture -------------------------------------------------------------------------

    async def start(self, extras: dict[str, Any]) -> None:
        device = self.device
        await self.stop()
        mode = str(extras.get("pcap_dump_mode", "none"))
        name = str(extras.get("pcap_name") or
                   dt.datetime.fromtimestamp(device.now()).strftime("PCAPdroid_%d_%b_%H_%M_%S.pcap"))
        name = name.replace("/", "_")
        self.running = True
        device.log("I", "CaptureService", f"Starting capture: dump_mode={mode}", pid=3100)
        if mode != "pcap_file":
            return
        self.path = f"{DOWNLOAD_DIR}/{name}"
        host = self._host_file(self.path)
        if device.network is None:
            host.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, LINKTYPE_RAW))
            return
        argv = device.network.exec_argv(["tcpdump", "-i", "any", "-s", "0", "-U", "--immediate-mode", "-w", "-"])
        self._proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                          stdout=asyncio.subprocess.PIPE,
                                                          stderr=asyncio.subprocess.DEVNULL)
        self._pump = asyncio.ensure_future(self._write(self._proc, host))

    def _host_file(self, path: str) -> Path:
        device = self.device
        assert device.state_dir is not None, "PCAPdroid needs the phone's state directory"
        host = device.state_dir / "pcapdroid" / path.rsplit("/", 1)[-1]
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(b"")
        host.chmod(0o600)
        device.fs.add_host_file(path, host)
        return host

    async def _write(self, proc: asyncio.subprocess.Process, host: Path) -> None:
        assert proc.stdout is not None
        converter = PcapToRawIp()
        with host.open("ab") as out:
            while chunk := await proc.stdout.read(65536):
                data = converter.feed(chunk)
                if data:
                    out.write(data)
                    out.flush()
                    self.stats["bytes_dumped"] += len(data)

    async def stop(self) -> None:
        """Stop the capture and finish its file (what `-e action stop` does once allowed)."""
        if self.running:
            self.device.log("I", "CaptureService", "Stopped capture", pid=3100)
        self.running = False
        proc, pump = self._proc, self._pump
        self._proc = self._pump = None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(pump, 5)
            if not pump.done():
                pump.cancel()
        if proc is not None:
            close_transport(proc)

    async def shutdown(self) -> None:
        """Power off: the capture ends with the phone (PCAPdroid does not start at boot here)."""
        await self.stop()
