"""Reading a phone's identifiers over adb, per Android release, with an explicit coverage report.

Nothing here is assumed: every value is read by a named method, checked against the shape of its
kind (IMEI Luhn digit, ICCID `89` prefix, IMSI starting with the SIM's MCC/MNC, MAC syntax) and
dropped with a note when it fails, because OEMs reorder binder interfaces and a wrong value is
worse than an unknown one. The result says, per kind, whether it was read, taken from the
profile (profile values win) or is unknown, and which required kinds make the device
`unverified`.

Where each value comes from (Android 8 to 15; "root" = `su` on userdebug/rooted builds):

- imei: `service call iphonesubinfo` getDeviceIdForPhone(slot), getImeiForSubscriber(subId),
  getDeviceId, with codes per release (`SUBINFO_CODES`): the shell user on 8-9, usually a
  privileged caller (root) on 10+; `*imei*` system properties some vendors set.
- imsi: iphonesubinfo getSubscriberIdForSubscriber / getSubscriberId (root on 10+).
- iccid: iphonesubinfo getIccSerialNumberForSubscriber; `content://telephony/siminfo` (root);
  `dumpsys isub` prints it whole on userdebug builds.
- msisdn: iphonesubinfo getLine1NumberForSubscriber / getMsisdnForSubscriber; siminfo `number`.
- wifi_mac: `ip link` (the MAC in use, and `permaddr` = factory on kernels >= 5.6),
  `/sys/class/net/IF/address`, `ro.boot.wifimacaddr`-style properties, vendor persist files
  (root), `mRandomizedMacAddress` per saved network in `dumpsys wifi` (Android 10+). A universally
  administered address is the factory one; randomized ones are locally administered.
- bt_mac: `settings get secure bluetooth_address`, `dumpsys bluetooth_manager`,
  `ro.boot.btmacaddr`-style properties.
- serial: `ro.serialno`, `ro.boot.serialno`.
- android_id: `settings get secure android_id` is the *shell's* SSAID; since Android 8 every app
  (per signing key) sees its own, read as root from `settings_ssaid.xml` (`abx2xml` on 12+).
- cell_id: `dumpsys telephony.registry`: CellIdentityLte mCi, Gsm/Wcdma/Tdscdma mCid, Nr mNci,
  Cdma mBasestationId.
- meid: iphonesubinfo getDeviceIdForPhone on CDMA phones (14 hex digits), `*meid*` properties.

`dumpsys iphonesubinfo` prints nothing useful on Android 8-15 and is not used.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from harness.device.adb import Adb, ShellResult, sh_quote
from harness.identifiers import DEFAULT_REQUIRED, SLOTTED_KINDS, IdentifierSet, Kind, mask

SHELL_PACKAGE = "com.android.shell"


# --- binder replies -----------------------------------------------------------------------
class ParcelError(ValueError):
    """A `service call` reply that holds no string: an exception, an error, or garbage."""


_EXCEPTIONS = {
    -1: "SecurityException", -2: "BadParcelableException", -3: "IllegalArgumentException",
    -4: "NullPointerException", -5: "IllegalStateException", -7: "UnsupportedOperationException",
    -8: "ServiceSpecificException", -9: "ParcelableException", -11: "TransactionFailedException",
}
_EX_HAS_NOTED_APPOPS_REPLY_HEADER = -127
_EX_HAS_STRICTMODE_REPLY_HEADER = -128


def parcel_bytes(text: str) -> bytes:
    """The raw bytes of a `service call` reply (`Result: Parcel(...)` hex dump).

    Each 8-digit group is one little-endian 32-bit word; the quoted ASCII column and the
    `0x...:` offsets of multi-line dumps are ignored.
    """
    start = text.find("Result: Parcel(")
    if start < 0:
        problem = text.strip().splitlines()[0] if text.strip() else "no output"
        raise ParcelError(problem[:120])
    body = text[start + len("Result: Parcel("):]
    if body.lstrip().startswith("Error:"):
        raise ParcelError(body.strip().rstrip(")")[:120])
    data = bytearray()
    for line in body.splitlines():
        line = re.sub(r"^\s*0x[0-9a-fA-F]+:", "", line)
        line = line.split("'", 1)[0]
        for word in re.findall(r"(?<![0-9a-fA-F])[0-9a-fA-F]{8}(?![0-9a-fA-F])", line):
            data += int(word, 16).to_bytes(4, "little")
    return bytes(data)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def int32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise ParcelError("reply too short")
        value = int.from_bytes(self.data[self.pos:self.pos + 4], "little", signed=True)
        self.pos += 4
        return value

    def string16(self) -> str | None:
        length = self.int32()
        if length == -1:
            return None
        if length < 0 or self.pos + 2 * length > len(self.data):
            raise ParcelError("bad string length")
        raw = self.data[self.pos:self.pos + 2 * length]
        self.pos += (2 * (length + 1) + 3) & ~3
        return raw.decode("utf-16-le", errors="replace")


def parcel_string(text: str) -> str | None:
    """The String a binder method returned (None for null), or ParcelError with the exception."""
    reader = _Reader(parcel_bytes(text))
    code = reader.int32()
    if code == _EX_HAS_NOTED_APPOPS_REPLY_HEADER:
        for _ in range(max(0, reader.int32())):
            reader.string16()
            reader.pos += 16  # two longs of noted-op bits per attribution tag
        code = reader.int32()
    if code == _EX_HAS_STRICTMODE_REPLY_HEADER:
        size_at = reader.pos
        size = reader.int32()
        reader.pos = size_at + max(size, 4)
        code = 0
    if code != 0:
        name = _EXCEPTIONS.get(code, f"exception {code}")
        try:
            message = reader.string16() or ""
        except ParcelError:
            message = ""
        raise ParcelError(f"{name}: {message}".strip().rstrip(":"))
    return reader.string16()


# --- transaction codes of IPhoneSubInfo per release ---------------------------------------
@dataclass(frozen=True, slots=True)
class SubInfoCodes:
    """`service call iphonesubinfo` codes: FIRST_CALL_TRANSACTION (1) + position in the AIDL.

    Read from frameworks/base telephony/java/com/android/internal/telephony/IPhoneSubInfo.aidl
    (and the Stub classes generated from it) of each release. `feature` is True from Android 11,
    where most methods take a trailing `String callingFeatureId` (passed as null: `i32 -1`).
    """

    release: str
    feature: bool
    device_id: int  # getDeviceId(callingPackage)
    device_id_for_phone: int  # getDeviceIdForPhone(phoneId, pkg[, feature])
    imei_for_subscriber: int  # getImeiForSubscriber(subId, pkg[, feature])
    subscriber_id: int  # getSubscriberId(pkg)
    subscriber_id_for_subscriber: int
    icc_serial: int  # getIccSerialNumber(pkg)
    icc_serial_for_subscriber: int
    line1_for_subscriber: int
    msisdn_for_subscriber: int


# 8.0/8.1 (API 26-27): getDeviceId, getNaiForSubscriber, getDeviceIdForPhone, getImeiForSubscriber,
#   getDeviceSvn, getDeviceSvnUsingSubId, getSubscriberId, getSubscriberIdForSubscriber,
#   getGroupIdLevel1, getGroupIdLevel1ForSubscriber, getIccSerialNumber, ...ForSubscriber,
#   getLine1Number, ...ForSubscriber, getLine1AlphaTag, ...ForSubscriber, getMsisdn, ...ForSubscriber
# 9-10 (API 28-29): getGroupIdLevel1 removed, so everything from getIccSerialNumber moves up one.
# 11-14 (API 30-34): ...WithFeature variants inserted after getDeviceId, getSubscriberId and
#   getIccSerialNumber; a callingFeatureId argument added.
# 15 (API 35): getGroupIdLevel2ForSubscriber inserted after getGroupIdLevel1ForSubscriber.
SUBINFO_CODES: tuple[tuple[int, SubInfoCodes], ...] = (
    (26, SubInfoCodes("8", False, 1, 3, 4, 7, 8, 11, 12, 14, 18)),
    (28, SubInfoCodes("9-10", False, 1, 3, 4, 7, 8, 10, 11, 13, 17)),
    (30, SubInfoCodes("11-14", True, 1, 4, 5, 8, 10, 12, 14, 16, 20)),
    (35, SubInfoCodes("15", True, 1, 4, 5, 8, 10, 13, 15, 17, 21)),
)


def subinfo_codes(sdk: int) -> SubInfoCodes:
    """The code table for an API level; newer releases use the latest known (values are checked)."""
    chosen = SUBINFO_CODES[0][1]
    for first_sdk, codes in SUBINFO_CODES:
        if sdk >= first_sdk:
            chosen = codes
    return chosen


def subinfo_call(code: int, *, codes: SubInfoCodes, index: int | None = None,
                 package: str = SHELL_PACKAGE, feature: bool | None = None) -> str:
    """A `service call iphonesubinfo` command line; `index` is a phoneId or subId when the method takes one."""
    argv = ["service", "call", "iphonesubinfo", str(code)]
    if index is not None:
        argv += ["i32", str(index)]
    argv += ["s16", package]
    if codes.feature if feature is None else feature:
        argv += ["i32", "-1"]  # a String16 of length -1 is null
    return " ".join(sh_quote(a) for a in argv)


# --- shapes ------------------------------------------------------------------------------
def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def valid_imei(value: str) -> bool:
    return bool(re.fullmatch(r"\d{15}", value)) and luhn_ok(value) and value.strip("0") != ""


def valid_meid(value: str) -> bool:
    return bool(re.fullmatch(r"[0-9A-Fa-f]{14}", value)) and value.strip("0") != ""


def valid_iccid(value: str) -> bool:
    return bool(re.fullmatch(r"89\d{16,18}[Ff]?", value))


def valid_imsi(value: str, operator: str | None = None) -> bool:
    if not re.fullmatch(r"\d{14,15}", value) or value.strip("0") == "":
        return False
    return not operator or value.startswith(operator)


def valid_msisdn(value: str) -> bool:
    return bool(re.fullmatch(r"\+?\d{5,15}", value))


_MAC = re.compile(r"(?i)(?<![0-9a-f:])([0-9a-f]{2}(?::[0-9a-f]{2}){5})(?![0-9a-f:])")


def normal_mac(value: str) -> str | None:
    """`aa:bb:cc:dd:ee:ff` lower case, or None for no MAC / a placeholder (all zero, 02:00:00:00:00:00)."""
    value = value.strip()
    if re.fullmatch(r"[0-9A-Fa-f]{12}", value):
        value = ":".join(value[i:i + 2] for i in range(0, 12, 2))
    if not re.fullmatch(r"(?i)[0-9a-f]{2}(:[0-9a-f]{2}){5}", value):
        return None
    value = value.lower()
    if value in {"00:00:00:00:00:00", "02:00:00:00:00:00", "ff:ff:ff:ff:ff:ff"}:
        return None
    return value


def universal_mac(mac: str) -> bool:
    """True for a universally administered (factory) address; randomized MACs are local (bit 1)."""
    return not int(mac[:2], 16) & 0x02


# --- parsers of dumps --------------------------------------------------------------------
_CELL = re.compile(r"CellIdentity(Lte|Gsm|Wcdma|Tdscdma|Nr|Cdma):\{([^}]*)")
_CELL_FIELD = {"Lte": "mCi", "Gsm": "mCid", "Wcdma": "mCid", "Tdscdma": "mCid", "Nr": "mNci",
               "Cdma": "mBasestationId"}
_UNAVAILABLE = {2147483647, 9223372036854775807, 65535}
_BUNDLE_CID = re.compile(r"mCellLocation=Bundle\[\{[^}]*\bcid=(-?\d+)")


def parse_cell_ids(text: str) -> list[str]:
    """Serving/visible cell IDs from `dumpsys telephony.registry`, the serving cell first.

    `mCellIdentity=` (10+) and `CellInfo*:{mRegistered=YES` entries are the serving cell,
    `mCellLocation=Bundle[{... cid=N ...}]` is 8-9's; neighbours follow. NR prints `mNci = N`.
    """
    registered: list[str] = []
    others: list[str] = []
    for match in _BUNDLE_CID.finditer(text):
        value = int(match.group(1))
        if value > 0 and value not in _UNAVAILABLE and str(value) not in registered:
            registered.append(str(value))
    for match in _CELL.finditer(text):
        tech, body = match.groups()
        found = re.search(rf"\b{_CELL_FIELD[tech]}\s*=\s*(-?\d+)", body)
        if not found:
            continue
        value = int(found.group(1))
        if value <= 0 or value in _UNAVAILABLE:
            continue
        before = text[max(0, match.start() - 300):match.start()]
        serving = before.rsplit("\n", 1)[-1].rstrip().endswith("mCellIdentity=") or \
            "mRegistered=YES" in before.rsplit("CellInfo", 1)[-1]
        if str(value) in registered + others:
            continue
        (registered if serving else others).append(str(value))
    return registered + others


def parse_subscriptions(text: str) -> dict[int, int]:
    """subId -> slot from `dumpsys isub` (SubscriptionController <= 13, SubscriptionManagerService 14+)."""
    subs: dict[int, int] = {}
    for match in re.finditer(r"\bid=(\d+)\b[^\n]*?\bsimSlotIndex=(-?\d+)", text):
        sub, slot = int(match.group(1)), int(match.group(2))
        if slot >= 0:
            subs.setdefault(sub, slot)
    return subs


def parse_isub_iccids(text: str) -> dict[int, str]:
    """slot -> ICCID where `dumpsys isub` prints it whole (userdebug builds; user builds mask it)."""
    found: dict[int, str] = {}
    for line in text.splitlines():
        icc = re.search(r"\biccId=([0-9A-Fa-f]+)(?=[\s,}\]]|$)", line)
        slot = re.search(r"\bsimSlotIndex=(-?\d+)", line)
        if icc and slot and int(slot.group(1)) >= 0 and valid_iccid(icc.group(1)):
            found.setdefault(int(slot.group(1)), icc.group(1))
    return found


def parse_content_rows(text: str) -> list[dict[str, str]]:
    """`content query` output: `Row: N key=value, key=value` -> dicts (values may hold ", ")."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("Row:"):
            continue
        body = line.split(" ", 2)[2] if line.count(" ") >= 2 else ""
        row: dict[str, str] = {}
        for match in re.finditer(r"(?:^|, )(\w+)=(.*?)(?=, \w+=|$)", body):
            row[match.group(1)] = match.group(2)
        rows.append(row)
    return rows


