"""Pattern unlock: the device layer against a virtual phone with a pattern keyguard.

Everything goes through the session's private adb server (never 5037), adbutils and real
uiautomator2; the keyguard state is read back from the phone (`dumpsys window`, the hierarchy
dump), not taken from the harness's own step record.
"""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from virtual_fixtures import make_spec, virtual_phones  # noqa: F401  (fixture)

from harness.config import parse_yaml
from harness.device import Device, Timeouts
from harness.device.lifecycle import StepNotVerified, parse_wm_size, pattern_points
from harness.errors import ConfigError, DeviceError
from harness.profile import load_profile
from harness.virtual import lockpattern
from harness.virtual.phone import VirtualPhone
from harness.virtual.spec import parse_virtual

Phones = Callable[..., list[VirtualPhone]]

pytestmark = pytest.mark.timeout(600)

FAST = Timeouts(gone=20, back=30, boot=30, package_manager=20, state=5, reconnect=15, ui_start=60)
PATTERN_VIEW = "com.android.systemui:id/lockPatternView"


@pytest.fixture(autouse=True)
def _private_locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHONEHOME_LOCK_DIR", str(tmp_path / "locks"))


class _Unlock:
    method = "pattern"
    secret_env = "PH_TEST_PATTERN"


class _Profile:
    unlock = _Unlock()
    market = "NO"


def _open(phone: VirtualPhone, **kwargs: Any) -> Device:
    kwargs.setdefault("timeouts", FAST)
    kwargs.setdefault("profile", _Profile())
    return Device.open(phone.serial, **kwargs)


def _keyguard_showing(dev: Device) -> bool:
    """Read back from `dumpsys window` directly, not through the harness's parser."""
    text = dev.adb.script("dumpsys window").stdout
    assert "mKeyguardShowing=" in text or "showing=" in text
    return "mKeyguardShowing=true" in text or "showing=true" in text


@pytest.fixture(params=["uiautomator2", "adb-input"])
def driver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "adb-input":
        monkeypatch.setenv("PHONEHOME_NO_U2", "1")  # start_u2 refuses: the adb `input motionevent` fallback
    else:
        monkeypatch.delenv("PHONEHOME_NO_U2", raising=False)
    return "uiautomator2" if request.param == "uiautomator2" else "adb"


# --- on the phone, through adb ------------------------------------------------------------------

def test_pattern_unlock_wrong_then_right(virtual_phones: Phones, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                         driver: str) -> None:
    (phone,) = virtual_phones(make_spec("clean", android=14, lock="pattern", pattern="14789"), network=False)
    monkeypatch.setenv("PH_TEST_PATTERN", "1-2-3-6-9")
    with _open(phone) as dev:
        with pytest.raises(StepNotVerified, match="keyguard still showing after pattern unlock"):
            dev.unlock()
        assert _keyguard_showing(dev)
        dump = dev.adb.script("uiautomator dump /dev/tty").stdout
        assert PATTERN_VIEW in dump and 'text="Wrong pattern"' in dump  # the bouncer stays up, saying so
        logcat = dev.adb.script("logcat -d -s KeyguardUpdateMonitor").stdout
        assert "Wrong pattern entered" in logcat
        dev.screen_off()
        assert _keyguard_showing(dev)

        monkeypatch.setenv("PH_TEST_PATTERN", "1-4-7-8-9")
        done = dev.unlock()
        assert done.verified and done.after.keyguard is False and done.before.secure is True
        assert done.driver == driver  # wake, swipe up and pattern all through the one driver
        assert not _keyguard_showing(dev)
        if driver == "adb":
            assert "PHONEHOME_NO_U2" in dev.lifecycle.ui_note

        locked = dev.lock()
        assert locked.verified and _keyguard_showing(dev)


