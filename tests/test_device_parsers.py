# ruff: noqa: E501  (captured dumps keep their real, long lines)
"""Unit tests of the device layer's pure parts: binder replies, dumps, code tables, quoting.

The outputs below are in the formats real phones print. Where each format comes from:

- `service call` replies: frameworks/native/cmds/service/service.cpp prints `Result: ` and the
  reply through Parcel::print (libbinder), a HexDump of little-endian 32-bit words with the ASCII
  column, one line when it is at most 16 bytes, else `0x%08x:` offset lines. String16 layout
  (int32 length in UTF-16 units, the chars, a NUL, padding to 4) is Parcel::writeString16.
- `dumpsys power`: PowerManagerService.dumpInternal (`mWakefulness=`, `Display Power: state=`).
- `dumpsys window`: PhoneWindowManager.dump -> KeyguardServiceDelegate.dump -> KeyguardStateMonitor.
- `dumpsys telephony.registry`: TelephonyRegistry.dump; CellIdentityLte/Gsm/Nr.toString (Android 9
  prints `mCellLocation=Bundle[...]`, 10+ `mCellIdentity=`, 11+ adds `mBands=[..]` and
  `mAdditionalPlmns={}`, NR prints `mNci = N`).
- `dumpsys isub`: SubscriptionInfo.toString (<= 13) and SubscriptionInfoInternal (14+); user builds
  print the ICCID cut after 9 digits (SubscriptionInfo.givePrintableIccid).
- `content query`: the `content` shell command's `Row: N col=value, col=value` lines.
- `ip link`: iproute2; `permaddr` appears when the in-use MAC differs from the permanent one.
- `getprop`: `[key]: [value]` lines.
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from harness.device.adb import parse_devices, parse_getprop, requote, sh_join, split_batch
from harness.device.identifiers import (
    SUBINFO_CODES,
    Harvest,
    KindReport,
    ParcelError,
    Source,
    normal_mac,
    parcel_string,
    parse_bt_address,
    parse_cell_ids,
    parse_content_rows,
    parse_ip_link,
    parse_isub_iccids,
    parse_ssaid,
    parse_subscriptions,
    parse_wifi_randomized,
    subinfo_call,
    subinfo_codes,
    universal_mac,
    valid_iccid,
    valid_imei,
    valid_imsi,
)
from harness.device.lifecycle import parse_keyguard, parse_power, parse_wm_size, pattern_points, secret_keys
from harness.device.preconditions import effective_private_dns, parse_data_connection, parse_wifi_status
from harness.device.select import parse_spec
from harness.errors import DeviceError
from harness.identifiers import IdentifierSet, Kind

# --- binder replies -----------------------------------------------------------------------

IMEI_REPLY = """Result: Parcel(
  0x00000000: 00000000 0000000f 00350033 00320038 '........3.5.8.2.'
  0x00000010: 00300034 00350030 00310031 00310031 '4.0.0.5.1.1.1.1.'
  0x00000020: 00310031 00000030                   '1.1.0...        ')
"""

NULL_REPLY = "Result: Parcel(00000000 ffffffff   '........')\n"

# Android 10+ as the shell user: TelephonyPermissions refuses device identifiers
SECURITY_REPLY = """Result: Parcel(
  0x00000000: ffffffff 0000005f 00650067 00440074 '...._...g.e.t.D.'
  0x00000010: 00760065 00630069 00490065 00460064 'e.v.i.c.e.I.d.F.'
  0x00000020: 0072006f 00680050 006e006f 003a0065 'o.r.P.h.o.n.e.:.'
  0x00000030: 00540020 00650068 00750020 00650073 ' .T.h.e. .u.s.e.'
  0x00000040: 00200072 00300032 00300030 00640020 'r. .2.0.0.0. .d.'
  0x00000050: 0065006f 00200073 006f006e 00200074 'o.e.s. .n.o.t. .'
  0x00000060: 0065006d 00740065 00740020 00650068 'm.e.e.t. .t.h.e.'
  0x00000070: 00720020 00710065 00690075 00650072 ' .r.e.q.u.i.r.e.'
  0x00000080: 0065006d 0074006e 00200073 006f0074 'm.e.n.t.s. .t.o.'
  0x00000090: 00610020 00630063 00730065 00200073 ' .a.c.c.e.s.s. .'
  0x000000a0: 00650064 00690076 00650063 00690020 'd.e.v.i.c.e. .i.'
  0x000000b0: 00650064 0074006e 00660069 00650069 'd.e.n.t.i.f.i.e.'
  0x000000c0: 00730072 0000002e 00000000          'r.s.........    ')
