"""phonehome device layer: select, drive and read real phones over adb (see device.Device)."""

from harness.device.adb import (
    Adb,
    AdbTimeout,
    DeviceOffline,
    DeviceUnrecoverable,
    Secret,
    ShellResult,
    sh_join,
    sh_quote,
)
from harness.device.device import Device
from harness.device.identifiers import Harvest, Source
from harness.device.lifecycle import BootRecord, ScreenState, StepNotVerified, StepResult, Timeouts
from harness.device.select import DeviceBusy, DeviceSpec, SerialLock, parse_spec, resolve

__all__ = [
    "Adb", "AdbTimeout", "BootRecord", "Device", "DeviceBusy", "DeviceOffline", "DeviceSpec", "DeviceUnrecoverable",
    "Harvest", "ScreenState", "Secret", "SerialLock", "ShellResult", "Source", "StepNotVerified", "StepResult",
    "Timeouts", "parse_spec", "resolve", "sh_join", "sh_quote",
]
