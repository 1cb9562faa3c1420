"""`phonehome virtual start NAME [--port N]`: run one virtual phone until interrupted.

NAME is a device profile with a `virtual:` section (a name in devices/, or a path). The phone's
adb serial is printed as soon as it has booted; connect any adb to it with `adb connect SERIAL`.
Ctrl-C (or SIGTERM) powers it off and removes its network namespaces and files.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from types import FrameType

from harness.errors import PhonehomeError
from harness.virtual.phone import FAULTS, VirtualPhone


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="virtual_action", metavar="ACTION", parser_class=type(parser))
    start = actions.add_parser("start", help="start a virtual phone and print its adb serial",
                               description=__doc__)
    start.add_argument("name", metavar="NAME", help="device profile with a virtual: section (name or path)")
    start.add_argument("--port", type=int, default=0, metavar="N",
                       help="adb port on 127.0.0.1 (default: a free one)")
    start.add_argument("--fault", action="append", default=[], choices=sorted(FAULTS), metavar="FAULT",
                       help=f"add a fault (repeatable): {', '.join(sorted(FAULTS))}")
    start.add_argument("--no-network", action="store_true",
                       help="no network namespaces (no root needed): adb and UI only, no traffic")


def _stop_on_sigterm(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    with contextlib.suppress(ValueError):  # not the main thread: Ctrl-C still works
        signal.signal(signal.SIGTERM, handler)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "virtual_action", None) != "start":
        print("phonehome virtual: choose an action: start NAME [--port N]", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        raise PhonehomeError(f"--port {args.port}: expected 0 to 65535")
    stop = threading.Event()
    _stop_on_sigterm(stop)
    phone = VirtualPhone(args.name, port=args.port, faults=args.fault, network=not args.no_network)
    phone.on_serial_change(lambda serial: print(f"adb serial changed: {serial}", flush=True))
    try:
        phone.start(wait_boot=False)
        spec = phone.spec
        print(f"virtual phone {spec.name} ({spec.manufacturer} {spec.model}, Android {spec.android}) booting",
              flush=True)
        if "boot-never-completes" not in phone.faults:
            phone.wait_booted(max(30.0, float(spec.boot_seconds) * 4))
        print(f"adb serial: {phone.serial}\n  adb connect {phone.serial}", flush=True)
        if phone.network is not None:
            capture = f"gateway:{phone.network.router_capture_iface}@{phone.network.router_ns}"
            print(f"gate it:\n  pytest --pyargs harness.scenarios --device {phone.serial} --ph-profile {spec.name} "
                  f"--ph-capture {capture}", flush=True)
        print("Ctrl-C stops it", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        phone.stop()
    print("virtual phone stopped", file=sys.stderr)
    return 0