"""

ICCID_REPLY = """Result: Parcel(
  0x00000000: 00000000 00000013 00390038 00370034 '........8.9.4.7.'
  0x00000010: 00380030 00300030 00320031 00340033 '0.8.0.0.1.2.3.4.'
  0x00000020: 00360035 00380037 00300039 00000031 '5.6.7.8.9.0.1...')
"""

# a reply carrying StrictMode violations first (EX_HAS_STRICTMODE_REPLY_HEADER, -128)
STRICTMODE_REPLY = """Result: Parcel(
  0x00000000: ffffff80 00000008 00000012 0000000f '................'
  0x00000010: 00340032 00300032 00310031 00330032 '2.4.2.0.1.1.2.3.'
  0x00000020: 00350034 00370036 00390038 00000030 '4.5.6.7.8.9.0...')
"""


def test_parcel_string_reads_a_multi_line_reply() -> None:
    assert parcel_string(IMEI_REPLY) == "358240051111110"
    assert parcel_string(ICCID_REPLY) == "8947080012345678901"


def test_parcel_null_and_exception() -> None:
    assert parcel_string(NULL_REPLY) is None
    with pytest.raises(ParcelError, match="SecurityException: getDeviceIdForPhone: The user 2000 does not meet"):
        parcel_string(SECURITY_REPLY)


def test_parcel_skips_a_strictmode_header() -> None:
    assert parcel_string(STRICTMODE_REPLY) == "242011234567890"


@pytest.mark.parametrize("text", [
    "service: Service iphonesubinfo does not exist\n",
    'Result: Parcel(Error: 0xffffffffffffffb6 "Not a data message")\n',
    "/system/bin/sh: service: inaccessible or not found\n",
    "",
])
def test_parcel_errors_are_parcel_errors(text: str) -> None:
    with pytest.raises(ParcelError):
        parcel_string(text)


def test_ascii_column_hex_lookalikes_are_ignored() -> None:
    # the ASCII column of a reply can hold 8 hex-looking characters; only the word columns count
    text = "Result: Parcel(00000000 ffffffff   'deadbeef')"
    assert parcel_string(text) is None


# --- IPhoneSubInfo codes per release --------------------------------------------------------

@pytest.mark.parametrize(("sdk", "release", "imei_for_phone", "imsi", "iccid"), [
    (26, "8", 3, 8, 12), (27, "8", 3, 8, 12),
    (28, "9-10", 3, 8, 11), (29, "9-10", 3, 8, 11),
    (30, "11-14", 4, 10, 14), (33, "11-14", 4, 10, 14), (34, "11-14", 4, 10, 14),
    (35, "15", 4, 10, 15), (36, "15", 4, 10, 15),
])
def test_subinfo_codes_follow_the_aidl_of_each_release(sdk: int, release: str, imei_for_phone: int, imsi: int, iccid: int) -> None:
    codes = subinfo_codes(sdk)
    assert codes.release == release
    assert (codes.device_id_for_phone, codes.subscriber_id_for_subscriber, codes.icc_serial_for_subscriber) == \
        (imei_for_phone, imsi, iccid)


def test_subinfo_call_passes_a_null_feature_id_from_android_11() -> None:
    old, new = subinfo_codes(28), subinfo_codes(30)
    assert subinfo_call(old.device_id_for_phone, codes=old, index=0) == \
        "service call iphonesubinfo 3 i32 0 s16 com.android.shell"
    assert subinfo_call(new.device_id_for_phone, codes=new, index=1) == \
        "service call iphonesubinfo 4 i32 1 s16 com.android.shell i32 -1"
    assert subinfo_call(new.device_id, codes=new, feature=False) == "service call iphonesubinfo 1 s16 com.android.shell"
    assert [first for first, _ in SUBINFO_CODES] == sorted(first for first, _ in SUBINFO_CODES)


# --- shapes -----------------------------------------------------------------------------------

def test_identifier_shapes() -> None:
    assert valid_imei("358240051111110") and not valid_imei("358240051111111") and not valid_imei("000000000000000")
    assert valid_iccid("8947080012345678901") and valid_iccid("89470800123456789012F") and not valid_iccid("1234567890123456789")
    assert valid_imsi("242011234567890", "24201") and not valid_imsi("242011234567890", "24202")
    assert normal_mac("AA:BB:CC:00:11:22") == "aa:bb:cc:00:11:22" and normal_mac("02:00:00:00:00:00") is None
    assert normal_mac("404E36A1B2C3") == "40:4e:36:a1:b2:c3"
    assert universal_mac("40:4e:36:a1:b2:c3") and not universal_mac("9a:12:34:56:78:9a")


# --- dumps ------------------------------------------------------------------------------------

REGISTRY_9 = """last known state:
  Phone Id=0
    mCallState=0
    mServiceState=0 0 voice home data home Telenor Telenor 24201 Telenor Telenor 24201  LTE LTE CSS not supported -1 -1 RoamInd=-1 DefRoamInd=-1 EmergOnly=false
    mDataActivity=0
    mDataConnectionState=2
    mCellLocation=Bundle[{psc=-1, cid=20535572, lac=10504}]
    mCellInfo=[CellInfoLte:{mRegistered=YES mTimeStampType=oem_ril mTimeStamp=84461929375339ns mCellConnectionStatus=0 CellIdentityLte:{ mCi=20535572 mPci=411 mTac=10504 mEarfcn=6400 mBandwidth=2147483647 mMcc=242 mMnc=01 mAlphaLong=Telenor mAlphaShort=Telenor} CellSignalStrengthLte: ss=26 rsrp=-96 rsrq=-10 rssnr=120 cqi=2147483647 ta=2147483647}, CellInfoLte:{mRegistered=NO mTimeStampType=oem_ril mTimeStamp=84461929375339ns mCellConnectionStatus=0 CellIdentityLte:{ mCi=2147483647 mPci=106 mTac=2147483647 mEarfcn=6400 mBandwidth=2147483647 mMcc=null mMnc=null mAlphaLong= mAlphaShort=} CellSignalStrengthLte: ss=99 rsrp=-110 rsrq=-15 rssnr=2147483647 cqi=2147483647 ta=2147483647}]