def parse_ip_link(text: str) -> tuple[str | None, str | None]:
    """(current, permanent) MAC of an interface from `ip link show IF` (`permaddr` on newer kernels)."""
    current = re.search(r"link/ether\s+([0-9a-fA-F:]{17})", text)
    permanent = re.search(r"\bpermaddr\s+([0-9a-fA-F:]{17})", text)
    return (normal_mac(current.group(1)) if current else None,
            normal_mac(permanent.group(1)) if permanent else None)


def parse_wifi_randomized(text: str) -> list[str]:
    """Per-network randomized MACs from `dumpsys wifi` saved networks (Android 10+)."""
    macs = []
    for match in re.finditer(r"mRandomizedMacAddress[:=]\s*([0-9a-fA-F:]{17})", text):
        mac = normal_mac(match.group(1))
        if mac and mac not in macs:
            macs.append(mac)
    return macs


def parse_wifi_current(text: str) -> str | None:
    """The MAC the connected network uses, from WifiInfo in `dumpsys wifi` (`MAC: aa:bb:...`)."""
    match = re.search(r"\bMAC:\s*([0-9a-fA-F:]{17})", text)
    return normal_mac(match.group(1)) if match else None


def parse_bt_address(text: str) -> str | None:
    """`address: AA:BB:...` from `dumpsys bluetooth_manager`."""
    match = re.search(r"(?im)^\s*(?:address|Address):\s*([0-9a-fA-F:]{17})\s*$", text)
    return normal_mac(match.group(1)) if match else None


