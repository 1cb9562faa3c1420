"""`phonehome analyze` end to end: the real console script and `python -m harness` on captures built
here, exit codes 0/1/2 by DESIGN.md's table, every bad input as one line, and masking."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from analyze_kit import (
    IDS,
    PHONE,
    ROOT,
    SERIAL,
    adb_packets,
    canary_packets,
    clean_packets,
    raw_identifier_hits,
    run_cli,
    write_ids,
    write_pcap,
)

from harness import cli, sample
from harness.analyzer import command

CONTRACT_KEYS = {"version", "status", "reasons", "capture", "coverage", "findings"}
CAPTURE_KEYS = {"path", "frames", "bytes", "first", "last", "truncated", "canary", "blind_windows",
                "excluded_flows", "evicted_bytes"}
FINDING_KEYS = {"rule", "identifier", "slot", "host", "dst", "dport", "proto", "frames", "encoding", "time",
                "evidence", "guess"}


@pytest.fixture(scope="module")
def incident(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The sample capture, written by the real `phonehome sample-capture`."""
    directory = tmp_path_factory.mktemp("sample")
    done = run_cli("sample-capture", directory)
    assert done.returncode == 0, done.stderr
    return directory / sample.CAPTURE_NAME, directory / sample.IDS_NAME


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_sample_capture_files_are_owner_only(incident: tuple[Path, Path]) -> None:
    for path in incident:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(incident[1].read_text())["imei"] == sample.IDENTIFIERS["imei"]


def test_incident_is_a_leak_with_the_contract_json(incident: tuple[Path, Path], tmp_path: Path) -> None:
    capture, ids = incident
    out = tmp_path / "findings.json"
    done = run_cli("analyze", capture, "--identifiers", ids, "--json", out)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout.startswith("phonehome: LEAK (exit 1)")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    report = json.loads(out.read_text())
    assert set(report) >= CONTRACT_KEYS and report["version"] == 1 and report["status"] == "leak"
    assert set(report["capture"]) >= CAPTURE_KEYS and report["capture"]["path"] == str(capture)
    assert report["capture"]["truncated"] is False and report["capture"]["canary"] is None
    assert report["coverage"]["imei"] == "read" and report["coverage"]["msisdn"] == "unknown"
    frames = report["capture"]["frames"]
    for finding in report["findings"]:
        assert set(finding) >= FINDING_KEYS
        assert finding["frames"] and all(1 <= n <= frames for n in finding["frames"])
    plain = {(f["identifier"], f["slot"]) for f in report["findings"] if f["rule"] == "plaintext-identifier"}
    assert plain == {("imei", 1), ("imei", 2), ("iccid", 1), ("imsi", 1), ("cell_id", None), ("wifi_mac", None)}
    imei = next(f for f in report["findings"] if f["identifier"] == "imei" and f["slot"] == 1)
    assert imei["encoding"] == ["http-body", "base64", "json"]
    assert (imei["host"], imei["dst"], imei["dport"], imei["proto"]) == ("zzhc.vnet.cn", sample.ZZHC_IP, 80, "tcp")
    assert imei["evidence"] == "imei[1] …110 in http-body > base64 > json to zzhc.vnet.cn:80"
    contacts = [f for f in report["findings"] if f["rule"] == "unapproved-activation-client"]
    assert sorted(f["contact"] for f in contacts) == ["attempted", "connection"]
    assert {f["catalog"] for f in contacts} == {"china-telecom-zzhc"}
    assert {f["country"] for f in contacts} == {"CN"}


def test_python_m_harness_gives_the_same_answer(incident: tuple[Path, Path], tmp_path: Path) -> None:
    capture, ids = incident
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    first = run_cli("analyze", capture, "--identifiers", ids, "--json", a)
    second = run_cli("analyze", capture, "--identifiers", ids, "--json", b, module=True)
    assert first.returncode == second.returncode == 1
    assert json.loads(a.read_text()) == json.loads(b.read_text())
    assert first.stdout == second.stdout


def test_no_output_holds_a_raw_identifier(incident: tuple[Path, Path], tmp_path: Path) -> None:
    capture, ids = incident
    out = tmp_path / "f.json"
    for extra in ([], ["--guess"]):
        done = run_cli("analyze", capture, "--identifiers", ids, "--json", out, *extra)
        assert done.returncode == 1
        for text in (done.stdout, done.stderr, out.read_text()):
            assert raw_identifier_hits(text) == []
        assert "imei[2] …128" in done.stdout  # masked, not missing
    guessed = run_cli("analyze", capture, "--json", out)  # guesses: values the analyzer found itself
    assert guessed.returncode == 1
    for text in (guessed.stdout, out.read_text()):
        assert raw_identifier_hits(text) == []