"""

REGISTRY_11 = """last known state:
  Phone Id=0
    mCallState=0
    mDataActivity=0
    mDataConnectionState=0
    mCellIdentity=CellIdentityLte:{ mCi=20535572 mPci=411 mTac=10504 mEarfcn=6400 mBands=[20] mBandwidth=10000 mMcc=242 mMnc=01 mAlphaLong=Telenor mAlphaShort=Telenor mAdditionalPlmns={} mCsgInfo=null}
    mCellInfo=[CellInfoLte:{mRegistered=YES mTimeStamp=1234ns mCellConnectionStatus=1 CellIdentityLte:{ mCi=20535572 mPci=411 mTac=10504 mEarfcn=6400 mBands=[20] mBandwidth=10000 mMcc=242 mMnc=01 mAlphaLong=Telenor mAlphaShort=Telenor mAdditionalPlmns={} mCsgInfo=null} CellSignalStrengthLte: rssi=-67 rsrp=-96 rsrq=-10 rssnr=12 cqi=2147483647 ta=2147483647 level=3 parametersUseForLevel=0}, CellInfoLte:{mRegistered=NO mTimeStamp=1234ns mCellConnectionStatus=0 CellIdentityLte:{ mCi=20535573 mPci=106 mTac=10504 mEarfcn=6400 mBands=[] mBandwidth=2147483647 mMcc=null mMnc=null mAlphaLong= mAlphaShort= mAdditionalPlmns={} mCsgInfo=null} CellSignalStrengthLte: rssi=2147483647 rsrp=-110 rsrq=-15 rssnr=2147483647 cqi=2147483647 ta=2147483647 level=1 parametersUseForLevel=0}]
  Phone Id=1
    mDataConnectionState=-1
    mCellIdentity=null
