"""`phonehome demo`: the gate on three virtual phones, the 2019 incident among them.

Starts virtual phones `clean`, `nokia7plus-fixed` and `nokia7plus-2019` (each in its own network
namespaces, on a private adb server, never the user's on 5037), runs the shipped scenarios on
them exactly as `pytest --pyargs harness.scenarios --device virtual:NAME` does, prints pytest's
report, then checks the outcome: exit 0 only when `clean` and `nokia7plus-fixed` passed and
`nokia7plus-2019` failed with findings for zzhc.vnet.cn in power-up, screen-on and lock, the
Base64 chain shown. Needs root (network namespaces) and tcpdump.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness.device.server import private_adb_server
from harness.errors import PhonehomeError
from harness.profile import PHASES

PHONES = ("clean", "nokia7plus-fixed", "nokia7plus-2019")
INCIDENT_HOST = "zzhc.vnet.cn"
INCIDENT_PHASES = ("power-up", "screen-on", "lock")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifacts", type=Path, default=None, metavar="DIR",
                        help="where captures, findings JSON, JUnit XML and Allure results go (default: a new temp dir)")
    parser.add_argument("--workers", type=int, default=len(PHONES), metavar="N",
                        help=f"phones driven in parallel with pytest-xdist (default {len(PHONES)}; 0: one by one)")


def _check_host() -> None:
    if os.geteuid() != 0:
        raise PhonehomeError("phonehome demo needs root: each virtual phone gets its own network namespaces")
    missing = [tool for tool in ("ip", "tcpdump") if shutil.which(tool) is None]
    if missing:
        raise PhonehomeError(f"phonehome demo needs {' and '.join(missing)} (Debian: apt-get install iproute2 tcpdump)")


def expectations(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """What the demo promises, each unmet promise as one line (empty: the gate did its job)."""
    problems = []
    for name in ("clean", "nokia7plus-fixed"):
        status = summaries.get(name, {}).get("status", "missing")
        if status != "clean":
            problems.append(f"{name} should pass the gate, it is {status}")
    incident = summaries.get("nokia7plus-2019", {})
    if incident.get("status") != "leak":
        problems.append(f"nokia7plus-2019 should leak, it is {incident.get('status', 'missing')}")
    findings = [f for f in incident.get("findings", []) if f.get("host") == INCIDENT_HOST]
    for phase in INCIDENT_PHASES:
        if not any(f.get("phase") == phase for f in findings):
            problems.append(f"nokia7plus-2019: no finding for {INCIDENT_HOST} in {phase}")
    if not any("base64" in f.get("encoding", []) and f.get("rule") == "plaintext-identifier" for f in findings):
        problems.append(f"nokia7plus-2019: no identifier found inside Base64 sent to {INCIDENT_HOST}")
    return problems


def _verdict(name: str, data: dict[str, Any]) -> str:
    findings = data.get("findings", [])
    line = f"  {name:<18} {str(data.get('status', 'missing')).upper():<11} {len(findings)} finding(s)"
    incident = [f for f in findings if f.get("host") == INCIDENT_HOST and f.get("rule") == "plaintext-identifier"]
    if incident:
        phases = [p for p in PHASES if any(f.get("phase") == p for f in incident)]
        chain = " > ".join(incident[0].get("encoding", []))
        kinds = sorted({f"{f['identifier']}" for f in incident if f.get("identifier")})
        line += f": {', '.join(kinds)} to {INCIDENT_HOST} as {chain}, in {', '.join(phases)}"
    return line


def run(args: argparse.Namespace) -> int:
    _check_host()
    if args.workers < 0:
        raise PhonehomeError(f"--workers {args.workers}: expected 0 or more")
    artifacts = (args.artifacts or Path(tempfile.mkdtemp(prefix="phonehome-demo-"))).resolve()
    if artifacts.exists() and not artifacts.is_dir():
        raise PhonehomeError(f"--artifacts {artifacts}: exists and is not a directory")
    artifacts.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pytest", "--pyargs", "harness.scenarios", "-p", "no:cacheprovider",
               f"--ph-artifacts={artifacts}", f"--junitxml={artifacts / 'junit.xml'}",
               f"--alluredir={artifacts / 'allure-results'}", "-q", "-rN"]
    command += [f"--device=virtual:{name}" for name in PHONES]
    if args.workers:
        command += ["-n", str(args.workers)]
    with private_adb_server(os.environ.get("ADBUTILS_ADB_PATH"), timeout=60) as server:
        print(f"phonehome demo: the gate on virtual phones {', '.join(PHONES)} (private adb server on port "
              f"{server['ANDROID_ADB_SERVER_PORT']})", flush=True)
        pytest_exit = subprocess.run(command, env={**os.environ, **server}, cwd=artifacts, check=False).returncode
    summaries = {}
    for name in PHONES:
        path = artifacts / f"virtual-{name}" / "findings.json"
        if path.is_file():
            summaries[name] = json.loads(path.read_text(encoding="utf-8"))
    print("\nphonehome demo: the gate's verdicts")
    for name in PHONES:
        print(_verdict(name, summaries.get(name, {})))
    problems = expectations(summaries)
    if pytest_exit not in (0, 1):
        problems.append(f"pytest itself exited {pytest_exit} (not a test failure: see its output above)")
    print(f"  evidence: {artifacts} (findings.json per phone, junit.xml, allure-results/; raw captures owner-only)")
    if problems:
        print("phonehome demo: FAILED, the gate did not do its job:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    print("phonehome demo: OK: the clean and fixed builds pass; the 2019 build is stopped with evidence")
    return 0
