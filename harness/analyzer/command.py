"""phonehome analyze: find every identifier readable on the wire, and unapproved activation clients.

exit 0 clean, 1 leak, 2 unverified (bad input, empty or unreadable capture, canary not seen,
a required identifier unknown), 3 internal error. Without --identifiers, --guess is implied.
Console output and the findings JSON show identifiers masked (kind, slot, last 3 characters);
raw values stay in the capture file, which they point to.
"""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

from harness.analyzer.model import CaptureSummary, Report, Status
from harness.errors import PhonehomeError
from harness.identifiers import IdentifierSet

GUESS_NOTE = ("no --identifiers given: --guess implied (Luhn-valid IMEI/ICCID and MAC-shaped values are "
              "reported as guesses)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("capture", type=Path, metavar="CAPTURE", help="pcap or pcapng file")
    parser.add_argument("--identifiers", type=Path, metavar="IDS.json",
                        help="the phone's identifiers; a kind left out is unknown")
    parser.add_argument("--guess", action="store_true",
                        help="also report identifier-shaped values (implied without --identifiers)")
    parser.add_argument("--profile", metavar="NAME|FILE",
                        help="device profile (devices/NAME.yaml): market, approved endpoints, required ids")
    parser.add_argument("--canary", metavar="MARKER", help="marker the capture must contain, else unverified")
    parser.add_argument("--exclude", action="append", default=[], metavar="ADDR[:PORT]",
                        help="leave out the harness's own flows (adb over TCP); repeatable")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="write the findings JSON (0600) here")
    parser.add_argument("--sockets", type=Path, metavar="SOCKETS.json",
                        help="socket-owner snapshots a phonehome capture wrote beside it (CAPTURE.sockets.json): "
                             "names the app of each flow")
    parser.add_argument("--catalog", action="append", type=Path, default=[], metavar="EXTRA.yaml",
                        help="extra activation-client catalog entries (same schema as the built-in one)")


def check_exclude(value: str) -> str:
    """`ADDR`, `ADDR:PORT` or `[IPv6]:PORT`; anything else is a one-line usage error."""
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if value.startswith("["):
        address, _, port = value[1:].partition("]:")
    else:
        address, _, port = value.rpartition(":")
    try:
        ipaddress.ip_address(address)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(port)
    except ValueError:
        raise PhonehomeError(f"--exclude {value}: expected ADDR, ADDR:PORT or [IPv6]:PORT") from None
    return value


CANARY_MIN = 8  # the capture backends send 22 random characters; a short marker is seen by chance


def check_canary(value: str | None) -> str | None:
    """A marker long enough that seeing it proves something; else a one-line usage error."""
    if value is None:
        return None
    if value != value.strip() or len(value) < CANARY_MIN:
        raise PhonehomeError(f"--canary {value!r}: expected a marker of at least {CANARY_MIN} characters without "
                             "surrounding spaces (a short one turns up by chance and proves nothing)")
    return value


def run(args: argparse.Namespace) -> int:
    from harness.analyzer import analyze, coverage_of, merged_identifiers
    from harness.analyzer.report import Redactor, render_console, write_json
    from harness.policy.catalog import load_catalog
    from harness.profile import load_profile

    exclude = [check_exclude(v) for v in args.exclude]
    if args.sockets is not None and not args.sockets.is_file():
        raise PhonehomeError(f"--sockets {args.sockets}: no such file")
    canary = check_canary(args.canary)
    identifiers = IdentifierSet.load(args.identifiers) if args.identifiers else None
    catalog = load_catalog(args.catalog)
    profile = load_profile(args.profile, catalog) if args.profile else None
    guess = args.guess or identifiers is None
    notes = [GUESS_NOTE] if identifiers is None else []
    redactor = Redactor(merged_identifiers(identifiers, profile))
    try:
        report = analyze(args.capture, identifiers, guess=guess, profile=profile, canary=canary,
                         exclude=exclude, catalog=catalog, attribution=args.sockets)
    except PhonehomeError as exc:  # the inputs were fine, the capture is not: still say so in the JSON
        reason = redactor.text(str(exc))
        if args.json is not None:
            failed = Report(status=Status.UNVERIFIED, reasons=[reason], capture=CaptureSummary(str(args.capture)),
                            coverage=coverage_of(identifiers, profile), findings=[], notes=notes)
            write_json(failed, args.json, redactor)
        raise PhonehomeError(reason) from None
    report.notes[:0] = notes
    print(render_console(report, redactor), end="")
    if args.json is not None:
        write_json(report, args.json, redactor)
    return report.exit_code