"""

REGISTRY_14_NR = """    mCellIdentity=CellIdentityNr:{ mPci = 1 mTac = 70 mNrArfcn = 627264 mBands = [78] mMcc = 242 mMnc = 02 mNci = 4718593 mAlphaLong = Telia mAlphaShort = Telia mAdditionalPlmns = {}}
    mCellInfo=[CellInfoNr:{ mRegistered=YES mTimeStamp=9ns mCellConnectionStatus=1 CellIdentityNr:{ mPci = 1 mTac = 70 mNrArfcn = 627264 mBands = [78] mMcc = 242 mMnc = 02 mNci = 4718593 mAlphaLong = Telia mAlphaShort = Telia mAdditionalPlmns = {}} CellSignalStrengthNr:{ ssRsrp = -90 }}, CellInfoGsm:{mRegistered=NO mTimeStamp=9ns CellIdentityGsm:{ mLac=2147483647 mCid=2147483647 mArfcn=12 mBsic=0x7 mMcc=null mMnc=null mAlphaLong= mAlphaShort= mAdditionalPlmns={}} CellSignalStrengthGsm: rssi=-79 ber=2147483647 mTa=2147483647 mLevel=3}]
"""


@pytest.mark.parametrize(("text", "expected"), [
    (REGISTRY_9, ["20535572"]),
    (REGISTRY_11, ["20535572", "20535573"]),
    (REGISTRY_14_NR, ["4718593"]),
    ("    mCellIdentity=null\n", []),
])
def test_cell_ids_serving_cell_first_and_invalid_values_dropped(text: str, expected: list[str]) -> None:
    assert parse_cell_ids(text) == expected


def test_data_connection_state() -> None:
    assert parse_data_connection(REGISTRY_9) is True
    assert parse_data_connection(REGISTRY_11) is False
    assert parse_data_connection("nothing here") is None


ISUB_13 = """SubscriptionController:
 defaultSubId=1
 defaultDataSubId=1
 ++++++++++++++++++++++++++++++++
 ActiveSubInfoList:
  {id=1 iccId=894708001[****] simSlotIndex=0 carrierId=1950 displayName=Telenor carrierName=Telenor nameSource=0 iconTint=-16746133 mNumber=[****] dataRoaming=0 iconBitmap=android.graphics.Bitmap@f00 mcc=242 mnc=01 countryIso=no isEmbedded=false}
  {id=3 iccId=894602001[****] simSlotIndex=1 carrierId=1882 displayName=Telia carrierName=Telia nameSource=0}
 ++++++++++++++++++++++++++++++++
