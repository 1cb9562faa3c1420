"""`phonehome baseline write RUN... -o BASELINE.json`: the destinations a known-good build contacted.

RUN is a per-phone findings.json from a gate run (`--ph-artifacts DIR` holds one per phone in
DIR/<phone>/findings.json) or a `--ph-artifacts` directory. Give the result to the next build's
gate with `--ph-baseline BASELINE.json`: every destination it lacks is a `new-destination` finding.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from harness.errors import ConfigError, PhonehomeError
from harness.gate.baseline import build_baseline


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="baseline_action", metavar="ACTION", parser_class=type(parser))
    write = actions.add_parser("write", help="write a baseline from findings.json files", description=__doc__)
    write.add_argument("runs", nargs="+", type=Path, metavar="RUN",
                       help="a findings.json of a gate run, or a --ph-artifacts directory")
    write.add_argument("-o", "--output", type=Path, required=True, metavar="BASELINE.json", help="where to write it")


def _summaries(paths: list[Path]) -> list[dict[str, Any]]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(path.glob("*/findings.json"))
            if not found:
                raise PhonehomeError(f"{path}: no <phone>/findings.json inside (is it a --ph-artifacts directory?)")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise PhonehomeError(f"{path}: no such file or directory")
    out = []
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(file, exc.lineno, None, f"not JSON ({exc.msg})") from None
        if not isinstance(data, dict) or data.get("version") != 1 or "destinations" not in data:
            raise ConfigError(file, None, "destinations", "not a gate run's findings.json (no destinations)")
        if "captures" not in data:
            raise ConfigError(file, None, "captures", "one scenario's findings: give the phone's findings.json "
                              "(every scenario of the run), or the --ph-artifacts directory")
        if data.get("status") != "clean":
            raise ConfigError(file, None, "status", f"the run is {data.get('status')}: a baseline comes from a "
                              "clean run only")
        out.append(data)
    return out


def run(args: argparse.Namespace) -> int:
    if getattr(args, "baseline_action", None) != "write":
        raise PhonehomeError("baseline: choose an action: write RUN... -o BASELINE.json")
    baseline = build_baseline(_summaries(args.runs))
    text = json.dumps(baseline, indent=2) + "\n"
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise PhonehomeError(f"{args.output}: cannot write ({exc.strerror or exc})") from None
    print(f"baseline for profile {baseline['profile']}: {len(baseline['destinations'])} destination(s) "
          f"written to {args.output}")
    return 0
