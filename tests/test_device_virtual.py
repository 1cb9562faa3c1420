"""The device layer against virtual phones, through the real adb server (private port, never 5037).

Everything here goes over the wire the way it would to a phone: adb server, adbutils,
uiautomator2. Expected values come from the virtual phone's own model (what it was told its
identifiers are), never from the code under test.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from virtual_fixtures import adb_client, make_spec, virtual_phones  # noqa: F401  (fixture)

from harness.device import Device, Timeouts
from harness.device.adb import Adb, AdbTimeout, DeviceOffline, DeviceUnrecoverable
from harness.device.identifiers import universal_mac
from harness.device.lifecycle import Lifecycle
from harness.device.select import client_for, open_device, parse_spec, resolve
from harness.identifiers import IdentifierSet, Kind
from harness.virtual.android import AndroidDevice
from harness.virtual.phone import VirtualPhone

Phones = Callable[..., list[VirtualPhone]]

pytestmark = pytest.mark.timeout(600)

FAST = Timeouts(gone=20, back=30, boot=30, package_manager=20, state=5, reconnect=15, ui_start=60)


@pytest.fixture(autouse=True)
def _private_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHONEHOME_LOCK_DIR", str(tmp_path / "locks"))


@pytest.fixture
def phone(virtual_phones: Phones) -> VirtualPhone:  # noqa: F811
    (one,) = virtual_phones(make_spec("clean", android=11), network=False)
    return one


def _open(phone: VirtualPhone, **kwargs: Any) -> Device:
    kwargs.setdefault("timeouts", FAST)
    return Device.open(phone.serial, **kwargs)


# --- selection --------------------------------------------------------------------------------

def test_open_reads_props_and_info(phone: VirtualPhone) -> None:
    class Profile:
        market = "NO"

    with _open(phone, profile=Profile()) as dev:
        info = dev.info()
        assert info.sdk == 30 and info.release == "11"
        assert info.model == phone.spec.model
        assert dev.label == phone.serial  # an address, not a hardware serial: shown as is
        props = _model(phone).props()
        assert info.fingerprint == props["ro.build.fingerprint"] and info.build_type == props["ro.build.type"]
        sim = phone.spec.sim
        assert info.mcc_mnc == [(sim.mcc, sim.mnc)] and info.market == "NO"
        text = json.dumps(info.to_json())
        assert f"{sim.mcc}-{sim.mnc}" in text and _model(phone).serial not in text


def test_android_serial_and_all_attached(phone: VirtualPhone) -> None:
    (by_env,) = resolve([], env={"ANDROID_SERIAL": phone.serial})
    (everything,) = resolve([], env={})
    assert by_env.serial == everything.serial == phone.serial


def test_remote_server_spec(phone: VirtualPhone, adb_server: dict[str, str]) -> None:
    spec = f"{phone.serial}@127.0.0.1:{adb_server['ANDROID_ADB_SERVER_PORT']}"
    with Device.open(spec, timeouts=FAST) as dev:
        assert dev.adb.client.port == int(adb_server["ANDROID_ADB_SERVER_PORT"])
        assert dev.adb.script("echo remote").stdout.strip() == "remote"
        assert dev.label == spec


def test_unauthorized_phone_is_one_clear_error(virtual_phones: Phones) -> None:  # noqa: F811
    (locked_out,) = virtual_phones(make_spec("clean"), network=False, faults=["unauthorized"])
    with pytest.raises(DeviceOffline, match=r"is unauthorized \(accept the USB debugging prompt"):
        open_device(parse_spec(locked_out.serial))


def test_lock_holds_across_transports_and_servers(phone: VirtualPhone, adb_server: dict[str, str]) -> None:
    """The same phone named another way (here: through the same server as `SERIAL@localhost:PORT`, as a
    farm would name it) is still one phone: the lock is also on its hardware serial."""
    from harness.device import DeviceBusy

    other_name = f"{phone.serial}@localhost:{adb_server['ANDROID_ADB_SERVER_PORT']}"
    with _open(phone):
        with pytest.raises(DeviceBusy, match="in use by another phonehome process"):
            Device.open(other_name, timeouts=FAST)
        names = " ".join(p.name for p in Path(os.environ["PHONEHOME_LOCK_DIR"]).iterdir())
        assert _model(phone).serial not in names
    with Device.open(other_name, timeouts=FAST) as dev:  # released with the first
        assert dev.adb.script("echo ok").stdout.strip() == "ok"


def test_lock_refuses_a_second_driver(phone: VirtualPhone) -> None:
    with _open(phone), pytest.raises(Exception, match="in use by another phonehome process"):
        _open(phone)


# --- adb calls ----------------------------------------------------------------------------------

def test_hung_command_times_out_and_phone_stays_usable(phone: VirtualPhone) -> None:
    adb = open_device(parse_spec(phone.serial))
    start = time.monotonic()
    with pytest.raises(AdbTimeout, match=r"adb shell 'sleep 30' on 127\.0\.0\.1:\d+ timed out after 1 s"):
        adb.script("sleep 30", timeout=1)
    assert time.monotonic() - start < 10
    assert adb.script("echo alive").stdout.strip() == "alive"


def test_exit_codes_and_batches(phone: VirtualPhone) -> None:
    adb = open_device(parse_spec(phone.serial))
    assert adb.script("false").exit_code == 1
    first, second, third = adb.run_many(["getprop ro.build.version.sdk", "false", "echo 'a b'"])
    assert (first.stdout, first.exit_code) == ("30", 0)
    assert second.exit_code == 1
    assert third.stdout == "a b"


# --- lifecycle ----------------------------------------------------------------------------------

@pytest.mark.parametrize("use_u2", [True, False], ids=["uiautomator2", "adb-input"])
def test_screen_unlock_lock_each_verified(phone: VirtualPhone, use_u2: bool) -> None:
    with _open(phone, use_u2=use_u2) as dev:
        off = dev.screen_off()
        assert off.verified and not off.after.awake
        on = dev.screen_on()
        assert on.verified and on.after.awake and on.before is not None and not on.before.awake
        assert on.driver == ("uiautomator2" if use_u2 else "adb")
        unlocked = dev.unlock()
        assert unlocked.verified and unlocked.after.keyguard is False and unlocked.before.keyguard is True
        locked = dev.lock()
        assert locked.verified and locked.after.keyguard is True and not locked.after.awake
        # read back independently of the harness's own parsing
        power = dev.adb.script("dumpsys power").stdout
        assert "mWakefulness=Asleep" in power


@pytest.mark.parametrize("use_u2", [True, False], ids=["uiautomator2", "adb-input"])
def test_pin_unlock_from_the_profile_secret(virtual_phones: Phones, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                            use_u2: bool) -> None:
    spec = make_spec("clean", android=14, lock="pin", pin="4711")
    (pinned,) = virtual_phones(spec, network=False)

    class Unlock:
        method = "pin"
        secret_env = "PH_TEST_PIN"

    class Profile:
        unlock = Unlock()
        market = "NO"

    monkeypatch.setenv("PH_TEST_PIN", "0000")
    with _open(pinned, profile=Profile(), use_u2=use_u2) as dev:
        wrong = dev.unlock(check=False)
        assert not wrong.verified and wrong.after.keyguard is True
        assert "0000" not in json.dumps(wrong.to_json())
        dev.screen_off()
        monkeypatch.setenv("PH_TEST_PIN", "4711")
        right = dev.unlock()
        assert right.verified and right.after.keyguard is False
        assert right.driver == ("uiautomator2" if use_u2 else "adb")
        assert right.before.secure is True
    monkeypatch.delenv("PH_TEST_PIN")
    with _open(pinned, profile=Profile()) as dev, pytest.raises(Exception, match="PH_TEST_PIN"):
        dev.unlock()


def test_a_step_that_does_not_take_effect_is_not_verified(virtual_phones: Phones) -> None:  # noqa: F811
    from harness.device.lifecycle import StepNotVerified

    (no_lock,) = virtual_phones(make_spec("clean", lock="none"), network=False)
    with _open(no_lock, use_u2=False) as dev:
        dev.screen_on()
        # the harness expects a keyguard after a swipe-lock phone sleeps; this phone has none
        with pytest.raises(StepNotVerified, match="screen off but keyguard not showing"):
            dev.lifecycle.lock("swipe")
        dev.screen_on()
        assert dev.lifecycle.lock("none").verified


def test_reboot_waits_through_every_stage(phone: VirtualPhone) -> None:
    with _open(phone) as dev:
        record = dev.reboot()
        stages = record.stages()
        assert all(value is not None and value >= 0 for value in stages.values()), stages
        assert None not in (record.gone, record.back, record.boot_completed, record.package_manager)
        assert record.issued < record.gone < record.back <= record.boot_completed <= record.package_manager  # type: ignore[operator]
        assert record.saw_gone
        assert record.clock_offset is not None and abs(record.clock_offset) < 5
        assert dev.adb.shell(["getprop", "sys.boot_completed"]).stdout.strip() == "1"
        assert phone.reboots == 1


# --- identifiers ----------------------------------------------------------------------------------

def _model(phone: VirtualPhone) -> AndroidDevice:
    assert phone.device is not None
    return phone.device


def _expected(phone: VirtualPhone, kind: Kind, slot: int = 1) -> str | None:
    return _model(phone).ident(kind, slot)


@pytest.mark.parametrize("android", [9, 11, 14])
@pytest.mark.parametrize("build", ["userdebug", "user"])
def test_identifiers_in_each_android_release(virtual_phones: Phones, android: int, build: str) -> None:  # noqa: F811
    faults = ["user-build"] if build == "user" else []
    (vp,) = virtual_phones(make_spec("clean", android=android), faults=faults)
    with _open(vp) as dev:
        harvest = dev.identifiers(overrides=IdentifierSet())
    got = harvest.identifiers.values
    privileged = build == "userdebug" or android < 10
    for kind in (Kind.IMEI, Kind.IMSI, Kind.ICCID):
        expected = _expected(vp, kind)
        if privileged and expected:
            assert got.get(kind, [None])[0] == expected, (kind, harvest.summary())
            assert harvest.coverage[kind] == "read"
        elif not privileged:
            assert harvest.coverage[kind] == "unknown"
            assert any("privileged" in note for note in harvest.reports[kind].notes)
    assert _expected(vp, Kind.SERIAL) in got.get(Kind.SERIAL, []) or _model(vp).serial in got[Kind.SERIAL]
    macs = [m.lower() for m in vp.spec.identifiers.values[Kind.WIFI_MAC]]
    factory, randomized = macs[0], (macs[1] if android >= 10 and len(macs) > 1 else None)
    if android < 10 or build == "userdebug" or android >= 12:
        assert factory in got[Kind.WIFI_MAC] and harvest.reports[Kind.WIFI_MAC].partial is None
    if randomized:
        assert randomized in got[Kind.WIFI_MAC] and not universal_mac(randomized)
    if randomized and build == "user" and android < 12:
        assert factory not in got[Kind.WIFI_MAC]
        assert harvest.reports[Kind.WIFI_MAC].partial  # factory MAC unknowable here: fail closed
        assert any(m.startswith("wifi_mac:") for m in harvest.missing([Kind.WIFI_MAC]))
    ssaids = _model(vp).ssaids()
    if build == "userdebug":
        assert set(ssaids.values()) <= set(got[Kind.ANDROID_ID])
        assert harvest.reports[Kind.ANDROID_ID].partial is None
    else:
        assert got[Kind.ANDROID_ID] == [ssaids["com.android.shell"]]
        assert harvest.reports[Kind.ANDROID_ID].partial
    cell = _expected(vp, Kind.CELL_ID)
    if cell:
        assert str(int(cell, 0)) in got[Kind.CELL_ID]
    assert harvest.rooted is (build == "userdebug")


def test_profile_overrides_win_and_require_decides(virtual_phones: Phones) -> None:  # noqa: F811
    (vp,) = virtual_phones(make_spec("clean", android=14), faults=["user-build"])
    override = IdentifierSet({Kind.IMEI: ["490154203237518"], Kind.ICCID: ["8947080012345678901"]})
    with _open(vp) as dev:
        harvest = dev.identifiers(overrides=override)
    assert harvest.identifiers.values[Kind.IMEI] == ["490154203237518"]
    assert harvest.coverage["imei"] == "profile" and harvest.coverage["iccid"] == "profile"
    assert harvest.coverage["imsi"] == "unknown"
    missing = harvest.missing([Kind.IMEI, Kind.IMSI, Kind.ICCID])
    assert [reason.split(":")[0] for reason in missing] == ["imsi"]
    text = json.dumps(harvest.to_json()) + "\n".join(harvest.summary())
    for value in [*harvest.identifiers.values.get(Kind.SERIAL, []), "490154203237518"]:
        assert value not in text


# --- preconditions, settings, reset, packages -------------------------------------------------------

def test_no_sim_fails_closed_unless_the_profile_says_so(virtual_phones: Phones) -> None:  # noqa: F811
    (vp,) = virtual_phones(make_spec("clean"), network=False, faults=["no-sim"])

    class NoSimSku:
        has_sim = False

    with _open(vp) as dev:
        report = dev.preconditions(need_wifi=False)
        assert not report.sim_ready and any("no SIM ready" in p for p in report.problems)
    with _open(vp, profile=NoSimSku()) as dev:
        assert dev.preconditions(need_wifi=False).ok


def test_mobile_data_turned_off_verified_and_restored(virtual_phones: Phones) -> None:  # noqa: F811
    (vp,) = virtual_phones(make_spec("clean"), network=False, faults=["mobile-data-on"])
    with _open(vp) as dev:
        before = dev.preconditions(need_wifi=False, enforce=False, mobile_data_off=True)
        assert before.mobile_data_enabled and any("mobile data is on" in p for p in before.problems)
        after = dev.preconditions(need_wifi=False, mobile_data_off=True)
        assert after.mobile_data_enabled is False and after.ok, after.problems
        assert "mobile data turned off" in after.notes
    adb = open_device(parse_spec(vp.serial))
    assert adb.shell(["settings", "get", "global", "mobile_data"]).stdout.strip() == "1"


def test_wifi_and_private_dns(virtual_phones: Phones) -> None:  # noqa: F811
    (vp,) = virtual_phones(make_spec("clean"), faults=["private-dns-on"])
    with _open(vp) as dev:
        seen = dev.preconditions(enforce=False, private_dns_off=True)
        assert seen.wifi_connected is True and seen.sim_ready
        assert seen.private_dns_mode not in {"off", "opportunistic"}
        assert any("Private DNS" in p for p in seen.problems)
        fixed = dev.preconditions(private_dns_off=True)
        assert fixed.ok and fixed.private_dns_mode == "off", fixed.problems
    adb = open_device(parse_spec(vp.serial))
    assert adb.shell(["settings", "get", "global", "private_dns_mode"]).stdout.strip() == seen.private_dns_mode


def test_packages_audit_and_reset(virtual_phones: Phones) -> None:  # noqa: F811
    from harness.policy.policy import audit_packages
    from harness.profile import load_profile

    (vp,) = virtual_phones(make_spec("nokia7plus-2019"), network=False)
    with _open(vp) as dev:
        packages = dev.packages()
        client = packages["com.qualcomm.qti.autoregistration"]
        assert client.version_code and client.system
        findings = audit_packages(dev.installed_for_audit(), load_profile("clean"))
        assert [f.detail["package"] for f in findings] == ["com.qualcomm.qti.autoregistration"]
        actions = dev.reset(commands=[])
        assert [a.command for a in actions] == ["pm clear com.qualcomm.qti.autoregistration"]
        assert actions[0].ok, actions[0].output


def test_shell_injection_in_profile_values_stays_inert(phone: VirtualPhone) -> None:
    hostile = [
        "pm clear com.x; settings put global phonehome_pwned 1",
        "pm clear 'com.x' && settings put global phonehome_pwned 2",
        "pm clear $(settings put global phonehome_pwned 3)",
        "pm clear `settings put global phonehome_pwned 4`",
        "pm clear \"com.x\"'\"'; settings put global phonehome_pwned 5",
        "pm clear com.x | settings put global phonehome_pwned 6",
    ]
    with _open(phone) as dev:
        dev.reset(packages=[], commands=hostile)
        with pytest.raises(Exception, match="not a package name"):
            dev.reset(packages=["com.x;settings put global phonehome_pwned 7"], commands=[])
        assert dev.adb.shell(["settings", "get", "global", "phonehome_pwned"]).stdout.strip() == "null"
        dev.put_setting("global", "phonehome_probe", "a'b; settings put global phonehome_pwned 8")
        assert dev.adb.shell(["settings", "get", "global", "phonehome_probe"]).stdout.strip() == \
            "a'b; settings put global phonehome_pwned 8"
        assert dev.adb.shell(["settings", "get", "global", "phonehome_pwned"]).stdout.strip() == "null"


_FAILING_TEST = textwrap.dedent("""
    import os
    from harness.device import Device

    def test_changes_then_fails():
        with Device.open(os.environ["PH_SERIAL"]) as dev:
            dev.put_setting("system", "screen_off_timeout", "1234567")
            dev.put_setting("global", "stay_on_while_plugged_in", "7")
            assert False, "the test fails after changing settings"
