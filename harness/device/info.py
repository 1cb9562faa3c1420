"""Who the phone is (for reports) and what is installed on it (for the policy's package audit).

One `getprop` call gives model, build and SIM operator; package lists come from one batched
`pm` call. Packages that are on the system image but disabled or uninstalled for the user are
listed too: a carrier activation client shipped on the build is a finding even when it is
switched off, because an OTA or a factory reset can switch it back on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from harness.device.adb import Adb, ShellResult, requote, sh_quote
from harness.errors import DeviceError

_PACKAGE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)+")


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """Identity of a phone for reports; `label` is the masked serial, never the raw one."""

    label: str
    model: str | None
    manufacturer: str | None
    brand: str | None
    device: str | None
    fingerprint: str | None
    release: str | None
    sdk: int
    build_type: str | None
    build_id: str | None
    security_patch: str | None
    sim_operator: list[str]  # MCC+MNC per slot ("24201"), "" for an empty slot
    sim_operator_name: list[str]
    sim_country: list[str]
    network_operator: list[str]
    market: str | None = None

    @property
    def mcc_mnc(self) -> list[tuple[str, str]]:
        """(MCC, MNC) per slot with a SIM operator."""
        return [(op[:3], op[3:]) for op in self.sim_operator if re.fullmatch(r"\d{5,6}", op)]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mcc_mnc"] = [f"{mcc}-{mnc}" for mcc, mnc in self.mcc_mnc]
        return data

    def describe(self) -> str:
        return (f"{self.model or '?'} ({self.label}) Android {self.release or '?'} / API {self.sdk} "
                f"{self.build_type or ''} {self.build_id or ''}").strip()


def _slots(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",")] if value else []


def device_info(label: str, props: Mapping[str, str], market: str | None = None) -> DeviceInfo:
    """DeviceInfo from a `getprop` dump (vendor partitions may override ro.product.*)."""

    def first(*keys: str) -> str | None:
        for key in keys:
            value = props.get(key, "").strip()
            if value:
                return value
        return None

    sdk_text = first("ro.build.version.sdk") or "0"
    return DeviceInfo(
        label=label,
        model=first("ro.product.model", "ro.product.vendor.model", "ro.product.system.model"),
        manufacturer=first("ro.product.manufacturer", "ro.product.vendor.manufacturer"),
        brand=first("ro.product.brand", "ro.product.vendor.brand"),
        device=first("ro.product.device", "ro.product.vendor.device"),
        fingerprint=first("ro.build.fingerprint", "ro.vendor.build.fingerprint", "ro.system.build.fingerprint"),
        release=first("ro.build.version.release_or_codename", "ro.build.version.release"),
        sdk=int(sdk_text) if sdk_text.isdigit() else 0,
        build_type=first("ro.build.type"),
        build_id=first("ro.build.display.id", "ro.build.id"),
        security_patch=first("ro.build.version.security_patch"),
        sim_operator=_slots(first("gsm.sim.operator.numeric")),
        sim_operator_name=_slots(first("gsm.sim.operator.alpha")),
        sim_country=_slots(first("gsm.sim.operator.iso-country")),
        network_operator=_slots(first("gsm.operator.numeric")),
        market=market,
    )


@dataclass(frozen=True, slots=True)
class InstalledPackage:
    name: str
    version_code: str | None
    version_name: str | None
    system: bool
    enabled: bool
    installed_for_user: bool

    @property
    def version(self) -> str:
        """What the audit shows: `versionName (versionCode)` with whatever is known."""
        if self.version_name and self.version_code:
            return f"{self.version_name} ({self.version_code})"
        return self.version_name or self.version_code or ""


def _names(result: ShellResult) -> dict[str, str | None]:
    """`package:NAME [versionCode:N]` lines -> {name: version code or None}."""
    found: dict[str, str | None] = {}
    for line in result.stdout.splitlines():
        match = re.match(r"package:(\S+?)(?:\s+versionCode:(\d+))?\s*$", line.strip())
        if match and _PACKAGE.fullmatch(match.group(1)):
            found[match.group(1)] = match.group(2)
    return found


def parse_package_dump(text: str) -> tuple[str | None, str | None]:
    """(versionCode, versionName) from `dumpsys package NAME`."""
    code = re.search(r"\bversionCode=(\d+)", text)
    name = re.search(r"\bversionName=(\S+)", text)
    return (code.group(1) if code else None, name.group(1) if name else None)


def list_packages(adb: Adb, *, detail: Iterable[str] = ()) -> dict[str, InstalledPackage]:
    """Every package on the phone; `detail` names get their versionName from `dumpsys package`."""
    every, user, disabled, system = adb.run_many([
        "pm list packages -u --show-versioncode || pm list packages -u",
        "pm list packages",
        "pm list packages -d",
        "pm list packages -s -u",
    ], timeout=120)
    all_names = _names(every)
    if not all_names:
        raise DeviceError(f"`pm list packages` on {adb.label} listed nothing: {every.output.strip()[:120]}")
    for_user, off, on_image = _names(user), _names(disabled), _names(system)
    wanted = [name for name in dict.fromkeys(detail) if name in all_names]
    versions: dict[str, tuple[str | None, str | None]] = {}
    if wanted:
        dumps = adb.run_many([f"dumpsys package {sh_quote(name)}" for name in wanted], timeout=120)
        versions = {name: parse_package_dump(d.stdout) for name, d in zip(wanted, dumps, strict=True)}
    packages = {}
    for name, code in all_names.items():
        dumped_code, version_name = versions.get(name, (None, None))
        packages[name] = InstalledPackage(name, code or dumped_code, version_name, name in on_image,
                                          name not in off, name in for_user)
    return packages


def audit_input(packages: Mapping[str, InstalledPackage]) -> dict[str, str]:
    """The mapping `harness.policy.policy.audit_packages` takes: package -> version text."""
    return {name: pkg.version for name, pkg in packages.items()}


def catalog_packages() -> list[str]:
    """Every Android package of the activation-client catalog (what reset and audit look at)."""
    from harness.policy.catalog import load_catalog

    return sorted({p for client in load_catalog().clients for p in client.packages})


@dataclass(frozen=True, slots=True)
class ResetAction:
    """One reset command and what the phone said (recorded for the report)."""

    command: str
    exit_code: int | None
    output: str
    reason: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and "Failed" not in self.output


def reset_state(adb: Adb, installed: Iterable[str], packages: Iterable[str],
                commands: Iterable[str] = ()) -> list[ResetAction]:
    """`pm clear` every installed activation package, then the profile's reset commands.

    Package names are checked and quoted; a profile command is split and every word re-quoted
    (`requote`), so neither can inject shell syntax.
    """
    present = set(installed)
    plan: list[tuple[str, str]] = []
    for name in dict.fromkeys(packages):
        if not _PACKAGE.fullmatch(name):
            raise DeviceError(f"not a package name: {name!r}")
        if name in present:
            plan.append((f"pm clear {sh_quote(name)}", f"catalog activation package {name}"))
    plan += [(requote(command), "profile reset command") for command in commands]
    if not plan:
        return []
    results = adb.run_many([cmd for cmd, _ in plan], timeout=120)
    return [ResetAction(cmd, r.exit_code, r.stdout.strip()[:200], why) for (cmd, why), r in zip(plan, results,
                                                                                            strict=True)]
