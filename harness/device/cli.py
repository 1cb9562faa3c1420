"""`phonehome devices`: the phones adb can see, with state, model, Android version and build.

Serials are masked (a USB phone's adb serial is its hardware serial) unless `--show-serials`.
`--adb-server HOST:PORT` lists a farm host's adb server instead of the local one (repeatable).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from harness.device.adb import Adb
from harness.device.info import device_info
from harness.device.select import DeviceSpec, client_for, list_attached, parse_spec
from harness.errors import DeviceError
from harness.identifiers import mask_serial


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--show-serials", action="store_true",
                        help="print serials unmasked (they are hardware serials for USB phones)")
    parser.add_argument("--adb-server", action="append", default=[], metavar="HOST:PORT",
                        help="list this adb server instead of the local one (repeatable)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    parser.add_argument("--timeout", type=float, default=15.0, metavar="S",
                        help="seconds each adb call may take (default 15)")


def _servers(values: list[str]) -> list[DeviceSpec]:
    if not values:
        return [DeviceSpec("-")]
    servers = []
    for value in values:
        try:
            servers.append(parse_spec(f"-@{value}"))
        except DeviceError:
            raise DeviceError(f"--adb-server {value!r}: expected HOST:PORT (port 1 to 65535)") from None
    return servers


def collect(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for server in _servers(args.adb_server):
        client = client_for(server, timeout=args.timeout)
        for attached in list_attached(client, timeout=args.timeout):
            shown = attached.serial if args.show_serials else mask_serial(attached.serial)
            row: dict[str, Any] = {"serial": shown, "state": attached.state, "server": server.server_label or "local",
                                   "model": attached.model, "android": None, "sdk": None, "build": None,
                                   "type": None, "fingerprint": None}
            if attached.state == "device":
                adb = Adb(client, attached.serial, timeout=args.timeout)
                try:
                    info = device_info(shown, adb.getprops())
                    row.update(model=info.model or attached.model, android=info.release, sdk=info.sdk,
                               build=info.build_id, type=info.build_type, fingerprint=info.fingerprint)
                except DeviceError as exc:
                    row["error"] = str(exc)
            rows.append(row)
    return rows


def run(args: argparse.Namespace) -> int:
    if not args.timeout > 0:
        raise DeviceError(f"--timeout {args.timeout:g}: expected a number of seconds above 0")
    rows = collect(args)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    if not rows:
        print("no device attached", file=sys.stderr)
        return 0
    columns = [("serial", "SERIAL"), ("state", "STATE"), ("model", "MODEL"), ("android", "ANDROID"),
               ("sdk", "API"), ("type", "TYPE"), ("build", "BUILD")]
    if args.adb_server:
        columns.insert(1, ("server", "SERVER"))
    table = [[title for _, title in columns]]
    table += [["-" if row.get(key) in (None, "") else str(row[key]) for key, _ in columns] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return 0
