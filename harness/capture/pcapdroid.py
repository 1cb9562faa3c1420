"""PCAPdroid capture for phones without root, driven by its intent API.

`am start -e action start -e pcap_dump_mode pcap_file -e pcap_name NAME.pcap -n
com.emanuelef.remote_capture/.activities.CaptureCtrl` makes PCAPdroid (a VPN-based capture app)
write `Download/PCAPdroid/NAME.pcap`. Started from a shell there is no calling package, so it asks
for consent on **every** start and stop: the backend presses Allow through uiautomator2 (the
phone must be awake and unlocked; `prepare_ui` does that). Android's own VPN consent is avoided
with `appops set ... ACTIVATE_VPN allow` (restored at stop) and pressed if it shows anyway.

PCAPdroid's status reply cannot be read through `am start`, so "it runs" is proven the hard
way: the file must appear and grow when the phone sends a probe lookup. It starts only after
boot and consent: the power-up, and every reboot until it is restarted, are blind windows. Each
start writes its own file on the phone; at stop they are pulled, merged in time order into the
owner-only output, and deleted from the phone's shared storage (they hold raw identifiers).
`pcapdroid_trailer` is on, so every packet carries the sending app for the analyzer.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.capture.base import CaptureBackend, CaptureSetupError, State
from harness.capture.canary import send_canary
from harness.capture.pcap import HEADER_LEN, FileInfo, inspect, merge, open_private
from harness.device.adb import Adb, sh_join, sh_quote
from harness.errors import CaptureError, DeviceError

log = logging.getLogger("phonehome.capture")

PACKAGE = "com.emanuelef.remote_capture"
CTRL_ACTIVITY = ".activities.CaptureCtrl"
DOWNLOAD_DIR = "/storage/emulated/0/Download/PCAPdroid"
VPN_DIALOGS = "com.android.vpndialogs"
_SIZE = re.compile(r"^\s*(\d+)", re.M)


@dataclass(slots=True)
class Segment:
    """One PCAPdroid run: its file on the phone and when it was proven to capture."""

    remote: str
    started: float
    local: Path | None = None


class PcapdroidCapture(CaptureBackend):
    """PCAPdroid on a phone without root; consent pressed through uiautomator2 on every start."""

    name = "pcapdroid"
    sees_power_up = False
    sees_cellular = True

    def __init__(self, output: Path, adb: Adb, *, package: str = PACKAGE, max_bytes: int | None = None,
                 prepare_ui: Callable[[], None] | None = None, consent_timeout: float = 20.0,
                 verify_timeout: float = 20.0, ui: Any = None) -> None:
        super().__init__(output, max_bytes=max_bytes)
        self.adb = adb
        self.package = package
        self.prepare_ui = prepare_ui
        self.consent_timeout = consent_timeout
        self.verify_timeout = verify_timeout
        self._ui = ui
        self.segments: list[Segment] = []
        self.consents = 0  # Allow presses, start and stop
        self._appops_before: str | None = None
        self._info: FileInfo | None = None
        self._tag = secrets.token_hex(4)
        if adb.is_tcp:
            self.exclude.append(adb.serial)
        self.notes.append("PCAPdroid captures IP traffic through its VPN: modem- and SMS-based registration is "
                          "invisible to it")

    # --- the phone ----------------------------------------------------------------------------
    def _shell(self, text: str, timeout: float = 30.0) -> str:
        try:
            return self.adb.script(text, timeout).stdout
        except DeviceError as exc:
            raise CaptureError(f"pcapdroid capture: {exc}") from None

    def ui(self) -> Any:
        """uiautomator2 on this phone (started on first use)."""
        if self._ui is None:
            try:
                import uiautomator2

                self._ui = uiautomator2.connect(self.adb.device())
            except Exception as exc:  # u2 raises many types; any of them means no consent can be given
                raise CaptureSetupError(f"pcapdroid capture: uiautomator2 did not start on {self.adb.label} "
                                        f"({type(exc).__name__}): PCAPdroid's consent cannot be pressed") from None
        return self._ui

    def _wake(self) -> None:
        """Dialogs show only on an awake, unlocked phone: `prepare_ui`, else the device layer's swipe unlock."""
        if self.prepare_ui is not None:
            self.prepare_ui()
            return
        from harness.device.lifecycle import Lifecycle

        sdk = self._shell("getprop ro.build.version.sdk").strip()
        try:
            Lifecycle(self.adb, sdk=int(sdk) if sdk.isdigit() else 0).unlock("swipe")
        except DeviceError as exc:
            raise CaptureSetupError(f"pcapdroid capture: cannot unlock {self.adb.label} for PCAPdroid's consent "
                                    f"({exc}); give the profile's unlock method") from None

    def _intent(self, **extras: str) -> None:
        argv = ["am", "start", "-n", f"{self.package}/{CTRL_ACTIVITY}"]
        for key, value in extras.items():
            argv += ["-e", key, value]
        out = self._shell(sh_join(argv))
        if "Error" in out:
            raise CaptureSetupError(f"pcapdroid capture: am start failed: {out.strip().splitlines()[-1]}")

    def _press_allow(self) -> None:
        """PCAPdroid's "Allow" (enabled a moment after the dialog shows), then Android's VPN OK if asked."""
        ui = self.ui()
        deadline = time.monotonic() + self.consent_timeout
        selectors = [ui(resourceId=f"{self.package}:id/allow_btn", enabled=True),
                     ui(packageName=self.package, textMatches="(?i)allow", enabled=True)]
        while time.monotonic() < deadline:
            for selector in selectors:
                if selector.exists:
                    selector.click()
                    self.consents += 1
                    vpn_ok = ui(packageName=VPN_DIALOGS, resourceId="android:id/button1")
                    if vpn_ok.wait(timeout=3):
                        vpn_ok.click()
                        self.notes.append("Android's VPN consent was shown and accepted")
                    return
            time.sleep(0.2)
        raise CaptureSetupError(f"pcapdroid capture: PCAPdroid's consent dialog did not appear on {self.adb.label} "
                                f"within {self.consent_timeout:g} s (is the phone awake and unlocked?)")

    def remote_size(self, path: str) -> int | None:
        out = self._shell(f"wc -c {sh_quote(path)} 2>/dev/null")
        match = _SIZE.search(out)
        return int(match.group(1)) if match else None

    # --- lifecycle ----------------------------------------------------------------------------
    def _start(self) -> None:
        try:
            installed = self.adb.script(f"pm path {sh_quote(self.package)}", 20).stdout
        except DeviceError as exc:
            raise CaptureSetupError(f"pcapdroid capture: cannot reach {self.adb.label}: {exc}") from None
        if "package:" not in installed:
            raise CaptureSetupError(f"pcapdroid capture: PCAPdroid ({self.package}) is not installed on "
                                    f"{self.adb.label}: install it, or use --ph-capture gateway or device")
        ops = self._shell(f"appops get {sh_quote(self.package)} ACTIVATE_VPN")
        match = re.search(r"ACTIVATE_VPN:\s*(\w+)", ops)
        self._appops_before = match.group(1) if match else "default"
        self._shell(f"appops set {sh_quote(self.package)} ACTIVATE_VPN allow")
        self._begin_segment()

    def _begin_segment(self) -> None:
        name = f"phonehome-{self._tag}-{len(self.segments) + 1}.pcap"
        remote = f"{DOWNLOAD_DIR}/{name}"
        self._wake()
        self._intent(action="start", pcap_dump_mode="pcap_file", pcap_name=name, pcapdroid_trailer="true")
        self._press_allow()
        self._verify(remote)
        self.segments.append(Segment(remote, time.time()))

    def _verify(self, remote: str) -> None:
        """The file must appear, then grow when the phone sends a probe lookup."""
        deadline = time.monotonic() + self.verify_timeout
        size = None
        while time.monotonic() < deadline:
            size = self.remote_size(remote)
            if size is not None and size >= HEADER_LEN:
                break
            time.sleep(0.25)
        else:
            raise CaptureSetupError(f"pcapdroid capture: PCAPdroid did not create {remote} after consent")
        probe = send_canary(self.adb)
        while time.monotonic() < deadline:
            grown = self.remote_size(remote)
            if grown is not None and grown > size:
                self.notes.append(f"PCAPdroid verified capturing (file grew on probe {probe.marker})")
                return
            time.sleep(0.25)
        raise CaptureSetupError(f"pcapdroid capture: PCAPdroid's file did not grow when the phone sent traffic "
                                f"(probe {probe.marker}): it is not capturing")

    def _after_reboot(self, since: float | None) -> None:
        """PCAPdroid does not survive a reboot here: start it again; the whole boot was blind."""
        start = since or (self.segments[-1].started if self.segments else time.time())
        window = self.open_window("PCAPdroid starts only after boot and consent: power-up traffic not captured", start)
        try:
            self._begin_segment()
        except CaptureError:
            window.reason = "PCAPdroid could not be restarted after the reboot"
            raise
        self.close_window(window)

    def _stop(self) -> None:
        problems = []
        try:
            self._wake()
            self._intent(action="stop")
            self._press_allow()
        except CaptureError as exc:
            problems.append(f"PCAPdroid stop not confirmed ({exc}); pulling the file as it is")
        if self.segments:
            self._wait_stable(self.segments[-1].remote)
        with contextlib.suppress(CaptureError):
            self._shell(sh_join(["appops", "set", self.package, "ACTIVATE_VPN", self._appops_before or "default"]))
        self._collect()
        self.errors.extend(problems)

    def _wait_stable(self, remote: str, timeout: float = 10.0) -> None:
        last = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            size = self.remote_size(remote)
            if size is not None and size == last:
                return
            last = size
            time.sleep(0.5)

    def _collect(self) -> None:
        """Pull every segment, merge into the output, delete the phone's copies."""
        workdir = Path(tempfile.mkdtemp(prefix="phonehome-pcapdroid-", dir=self.output.parent))
        try:
            pulled: list[Path] = []
            for index, segment in enumerate(self.segments):
                local = workdir / f"{index}.pcap"
                with open_private(local):
                    pass
                try:
                    self.adb.device().sync.pull(segment.remote, str(local))
                except Exception as exc:  # adbutils raises several types for a failed pull
                    self.errors.append(f"could not pull {segment.remote}: {type(exc).__name__}: {exc}")
                    self.open_window(f"PCAPdroid file {segment.remote} could not be pulled", segment.started).end = \
                        time.time()
                    continue
                local.chmod(0o600)
                pulled.append(local)
            if not pulled:
                raise CaptureError("pcapdroid capture: no capture file could be pulled from the phone")
            merge(pulled, self.output)
            self._info = inspect(self.output)
            if self.max_bytes is not None and self.output.stat().st_size > self.max_bytes:
                self.notes.append(f"the pulled capture exceeds max_bytes ({self.max_bytes}); kept whole")
            for segment in self.segments:
                with contextlib.suppress(CaptureError):
                    self._shell(f"rm -f {sh_quote(segment.remote)}")
                with contextlib.suppress(CaptureError):
                    if self.remote_size(segment.remote) is not None:
                        self.notes.append(f"could not delete {segment.remote} on the phone: it holds raw "
                                          "identifiers in shared storage, delete it by hand")
        finally:
            for leftover in workdir.glob("*"):
                leftover.unlink()
            workdir.rmdir()

    def _counts(self) -> tuple[int, int, float | None]:
        if self._info is not None:
            return self._info.packets, self._info.bytes, self._info.last
        return 0, 0, None

    def _progress(self) -> int:
        """While running, the current file's size (packet counts exist only once pulled)."""
        if self._info is None and self.segments and self.state is State.RUNNING:
            return self.remote_size(self.segments[-1].remote) or 0
        return super()._progress()

    def _settings(self) -> dict[str, Any]:
        return {"package": self.package, "segments": [s.remote for s in self.segments], "consents": self.consents,
                "max_bytes": self.max_bytes}