"""

ISUB_14_USERDEBUG = """SubscriptionManagerService:
  All subscriptions:
    [SubscriptionInfoInternal: id=1 simSlotIndex=0 portIndex=0 isEmbedded=0 isRemovableEmbedded=0 carrierId=1950 displayName=Telenor carrierName=Telenor isOpportunistic=0 groupUuid= groupOwner= displayNameSource=CARRIER iconTint=-16746133 number=+4791234567 dataRoaming=0 mcc=242 mnc=01 ehplmns= hplmns= cardString=8947080012345678901 cardId=0 nativeAccessRules= carrierConfigAccessRules= countryIso=no profileClass=-1 type=LOCAL_SIM areUiccApplicationsEnabled=1 usageSetting=DEFAULT iccId=8947080012345678901]
    [SubscriptionInfoInternal: id=2 simSlotIndex=-1 iccId=8946020012345678901]
"""


def test_subscriptions_map_sub_to_slot_in_both_formats() -> None:
    assert parse_subscriptions(ISUB_13) == {1: 0, 3: 1}
    assert parse_subscriptions(ISUB_14_USERDEBUG) == {1: 0}


def test_isub_iccid_only_when_printed_whole() -> None:
    assert parse_isub_iccids(ISUB_13) == {}
    assert parse_isub_iccids(ISUB_14_USERDEBUG) == {0: "8947080012345678901"}


def test_content_rows() -> None:
    text = ("Row: 0 _id=1, icc_id=8947080012345678901, sim_id=0, display_name=Telenor, number=+4791234567\n"
            "Row: 1 _id=2, icc_id=8946020012345678901, sim_id=-1, display_name=Telia, number=NULL\n")
    rows = parse_content_rows(text)
    assert rows[0]["icc_id"] == "8947080012345678901" and rows[0]["sim_id"] == "0"
    assert rows[1]["sim_id"] == "-1" and rows[1]["number"] == "NULL"


def test_ip_link_current_and_permanent() -> None:
    randomized = ("23: wlan0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 qdisc mq state UP mode DORMANT group "
                  "default qlen 3000\n    link/ether 9a:12:34:56:78:9a brd ff:ff:ff:ff:ff:ff permaddr 40:4e:36:a1:b2:c3\n")
    assert parse_ip_link(randomized) == ("9a:12:34:56:78:9a", "40:4e:36:a1:b2:c3")
    plain = "23: wlan0: <BROADCAST> mtu 1500\n    link/ether 40:4e:36:a1:b2:c3 brd ff:ff:ff:ff:ff:ff\n"
    assert parse_ip_link(plain) == ("40:4e:36:a1:b2:c3", None)


def test_wifi_dumps() -> None:
    dump = ('WifiConfigManager - Configured networks Begin ----\n'
            ' ID: 0 SSID: "phonehome-test" PROVIDER-NAME: null BSSID: null FQDN: null\n'
            ' mRandomizedMacAddress: 9a:12:34:56:78:9a\n macRandomizationSetting: 1\n'
            ' ID: 1 SSID: "other" mRandomizedMacAddress: 02:00:00:00:00:00\n')
    assert parse_wifi_randomized(dump) == ["9a:12:34:56:78:9a"]
    status = ('Wifi is enabled\nWifi scanning is always available\n==== Primary ClientModeManager instance ====\n'
              'Wifi is connected to "phonehome-test"\nWifiInfo: SSID: "phonehome-test", BSSID: 02:11:22:33:44:55, '
              'MAC: 9a:12:34:56:78:9a, Supplicant state: COMPLETED, Wi-Fi standard: 4\n')
    assert parse_wifi_status(status) == (True, "phonehome-test")
    dumpsys_8 = ('Wi-Fi is enabled\nmWifiInfo SSID: lab, BSSID: 02:11:22:33:44:55, MAC: 40:4e:36:a1:b2:c3, '
                 'Supplicant state: COMPLETED, RSSI: -55\n')
    assert parse_wifi_status(dumpsys_8) == (True, "lab")
    assert parse_wifi_status("Wifi is disabled\n") == (False, None)


def test_bt_and_ssaid() -> None:
    assert parse_bt_address("Bluetooth Status\n  enabled: true\n  state: ON\n  address: 22:22:96:A1:B2:C3\n"
                            "  name: Nokia 7 plus\n") == "22:22:96:a1:b2:c3"
    xml = ('<?xml version=\'1.0\' encoding=\'utf-8\' standalone=\'yes\' ?>\n<settings version="-1">\n'
           '  <setting id="0" name="userkey" value="A1B2C3D4E5F60718293A4B5C6D7E8F90A1B2C3D4E5F60718293A4B5C6D7E8F90" '
           'package="android" defaultValue="..." defaultSysSet="false" tag="null" />\n'
           '  <setting id="1" name="10123" value="5d3c2b1a09f8e7d6" package="com.qualcomm.qti.autoregistration" '
           'defaultValue="5d3c2b1a09f8e7d6" defaultSysSet="false" tag="null" />\n</settings>\n')
    assert parse_ssaid(xml) == {"com.qualcomm.qti.autoregistration": "5d3c2b1a09f8e7d6"}


# --- screen / keyguard ------------------------------------------------------------------------

POWER_11 = """POWER MANAGER (dumpsys power)

