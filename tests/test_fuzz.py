"""Fuzzing `phonehome analyze` with mutated and truncated captures (pcap and pcapng) built from a
valid one: every outcome must be an answer (exit 0, 1 or 2 with one line on stderr), never exit 3
and never a traceback, whatever the bytes."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from analyze_kit import write_ids
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.utils import PcapNgWriter, wrpcap

from harness import cli, sample

FORMATS = ("pcap", "pcapng")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seed captures of the 2019 incident in both formats, and the identifiers."""
    directory = tmp_path_factory.mktemp("fuzz")
    packets = sample.incident_packets()
    wrpcap(str(directory / "seed.pcap"), packets, linktype=1)
    with PcapNgWriter(str(directory / "seed.pcapng")) as writer:
        for packet in packets:
            writer.write(packet)
    write_ids(directory / "ids.json")
    return directory


@st.composite
def mutations(draw: st.DrawFn) -> tuple[str, list[tuple[str, int, int, bytes]]]:
    """A seed format and a list of edits (operation, position as a fraction, size, bytes)."""
    edits = []
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "header", "insert", "delete", "truncate"]))
        edits.append((op, draw(st.integers(0, 10_000)), draw(st.integers(1, 64)),
                      draw(st.binary(min_size=1, max_size=64))))
    return draw(st.sampled_from(FORMATS)), edits


def apply(data: bytes, edits: list[tuple[str, int, int, bytes]]) -> bytes:
    buf = bytearray(data)
    for op, where, size, blob in edits:
        if not buf:
            break
        at = where * len(buf) // 10_001
        if op == "flip":
            buf[at] ^= blob[0] or 1
        elif op == "header":  # the length fields of file and record headers are the risky bytes
            at = (4, 8, 12, 16, 20, 24, 32, 36, 40)[where % 9] if where % 2 else at
            buf[at : at + 4] = (blob * 4)[: len(buf[at : at + 4])]
        elif op == "insert":
            buf[at:at] = blob
        elif op == "delete":
            del buf[at : at + size]
        else:
            del buf[at:]
    return bytes(buf)


def run(work: Path, capture: Path) -> tuple[int, str, str, Path]:
    out = work / "case.json"
    out.unlink(missing_ok=True)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(["analyze", str(capture), "--identifiers", str(work / "ids.json"), "--json", str(out)])
    return code, stdout.getvalue(), stderr.getvalue(), out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=mutations())
def test_mutated_captures_get_an_answer(work: Path, case: tuple[str, list[tuple[str, int, int, bytes]]]) -> None:
    fmt, edits = case
    capture = work / f"case.{fmt}"
    capture.write_bytes(apply((work / f"seed.{fmt}").read_bytes(), edits))
    code, stdout, stderr, out = run(work, capture)
    assert code in (0, 1, 2), stderr
    assert "Traceback" not in stdout + stderr
    if stderr:
        assert len(stderr.strip().splitlines()) == 1, stderr
    if out.exists():  # written whenever the inputs were read: it agrees with the exit code
        status = json.loads(out.read_text())["status"]
        assert {"clean": 0, "leak": 1, "unverified": 2}[status] == code


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_seeds_leak(work: Path, fmt: str) -> None:
    code, stdout, stderr, _ = run(work, work / f"seed.{fmt}")
    assert code == 1, stdout + stderr
