"""The virtual phone's Android, per version, as real clients see it through the real adb server.

Outputs are compared with the golden templates in harness/virtual/outputs (their sources are in
outputs/SOURCES.md): every literal character must match, and the values in the placeholders must
be the phone's state (screen, keyguard, SIM, identifiers from its profile). The parsers the rest of
phonehome uses (harness.device) and adbutils' own regexes read the same outputs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from virtual_fixtures import adb_client, connect, make_spec

from harness.device.identifiers import ParcelError, parcel_string
from harness.device.lifecycle import parse_keyguard, parse_power
from harness.identifiers import IdentifierSet, Kind
from harness.virtual.phone import VirtualPhone

OUTPUTS = Path(__file__).resolve().parent.parent / "harness" / "virtual" / "outputs"
VERSIONS = (9, 11, 14)

# IPhoneSubInfo.aidl method order per release (outputs/SOURCES.md): kind -> transaction code
SUBINFO = {
    9: {"getDeviceId": 1, "getDeviceIdForPhone": 3, "getSubscriberId": 7, "getIccSerialNumber": 10,
        "getLine1Number": 12},
    11: {"getDeviceId": 1, "getDeviceIdForPhone": 4, "getSubscriberId": 8, "getIccSerialNumber": 12,
         "getLine1Number": 15},
    14: {"getDeviceId": 1, "getDeviceIdForPhone": 4, "getSubscriberId": 8, "getIccSerialNumber": 12,
         "getLine1Number": 15},
}

IDS = IdentifierSet.from_mapping({
    "imei": ["359600000000016", "359600000000024"], "imsi": ["242021234567890"], "iccid": ["8947020000000000018"],
    "msisdn": ["+4791234567"], "wifi_mac": ["00:1a:2b:3c:4d:5e", "da:a1:19:00:00:01"],
    "bt_mac": ["00:1a:2b:3c:4d:5f"], "serial": ["PL2GAR1234567890"], "android_id": ["a1b2c3d4e5f60718"],
    "cell_id": ["12345678"],
}, "test")


@pytest.fixture(scope="module")
def phones(adb_server: dict[str, str]) -> Iterator[dict[int, Any]]:
    """One connected phone per Android version (no network namespaces needed), as adbutils devices."""
    client = adb_client(adb_server)
    started: dict[int, VirtualPhone] = {}
    try:
        for android in VERSIONS:
            spec = make_spec("clean", android=android, identifiers=IDS, boot_seconds=0.5,
                             build_type="userdebug", pcapdroid=True)
            phone = VirtualPhone(spec, network=False).start()
            started[android] = phone
            connect(client, phone.serial)
        yield {android: client.device(phone.serial) for android, phone in started.items()}
    finally:
        for phone in started.values():
            phone.stop()


def golden(android: int, name: str) -> re.Pattern[str]:
    """The template as a regex: literal text exact, each `{{name}}` a capture (repeats must agree)."""
    text = (OUTPUTS / f"android-{android}" / name).read_text()
    pieces = re.split(r"\{\{(\w+)\}\}", text)
    seen: set[str] = set()
    out = []
    for index, piece in enumerate(pieces):
        if index % 2 == 0:
            out.append(re.escape(piece))
        elif piece in seen:
            out.append(f"(?P={piece})")
        else:
            seen.add(piece)
            out.append(f"(?P<{piece}>.*?)")
    return re.compile("".join(out) + r"\Z", re.S)


def matches(android: int, name: str, output: str) -> dict[str, str]:
    match = golden(android, name).match(output)
    assert match, f"android-{android}/{name}: output does not follow the golden format:\n{output[:2000]}"
    return match.groupdict()


def wake_and_unlock(device: Any) -> None:
    device.shell("input keyevent 224")
    device.shell("input swipe 540 1800 540 300 200")


@pytest.mark.parametrize("android", VERSIONS)
def test_getprop_lists_the_release_properties(phones: dict[int, Any], android: int) -> None:
    device = phones[android]
    listing = device.shell("getprop")
    props = dict(re.findall(r"^\[([^\]]+)\]: \[(.*)\]$", listing, re.M))
    assert listing.count("\n") + 1 == len(props), "every getprop line is `[name]: [value]`"
    template_keys = {line.split("=", 1)[0] for line in (OUTPUTS / f"android-{android}" / "props.txt").read_text()
                     .splitlines()}
    assert template_keys <= set(props)
    assert props["ro.build.version.sdk"] == str({9: 28, 11: 30, 14: 34}[android])
    assert props["ro.build.version.release"] == str(android)
    assert props["ro.serialno"] == IDS.values[Kind.SERIAL][0]
    assert props["sys.boot_completed"] == "1"
    assert props["gsm.sim.state"].split(",")[0] in ("READY", "LOADED")
    assert ("net.hostname" in props) == (android < 10)
    assert device.shell("getprop ro.build.type") == "userdebug"
    assert device.shell("getprop no.such.property") == ""


@pytest.mark.parametrize("android", VERSIONS)
def test_power_and_keyguard_dumps_follow_the_goldens_and_the_state(phones: dict[int, Any], android: int) -> None:
    device = phones[android]
    wake_and_unlock(device)
    awake = matches(android, "dumpsys-power.txt", device.shell("dumpsys power", rstrip=False))
    assert (awake["wakefulness"], awake["display_state"], awake["screen_on"]) == ("Awake", "ON", "true")
    policy = device.shell("dumpsys window policy", rstrip=False)
    assert matches(android, "dumpsys-window-policy.txt", policy)["keyguard"] == "false"

    device.shell("input keyevent 223")
    asleep_text = device.shell("dumpsys power", rstrip=False)
    asleep = matches(android, "dumpsys-power.txt", asleep_text)
    assert (asleep["wakefulness"], asleep["display_state"], asleep["screen_on"]) == ("Asleep", "OFF", "false")
    window = device.shell("dumpsys window", rstrip=False)
    assert matches(android, "dumpsys-window-policy.txt", window.split("\n\nWINDOW MANAGER WINDOWS")[0] + "\n")[
        "keyguard"] == "true"
    # the device layer's parsers and adbutils read the same thing
    assert parse_power(asleep_text) == ("Asleep", "OFF")
    assert parse_keyguard(window)[0] is True
    assert device.is_screen_on() is False
    assert ("isStatusBarKeyguard=" in window) == (android < 11)

    device.shell("input keyevent POWER")
    assert parse_power(device.shell("dumpsys power")) == ("Awake", "ON")
    assert parse_keyguard(device.shell("dumpsys window"))[0] is True, "waking does not unlock"
    device.shell("input keyevent KEYCODE_MENU" if android < 11 else "input swipe 540 1800 540 300")
    assert parse_keyguard(device.shell("dumpsys window"))[0] is False


@pytest.mark.parametrize("android", VERSIONS)
def test_display_window_and_size(phones: dict[int, Any], android: int) -> None:
    device = phones[android]
    wake_and_unlock(device)
    size = device.shell("wm size")
    width, height = map(int, re.fullmatch(r"Physical size: (\d+)x(\d+)", size).groups())  # type: ignore[union-attr]
    display = matches(android, "dumpsys-display.txt", device.shell("dumpsys display", rstrip=False))
    assert (int(display["width"]), int(display["height"]), display["display_state"]) == (width, height, "ON")
    assert tuple(device.window_size()) == (width, height)
    assert device.rotation() == 0
    windows = matches(android, "dumpsys-window-windows.txt", device.shell("dumpsys window windows", rstrip=False))
    assert "com.android.launcher3/" in windows["current_focus"]
    assert device.app_current().package == "com.android.launcher3"
    device.shell("wm size 720x1440")
    assert device.shell("wm size") == f"Physical size: {width}x{height}\nOverride size: 720x1440"
    device.shell("wm size reset")


@pytest.mark.parametrize("android", VERSIONS)
def test_telephony_registry_reports_the_serving_cell(phones: dict[int, Any], android: int) -> None:
    values = matches(android, "dumpsys-telephony.registry.txt",
                     phones[android].shell("dumpsys telephony.registry", rstrip=False))
    cell = IDS.values[Kind.CELL_ID][0]
    where = values["cell_info"] if android < 10 else values["cell_identity"]
    assert re.search(rf"CellIdentityLte:\{{ mCi={cell} ", where)
    assert values["data_state"] == "0", "mobile data off by default"
    assert phones[android].shell("dumpsys iphonesubinfo") == ""


def parcel(device: Any, command: str) -> str | None:
    return parcel_string(device.shell(command, rstrip=False))


@pytest.mark.parametrize("android", VERSIONS)
def test_service_call_iphonesubinfo_per_release(phones: dict[int, Any], android: int) -> None:
    device = phones[android]
    codes = SUBINFO[android]
    expected = {"getDeviceId": IDS.values[Kind.IMEI][0], "getSubscriberId": IDS.values[Kind.IMSI][0],
                "getIccSerialNumber": IDS.values[Kind.ICCID][0]}
    for method, value in expected.items():
        command = f"service call iphonesubinfo {codes[method]} s16 com.android.shell"
        if android < 10:
            assert parcel(device, command) == value, method
        else:
            with pytest.raises(ParcelError, match=r"SecurityException: .*does not meet the requirements"):
                parcel(device, command)
        assert parcel(device, f"su 0 {command}") == value, method
    second = f"service call iphonesubinfo {codes['getDeviceIdForPhone']} i32 1 s16 com.android.shell"
    assert parcel(device, f"su 0 sh -c '{second}'") == IDS.values[Kind.IMEI][1]
    assert parcel(device, f"service call iphonesubinfo {codes['getLine1Number']}") == IDS.values[Kind.MSISDN][0]
    assert device.shell("service call iphonesubinfo 250") == 'Result: Parcel(Error: 0xffffffb6 "Not a data message")'


def test_parcel_format_is_libbinder_hexdump(phones: dict[int, Any]) -> None:
    """printHexData layout (Debug.cpp): 16 bytes a line, little-endian words, padded ASCII column."""
    text = phones[9].shell("service call iphonesubinfo 1")
    assert text == (
        "Result: Parcel(\n"
        "  0x00000000: 00000000 0000000f 00350033 00360039 '........3.5.9.6.'\n"
        "  0x00000010: 00300030 00300030 00300030 00300030 '0.0.0.0.0.0.0.0.'\n"
        "  0x00000020: 00310030 00000036                   '0.1.6...        ')")
    no_string = phones[9].shell("service call iphonesubinfo 9")  # getGroupIdLevel1ForSubscriber: null
    assert no_string == "Result: Parcel(00000000 ffffffff   '........')"


def test_shell_syntax_exit_codes_and_errors(phones: dict[int, Any]) -> None:
    device = phones[11]
    assert device.shell2("echo 'a b' \"c\"; false").returncode == 1
    assert device.shell2("echo 'a b' \"c\"; false").output == "a b c\n"
    assert device.shell2("exit 7", v2=True).returncode == 7
    result = device.shell2("nosuchcmd", v2=True)
    assert (result.returncode, result.stderr) == (127, "/system/bin/sh: nosuchcmd: inaccessible or not found\n")
    assert device.shell("( echo out; echo err >&2 ) 2>/dev/null; rc=$?; echo rc=$rc") == "out\nrc=0"
    assert device.shell("getprop | grep -c ro.build.version.sdk && echo yes || echo no") == "1\nyes"
    assert device.shell("X=1 sh -c 'echo $X'; echo ${X:-unset}") == "1\nunset"
    assert device.shell("id -u; su 0 id -u; id").split("\n")[:2] == ["2000", "0"]
    assert device.shell("command -v su; which getprop") == "/system/xbin/su\n/system/bin/getprop"
    assert device.shell("echo $(getprop ro.build.version.release)") == "11"


def test_sync_push_pull_and_md5(phones: dict[int, Any], tmp_path: Path) -> None:
    device = phones[14]
    payload = bytes(range(256)) * 4000
    (tmp_path / "blob").write_bytes(payload)
    device.sync.push(str(tmp_path / "blob"), "/data/local/tmp/blob")
    assert device.shell("toybox md5sum /data/local/tmp/blob") == f"{hashlib.md5(payload).hexdigest()}  " \
                                                                  "/data/local/tmp/blob"
    device.sync.pull("/data/local/tmp/blob", str(tmp_path / "back"))
    assert (tmp_path / "back").read_bytes() == payload
    assert "Read-only" in device.shell("echo x > /system/bin/x")
    missing = device.shell2("cat /data/system/users/0/settings_ssaid.xml")
    assert missing.returncode == 1
    assert 'package="com.android.shell"' in device.shell("su 0 sh -c 'abx2xml /data/system/users/0/"
                                                         "settings_ssaid.xml -'")


def test_packages_pm_and_app_info(phones: dict[int, Any]) -> None:
    device = phones[11]
    spec = make_spec("clean")
    listed = device.list_packages()
    assert set(spec.packages) <= set(listed)
    assert "com.emanuelef.remote_capture" in listed
    third = device.shell("pm list packages -3")
    assert third == "package:com.emanuelef.remote_capture"
    for name, version in spec.packages.items():
        info = device.app_info(name)
        assert info is not None and info.version_name == str(version)
        assert device.shell(f"pm clear {name}") == "Success"
    assert device.shell("pm path no.such.app") == ""
    assert re.fullmatch(r"package:/data/app/~~[\w=-]+/com\.emanuelef\.remote_capture-[\w=-]+/base\.apk="
                        r"com\.emanuelef\.remote_capture", device.shell("pm list packages -3 -f"))


def test_screencap_is_a_png_of_the_screen(phones: dict[int, Any]) -> None:
    device = phones[14]
    wake_and_unlock(device)
    data = device.shell("screencap -p", encoding=None)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == tuple(device.window_size())
    idat = data.index(b"IDAT")
    length = struct.unpack(">I", data[idat - 4 : idat])[0]
    assert len(zlib.decompress(data[idat + 4 : idat + 4 + length])) == height * (1 + 3 * width)
    image = device.screenshot()
    assert image.size == (width, height)


def test_logcat_holds_the_phones_own_events(phones: dict[int, Any]) -> None:
    device = phones[9]
    device.shell("logcat -c")
    device.shell("input keyevent 223; input keyevent 224")
    lines = device.shell("logcat -d -s PowerManagerService").splitlines()
    assert any("Going to sleep" in line for line in lines) and any("Waking up" in line for line in lines)
    assert all(re.match(r"\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} +\d+ +\d+ [VDIWEF] PowerManagerService: ", line)
               for line in lines if not line.startswith("---------"))
    brief = device.shell("logcat -d -v brief -s PowerManagerService")
    assert re.search(r"^I/PowerManagerService\( *\d+\): Going to sleep", brief, re.M)


def test_settings_svc_and_clock(phones: dict[int, Any]) -> None:
    device = phones[14]
    assert device.shell("settings get secure android_id") == IDS.values[Kind.ANDROID_ID][0]
    assert device.shell("settings get global nosuchkey") == "null"
    device.shell("settings put global stay_on_while_plugged_in 7")
    assert device.shell("settings get global stay_on_while_plugged_in") == "7"
    assert "mStayOnWhilePluggedInSetting=7" in device.shell("dumpsys power")
    device.shell("svc data enable")
    assert device.shell("settings get global mobile_data") == "1"
    assert "mDataConnectionState=2" in device.shell("dumpsys telephony.registry")
    device.shell("svc data disable")
    assert device.shell("settings get global mobile_data") == "0"
    phone_time = float(device.shell("date +%s.%N"))
    assert abs(phone_time - time.time()) < 60


def test_user_build_has_no_root(adb_server: dict[str, str]) -> None:
    client = adb_client(adb_server)
    spec = make_spec("clean", android=14, identifiers=IDS, boot_seconds=0.5)
    with VirtualPhone(spec, network=False, faults=["user-build"]) as phone:
        connect(client, phone.serial)
        device = client.device(phone.serial)
        assert device.shell("getprop ro.build.type; getprop ro.debuggable") == "user\n0"
        result = device.shell2("su 0 id", v2=True)
        assert (result.returncode, result.stderr) == (127, "/system/bin/sh: su: inaccessible or not found\n")
        assert "permission to capture" in device.shell("tcpdump -i any -c 1")
        with pytest.raises(ParcelError, match="SecurityException"):
            parcel(device, "service call iphonesubinfo 1")
        client.disconnect(phone.serial)


def test_no_sim_profile_variant(adb_server: dict[str, str]) -> None:
    client = adb_client(adb_server)
    spec = make_spec("clean", android=11, identifiers=IDS, boot_seconds=0.5)
    with VirtualPhone(dataclasses.replace(spec), network=False, faults=["no-sim"]) as phone:
        connect(client, phone.serial)
        device = client.device(phone.serial)
        assert device.shell("getprop gsm.sim.state").split(",")[0] == "ABSENT"
        assert parcel(device, "su 0 service call iphonesubinfo 8") is None
        assert "mCellIdentity=null" in device.shell("dumpsys telephony.registry")
        client.disconnect(phone.serial)


def test_pin_keyguard_needs_the_pin(adb_server: dict[str, str]) -> None:
    client = adb_client(adb_server)
    spec = make_spec("clean", android=11, identifiers=IDS, boot_seconds=0.5, lock="pin", pin="2468")
    with VirtualPhone(spec, network=False) as phone:
        connect(client, phone.serial)
        device = client.device(phone.serial)

        def keyguard() -> bool | None:
            return parse_keyguard(device.shell("dumpsys window"))[0]

        assert parse_keyguard(device.shell("dumpsys window")) == (True, True)
        device.shell("input keyevent 82")
        assert keyguard() is True, "MENU does not dismiss a secure keyguard"
        device.shell("input swipe 540 2000 540 600 150")
        assert 'resource-id="com.android.systemui:id/pinEntry"' in device.shell("uiautomator dump /dev/tty")
        device.shell("input text 1357; input keyevent 66")
        assert keyguard() is True
        device.shell("input swipe 540 2000 540 600 150; input text 2468; input keyevent 66")
        assert keyguard() is False
        client.disconnect(phone.serial)
