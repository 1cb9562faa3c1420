"""The plugin's options and ini keys, through pytester (a real pytest run in a temp dir)."""

from __future__ import annotations

import pytest

SHOW = """
from harness.plugin import OPTIONS_KEY

def test_show(request):
    opts = request.config.stash[OPTIONS_KEY]
    print("OPTS", opts.devices, opts.capture, opts.cycles, opts.dwell, opts.boot_timeout, opts.profile)
"""


def test_defaults_and_values(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SHOW)
    result = pytester.runpytest("-s", "--device", "virtual:clean", "--device", "ABC123@farm1:5037",
                                "--ph-capture", "gateway:eth1", "--ph-cycles", "3", "--ph-dwell", "2.5")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*OPTS ('virtual:clean', 'ABC123@farm1:5037') gateway:eth1 3 2.5 300 None*"])


def test_ini_keys(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SHOW)
    pytester.makeini("[pytest]\nphonehome_device =\n    virtual:clean\nphonehome_cycles = 2\n"
                     "phonehome_capture = device\nphonehome_profile = clean\n")
    result = pytester.runpytest("-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*OPTS ('virtual:clean',) device 2 None 300 clean*"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ph-cycles", "zero"], "*--ph-cycles: expected a whole number, got 'zero'*"),
        (["--ph-cycles", "0"], "*--ph-cycles: must be at least 1*"),
        (["--ph-dwell", "-1"], "*--ph-dwell: must be at least 0*"),
        (["--ph-boot-timeout", "soon"], "*--ph-boot-timeout: expected a number of seconds*"),
        (["--ph-capture", "wifi"], "*--ph-capture 'wifi': expected gateway*"),
        (["--ph-capture", "file:/nonexistent.pcap"], "*no such capture file*"),
        (["--ph-baseline", "/nonexistent.json"], "*--ph-baseline*no such file*"),
        (["--device", "a b"], "*--device 'a b': expected SERIAL*"),
        (["--device", "X1", "--device", "X1"], "*the same phone is named twice*"),
    ],
)
def test_bad_values_are_usage_errors(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makepyfile(SHOW)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()
