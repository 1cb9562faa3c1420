"""What a gate's verdict depends on, checked on the phone and reported, never assumed.

- SIM READY: without a SIM an activation client has nothing to register, so a clean capture
  proves nothing. Fails closed unless the profile says this SKU has no SIM (`has_sim: false`).
- Mobile data: traffic over cellular bypasses a gateway capture. The capture backend decides
  whether it must be off; `ensure_mobile_data_off` turns it off (journaled) and verifies it,
  after every boot.
- Wi-Fi connected to the test network, and Private DNS mode (with it on, DNS is DNS-over-TLS
  on 853 and names are only in SNI).
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.device.adb import Adb
from harness.device.settings import SettingsJournal
from harness.errors import DeviceError

READY_STATES = {"READY", "LOADED"}


@dataclass(slots=True)
class Preconditions:
    """The state read from the phone, and every problem that makes a verdict unverifiable."""

    sim_states: list[str]
    sim_ready: bool
    mobile_data_enabled: bool | None
    mobile_data_connected: bool | None
    wifi_connected: bool | None
    wifi_ssid: str | None
    private_dns_mode: str
    private_dns_specifier: str | None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_sim_states(value: str) -> list[str]:
    """`gsm.sim.state` is one state per slot, comma separated (`READY,ABSENT`)."""
    return [s.strip().upper() for s in value.split(",") if s.strip()]


def parse_data_connection(registry: str) -> bool | None:
    """Any phone with `mDataConnectionState=2` (CONNECTED) in `dumpsys telephony.registry`."""
    states = [int(v) for v in re.findall(r"\bmDataConnectionState=(-?\d+)", registry)]
    if not states:
        return None
    return 2 in states


def parse_wifi_status(text: str) -> tuple[bool | None, str | None]:
    """(connected, SSID) from `cmd wifi status` (11+) or `dumpsys wifi` (8-10)."""
    ssid_match = re.search(r'Wifi is connected to "([^"]*)"', text) or re.search(r'\bSSID: "?([^",]*)"?,', text)
    ssid = ssid_match.group(1) if ssid_match and ssid_match.group(1) not in {"<unknown ssid>", ""} else None
    if "Wifi is connected to" in text or re.search(r"Supplicant state: COMPLETED", text) \
            or re.search(r"state: CONNECTED/CONNECTED", text) or re.search(r"curState=L2ConnectedState|"
                                                                          r"curState=ConnectedState", text):
        return True, ssid
    if re.search(r"Wifi is (?:not connected|disabled)|Wi-Fi is disabled|Supplicant state: "
                 r"(?:DISCONNECTED|SCANNING|INACTIVE|INTERFACE_DISABLED)", text):
        return False, None
    return None, ssid


def effective_private_dns(mode: str | None, sdk: int) -> str:
    """Unset means the platform default: opportunistic from Android 9, absent before."""
    if mode in {None, "", "null"}:
        return "opportunistic" if sdk >= 28 else "unsupported"
    return str(mode)


def check(adb: Adb, *, sdk: int, has_sim: bool = True, need_wifi: bool = True,
          mobile_data_must_be_off: bool = False, private_dns_must_be_off: bool = False) -> Preconditions:
    """Read every precondition (two shell calls at most) and list what is not met."""
    sim, data, data1, dns_mode, dns_spec, registry, wifi_status = adb.run_many([
        "getprop gsm.sim.state",
        "settings get global mobile_data",
        "settings list global",
        "settings get global private_dns_mode",
        "settings get global private_dns_specifier",
        "dumpsys telephony.registry",
        "cmd wifi status",
    ], timeout=60)
    wifi_text = wifi_status.stdout if wifi_status.ok else ""
    connected, ssid = parse_wifi_status(wifi_text)
    if connected is None:
        connected, ssid = parse_wifi_status(adb.script("dumpsys wifi", timeout=60).stdout)
    states = parse_sim_states(sim.stdout)
    per_sub = re.findall(r"^mobile_data\d+=(\d)$", data1.stdout, re.M)
    flags = [v for v in [data.stdout.strip(), *per_sub] if v in {"0", "1"}]
    data_enabled = ("1" in flags) if flags else None
    report = Preconditions(
        sim_states=states,
        sim_ready=any(s in READY_STATES for s in states),
        mobile_data_enabled=data_enabled,
        mobile_data_connected=parse_data_connection(registry.stdout),
        wifi_connected=connected,
        wifi_ssid=ssid,
        private_dns_mode=effective_private_dns(dns_mode.stdout.strip(), sdk),
        private_dns_specifier=dns_spec.stdout.strip() if dns_spec.stdout.strip() not in {"", "null"} else None,
    )
    if has_sim and not report.sim_ready:
        report.problems.append(f"no SIM ready ({','.join(states) or 'gsm.sim.state unset'}): an activation client "
                               "has nothing to register; insert a SIM or set has_sim: false in the profile")
    elif not has_sim and report.sim_ready:
        report.notes.append("the profile says this SKU has no SIM, but a SIM is ready")
    if need_wifi and connected is not True:
        report.problems.append("Wi-Fi is not connected to the test network" if connected is False
                               else "Wi-Fi connection state unreadable")
    if mobile_data_must_be_off and (report.mobile_data_enabled or report.mobile_data_connected):
        report.problems.append("mobile data is on: traffic over cellular is invisible to this capture")
    if private_dns_must_be_off and report.private_dns_mode not in {"off", "unsupported"}:
        report.problems.append(f"Private DNS is {report.private_dns_mode}: host names appear only in TLS SNI")
    elif report.private_dns_mode not in {"off", "unsupported"}:
        report.notes.append(f"Private DNS {report.private_dns_mode}: DNS may go out as DNS-over-TLS on 853")
    return report


def ensure_mobile_data_off(adb: Adb, journal: SettingsJournal, *, timeout: float = 20.0) -> bool:
    """Turn mobile data off (journaled, restored later) and verify it is off; True if it had to act."""
    data, registry = adb.run_many(["settings get global mobile_data", "dumpsys telephony.registry"])
    if data.stdout.strip() == "0" and not parse_data_connection(registry.stdout):
        return False
    journal.set_mobile_data(False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data, registry = adb.run_many(["settings get global mobile_data", "dumpsys telephony.registry"])
        if data.stdout.strip() == "0" and not parse_data_connection(registry.stdout):
            return True
        time.sleep(0.5)
    raise DeviceError(f"mobile data on {adb.label} still on {timeout:g} s after `svc data disable`")


def ensure_private_dns_off(adb: Adb, journal: SettingsJournal) -> bool:
    """Private DNS off (journaled), so DNS names stay visible to the capture; True if it had to act."""
    mode = adb.shell(["settings", "get", "global", "private_dns_mode"], timeout=15).stdout.strip()
    if mode == "off":
        return False
    journal.put("global", "private_dns_mode", "off")
    return True
