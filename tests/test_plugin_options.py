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
        (["--device", "a b"], "*--device * expected SERIAL*"),
        (["--device", "X1", "--device", "X1"], "*the same phone is named twice*"),
    ],
)
def test_bad_values_are_usage_errors(pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makepyfile(SHOW)
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()


def test_bad_profile_and_baseline_name_file_line_field(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(SHOW)
    pytester.makefile(".yaml", sku="market: NO\ncolour: red\n")
    result = pytester.runpytest("--ph-profile", str(pytester.path / "sku.yaml"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*sku.yaml:2: colour: unknown key*"])
    pytester.makefile(".json", base='{"version": 1,\n "kind": "phonehome-baseline",\n "destinations": 3}\n')
    result = pytester.runpytest("--ph-baseline", str(pytester.path / "base.json"))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*base.json:3: destinations: expected a list*"])
    assert "Traceback" not in result.stderr.str()


GATE_TEST = """
import pytest

@pytest.mark.phonehome_phases({phases})
def test_gate(device_session):
    pass
"""


def test_phase_marker_is_checked_at_collection(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(GATE_TEST.format(phases='"screen-on", "nap"'))
    result = pytester.runpytest("--device", "virtual:clean", "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*phonehome_phases takes phase names*got nap*"])


def test_each_phone_is_one_parametrization_with_a_readable_id(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(GATE_TEST.format(phases='"lock"'))
    pytester.makeini("[pytest]\nphonehome_device =\n    virtual:clean\n    virtual:nokia7plus-2019\n")
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["*test_gate[[]virtual-clean[]]", "*test_gate[[]virtual-nokia7plus-2019[]]"])


def test_no_phone_is_one_usage_error(pytester: pytest.Pytester, empty_adb_server: dict[str, str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANDROID_SERIAL", raising=False)
    pytester.makepyfile(GATE_TEST.format(phases='"lock"'))
    result = pytester.runpytest_subprocess("--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no phone to gate*give --device SERIAL*"])


def test_a_phone_not_attached_is_unverified_and_named_masked(pytester: pytest.Pytester,
                                                             empty_adb_server: dict[str, str]) -> None:
    pytester.makepyfile(GATE_TEST.format(phases='"lock"'))
    result = pytester.runpytest_subprocess("--device", "R58M123456", "--device", "R58M999456",
                                           "--ph-capture=gateway:eth9", f"--ph-artifacts={pytester.path / 'art'}")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["*test_gate[[]serial...456-*[]]*", "*UNVERIFIED (not proven clean; no leak was "
                                 "seen): serial...456-*: the phone could not be opened: device serial …456 not found*"])
    output = result.stdout.str() + result.stderr.str()
    assert "R58M123456" not in output and "R58M999456" not in output
    assert sorted(p.name[:13] for p in (pytester.path / "art").iterdir()) == ["serial...456-"] * 2  # no collision


def test_every_option_is_also_a_fixture(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("""
        def test_fixtures(phonehome_devices, phonehome_profile, phonehome_capture, phonehome_cycles,
                          phonehome_dwell, phonehome_boot_timeout, phonehome_artifacts, phonehome_baseline):
            print("FIX", phonehome_devices, phonehome_profile, phonehome_capture, phonehome_cycles,
                  phonehome_dwell, phonehome_boot_timeout, phonehome_artifacts.name, phonehome_baseline)
    """)
    result = pytester.runpytest("-s", "--device", "virtual:clean", "--ph-profile", "clean", "--ph-cycles", "2",
                                "--ph-dwell", "0.5", "--ph-artifacts", "out")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*FIX ('virtual:clean',) clean None 2 0.5 300 out None*"])


@pytest.mark.parametrize(("args", "message"), [
    (["--device", "R58M123456"], "*no capture backend chosen*"),
    (["--device", "10.0.0.7:5555", "--ph-profile", "nokia7plus-2019"], "*gateway capture: which interface*"),
    (["--device", "virtual:nosuch"], "*nosuch: no profile of that name*"),
    (["--device", "127.0.0.1:99999"], "*port 99999 is not 1 to 65535*"),
])
def test_setup_a_phone_cannot_work_with_is_a_usage_error_before_it_is_touched(
        pytester: pytest.Pytester, args: list[str], message: str) -> None:
    pytester.makepyfile(GATE_TEST.format(phases='"lock"'))
    result = pytester.runpytest_subprocess(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str() and "R58M123456" not in result.stderr.str()


def test_a_bad_adb_port_variable_is_a_usage_error_only_when_a_phone_is_asked_for(
        pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """adbutils reads ANDROID_ADB_SERVER_PORT when imported, and the plugin is loaded into every
    pytest run: a fresh interpreter (subprocess) shows that import no longer crashes pytest."""
    pytester.makepyfile("def test_unrelated():\n    assert True\n")
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", "abc")
    unrelated = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    unrelated.assert_outcomes(passed=1, warnings=1)
    unrelated.stdout.fnmatch_lines(["*ANDROID_ADB_SERVER_PORT='abc'*adbutils' default client uses port 5037*"])
    gated = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--device", "virtual:clean")
    assert gated.ret == pytest.ExitCode.USAGE_ERROR
    gated.stderr.fnmatch_lines(["ERROR: ANDROID_ADB_SERVER_PORT='abc': expected a port number, 1 to 65535"])
    assert "Traceback" not in gated.stderr.str()
