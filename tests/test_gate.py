"""The gate end to end: the shipped scenarios run by pytest (pytester, in a subprocess) against
virtual phones on the private adb server, in their own network namespaces, through the real
capture and analyzer. Checks pass/fail per phone, phase attribution, unverified when the capture
cannot see the phone, JUnit and Allure contents, baselines, xdist grouping, and that no artifact
but the owner-only raw captures holds a raw identifier (the project's own matcher reads them all).
"""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.analyzer import analyze
from harness.analyzer.report import Redactor
from harness.identifiers import IdentifierSet
from harness.virtual.spec import load_virtual

PHONES = ("clean", "nokia7plus-fixed", "nokia7plus-2019")
INCIDENT = "zzhc.vnet.cn"


@dataclass
class Run:
    ret: int
    out: str


def run_gate(artifacts: Path, *args: str) -> Run:
    """`pytest --pyargs harness.scenarios` as a user runs it (a subprocess, from a neutral directory;
    `--ph-artifacts DIR` as two words, which xdist workers must read as the main process does)."""
    artifacts.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pytest", "--pyargs", "harness.scenarios", "-p", "no:cacheprovider",
                           "-v", "--ph-artifacts", str(artifacts), *args], cwd=artifacts, capture_output=True,
                          text=True, timeout=900, check=False)
    return Run(done.returncode, done.stdout + done.stderr)


def summary(artifacts: Path, name: str) -> dict[str, Any]:
    return json.loads((artifacts / f"virtual-{name}" / "findings.json").read_text())


def leaked_values(artifacts: Path) -> list[str]:
    """Every artifact that holds a raw identifier of any demo phone, except the owner-only raw captures."""
    redactors = [Redactor(load_virtual(name).identifiers) for name in PHONES]
    bad = []
    for path in sorted(artifacts.rglob("*")):
        if path.is_dir() or (path.suffix == ".pcap" and stat.S_IMODE(path.stat().st_mode) == 0o600):
            continue
        text = path.read_bytes().decode("utf-8", "surrogateescape")
        if any(redactor.text(text) != text for redactor in redactors):
            bad.append(str(path.relative_to(artifacts)))
    return bad


