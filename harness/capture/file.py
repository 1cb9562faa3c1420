"""An existing capture file, for analyse-only runs (`--ph-capture file:PATH`).

Nothing is captured: the file is checked at start (it must exist and be a pcap or pcapng
capture, else one clear error) and handed to the analyzer as is. Its packet counts are reported
honestly, an empty file included; whether it covers the phone's power-up, or holds the canary,
is for the analyzer to prove. No reboot or phone state applies, and nothing is written beside
the user's file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.capture.base import CaptureBackend, CaptureSetupError, State
from harness.capture.pcap import FileInfo, inspect
from harness.errors import CaptureError


class FileCapture(CaptureBackend):
    name = "file"
    sees_power_up = False  # unknown: whatever the file's author captured
    sees_cellular = False
    writes_sidecar = False

    def __init__(self, path: Path) -> None:
        super().__init__(Path(path))
        self.info: FileInfo | None = None

    def _start(self) -> None:
        if not self.output.is_file():
            raise CaptureSetupError(f"capture file {self.output} does not exist")
        try:
            self.info = inspect(self.output)
        except CaptureError as exc:
            raise CaptureSetupError(str(exc)) from None
        self.notes.append("an existing capture: this run captured nothing and verified no phone state")
        if self.info.truncated:
            self.notes.append("the capture's last record is cut short")

    def _stop(self) -> None:
        return None

    def before_reboot(self) -> None:
        return None  # nothing runs: a reboot changes nothing here

    def after_reboot(self) -> None:
        if self.state is State.RUNNING:
            self.notes.append("a reboot happened during an analyse-only run: the file does not cover it")

    def _counts(self) -> tuple[int, int, float | None]:
        if self.info is None:
            return 0, 0, None
        return self.info.packets, self.info.bytes, self.info.last

    def _settings(self) -> dict[str, Any]:
        return {"path": str(self.output), "format": self.info.kind if self.info else None,
                "linktypes": self.info.linktypes if self.info else []}