def parse_ssaid(text: str) -> dict[str, str]:
    """package -> Android ID from `settings_ssaid.xml` (as text; `abx2xml` converts 12+'s binary)."""
    ids: dict[str, str] = {}
    for match in re.finditer(r"<setting\b([^>]*)/?>", text):
        attrs = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        value, package = attrs.get("value", ""), attrs.get("package", "")
        if re.fullmatch(r"[0-9a-fA-F]{8,32}", value) and package and package != "android":
            ids.setdefault(package, value.lower())
    return ids


def props_matching(props: Mapping[str, str], words: Sequence[str]) -> dict[str, str]:
    """System properties whose key contains one of `words` (vendor properties holding identifiers)."""
    return {k: v for k, v in props.items() if any(w in k.lower() for w in words) and v}


# --- coverage ----------------------------------------------------------------------------
class Source(StrEnum):
    READ = "read"
    PROFILE = "profile"
    UNKNOWN = "unknown"


@dataclass(slots=True)
class KindReport:
    """How one kind was obtained: the methods that yielded values and what was tried and failed."""

    kind: Kind
    source: Source = Source.UNKNOWN
    methods: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    partial: str | None = None  # why the known values may not be the ones apps send

    def to_json(self) -> dict[str, object]:
        return {"source": str(self.source), "methods": self.methods, "notes": self.notes, "partial": self.partial}