@pytest.fixture(scope="module")
def gate_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of the gate on the three demo phones, three xdist workers, JUnit and Allure on."""
    request.getfixturevalue("netns_available")
    request.getfixturevalue("adb_server")
    artifacts = tmp_path_factory.mktemp("gate") / "artifacts"
    junit = artifacts.parent / "junit.xml"
    allure_dir = artifacts.parent / "allure"
    result = run_gate(artifacts, *[f"--device=virtual:{name}" for name in PHONES], "-n", "3",
                      f"--junitxml={junit}", f"--alluredir={allure_dir}")
    return {"result": result, "artifacts": artifacts, "junit": junit, "allure": allure_dir}


def test_each_phone_gets_the_verdict_its_build_deserves(gate_run: dict[str, Any]) -> None:
    result, artifacts = gate_run["result"], gate_run["artifacts"]
    assert result.ret == 1, result.out[-3000:]
    outcomes: dict[str, set[str]] = defaultdict(set)
    line = r"(PASSED|FAILED|SKIPPED|ERROR) \S+::(test_\w+)\[virtual-([\w-]+)\]"
    for outcome, name, phone in re.findall(line, result.out):
        outcomes[phone].add(f"{name} {outcome}")
    for phone in ("clean", "nokia7plus-fixed"):
        assert not any("FAILED" in o or "ERROR" in o for o in outcomes[phone]), outcomes[phone]
        assert "test_power_up PASSED" in outcomes[phone]
        assert summary(artifacts, phone)["status"] == "clean"
    for scenario in ("test_power_up", "test_screen_activation", "test_lock", "test_connectivity_change",
                     "test_activation_clients_not_installed"):
        assert f"{scenario} FAILED" in outcomes["nokia7plus-2019"]
    assert summary(artifacts, "nokia7plus-2019")["status"] == "leak"


def test_findings_are_attributed_to_the_phase_they_fell_in(gate_run: dict[str, Any]) -> None:
    data = summary(gate_run["artifacts"], "nokia7plus-2019")
    expected = {"power-up": {"power-up"}, "screen-activation": {"screen-on"}, "lock": {"lock"},
                "connectivity-change": {"connectivity-change"}}
    incident = [f for f in data["findings"] if f["host"] == INCIDENT and f["rule"] == "plaintext-identifier"]
    assert incident
    for finding in incident:
        assert finding["phase"] in expected[finding["scenario"]], finding
        assert finding["cycle"] == 1 and finding["encoding"] == ["http-body", "base64", "json"]
    # the sending app, from socket-owner snapshots taken while the capture ran
    assert any(f["app"] == "com.qualcomm.qti.autoregistration" for f in incident)
    kinds = {(f["identifier"], f["slot"]) for f in incident if f["scenario"] == "power-up"}
    assert {("imei", 1), ("imei", 2), ("imsi", 1), ("iccid", 1), ("wifi_mac", None), ("cell_id", None)} <= kinds
    audit = [f for f in data["findings"] if f["rule"] == "activation-package-installed"]
    assert [f["package"] for f in audit] == ["com.qualcomm.qti.autoregistration"]


def test_a_leak_reads_like_a_report(gate_run: dict[str, Any]) -> None:
    out = gate_run["result"].out
    assert "LEAK: virtual-nokia7plus-2019 Nokia 7 plus (Android 9" in out
    assert re.search(r"plaintext-identifier: imei\[1\] …560 in http-body > base64 > json to zzhc\.vnet\.cn:80 "
                     r"\[(app com\.qualcomm\.qti\.autoregistration, )?power-up \(cycle 1\), frame \d+\]", out)
    assert "raw capture (owner-only): " in out
    assert re.search(r"^LEAK\s+virtual-nokia7plus-2019 .* finding\(s\)", out, re.M)
    assert re.search(r"^CLEAN\s+virtual-clean ", out, re.M)


def test_every_phone_stays_on_one_xdist_worker(gate_run: dict[str, Any]) -> None:
    workers: dict[str, set[str]] = defaultdict(set)
    line = r"\[(gw\d+)\] \[ *\d+%\] \w+ \S+\[virtual-([\w-]+)\]"
    for worker, phone in re.findall(line, gate_run["result"].out):
        workers[phone].add(worker)
    assert set(workers) == set(PHONES)
    assert all(len(w) == 1 for w in workers.values()), workers


def test_junit_properties_carry_device_status_and_coverage(gate_run: dict[str, Any]) -> None:
    tree = ET.parse(gate_run["junit"])
    props = {}
    for case in tree.iter("testcase"):
        props[case.get("name")] = {p.get("name"): p.get("value") for p in case.iter("property")}
    leak = props["test_power_up[virtual-nokia7plus-2019]"]
    assert leak["phonehome_status"] == "leak" and int(leak["phonehome_findings"]) >= 7
    assert leak["phonehome_model"] == "Nokia 7 plus" and "nokia_7_plus" in leak["phonehome_build"]
    assert "canary seen" in leak["phonehome_capture"]
    assert props["test_power_up[virtual-clean]"]["phonehome_status"] == "clean"


def test_allure_has_phase_steps_findings_and_failure_evidence(gate_run: dict[str, Any]) -> None:
    results = [json.loads(p.read_text()) for p in gate_run["allure"].glob("*-result.json")]
    power = next(r for r in results if r["name"] == "test_power_up[virtual-nokia7plus-2019]")
    assert power["status"] == "failed"
    assert any(step["name"] == "power-up (cycle 1)" for step in power["steps"])
    names = {a["name"] for a in power["attachments"]}
    assert {"power-up: findings", "power-up: findings JSON", "power-up: capture", "logcat (masked)", "screen"} <= names
    labels = {label["name"]: label["value"] for label in power["labels"]}
    assert labels["device_model"] == "Nokia 7 plus" and labels["market"] == "NO"
    assert {"name": "device_session", "value": "'virtual-nokia7plus-2019'"} in power["parameters"]


def test_no_artifact_but_the_raw_captures_holds_an_identifier(gate_run: dict[str, Any]) -> None:
    artifacts = gate_run["artifacts"]
    assert leaked_values(artifacts) == []
    assert leaked_values(gate_run["allure"]) == []
    assert leaked_values(gate_run["junit"].parent) == []
    out = gate_run["result"].out
    assert all(Redactor(load_virtual(n).identifiers).text(out) == out for n in PHONES)
    raw = artifacts / "virtual-nokia7plus-2019" / "power-up.pcap"
    assert stat.S_IMODE(raw.stat().st_mode) == 0o600
    ids = load_virtual("nokia7plus-2019").identifiers
    assert analyze(raw, IdentifierSet(dict(ids.values))).status == "leak"  # the raw capture does hold the leak


def test_baseline_written_from_a_clean_run_then_a_new_destination_fails(
        gate_run: dict[str, Any], tmp_path: Path) -> None:
    artifacts = gate_run["artifacts"]
    baseline = tmp_path / "baseline.json"
    def write(run: Path, out: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "harness", "baseline", "write", str(run), "-o", str(out)],
                              capture_output=True, text=True, check=False)

    made = write(artifacts / "virtual-clean" / "findings.json", baseline)
    assert made.returncode == 0, made.stderr
    data = json.loads(baseline.read_text())
    assert data["kind"] == "phonehome-baseline" and data["profile"] == "clean" and data["destinations"]
    assert not any("canary" in str(d["host"]) for d in data["destinations"])
    refused = write(artifacts / "virtual-nokia7plus-2019" / "findings.json", tmp_path / "x.json")
    assert refused.returncode == 2 and "clean run only" in refused.stderr

    same = run_gate(tmp_path / "again", "--device=virtual:clean", f"--ph-baseline={baseline}",
                    "-k", "power_up or no_new_destinations")
    assert same.ret == 0, same.out[-2000:]
    data["destinations"] = [d for d in data["destinations"] if d["host"] != "connectivitycheck.gstatic.com"]
    assert len(data["destinations"]) < len(json.loads(baseline.read_text())["destinations"])
    baseline.write_text(json.dumps(data))
    new = run_gate(tmp_path / "third", "--device=virtual:clean", f"--ph-baseline={baseline}",
                   "-k", "power_up or no_new_destinations")
    assert new.ret == 1
    assert "new destination(s) compared with" in new.out
    assert "new-destination: connectivitycheck.gstatic.com:80/tcp is not in the baseline" in new.out


def test_a_capture_that_cannot_see_the_phone_is_unverified_not_clean(
        netns_available: None, adb_server: dict[str, str], tmp_path: Path) -> None:
    """The canary never shows up when the capture listens where the phone's traffic is not."""
    ns = f"phtest-blind-{tmp_path.name[-6:]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "blind0", "type", "veth", "peer", "name", "blind1"], check=True)
        for end in ("blind0", "blind1"):
            subprocess.run(["ip", "-n", ns, "link", "set", end, "up"], check=True)
        result = run_gate(tmp_path / "art", "--device=virtual:clean", f"--ph-capture=gateway:blind0@{ns}",
                          "-k", "screen_activation")
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert result.ret == 1
    assert "UNVERIFIED (not proven clean; no leak was seen): virtual-clean" in result.out
    assert "the canary marker was not seen" in result.out
    data = json.loads((tmp_path / "art" / "virtual-clean" / "findings.json").read_text())
    assert data["status"] == "unverified" and data["findings"] == []