Power Manager State:
  Settings power_manager_constants:
    no_cached_wake_locks=true
  mDirty=0x0
  mWakefulness=Asleep
  mWakefulnessChanging=false
  mIsPowered=true
  mPlugType=2
Display Power: state=OFF
"""

WINDOW_POLICY_9 = """WINDOW MANAGER POLICY STATE (dumpsys window policy)
    mSafeMode=false mSystemReady=true mSystemBooted=true
    mShowingDream=false mDreamingLockscreen=true mDreamingSleepToken=null
    KeyguardServiceDelegate
      showing=true
      showingAndNotOccluded=true
      inputRestricted=true
      occluded=false
      secure=true
      dreaming=false
      KeyguardStateMonitor
        mIsShowing=true
        mSimSecure=false
"""


def test_power_and_keyguard() -> None:
    assert parse_power(POWER_11) == ("Asleep", "OFF")
    assert parse_keyguard(WINDOW_POLICY_9) == (True, True)
    unlocked = WINDOW_POLICY_9.replace("showing=true", "showing=false").replace("mIsShowing=true", "mIsShowing=false")
    assert parse_keyguard(unlocked)[0] is False
    assert parse_keyguard("KeyguardController:\n    mKeyguardShowing=false\n    mAodShowing=false\n") == (False, None)
    assert parse_keyguard("no keyguard here") == (None, None)


def test_wm_size_prefers_override() -> None:
    assert parse_wm_size("Physical size: 1080x2160\n") == (1080, 2160)
    assert parse_wm_size("Physical size: 1440x3120\nOverride size: 1080x2340\n") == (1080, 2340)


def test_secret_keys_and_pattern() -> None:
    assert secret_keys("12a") == [(8, 0), (9, 0), (29, 0)]
    assert secret_keys("A!") == [(29, 1), (8, 1)]
    with pytest.raises(DeviceError):
        secret_keys("é")
    points = pattern_points("1-5-9", (0, 300, 300, 600))
    assert points == [(50, 350), (150, 450), (250, 550)]
    with pytest.raises(DeviceError):
        pattern_points("1", (0, 0, 3, 3))


def test_private_dns_default() -> None:
    assert effective_private_dns("null", 28) == "opportunistic"
    assert effective_private_dns("off", 30) == "off"
    assert effective_private_dns(None, 26) == "unsupported"


# --- adb-level helpers ------------------------------------------------------------------------

def test_getprop_and_devices_listing() -> None:
    props = parse_getprop("[ro.build.version.sdk]: [30]\n[gsm.sim.state]: [READY,ABSENT]\n[multi]: [a\nb]\n")
    assert props == {"ro.build.version.sdk": "30", "gsm.sim.state": "READY,ABSENT", "multi": "a\nb"}
    listing = "R58M123456\tdevice\n127.0.0.1:5555\toffline\n0123ABC\tno permissions (missing udev rules?)\n"
    assert parse_devices(listing) == [("R58M123456", "device"), ("127.0.0.1:5555", "offline"),
                                      ("0123ABC", "no permissions (missing udev rules?)")]


def test_split_batch_keeps_outputs_and_exit_codes_apart() -> None:
    tag = "PHSEPabc"
    output = (f"\n{tag}:begin:0\nhello\n\n{tag}:end:0:0\n"
              f"\n{tag}:begin:1\n\n{tag}:end:1:3\n")
    results = split_batch(output, tag, ["echo hello", "false"])
    assert [(r.stdout, r.exit_code) for r in results] == [("hello", 0), ("", 3)]
    assert split_batch("", tag, ["x"])[0].exit_code is None


@pytest.mark.parametrize("hostile", [
    "com.example; rm -rf /", "$(reboot)", "`reboot`", "a'b\"c", "x && reboot", "x | sh", "> /sdcard/x", "\n reboot",
])
def test_quoting_makes_hostile_values_one_literal_word(hostile: str, tmp_path: Path) -> None:
    # the phone's shell is mksh; POSIX sh parses these quotes identically, so run the real thing
    marker = tmp_path / "ran"
    line = sh_join(["printf", "%s", hostile.replace("reboot", f"touch {marker}")])
    out = subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True)
    assert out.stdout == hostile.replace("reboot", f"touch {marker}")
    assert not marker.exists()


def test_requote_keeps_words_but_not_syntax(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    line = requote(f"printf %s-%s pm 'clear com.x;' touch {marker}")
    assert shlex.split(line) == ["printf", "%s-%s", "pm", "clear com.x;", "touch", str(marker)]
    hostile = requote(f"echo x; touch {marker}")
    out = subprocess.run(["sh", "-c", hostile], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"x; touch {marker}" and not marker.exists()
    with pytest.raises(DeviceError):
        requote("echo 'unterminated")


@pytest.mark.parametrize(("text", "serial", "server"), [
    ("R58M123456", "R58M123456", None),
    ("192.168.1.20:5555", "192.168.1.20:5555", None),
    ("R58M123456@farm-7.lab:5037", "R58M123456", "farm-7.lab:5037"),
    ("10.0.0.5:5555@127.0.0.1:15037", "10.0.0.5:5555", "127.0.0.1:15037"),
    ("emulator-5554@[::1]:5037", "emulator-5554", "::1:5037"),
])
def test_parse_spec(text: str, serial: str, server: str | None) -> None:
    spec = parse_spec(text)
    assert spec.serial == serial and spec.server_label == server


@pytest.mark.parametrize("bad", ["", "R58@host", "R58@host:99999", "virtual:clean"])
def test_parse_spec_errors(bad: str) -> None:
    with pytest.raises(DeviceError):
        parse_spec(bad)


# --- coverage -------------------------------------------------------------------------------

def test_harvest_missing_fails_closed_on_partial_and_unknown() -> None:
    reports = {kind: KindReport(kind) for kind in Kind}
    reports[Kind.IMEI].source = Source.READ
    reports[Kind.WIFI_MAC].source = Source.READ
    reports[Kind.WIFI_MAC].partial = "only randomized MACs were read"
    reports[Kind.IMSI].source = Source.PROFILE
    harvest = Harvest(IdentifierSet({Kind.IMEI: ["358240051111110"]}), IdentifierSet(), reports)
    missing = harvest.missing([Kind.IMEI, Kind.IMSI, Kind.ICCID, Kind.WIFI_MAC])
    assert [m.split(":")[0] for m in missing] == ["iccid", "wifi_mac"]
    assert harvest.coverage["imei"] == "read" and harvest.coverage["imsi"] == "profile"
    assert harvest.coverage["cell_id"] == "unknown"
    assert "358240051111110" not in " ".join(harvest.summary())