@dataclass(slots=True)
class Harvest:
    """The identifiers to look for (profile over read) and how each kind was obtained."""

    identifiers: IdentifierSet
    read: IdentifierSet
    reports: dict[Kind, KindReport]
    rooted: bool = False
    sdk: int = 0

    @property
    def coverage(self) -> dict[str, str]:
        """DESIGN.md's coverage object: kind -> read | profile | unknown."""
        return {str(kind): str(self.reports[kind].source) for kind in Kind}

    def missing(self, require: Iterable[Kind | str] = DEFAULT_REQUIRED) -> list[str]:
        """One reason per required kind that is not (fully) known: each makes the device unverified."""
        reasons = []
        for raw in require:
            kind = Kind(raw)
            report = self.reports[kind]
            if report.source is Source.UNKNOWN:
                tried = "; ".join(report.notes[-3:]) or "no method applies"
                reasons.append(f"{kind}: required but unknown ({tried}); give it in the profile's identifiers")
            elif report.source is Source.READ and report.partial:
                reasons.append(f"{kind}: required but only partly known ({report.partial}); "
                               "give it in the profile's identifiers")
        return reasons

    def summary(self) -> list[str]:
        """Human lines, masked: `imei: read (2 values: imei[1] …518, imei[2] …004) via ...`."""
        lines = []
        for kind in Kind:
            report = self.reports[kind]
            values = [i.masked for i in self.identifiers if i.kind is kind and i.value]
            shown = f" ({', '.join(values)})" if values else ""
            via = f" via {', '.join(report.methods)}" if report.methods else ""
            extra = f" [partial: {report.partial}]" if report.partial else ""
            lines.append(f"{kind}: {report.source}{shown}{via}{extra}")
        return lines

    def to_json(self) -> dict[str, object]:
        """For reports: coverage and methods, never a raw value."""
        return {"coverage": self.coverage, "rooted": self.rooted, "sdk": self.sdk,
                "kinds": {str(k): r.to_json() for k, r in self.reports.items()}}