def test_a_host_name_built_from_an_identifier_is_masked(tmp_path: Path) -> None:
    imei = IDS["imei"][0]
    clock = [sample.START]
    name = f"{imei}.track.example.com"
    packets = sample.dns_exchange(name, "93.184.216.34", 36100, clock)
    packets += sample.tls_session(name, "93.184.216.34", 40300, clock)  # the SNI names the flow's host
    capture = write_pcap(tmp_path / "dnsleak.pcap", packets)
    out = tmp_path / "f.json"
    done = run_cli("analyze", capture, "--identifiers", write_ids(tmp_path / "ids.json"), "--json", out)
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert any(f["encoding"][0] == "dns-qname" and f["identifier"] == "imei" for f in report["findings"])
    sni = next(f for f in report["findings"] if f["encoding"][0] == "tls-sni")
    assert sni["host"] == "‹imei[1]›.track.example.com"
    for text in (done.stdout, out.read_text()):
        assert raw_identifier_hits(text) == []


def test_clean_capture_exits_0(tmp_path: Path) -> None:
    capture = write_pcap(tmp_path / "clean.pcap", clean_packets())
    out = tmp_path / "f.json"
    done = run_cli("analyze", capture, "--identifiers", write_ids(tmp_path / "ids.json"), "--json", out)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert (report["status"], report["reasons"], report["findings"]) == ("clean", [], [])
    assert done.stdout.startswith("phonehome: CLEAN (exit 0)")