def test_a_phone_that_never_finishes_booting_is_unverified_with_the_evidence(
        netns_available: None, adb_server: dict[str, str], tmp_path: Path) -> None:
    result = run_gate(tmp_path / "art", "--device=virtual:clean", "--ph-boot-timeout=1", "-k", "power_up")
    assert result.ret == 1
    assert "UNVERIFIED (not proven clean; no leak was seen): virtual-clean" in result.out
    assert "power-up (cycle 1) could not be completed" in result.out and "sys.boot_completed stayed unset" in result.out
    assert "Traceback" not in result.out
    data = json.loads((tmp_path / "art" / "virtual-clean" / "findings.json").read_text())
    assert data["status"] == "unverified" and any("infrastructure, not a finding" in r for r in data["reasons"])


def test_demo_command_keeps_its_promise(netns_available: None, tmp_path: Path) -> None:
    """`phonehome demo` as README's first command runs it: its own private adb server, three phones."""
    done = subprocess.run([sys.executable, "-m", "harness", "demo", "--artifacts", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "phonehome demo: OK" in done.stdout
    assert re.search(r"nokia7plus-2019\s+LEAK .*zzhc\.vnet\.cn as http-body > base64 > json, in power-up, "
                     r"screen-on, .*lock", done.stdout)
    assert leaked_values(tmp_path / "demo") == []


def test_demo_expectations_fail_a_gate_that_missed_the_incident() -> None:
    from harness.demo import expectations

    clean = {"status": "clean", "findings": []}
    leak = {"status": "leak", "findings": [
        {"rule": "plaintext-identifier", "host": INCIDENT, "phase": phase, "encoding": ["http-body", "base64", "json"]}
        for phase in ("power-up", "screen-on", "lock")]}
    assert expectations({"clean": clean, "nokia7plus-fixed": clean, "nokia7plus-2019": leak}) == []
    assert expectations({"clean": clean, "nokia7plus-fixed": clean, "nokia7plus-2019": clean}) != []
    missed_lock = {**leak, "findings": leak["findings"][:2]}
    assert expectations({"clean": clean, "nokia7plus-fixed": clean, "nokia7plus-2019": missed_lock}) == [
        "nokia7plus-2019: no finding for zzhc.vnet.cn in lock"]
    assert expectations({"clean": leak, "nokia7plus-fixed": clean, "nokia7plus-2019": leak}) == [
        "clean should pass the gate, it is leak"]


def test_a_custom_scenario_is_held_to_the_gate(netns_available: None, adb_server: dict[str, str],
                                               tmp_path: Path) -> None:
    """A user's own scenario: declared phases must run, and one that never asserts cannot pass a dirty phone."""
    (tmp_path / "test_mine.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.phonehome_phases('screen-on', 'lock')\n"
        "def test_declares_lock_but_never_locks(recording):\n"
        "    recording.screen_on()\n"
        "    recording.stop()\n\n"
        "def test_never_asserts(recording, device):\n"
        "    device.lock()\n"
        "    recording.screen_on()\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", str(tmp_path / "test_mine.py"),
                           "--device=virtual:nokia7plus-2019", f"--ph-artifacts={tmp_path / 'art'}", "--ph-dwell=1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert "declared phase(s) never ran: lock" in out
    teardown = r"ERROR at teardown of test_never_asserts.*\n(.*\n)*LEAK: virtual-nokia7plus-2019"
    assert re.search(teardown, out), out[-3000:]


def test_phone_clock_segments_move_packets_to_host_time() -> None:
    from harness.gate.timeline import to_host

    segments = [(100.0, 5.0), (200.0, 50.0)]  # the phone's clock jumped 45 s across a reboot at host 200
    assert to_host(106.0, segments) == 101.0
    assert to_host(240.0, segments) == 235.0  # before the reboot: the old offset
    assert to_host(260.0, segments) == 210.0  # after it: the new one
    assert to_host(7.0, [(0.0, 0.0), (100.0, 3.0)]) == 7.0
    assert to_host(1000.0, []) == 1000.0