class _Collector:
    """Accumulates values per kind (slots for slotted kinds) with the method that produced each."""

    def __init__(self) -> None:
        self.slotted: dict[Kind, dict[int, str]] = {}
        self.alternatives: dict[Kind, list[str]] = {}
        self.reports = {kind: KindReport(kind) for kind in Kind}

    def add(self, kind: Kind, value: str, method: str, slot: int | None = None) -> bool:
        report = self.reports[kind]
        if kind in SLOTTED_KINDS:
            slot = slot or 1
            slots = self.slotted.setdefault(kind, {})
            if slot in slots:
                if slots[slot] != value:
                    report.notes.append(f"{method}: {mask(kind, slot, value)} differs from the first value; "
                                        "kept the first")
                return False
            slots[slot] = value
        else:
            values = self.alternatives.setdefault(kind, [])
            if value in values:
                return False
            values.append(value)
        if method not in report.methods:
            report.methods.append(method)
        return True

    def note(self, kind: Kind, text: str) -> None:
        if text not in self.reports[kind].notes:
            self.reports[kind].notes.append(text)

    def has(self, kind: Kind, slot: int | None = None) -> bool:
        if kind in SLOTTED_KINDS:
            return (slot or 1) in self.slotted.get(kind, {}) if slot else bool(self.slotted.get(kind))
        return bool(self.alternatives.get(kind))

    def identifier_set(self) -> IdentifierSet:
        values: dict[Kind, list[str]] = {}
        for kind, slots in self.slotted.items():
            if slots:
                values[kind] = [slots.get(s, "") for s in range(1, max(slots) + 1)]
        for kind, alts in self.alternatives.items():
            if alts:
                values[kind] = list(alts)
        return IdentifierSet(values)


# --- the harvest -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Root:
    """How to run a command as root on this phone: already root, `su 0`, `su -c`, or not at all."""

    form: str | None  # "uid0", "su0", "suc" or None

    def wrap(self, command: str) -> str:
        if self.form == "su0":
            return f"su 0 sh -c {sh_quote(command)}"
        if self.form == "suc":
            return f"su -c {sh_quote(command)}"
        return command

    @property
    def available(self) -> bool:
        return self.form is not None


def detect_root(adb: Adb) -> Root:
    """Whether commands can run as uid 0 (adbd as root, or an `su` that answers without a prompt)."""
    probe = adb.run_many(["id -u", "command -v su || which su"], timeout=15)
    if probe[0].stdout.strip() == "0":
        return Root("uid0")
    if not (probe[1].ok and "/" in probe[1].stdout):
        return Root(None)
    tries = adb.run_many(["su 0 id -u", "su -c 'id -u'"], timeout=20)
    if tries[0].stdout.strip().endswith("0") and tries[0].ok:
        return Root("su0")
    if tries[1].stdout.strip().endswith("0") and tries[1].ok:
        return Root("suc")
    return Root(None)


_WIFI_PROP_WORDS = ("wifimac", "wifi_mac", "wlan_mac", "wlanmac", "wifi.mac", "wlan.mac", "macaddr.wifi")
_BT_PROP_WORDS = ("btmac", "bt_mac", "bt.mac", "bluetooth.mac", "bdaddr", "bt_addr", "btaddr")
_WIFI_MAC_FILES = ("/persist/wlan_mac.bin", "/mnt/vendor/persist/wlan_mac.bin", "/vendor/factory/wlan_mac.bin",
                   "/efs/wifi/.mac.info", "/mnt/vendor/efs/wifi/.mac.info", "/data/vendor/wifi/wlan_mac.bin",
                   "/persist/factory/wlan/wlan_mac.bin")
_SSAID = "/data/system/users/0/settings_ssaid.xml"