def test_without_identifiers_guess_is_implied_and_said(incident: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "f.json"
    done = run_cli("analyze", incident[0], "--json", out)
    assert done.returncode == 1
    assert "--guess implied" in done.stdout
    report = json.loads(out.read_text())
    assert any("--guess implied" in note for note in report["notes"])
    guesses = {(f["identifier"], f["guess"]) for f in report["findings"] if f["rule"] == "plaintext-identifier"}
    assert {("imei", True), ("iccid", True)} <= guesses
    assert set(report["coverage"].values()) == {"unknown"}


def test_exclude_drops_the_harness_own_adb_flow(tmp_path: Path) -> None:
    clock = [sample.START]
    packets = clean_packets() + adb_packets(clock)
    packets.sort(key=lambda p: float(p.time))
    capture = write_pcap(tmp_path / "adb.pcap", packets)
    ids = write_ids(tmp_path / "ids.json")
    seen = run_cli("analyze", capture, "--identifiers", ids)
    assert seen.returncode == 1, seen.stdout
    assert "serial …519" in seen.stdout and SERIAL not in seen.stdout
    out = tmp_path / "f.json"
    excluded = run_cli("analyze", capture, "--identifiers", ids, "--exclude", f"{PHONE}:5555", "--json", out)
    assert excluded.returncode == 0, excluded.stdout + excluded.stderr
    assert "excluded flows: 1" in excluded.stdout
    assert json.loads(out.read_text())["capture"]["excluded_flows"] == 1


@pytest.mark.parametrize(("marker", "code"), [("ph7f3a9c21", 0), ("phdeadbeef", 2)])
def test_canary_seen_or_not(tmp_path: Path, marker: str, code: int) -> None:
    clock = [sample.START + 10]
    capture = write_pcap(tmp_path / "canary.pcap", clean_packets() + canary_packets("ph7f3a9c21", clock))
    out = tmp_path / "f.json"
    done = run_cli("analyze", capture, "--identifiers", write_ids(tmp_path / "ids.json"), "--canary", marker,
                   "--json", out)
    assert done.returncode == code, done.stdout + done.stderr
    canary = json.loads(out.read_text())["capture"]["canary"]
    assert canary["marker_seen"] is (code == 0)
    if code == 0:
        frames = canary["frames"]
        assert frames == [len(clean_packets()) + 1]
    else:
        assert "canary" in done.stdout and "UNVERIFIED" in done.stdout


def test_truncated_capture_is_analysed_and_says_so(incident: tuple[Path, Path], tmp_path: Path) -> None:
    data = incident[0].read_bytes()
    cut = tmp_path / "killed.pcap"
    cut.write_bytes(data[:-20])  # the last record loses its tail, as when tcpdump is killed
    out = tmp_path / "f.json"
    done = run_cli("analyze", cut, "--identifiers", incident[1], "--json", out)
    assert done.returncode == 1, done.stdout + done.stderr  # the POST is intact: still a leak
    report = json.loads(out.read_text())
    assert report["capture"]["truncated"] is True and report["status"] == "leak"
    assert "truncated: yes" in done.stdout
    clean = tmp_path / "clean-killed.pcap"
    clean.write_bytes(write_pcap(tmp_path / "c.pcap", clean_packets()).read_bytes()[:-7])
    done = run_cli("analyze", clean, "--identifiers", incident[1], "--json", out)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(out.read_text())["capture"]["truncated"] is True


def test_required_identifier_unknown_is_unverified(tmp_path: Path) -> None:
    capture = write_pcap(tmp_path / "clean.pcap", clean_packets())
    ids = write_ids(tmp_path / "ids.json", {"imei": IDS["imei"]})
    profile = tmp_path / "sku.yaml"
    profile.write_text('market: "NO"\n')
    done = run_cli("analyze", capture, "--identifiers", ids, "--profile", profile)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "required identifiers unknown: imsi, iccid, wifi_mac" in done.stdout
    without_profile = run_cli("analyze", capture, "--identifiers", ids)
    assert without_profile.returncode == 0  # no profile: nothing is required


def test_profile_identifiers_merge_and_count_as_profile(tmp_path: Path) -> None:
    capture = write_pcap(tmp_path / "clean.pcap", clean_packets())
    ids = write_ids(tmp_path / "ids.json", {"imei": IDS["imei"]})
    profile = tmp_path / "sku.yaml"
    profile.write_text('market: "NO"\nidentifiers:\n  imsi: ["242016000012345"]\n  iccid: ["8947080012345678900"]\n'
                       '  wifi_mac: ["a4:d9:90:3c:5e:71"]\n')
    out = tmp_path / "f.json"
    done = run_cli("analyze", capture, "--identifiers", ids, "--profile", profile, "--json", out)
    assert done.returncode == 0, done.stdout + done.stderr
    coverage = json.loads(out.read_text())["coverage"]
    assert (coverage["imei"], coverage["imsi"], coverage["serial"]) == ("read", "profile", "unknown")


def test_approved_activation_endpoint_is_not_a_finding(incident: tuple[Path, Path], tmp_path: Path) -> None:
    profile = tmp_path / "cn.yaml"
    profile.write_text('market: CN\napproved:\n  - catalog: china-telecom-zzhc\n')
    out = tmp_path / "f.json"
    done = run_cli("analyze", incident[0], "--identifiers", incident[1], "--profile", profile, "--json", out)
    rules = {f["rule"] for f in json.loads(out.read_text())["findings"]}
    assert done.returncode == 1 and rules == {"plaintext-identifier"}  # approved, but still plaintext


# --- bad input: one line on stderr, exit 2 -------------------------------------------------------


def test_missing_capture(tmp_path: Path) -> None:
    out = tmp_path / "f.json"
    done = run_cli("analyze", tmp_path / "nope.pcap", "--identifiers", write_ids(tmp_path / "i.json"), "--json", out)
    assert done.returncode == 2
    assert "nope.pcap" in one_line(done.stderr)
    report = json.loads(out.read_text())  # inputs were read: the JSON still says why
    assert report["status"] == "unverified" and "nope.pcap" in report["reasons"][0]


def test_missing_sockets_file(tmp_path: Path) -> None:
    capture = tmp_path / "c.pcap"
    capture.write_bytes(b"")
    done = run_cli("analyze", capture, "--sockets", tmp_path / "c.pcap.sockets.json")
    assert done.returncode == 2
    assert one_line(done.stderr).endswith("c.pcap.sockets.json: no such file")


def test_not_a_capture(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.pcap"
    bogus.write_text("this is a text file, not a capture\n" * 20)
    done = run_cli("analyze", bogus)
    assert done.returncode == 2
    assert "notes.pcap" in one_line(done.stderr)


def test_empty_capture_is_unverified(tmp_path: Path) -> None:
    empty = write_pcap(tmp_path / "empty.pcap", [])
    out = tmp_path / "f.json"
    done = run_cli("analyze", empty, "--identifiers", write_ids(tmp_path / "i.json"), "--json", out)
    assert done.returncode == 2, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["status"] == "unverified" and report["capture"]["frames"] == 0
    assert any("no packets" in reason for reason in report["reasons"])
    assert "Traceback" not in done.stderr


def test_malformed_ids_json(tmp_path: Path) -> None:
    capture = write_pcap(tmp_path / "c.pcap", clean_packets())
    ids = tmp_path / "ids.json"
    ids.write_text('{\n  "imei": ["358240051111110",]\n}\n')
    done = run_cli("analyze", capture, "--identifiers", ids)
    assert done.returncode == 2
    assert f"{ids}:2" in one_line(done.stderr)


def test_imei_with_letters(tmp_path: Path) -> None:
    capture = write_pcap(tmp_path / "c.pcap", clean_packets())
    ids = tmp_path / "ids.json"
    ids.write_text('{\n  "imsi": ["242016000012345"],\n  "imei": ["35824005111111X"]\n}\n')
    done = run_cli("analyze", capture, "--identifiers", ids)
    assert done.returncode == 2
    line = one_line(done.stderr)
    assert f"{ids}:3: imei[0]:" in line and "35824005111111X" not in line


def test_bad_profile_names_file_line_field(tmp_path: Path) -> None:
    capture = write_pcap(tmp_path / "c.pcap", clean_packets())
    profile = tmp_path / "bad.yaml"
    profile.write_text('market: "NO"\napproved:\n  - catalog: china-telecom-zzhc\n    colour: red\n')
    done = run_cli("analyze", capture, "--profile", profile)
    assert done.returncode == 2
    assert f"{profile}:4: approved[0].colour: unknown key" in one_line(done.stderr)


@pytest.mark.parametrize("args", [
    ["--exclude", "phone:5555"],
    ["--exclude", "10.0.0.1:99999"],
    ["--bogus-option"],
    ["--profile", "no-such-profile"],
    ["--canary", "gstatic"],  # in this (clean) capture, as in most: seeing it proves nothing
    ["--canary", ""],
    ["--canary", " ph7f3a9c21"],
])
def test_bad_arguments(tmp_path: Path, args: list[str]) -> None:
    capture = write_pcap(tmp_path / "c.pcap", clean_packets())
    done = run_cli("analyze", capture, *args)
    assert done.returncode == 2
    one_line(done.stderr)


def test_unwritable_json_output(tmp_path: Path) -> None:
    capture = write_pcap(tmp_path / "c.pcap", clean_packets())
    done = run_cli("analyze", capture, "--json", tmp_path / "missing-dir" / "f.json")
    assert done.returncode == 2
    assert "f.json" in one_line(done.stderr)


# --- internal errors: exit 3, one line, traceback saved owner-only --------------------------------


def test_internal_error_handler_saves_the_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    table: dict[str, int] = {}
    try:
        table["missing"]  # a real bug, raised and caught
    except KeyError as exc:
        code = cli.internal_error(exc)
    assert code == 3
    line = one_line(capsys.readouterr().err)
    assert "internal error (KeyError)" in line and "'missing'" not in line
    path = Path(line.rsplit("traceback saved to ", 1)[1])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "KeyError: 'missing'" in path.read_text()
    path.unlink()


def test_main_routes_a_bug_to_exit_3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    def broken(_args: object) -> int:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(command, "run", broken)
    capture = write_pcap(tmp_path / "c.pcap", clean_packets())
    assert cli.main(["analyze", str(capture)]) == 3
    line = one_line(capsys.readouterr().err)
    Path(line.rsplit("traceback saved to ", 1)[1]).unlink()


def test_redactor_masks_every_form_but_not_bare_short_numbers() -> None:
    from harness.analyzer.report import Redactor
    from harness.identifiers import IdentifierSet

    ids = IdentifierSet.from_mapping({"imei": [IDS["imei"][0]], "cell_id": ["4711"],
                                      "wifi_mac": ["a4:d9:90:3c:5e:71"]}, "test")
    redactor = Redactor(ids)
    assert redactor.text(f"host {IDS['imei'][0]}.x.example and A4-D9-90-3C-5E-71") == \
        "host ‹imei[1]›.x.example and ‹wifi_mac›"
    assert redactor.text("frames 4711") == "frames 4711"
    assert redactor.text('{"cid": 4711}') == '{"cid": ‹cell_id›}'
    assert redactor.value({"a": [f"x{IDS['imei'][0][:14]}y", 4711]}) == {"a": ["x‹imei[1]›y", 4711]}


def test_readme_documents_every_rule_and_encoding_value() -> None:
    """README's enumeration is the one users read: every value the findings can hold is in it."""
    from harness.analyzer.model import Encoding, Rule

    readme = (ROOT / "README.md").read_text()
    missing = [value for value in [*map(str, Rule), *map(str, Encoding)] if f"`{value}`" not in readme]
    assert missing == []
