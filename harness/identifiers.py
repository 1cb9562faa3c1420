"""The identifiers a phone must not send in the clear: kinds, validation, IDS.json and masking.

Everything human-facing shows an identifier only through `mask()`: kind, slot and at most the
last three characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from harness.errors import ConfigError


class Kind(StrEnum):
    """Identifier kinds, as IDS.json names them."""

    IMEI = "imei"
    MEID = "meid"
    IMSI = "imsi"
    ICCID = "iccid"
    MSISDN = "msisdn"
    WIFI_MAC = "wifi_mac"
    BT_MAC = "bt_mac"
    SERIAL = "serial"
    ANDROID_ID = "android_id"
    CELL_ID = "cell_id"


# For these the list position is the modem/SIM slot; for the others the values are alternatives.
SLOTTED_KINDS = frozenset({Kind.IMEI, Kind.MEID, Kind.IMSI, Kind.ICCID, Kind.MSISDN})

# What "known" means when a profile says nothing (DESIGN.md: require defaults).
DEFAULT_REQUIRED = (Kind.IMEI, Kind.IMSI, Kind.ICCID, Kind.WIFI_MAC)

_SHAPES: dict[Kind, tuple[re.Pattern[str], str]] = {
    Kind.IMEI: (re.compile(r"\d{14,16}"), "14 to 16 digits (IMEI without check digit, IMEI, IMEISV)"),
    Kind.MEID: (re.compile(r"[0-9A-Fa-f]{14}|\d{18}"), "14 hex digits or 18 decimal digits"),
    Kind.IMSI: (re.compile(r"\d{6,15}"), "6 to 15 digits"),
    Kind.ICCID: (re.compile(r"\d{18,20}[Ff]?"), "18 to 20 digits, optionally a trailing F"),
    Kind.MSISDN: (re.compile(r"\+?\d{5,15}"), "5 to 15 digits, optionally a leading +"),
    Kind.WIFI_MAC: (
        re.compile(r"[0-9A-Fa-f]{2}([:.-]?)[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}|[0-9A-Fa-f]{4}(\.[0-9A-Fa-f]{4}){2}"),
        "a MAC address such as 02:00:5e:10:00:01",
    ),
    Kind.BT_MAC: (
        re.compile(r"[0-9A-Fa-f]{2}([:.-]?)[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}|[0-9A-Fa-f]{4}(\.[0-9A-Fa-f]{4}){2}"),
        "a MAC address such as 02:00:5e:10:00:01",
    ),
    Kind.SERIAL: (re.compile(r"[\x21-\x7e]{4,64}"), "4 to 64 printable characters without spaces"),
    Kind.ANDROID_ID: (re.compile(r"[0-9A-Fa-f]{8,32}"), "8 to 32 hex digits"),
    Kind.CELL_ID: (re.compile(r"\d{1,12}|0[xX][0-9A-Fa-f]{1,10}"), "a decimal number or 0x-prefixed hex"),
}


def shape_error(kind: Kind, value: str) -> str | None:
    """Why `value` cannot be an identifier of `kind`, or None when it can."""
    pattern, expected = _SHAPES[kind]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        return f"expected {expected}"
    return None


def mask(kind: str, slot: int | None, value: str | None) -> str:
    """The only form in which an identifier may be shown: `imei[1] …518`."""
    label = f"{kind}[{slot}]" if slot is not None else str(kind)
    if not value:
        return label
    return f"{label} …{value[-3:]}" if len(value) > 3 else f"{label} …"


def mask_serial(serial: str) -> str:
    """A USB phone's adb serial is its hardware serial: show at most its last three characters.

    Addresses (`127.0.0.1:5555`, `virtual:NAME`) are not identifiers and stay readable.
    """
    host = ""
    if "@" in serial:
        serial, host = serial.split("@", 1)
        host = "@" + host
    if serial.startswith("virtual:") or re.fullmatch(r"[\w.\-]+:\d+", serial):
        return serial + host
    return f"serial …{serial[-3:]}{host}"


@dataclass(frozen=True, slots=True)
class Identifier:
    """One value of one kind; `slot` is 1-based for slotted kinds, else None."""

    kind: Kind
    slot: int | None
    value: str

    @property
    def masked(self) -> str:
        return mask(self.kind, self.slot, self.value)

    def __repr__(self) -> str:
        return f"Identifier({self.masked})"


@dataclass(slots=True)
class IdentifierSet:
    """A phone's identifiers; a kind with no entry in `values` is unknown."""

    values: dict[Kind, list[str]] = field(default_factory=dict)

    def __iter__(self) -> Iterator[Identifier]:
        for kind, values in self.values.items():
            for position, value in enumerate(values):
                slot = position + 1 if kind in SLOTTED_KINDS else None
                yield Identifier(kind, slot, value)

    def known(self, kind: Kind) -> bool:
        return any(self.values.get(kind, ()))

    def merged(self, override: IdentifierSet) -> IdentifierSet:
        """These identifiers with every kind that `override` knows replaced by its values."""
        values = {k: list(v) for k, v in self.values.items()}
        for kind, vals in override.values.items():
            if any(vals):
                values[kind] = list(vals)
        return IdentifierSet(values)

    def to_json(self) -> dict[str, list[str]]:
        return {str(kind): list(values) for kind, values in self.values.items()}

    def __repr__(self) -> str:
        return "IdentifierSet(" + ", ".join(i.masked for i in self) + ")"

    @classmethod
    def from_mapping(cls, data: object, source: str, lines: Mapping[str, int] | None = None) -> IdentifierSet:
        """Validate an IDS.json-shaped mapping; errors name `source`, the line and the field."""
        lines = lines or {}
        if not isinstance(data, dict):
            raise ConfigError(source, None, None, "expected an object mapping identifier kinds to lists")
        values: dict[Kind, list[str]] = {}
        for key, raw in data.items():
            line = lines.get(str(key))
            try:
                kind = Kind(key)
            except ValueError:
                known = ", ".join(k.value for k in Kind)
                raise ConfigError(source, line, str(key), f"unknown kind (known: {known})") from None
            if isinstance(raw, (str, int)):
                raw = [raw]
            if not isinstance(raw, list):
                raise ConfigError(source, line, str(key), "expected a list of strings")
            checked: list[str] = []
            for position, item in enumerate(raw):
                if kind is Kind.CELL_ID and isinstance(item, int) and not isinstance(item, bool):
                    item = str(item)
                if not isinstance(item, str):
                    raise ConfigError(source, line, f"{key}[{position}]", "expected a string")
                problem = shape_error(kind, item)
                if problem:
                    shown = mask(kind, position + 1 if kind in SLOTTED_KINDS else None, item)
                    raise ConfigError(source, line, f"{key}[{position}]", f"{shown}: {problem}")
                checked.append(item)
            values[kind] = checked
        return cls(values)

    @classmethod
    def load(cls, path: Path) -> IdentifierSet:
        """Read IDS.json; every problem is one ConfigError line."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(path, None, None, f"cannot read identifiers: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(path, None, None, "not UTF-8 text") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(path, exc.lineno, None, f"not valid JSON: {exc.msg}") from None
        lines: dict[str, int] = {}
        for number, line_text in enumerate(text.splitlines(), start=1):
            for match in re.finditer(r'"([a-z_]+)"\s*:', line_text):
                lines.setdefault(match.group(1), number)
        return cls.from_mapping(data, str(path), lines)
