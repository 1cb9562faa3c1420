"""The phonehome pytest plugin, registered through the `pytest11` entry point.

Split as labgrid splits its plugin: hooks (options, parametrization per phone, reports) and
fixtures (options, the phone's session, identifiers, policy, the running recording).
"""

from harness.adb_env import bad_adb_port_hidden

with bad_adb_port_hidden():  # adbutils reads it at import: see harness.adb_env
    from harness.plugin.fixtures import (
        device,
        device_session,
        findings,
        identifiers,
        phase,
        phonehome_artifacts,
        phonehome_baseline,
        phonehome_boot_timeout,
        phonehome_capture,
        phonehome_cycles,
        phonehome_devices,
        phonehome_dwell,
        phonehome_options,
        phonehome_profile,
        policy,
        recording,
    )
    from harness.plugin.hooks import (
        pytest_addoption,
        pytest_collection_modifyitems,
        pytest_configure,
        pytest_generate_tests,
        pytest_runtest_makereport,
        pytest_sessionfinish,
        pytest_terminal_summary,
        pytest_xdist_make_scheduler,
    )
from harness.plugin.state import OPTIONS_KEY

__all__ = [
    "OPTIONS_KEY", "device", "device_session", "findings", "identifiers", "phase", "phonehome_artifacts",
    "phonehome_baseline", "phonehome_boot_timeout", "phonehome_capture", "phonehome_cycles", "phonehome_devices",
    "phonehome_dwell",
    "phonehome_options", "phonehome_profile", "policy",
    "pytest_addoption", "pytest_collection_modifyitems", "pytest_configure", "pytest_generate_tests",
    "pytest_runtest_makereport", "pytest_sessionfinish", "pytest_terminal_summary",
    "pytest_xdist_make_scheduler", "recording",
]