def test_pattern_view_bounds_in_both_dumps(virtual_phones: Phones) -> None:  # noqa: F811
    """uiautomator's XML (adb fallback) and u2's objInfo name the same view with the same real bounds."""
    import uiautomator2

    (phone,) = virtual_phones(make_spec("clean", android=11, lock="pattern", pattern="2-5-8-9"), network=False)
    with _open(phone, use_u2=False) as dev:
        dev.screen_on()
        assert _keyguard_showing(dev)
        assert PATTERN_VIEW not in dev.adb.script("uiautomator dump /dev/tty").stdout  # not before the swipe up
        ui = dev.lifecycle.ui
        size = parse_wm_size(dev.adb.shell(["wm", "size"]).stdout)
        assert size is not None
        width, height = size
        ui.swipe(width // 2, int(height * 0.85), width // 2, int(height * 0.25), 0.3)
        xml_box = ui.bounds(PATTERN_VIEW)
        assert xml_box is not None
        left, top, right, bottom = xml_box
        assert 0 <= left < right <= width and height // 3 < top < bottom <= height
        assert abs((right - left) - (bottom - top)) <= 2  # LockPatternView is square
        u2 = uiautomator2.connect(dev.adb.device())
        info = u2(resourceId=PATTERN_VIEW).info
        assert (info["bounds"]["left"], info["bounds"]["top"], info["bounds"]["right"],
                info["bounds"]["bottom"]) == xml_box
        assert info["className"] == "android.view.View" and info["packageName"] == "com.android.systemui"


def test_a_stroke_over_an_unused_cell_adds_it(virtual_phones: Phones) -> None:  # noqa: F811
    """`input motionevent` from cell 1 straight to 3 passes 2: LockPatternView records 1-2-3."""
    (phone,) = virtual_phones(make_spec("clean", android=11, lock="pattern", pattern="1-2-3-6"), network=False)
    with _open(phone, use_u2=False) as dev:
        dev.screen_on()
        size = parse_wm_size(dev.adb.shell(["wm", "size"]).stdout)
        assert size is not None
        width, height = size
        dev.adb.shell(["input", "swipe", str(width // 2), str(int(height * 0.85)), str(width // 2),
                       str(int(height * 0.25)), "300"])
        box = dev.lifecycle.ui.bounds(PATTERN_VIEW)
        assert box is not None
        c1, _c2, c3, c6 = pattern_points("1236", box)
        between = ((c3[0] + c6[0]) // 2, (c3[1] + c6[1]) // 2)  # outside every hit area: ignored
        script = "; ".join(f"input motionevent {kind} {x} {y}" for kind, (x, y) in
                           [("DOWN", c1), ("MOVE", c3), ("MOVE", between), ("MOVE", c6), ("UP", c6)])
        dev.adb.script(script)
        assert not _keyguard_showing(dev)


def test_adb_fallback_needs_android_11(virtual_phones: Phones, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    (phone,) = virtual_phones(make_spec("clean", android=9, lock="pattern", pattern="14789"), network=False)
    monkeypatch.setenv("PHONEHOME_NO_U2", "1")
    monkeypatch.setenv("PH_TEST_PATTERN", "14789")
    with _open(phone) as dev, pytest.raises(DeviceError, match="input motionevent"):
        dev.unlock()


def test_pattern_never_in_a_command_the_phone_receives(virtual_phones: Phones,  # noqa: F811
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       caplog: pytest.LogCaptureFixture, driver: str) -> None:
    """adbd's service strings and every process's argv on the phone never hold the pattern secret,
    in either spelling; nor do the harness's log records or the step record."""
    from harness.virtual.adbd import AdbDaemon
    from harness.virtual.shell import Shell

    right, wrong = "3-5-7-4-1-2", "9-6-3-2-1"
    (phone,) = virtual_phones(make_spec("clean", android=14, lock="pattern", pattern=right), network=False)
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
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("PH_TEST_PATTERN", wrong)
    with _open(phone) as dev:
        with pytest.raises(StepNotVerified):
            dev.unlock()
        dev.screen_off()
        monkeypatch.setenv("PH_TEST_PATTERN", right)
        done = dev.unlock()
        assert done.verified and done.driver == driver
        assert not _keyguard_showing(dev)
    if driver == "adb":
        assert any(line.startswith("input motionevent MOVE") for line in seen)  # the spy saw the gesture
    else:
        assert any("9008" in line for line in seen)  # the u2 server's forwarded port
    for secret in (right, wrong):
        for spelling in (secret, secret.replace("-", "")):
            assert not [line for line in seen if spelling in line]
            assert spelling not in caplog.text
            assert spelling not in json.dumps(done.to_json())


# --- the profile ---------------------------------------------------------------------------------

PROFILE = """\
market: "NO"
unlock: {method: pattern, secret_env: PH_PATTERN}
virtual:
  model: Test Phone
  android: 14
  lock: pattern
  pattern: {secret}
"""


def _virtual(pattern: str) -> Any:
    root = parse_yaml(PROFILE.replace("{secret}", pattern), "devices/t.yaml")
    return parse_virtual(root.require("virtual"), "t")


def test_profile_pattern_lock(tmp_path: Path) -> None:
    assert _virtual('"1-4-7-8-9"').pattern == "14789"
    assert _virtual("14789").pattern == "14789"  # digits 1-9 need no quoting (no leading zero)
    path = tmp_path / "t.yaml"
    path.write_text(PROFILE.replace("{secret}", '"2-5-8-9"'))
    profile = load_profile(str(path))
    assert profile.unlock.method == "pattern" and profile.unlock.secret_env == "PH_PATTERN"
    assert profile.virtual.lock == "pattern" and profile.virtual.pattern == "2589"


@pytest.mark.parametrize(("pattern", "message"), [
    ('"123"', "at least 4 cells"),
    ('"1-2-3-2"', "at most once"),
    ('"1-3-6-9"', "passes over 2"),  # a finger from 1 to 3 draws 2 as well
    ('"1-9-6-3"', "passes over 5"),
    ('"0123"', "cells 1-9"),
    ("true", "cells 1-9"),
])
def test_profile_rejects_patterns_no_finger_can_draw(pattern: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _virtual(pattern)


def test_lock_pattern_needs_the_pattern() -> None:
    text = textwrap.dedent("""\
        virtual:
          android: 11
          lock: pattern
        """)
    with pytest.raises(ConfigError, match="lock: pattern needs `pattern:`"):
        parse_virtual(parse_yaml(text, "devices/t.yaml").require("virtual"), "t")


# --- LockPatternView's hit test ----------------------------------------------------------------

def test_hit_areas_and_interpolation() -> None:
    box = (108, 1185, 972, 2049)  # a 1080x2400 phone's LockPatternView
    centres = {cell: (108 + 288 * ((cell - 1) % 3) + 144, 1185 + 288 * ((cell - 1) // 3) + 144)
               for cell in range(1, 10)}
    assert all(lockpattern.hit(box, *centres[c]) == c for c in centres)
    assert lockpattern.hit(box, 108 + 288, 1185 + 144) is None  # on the line between 1 and 2
    # a knight's move (1 to 6) crosses no hit area, even interpolated densely
    assert lockpattern.cells_drawn(box, lockpattern.interpolate([centres[1], centres[6]], 200)) == [1, 6]
    # 1 to 9 passes 5; a cell already used is not hit again
    assert lockpattern.cells_drawn(box, [centres[1], centres[9], centres[5], centres[6]]) == [1, 5, 9, 6]
    assert lockpattern.cells_drawn(box, [centres[3], centres[1], centres[7]]) == [3, 2, 1, 4, 7]
