"""phonehome capture layer: one interface (base.CaptureBackend), four backends, failing closed.

    choice = choose(options.capture, profile, virtual=is_virtual)
    capture = build(choice, artifacts / "capture.pcap", adb=adb, network=virtual_network)
    capture.start()
    ... capture.before_reboot(); reboot; capture.after_reboot() ...
    canary = capture.send_canary(adb)
    result = capture.stop()   # path, counts, blind windows, exclude, canaries, attribution
    analyze(result.path, ids, canary=canary.marker, exclude=result.exclude, blind_windows=result.blind_windows)
"""

from harness.capture.base import CaptureBackend, CaptureFailed, CaptureResult, CaptureSetupError, Health, State
from harness.capture.canary import Canary, send_canary
from harness.capture.select import CaptureChoice, CaptureSpecError, build, choose, parse_spec

__all__ = [
    "Canary", "CaptureBackend", "CaptureChoice", "CaptureFailed", "CaptureResult", "CaptureSetupError",
    "CaptureSpecError", "Health", "State", "build", "choose", "parse_spec", "send_canary",
]