class Harvester:
    """Reads identifiers from one phone; `run()` returns a `Harvest`.

    About five shell calls in all (batched): discovery, the no-root reads, and the root reads
    when root is available.
    """

    def __init__(self, adb: Adb, props: Mapping[str, str], *, root: Root | None = None,
                 timeout: float = 60.0) -> None:
        self.adb = adb
        self.props = dict(props)
        self.timeout = timeout
        self.sdk = _int(props.get("ro.build.version.sdk"), 0)
        self.codes = subinfo_codes(self.sdk)
        self.root = root
        self.found = _Collector()
        self.sim_states = [s.strip() for s in props.get("gsm.sim.state", "").split(",")]
        operators = [o.strip() for o in props.get("gsm.sim.operator.numeric", "").split(",")]
        self.operators = {i + 1: op for i, op in enumerate(operators) if re.fullmatch(r"\d{5,6}", op)}
        self.slots = max(len(self.sim_states), _slot_count(props), 1)
        self.iface = props.get("wifi.interface") or "wlan0"

    def run(self, overrides: IdentifierSet | None = None) -> Harvest:
        if self.root is None:
            self.root = detect_root(self.adb)
        self._from_props()
        subs = self._shell_pass()
        if self.root.available:
            self._root_pass(subs)
        else:
            self._note_no_root()
        read = self.found.identifier_set()
        reports = self.found.reports
        self._judge_partial(read)
        overrides = overrides or IdentifierSet()
        for kind in Kind:
            if overrides.known(kind):
                reports[kind].source = Source.PROFILE
                reports[kind].partial = None
                reports[kind].methods.insert(0, "profile")
            elif read.known(kind):
                reports[kind].source = Source.READ
        return Harvest(read.merged(overrides), read, reports, rooted=self.root.available, sdk=self.sdk)

    # --- passes ---------------------------------------------------------------------------
    def _from_props(self) -> None:
        for key in ("ro.serialno", "ro.boot.serialno"):
            value = self.props.get(key, "").strip()
            placeholder = value.lower() in {"unknown", "0123456789abcdef"}
            if value and not placeholder and re.fullmatch(r"[\x21-\x7e]{4,64}", value):
                self.found.add(Kind.SERIAL, value, f"getprop {key}")
        for key, value in props_matching(self.props, ("imei",)).items():
            for part in re.split(r"[,\s]+", value):
                if valid_imei(part):
                    self.found.add(Kind.IMEI, part, f"getprop {key}", _slot_from_key(key))
        for key, value in props_matching(self.props, ("meid",)).items():
            if valid_meid(value.strip()):
                self.found.add(Kind.MEID, value.strip().upper(), f"getprop {key}", _slot_from_key(key))
        for key, value in props_matching(self.props, ("iccid",)).items():
            if valid_iccid(value.strip()):
                self.found.add(Kind.ICCID, value.strip(), f"getprop {key}", _slot_from_key(key))
        for key, value in props_matching(self.props, _WIFI_PROP_WORDS).items():
            mac = normal_mac(value)
            if mac:
                self.found.add(Kind.WIFI_MAC, mac, f"getprop {key}")
        for key, value in props_matching(self.props, _BT_PROP_WORDS).items():
            mac = normal_mac(value)
            if mac:
                self.found.add(Kind.BT_MAC, mac, f"getprop {key}")

    def _subinfo_commands(self, subs: Mapping[int, int], package: str) -> list[tuple[Kind, int, str, str]]:
        """(kind, slot, method label, command) for every iphonesubinfo read that applies."""
        c = self.codes
        calls: list[tuple[Kind, int, str, str]] = []
        for slot in range(1, max(self.slots, 2) + 1):  # a single-SIM phone may still have two modems
            calls.append((Kind.IMEI, slot, f"iphonesubinfo {c.device_id_for_phone} getDeviceIdForPhone",
                          subinfo_call(c.device_id_for_phone, codes=c, index=slot - 1, package=package)))
        for sub, slot0 in sorted(subs.items()):
            slot = slot0 + 1
            for kind, code, name in ((Kind.IMEI, c.imei_for_subscriber, "getImeiForSubscriber"),
                                     (Kind.IMSI, c.subscriber_id_for_subscriber, "getSubscriberIdForSubscriber"),
                                     (Kind.ICCID, c.icc_serial_for_subscriber, "getIccSerialNumberForSubscriber"),
                                     (Kind.MSISDN, c.line1_for_subscriber, "getLine1NumberForSubscriber"),
                                     (Kind.MSISDN, c.msisdn_for_subscriber, "getMsisdnForSubscriber")):
                calls.append((kind, slot, f"iphonesubinfo {code} {name}",
                              subinfo_call(code, codes=c, index=sub, package=package)))
        # the methods without an index answer for the default subscription: slot 1 unless told
        default_slot = self._first_ready_slot()
        calls.append((Kind.IMEI, 1, f"iphonesubinfo {c.device_id} getDeviceId",
                      subinfo_call(c.device_id, codes=c, package=package, feature=False)))
        calls.append((Kind.IMSI, default_slot, f"iphonesubinfo {c.subscriber_id} getSubscriberId",
                      subinfo_call(c.subscriber_id, codes=c, package=package, feature=False)))
        calls.append((Kind.ICCID, default_slot, f"iphonesubinfo {c.icc_serial} getIccSerialNumber",
                      subinfo_call(c.icc_serial, codes=c, package=package, feature=False)))
        return calls

    def _shell_pass(self) -> dict[int, int]:
        """Everything the shell user can read, and the subscription -> slot map."""
        base = [
            "dumpsys isub",
            "content query --uri content://telephony/siminfo",
            "settings get secure android_id",
            "settings get secure bluetooth_address",
            f"ip link show {sh_quote(self.iface)}",
            f"cat /sys/class/net/{sh_quote(self.iface)}/address",
            "dumpsys telephony.registry",
            "dumpsys wifi",
            "dumpsys bluetooth_manager",
        ]
        out = self.adb.run_many(base, timeout=self.timeout)
        isub, siminfo, ssaid, bt_setting, ip_link, sys_mac, registry, wifi, bt_dump = out
        subs = parse_subscriptions(isub.stdout)
        rows = parse_content_rows(siminfo.stdout) if siminfo.ok else []
        self._siminfo(rows, "content://telephony/siminfo")
        for slot0, iccid in parse_isub_iccids(isub.stdout).items():
            self.found.add(Kind.ICCID, iccid, "dumpsys isub", slot0 + 1)
        for row in rows:
            sub_text, slot_text = row.get("_id", ""), row.get("sim_id", "-1")
            if sub_text.isdigit() and slot_text.isdigit():
                subs.setdefault(int(sub_text), int(slot_text))
        value = ssaid.stdout.strip()
        if re.fullmatch(r"[0-9a-fA-F]{8,32}", value):
            self.found.add(Kind.ANDROID_ID, value.lower(), "settings get secure android_id (the shell's)")
        mac = normal_mac(bt_setting.stdout)
        if mac:
            self.found.add(Kind.BT_MAC, mac, "settings secure bluetooth_address")
        mac = parse_bt_address(bt_dump.stdout)
        if mac:
            self.found.add(Kind.BT_MAC, mac, "dumpsys bluetooth_manager")
        self._wifi(ip_link.stdout, sys_mac.stdout, wifi.stdout)
        for cell in parse_cell_ids(registry.stdout):
            self.found.add(Kind.CELL_ID, cell, "dumpsys telephony.registry")
        if not self.found.has(Kind.CELL_ID):
            self.found.note(Kind.CELL_ID, "no valid cell identity in dumpsys telephony.registry (no service?)")
        self._subinfo_pass(subs, root=False)
        return subs

    def _root_pass(self, subs: Mapping[int, int]) -> None:
        assert self.root is not None
        commands = [self.root.wrap(f"cat {_SSAID} 2>/dev/null || abx2xml {_SSAID} -"),
                    self.root.wrap("content query --uri content://telephony/siminfo")]
        commands += [self.root.wrap(f"cat {path}") for path in _WIFI_MAC_FILES]
        out = self.adb.run_many(commands, timeout=self.timeout)
        ssaid_text = out[0].stdout
        if "<setting" not in ssaid_text and self.sdk >= 31:
            ssaid_text = self.adb.script(self.root.wrap(f"abx2xml {_SSAID} -"), self.timeout).stdout
        per_app = parse_ssaid(ssaid_text)
        for _package, value in sorted(per_app.items()):
            self.found.add(Kind.ANDROID_ID, value, "settings_ssaid.xml (per app, root)")
        if per_app:
            self.found.note(Kind.ANDROID_ID, f"{len(per_app)} per-app values from settings_ssaid.xml")
        else:
            self.found.note(Kind.ANDROID_ID, "settings_ssaid.xml unreadable even as root")
        self._siminfo(parse_content_rows(out[1].stdout) if out[1].ok else [], "content://telephony/siminfo (root)")
        for path, result in zip(_WIFI_MAC_FILES, out[2:], strict=True):
            if not result.ok:
                continue
            for match in re.finditer(r"(?i)(?:Intf0MacAddress=|\b)([0-9a-f]{12}|[0-9a-f]{2}(?::[0-9a-f]{2}){5})\b",
                                     result.stdout):
                mac = normal_mac(match.group(1))
                if mac and universal_mac(mac):
                    self.found.add(Kind.WIFI_MAC, mac, f"{path} (root)")
                    break
        self._subinfo_pass(subs, root=True)

    def _subinfo_pass(self, subs: Mapping[int, int], *, root: bool) -> None:
        assert self.root is not None
        calls = self._subinfo_commands(subs, SHELL_PACKAGE)
        wanted = [(k, s, m, self.root.wrap(cmd) if root else cmd) for k, s, m, cmd in calls
                  if not self.found.has(k, s)]
        if not wanted:
            return
        who = " (root)" if root else ""
        results = self.adb.run_many([cmd for *_, cmd in wanted], timeout=self.timeout)
        for (kind, slot, method, _), result in zip(wanted, results, strict=True):
            self._take_subinfo(kind, slot, f"{method}{who}", result)

    def _take_subinfo(self, kind: Kind, slot: int, method: str, result: ShellResult) -> None:
        try:
            value = parcel_string(result.stdout)
        except ParcelError as exc:
            self.found.note(kind, f"{method}: {_first_words(str(exc))}")
            return
        if value is None or not value.strip():
            self.found.note(kind, f"{method}: null (no SIM / not available)")
            return
        value = value.strip()
        if kind is Kind.IMEI and valid_meid(value) and not valid_imei(value):
            self.found.add(Kind.MEID, value.upper(), method, slot)
            return
        check = {Kind.IMEI: valid_imei, Kind.ICCID: valid_iccid, Kind.MSISDN: valid_msisdn,
                 Kind.IMSI: lambda v: valid_imsi(v, self.operators.get(slot))}[kind]
        if not check(value):
            self.found.note(kind, f"{method}: returned a value that is not a valid {kind} "
                                  f"(code table of release {self.codes.release} wrong for this build?); ignored")
            return
        self.found.add(kind, value, method, slot)

    def _siminfo(self, rows: Sequence[Mapping[str, str]], method: str) -> None:
        for row in rows:
            slot0 = row.get("sim_id", "-1")
            if not slot0.lstrip("-").isdigit() or int(slot0) < 0:
                continue
            slot = int(slot0) + 1
            icc = row.get("icc_id", "").strip()
            if valid_iccid(icc):
                self.found.add(Kind.ICCID, icc, method, slot)
            number = row.get("number", "").strip()
            if number and number.upper() != "NULL" and valid_msisdn(number):
                self.found.add(Kind.MSISDN, number, method, slot)

    def _wifi(self, ip_link: str, sys_mac: str, dumpsys_wifi: str) -> None:
        current, permanent = parse_ip_link(ip_link)
        current = current or normal_mac(sys_mac)
        if permanent:
            self.found.add(Kind.WIFI_MAC, permanent, f"ip link {self.iface} permaddr (factory)")
        if current:
            kind_of = "factory" if universal_mac(current) else "randomized, in use"
            self.found.add(Kind.WIFI_MAC, current, f"ip link/sysfs {self.iface} ({kind_of})")
        in_use = parse_wifi_current(dumpsys_wifi)
        if in_use:
            self.found.add(Kind.WIFI_MAC, in_use, "dumpsys wifi WifiInfo MAC")
        for mac in parse_wifi_randomized(dumpsys_wifi):
            self.found.add(Kind.WIFI_MAC, mac, "dumpsys wifi mRandomizedMacAddress (per network)")

    def _judge_partial(self, read: IdentifierSet) -> None:
        """Known values that are not the ones apps or the air see: fail closed on them."""
        reports = self.found.reports
        macs = read.values.get(Kind.WIFI_MAC, [])
        if macs and not any(universal_mac(m) for m in macs):
            reports[Kind.WIFI_MAC].partial = "only randomized MACs were read; the factory MAC is unknown"
        elif macs and self.sdk >= 29 and all(universal_mac(m) for m in macs):
            reports[Kind.WIFI_MAC].notes.append(
                "no randomized per-network MAC read (randomization off, or not connected yet)")
        android_ids = reports[Kind.ANDROID_ID]
        if read.known(Kind.ANDROID_ID) and all("(the shell's)" in m for m in android_ids.methods) and self.sdk >= 26:
            android_ids.partial = ("only the shell's Settings.Secure.ANDROID_ID; since Android 8 each app "
                                   "sees its own (SSAID), readable as root")
        for kind in (Kind.IMEI, Kind.IMSI, Kind.ICCID):
            values = read.values.get(kind, [])
            ready = [i + 1 for i, s in enumerate(self.sim_states) if s in {"READY", "LOADED"}]
            gaps = [slot for slot in (ready if kind is not Kind.IMEI else range(1, self.slots + 1))
                    if slot > len(values) or not values[slot - 1]]
            if values and gaps:
                reports[kind].notes.append(f"slot(s) {', '.join(map(str, gaps))} not read")

    def _note_no_root(self) -> None:
        for kind in (Kind.IMEI, Kind.IMSI, Kind.ICCID, Kind.MSISDN):
            if not self.found.has(kind) and self.sdk >= 29:
                self.found.note(kind, "Android 10+ needs a privileged caller: no root (user build?)")
        if not self.found.has(Kind.ANDROID_ID):
            self.found.note(Kind.ANDROID_ID, "per-app values need root")

    def _first_ready_slot(self) -> int:
        for i, state in enumerate(self.sim_states):
            if state in {"READY", "LOADED"}:
                return i + 1
        return 1


def harvest(adb: Adb, props: Mapping[str, str], overrides: IdentifierSet | None = None, *,
            root: Root | None = None, timeout: float = 60.0) -> Harvest:
    """Read what the phone gives, then apply the profile's overrides (they win)."""
    return Harvester(adb, props, root=root, timeout=timeout).run(overrides)


def _int(text: str | None, default: int) -> int:
    try:
        return int(str(text).strip())
    except (TypeError, ValueError):
        return default


def _slot_count(props: Mapping[str, str]) -> int:
    config = props.get("persist.radio.multisim.config", props.get("persist.vendor.radio.multisim.config", ""))
    return {"dsds": 2, "dsda": 2, "tsts": 3}.get(config.strip().lower(), 1)


def _slot_from_key(key: str) -> int | None:
    """`ril.imei2`, `persist.radio.imei.1`, `ril.iccid.sim1` -> slot (1-based); None when no number."""
    match = re.search(r"(?:sim|imei|meid|iccid|slot)[._]?([0-9])$", key.lower()) or re.search(r"[._]([0-9])$", key)
    if not match:
        return None
    number = int(match.group(1))
    return max(number, 1)


def _first_words(text: str, limit: int = 90) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"
