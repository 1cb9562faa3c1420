"""The gate: is this build safe to ship? Run `pytest --device SERIAL` (or `--device virtual:NAME`).

Each scenario records its own capture around the phases it drives and fails when the phone sent
an identifier readable without decryption, contacted an activation client its market does not
approve (`leak`), or when the run could not prove the phone clean (`unverified`). Only `clean`
passes. Findings carry the phase and cycle they fell in.
"""

from __future__ import annotations

import pytest

from harness.device.device import Device
from harness.errors import PhonehomeError
from harness.gate.asserts import assert_gate_passes
from harness.gate.evidence import finding_line
from harness.gate.recording import Recording
from harness.gate.session import DeviceSession
from harness.plugin.options import GateOptions


def test_activation_clients_not_installed(device_session: DeviceSession) -> None:
    """No activation client of another market is on the build (Qualcomm autoregistration and the like)."""
    found = device_session.audit_packages()
    if found:
        lines = [f"LEAK: {device_session.id} {device_session.describe()}: {len(found)} unapproved activation "
                 "client(s) installed"]
        pytest.fail("\n".join(lines + [f"  - {finding_line(f)}" for f in found]), pytrace=False)


@pytest.mark.phonehome_phases("power-up")
def test_power_up(recording: Recording) -> None:
    """From before the reboot until boot_completed + the profile's settle time."""
    recording.power_up()
    assert_gate_passes(recording.stop())


@pytest.mark.phonehome_phases("screen-on", "unlock")
def test_screen_activation(recording: Recording, device: Device) -> None:
    """Wake a dark, locked phone and unlock it, each step read back from the phone."""
    with recording.failing_closed("locking the phone before the scenario"):
        device.lock()  # before the capture starts: what locking sends belongs to the lock scenario
    recording.sleep_through("lock")
    recording.screen_on()
    recording.unlock()
    assert_gate_passes(recording.stop())


@pytest.mark.phonehome_phases("screen-on", "unlock", "lock")
def test_lock(recording: Recording) -> None:
    """Lock a phone in use (woken and unlocked first, within the same recording)."""
    recording.screen_on()
    recording.unlock()
    recording.lock()
    assert_gate_passes(recording.stop())


@pytest.mark.phonehome_phases("connectivity-change")
def test_connectivity_change(recording: Recording) -> None:
    """Wi-Fi off and on again: clients that register on every new connection fire here."""
    recording.connectivity_change()
    assert_gate_passes(recording.stop())


@pytest.mark.phonehome_phases("power-up", "screen-on", "unlock", "idle", "lock", "connectivity-change")
def test_cycles(recording: Recording, phonehome_options: GateOptions) -> None:
    """--ph-cycles full cycles in one capture (soak): clients that fire only on the Nth boot or unlock."""
    if phonehome_options.cycles < 2:
        pytest.skip("soak not asked for (--ph-cycles 1); the scenarios above ran one cycle")
    for cycle in range(1, phonehome_options.cycles + 1):
        recording.cycle(cycle)
    assert_gate_passes(recording.stop())


@pytest.mark.phonehome_after_scenarios
def test_no_new_destinations(device_session: DeviceSession, phonehome_options: GateOptions) -> None:
    """No destination the previous build of this SKU did not contact (`--ph-baseline`)."""
    if phonehome_options.baseline is None:
        pytest.skip("no baseline given (--ph-baseline; write one with `phonehome baseline write`)")
    if not device_session.outcomes:
        pytest.fail(f"UNVERIFIED (not proven clean; no leak was seen): {device_session.id}: no scenario recorded "
                    "traffic on this phone before the baseline diff: run it with the other scenarios", pytrace=False)
    try:
        found = device_session.new_destinations(phonehome_options.baseline)
    except PhonehomeError as exc:  # a baseline of another SKU: nothing to compare against
        pytest.fail(f"UNVERIFIED (not proven clean; no leak was seen): {device_session.id}: {exc}", pytrace=False)
    if found:
        lines = [f"LEAK: {device_session.id} {device_session.describe()}: {len(found)} new destination(s) "
                 f"compared with {phonehome_options.baseline}"]
        pytest.fail("\n".join(lines + [f"  - {finding_line(f)}" for f in found]), pytrace=False)