""")

_HOLD = textwrap.dedent("""
    import os, sys, time
    from harness.device import Device
    dev = Device.open(os.environ["PH_SERIAL"])
    dev.put_setting("system", "screen_off_timeout", "1234567")
    print("changed", flush=True)
    try:
        time.sleep(120)
    finally:
        dev.close()
""")


def _settings(adb: Adb) -> tuple[str, str]:
    return (adb.shell(["settings", "get", "system", "screen_off_timeout"]).stdout.strip(),
            adb.shell(["settings", "get", "global", "stay_on_while_plugged_in"]).stdout.strip())


def test_settings_restored_after_a_failing_test(phone: VirtualPhone, pytester: pytest.Pytester) -> None:
    adb = open_device(parse_spec(phone.serial))
    original = _settings(adb)
    pytester.makepyfile(test_fails=_FAILING_TEST)
    os.environ["PH_SERIAL"] = phone.serial
    try:
        result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    finally:
        del os.environ["PH_SERIAL"]
    result.assert_outcomes(failed=1)
    assert _settings(adb) == original


@pytest.mark.parametrize("how", ["ctrl-c", "kill"])
def test_settings_restored_after_interrupt_or_kill(phone: VirtualPhone, how: str) -> None:
    adb = open_device(parse_spec(phone.serial))
    original = _settings(adb)
    child = subprocess.Popen([sys.executable, "-c", _HOLD], stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PH_SERIAL": phone.serial})
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "changed"
        assert _settings(adb)[0] == "1234567"
        child.send_signal(signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
    if how == "ctrl-c":
        assert _settings(adb) == original
    else:
        assert _settings(adb)[0] == "1234567"  # nothing ran in the killed process...
        with _open(phone) as dev:  # ...so the next run on this phone restores it first
            assert dev.leftover == []
        assert _settings(adb) == original


# --- recovery -------------------------------------------------------------------------------------

def test_recovers_from_a_dropped_connection(virtual_phones: Phones) -> None:  # noqa: F811
    (vp,) = virtual_phones(make_spec("clean"), network=False, faults=["drop-connection"])
    with _open(vp) as dev:
        assert dev.props["ro.build.version.sdk"]  # read in full despite the drop
        report = dev.lifecycle.recoveries[0]
        assert report.recovered and [a.action for a in report.attempts][:2] == ["probe", "reconnect"]
        assert report.attempts[1].ok


def test_boot_that_never_completes_is_unrecoverable(virtual_phones: Phones) -> None:  # noqa: F811
    (vp,) = virtual_phones(make_spec("clean"), network=False, faults=["boot-never-completes"])
    short = Timeouts(gone=20, back=30, boot=4, package_manager=5, state=5, reconnect=5)
    adb = open_device(parse_spec(vp.serial))
    life = Lifecycle(adb, sdk=30, timeouts=short, use_u2=False)
    with pytest.raises(DeviceUnrecoverable, match=r"unrecoverable \(infrastructure, not a finding\).*"
                                                  r"boot not completed"):
        life.recover("boot did not complete")
    report = life.recoveries[-1]
    assert [a.action for a in report.attempts] == ["probe", "reconnect", "relocate", "reboot"]
    assert not report.attempts[-1].ok and "sys.boot_completed stayed" in report.attempts[-1].detail


def test_unauthorized_is_reported_not_retried_forever(virtual_phones: Phones) -> None:  # noqa: F811
    (vp,) = virtual_phones(make_spec("clean"), network=False, faults=["unauthorized"])
    adb = Adb(client_for(parse_spec(vp.serial)), vp.serial, timeout=10)
    life = Lifecycle(adb, sdk=30, timeouts=Timeouts(reconnect=5), use_u2=False)
    with pytest.raises(DeviceUnrecoverable, match="unauthorized"):
        life.recover("probe")
    assert [a.action for a in life.recoveries[-1].attempts][-1] == "reboot"
    assert "skipped: unauthorized" in life.recoveries[-1].attempts[-1].detail


@pytest.mark.parametrize("locator", [True, False], ids=["with-locator", "without"])
def test_phone_back_on_a_new_port(virtual_phones: Phones, locator: bool) -> None:  # noqa: F811
    (vp,) = virtual_phones(make_spec("clean"), network=False, faults=["new-port"])
    old = vp.serial
    with _open(vp, relocate=(lambda: vp.serial) if locator else None) as dev:
        if locator:
            record = dev.reboot()  # followed to the new port while waiting for it to come back
            assert dev.adb.serial == vp.serial != old
            assert record.package_manager is not None and dev.lifecycle.recoveries == []
            assert dev.adb.script("getprop sys.boot_completed").stdout.strip() == "1"
        else:
            with pytest.raises(DeviceUnrecoverable, match="not found under another serial"):
                dev.reboot()


# --- phonehome devices --------------------------------------------------------------------------

def test_devices_command_lists_the_phone(phone: VirtualPhone, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from harness.device.cli import add_arguments, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--json"])) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    row = next(r for r in rows if r["serial"] == phone.serial)
    assert row["state"] == "device" and row["sdk"] == 30 and row["model"] == phone.spec.model
    assert run(parser.parse_args([])) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split() == ["SERIAL", "STATE", "MODEL", "ANDROID", "API", "TYPE", "BUILD"]
    assert phone.serial in table


# --- the unlock secret --------------------------------------------------------------------------

@pytest.mark.parametrize("use_u2", [True, False], ids=["uiautomator2", "adb-input"])
def test_pin_never_in_a_command_line_log_or_traceback(virtual_phones: Phones, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                       caplog: pytest.LogCaptureFixture, use_u2: bool) -> None:
    """adbd's service strings (`sh -c` argv on a real phone), every process's argv, log records and the
    traceback pytest prints (function arguments, locals) never hold the PIN."""
    from harness.device.lifecycle import StepNotVerified
    from harness.virtual.adbd import AdbDaemon
    from harness.virtual.shell import Shell

    right, wrong = "47118642", "93570135"
    (pinned,) = virtual_phones(make_spec("clean", android=14, lock="pin", pin=right), network=False)
    seen: list[str] = []
    route, run_argv = AdbDaemon.route, Shell.run_argv

    def spy_route(self: Any, destination: str) -> Any:
        seen.append(destination)
        return route(self, destination)

    async def spy_argv(self: Any, argv: list[str], *args: Any, **kwargs: Any) -> int:
        seen.append(" ".join(argv))
        return await run_argv(self, argv, *args, **kwargs)

    monkeypatch.setattr(AdbDaemon, "route", spy_route)
    monkeypatch.setattr(Shell, "run_argv", spy_argv)

    class Unlock:
        method = "pin"
        secret_env = "PH_TEST_PIN"

    class Profile:
        unlock = Unlock()

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("PH_TEST_PIN", wrong)
    with _open(pinned, profile=Profile(), use_u2=use_u2) as dev:
        with pytest.raises(StepNotVerified) as failed:
            dev.unlock()
        # the frames of the code under test (the test's own frames hold the PINs it chose)
        failed.traceback = failed.traceback.filter(lambda entry: "/harness/" in str(entry.path))
        printed = str(failed.getrepr(style="long", funcargs=True, showlocals=True))
        assert "Secret(***)" in printed  # the argument is there, masked
        dev.screen_off()
        monkeypatch.setenv("PH_TEST_PIN", right)
        done = dev.unlock()
        assert done.verified and done.driver == ("uiautomator2" if use_u2 else "adb")
        _method, secret = dev.unlock_secret()
        assert repr(secret) == str(secret) == f"{secret}" == "Secret(***)" and secret is not None
    assert any("input" in line or "jsonrpc" in line or "tcp:" in line for line in seen)
    for pin in (right, wrong):
        assert pin not in printed
        assert not [line for line in seen if pin in line]
        assert pin not in caplog.text
        assert pin not in json.dumps(done.to_json())


def test_secret_type_errors_do_not_echo_the_secret() -> None:
    from harness.device.adb import Secret
    from harness.device.lifecycle import pattern_points, secret_keys
    from harness.errors import DeviceError

    with pytest.raises(DeviceError) as bad_pattern:
        pattern_points(Secret("1-2-x-9"), (0, 0, 300, 300))
    assert "x" not in str(bad_pattern.value).replace("e.g.", "") and "1-2-x" not in str(bad_pattern.value)
    with pytest.raises(DeviceError) as bad_pin:
        secret_keys(Secret("12€4"))
    assert "€" not in str(bad_pin.value)
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(Secret("1234"))
