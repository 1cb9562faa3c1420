"""Power-up, screen, unlock and lock, each step verified by reading the phone's state back.

A step is only done when the phone says so: `dumpsys power` for wakefulness and display,
`dumpsys window` (the policy's KeyguardServiceDelegate / KeyguardStateMonitor, or the
KeyguardController on newer releases) for the keyguard. UI work goes through uiautomator2 when
its server starts, else through plain `input` commands; every step records which was used.

Reboot follows Tradefed: issue it, see the device *go*, see it come back, wait for
`sys.boot_completed=1` and for the package manager to answer, with each stage's host time and the
phone/host clock offset measured after the boot. A phone that drops off mid-run is recovered
(reconnect, find it on a new port, reboot), every attempt logged, and reported as unrecoverable
(an infrastructure failure) when that fails.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from harness.device.adb import Adb, DeviceOffline, DeviceUnrecoverable, Secret, label, parse_devices, sh_join
from harness.errors import DeviceError

log = logging.getLogger("phonehome.device")

KEYCODE_ENTER = 66
KEYCODE_SLEEP = 223
KEYCODE_WAKEUP = 224
_META_SHIFT_ON = 0x1
UNLOCK_METHODS = ("none", "swipe", "pin", "password", "pattern")


class StepNotVerified(DeviceError):
    """A lifecycle step ran but the phone's state does not show it took effect."""


# --- reading state -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ScreenState:
    """What the phone reports: wakefulness (Awake/Asleep/Dozing/Dreaming), display, keyguard."""

    wakefulness: str | None
    display: str | None
    keyguard: bool | None
    secure: bool | None = None

    @property
    def awake(self) -> bool:
        if self.wakefulness:
            return self.wakefulness == "Awake"
        return self.display == "ON"

    @property
    def unlocked(self) -> bool:
        return self.awake and self.keyguard is False

    def describe(self) -> str:
        keyguard = {True: "keyguard showing", False: "no keyguard", None: "keyguard unknown"}[self.keyguard]
        return f"{self.wakefulness or '?'}/display {self.display or '?'}/{keyguard}"


def parse_power(text: str) -> tuple[str | None, str | None]:
    """(wakefulness, display state) from `dumpsys power` (same keys Android 8 to 15)."""
    wake = re.search(r"\bmWakefulness=(\w+)", text)
    display = re.search(r"Display Power: state=(\w+)", text)
    return (wake.group(1) if wake else None, display.group(1).upper() if display else None)


_KEYGUARD_PATTERNS = (
    # PhoneWindowManager -> KeyguardServiceDelegate dump, in `dumpsys window` on 8-15
    re.compile(r"KeyguardServiceDelegate\s*\n(?:[ \t]+\w+=[^\n]*\n)*?[ \t]+showing=(true|false)"),
    re.compile(r"KeyguardStateMonitor\s*\n(?:[ \t]+\w+=[^\n]*\n)*?[ \t]+mIsShowing=(true|false)"),
    re.compile(r"\bmKeyguardShowing=(true|false)"),  # KeyguardController (10+)
    re.compile(r"\bmShowingLockscreen=(true|false)"),  # older PhoneWindowManager
    re.compile(r"\bisStatusBarKeyguard=(true|false)"),
)


def parse_keyguard(text: str) -> tuple[bool | None, bool | None]:
    """(showing, secure) from `dumpsys window`; None when the build prints neither."""
    showing: bool | None = None
    for pattern in _KEYGUARD_PATTERNS:
        match = pattern.search(text)
        if match:
            showing = match.group(1) == "true"
            break
    secure = re.search(r"KeyguardServiceDelegate\s*\n(?:[ \t]+\w+=[^\n]*\n)*?[ \t]+secure=(true|false)", text)
    if secure is None:
        secure = re.search(r"\bmSecure=(true|false)", text)
    return showing, (secure.group(1) == "true") if secure else None


def parse_wm_size(text: str) -> tuple[int, int] | None:
    """Display size from `wm size`; an override wins over the physical size."""
    sizes = dict(re.findall(r"(Physical|Override) size:\s*(\d+x\d+)", text))
    chosen = sizes.get("Override") or sizes.get("Physical")
    if not chosen:
        return None
    width, height = chosen.split("x")
    return int(width), int(height)


def read_state(adb: Adb, timeout: float = 20.0) -> ScreenState:
    """One shell call: `dumpsys power` and `dumpsys window`, parsed."""
    power, window = adb.run_many(["dumpsys power", "dumpsys window"], timeout=timeout)
    wakefulness, display = parse_power(power.stdout)
    keyguard, secure = parse_keyguard(window.stdout)
    if wakefulness is None and display is None:
        raise DeviceError(f"dumpsys power on {adb.label} printed no wakefulness or display state")
    return ScreenState(wakefulness, display, keyguard, secure)


# --- UI drivers --------------------------------------------------------------------------
class Ui(Protocol):
    """What a lifecycle step needs from the UI; `name` goes into each step's record."""

    name: str

    def wake(self) -> None: ...

    def sleep(self) -> None: ...

    def swipe(self, x1: int, y1: int, x2: int, y2: int, duration: float) -> None: ...

    def key(self, code: int) -> None: ...

    def type_secret(self, secret: Secret) -> None: ...

    def pattern(self, points: Sequence[tuple[int, int]]) -> None: ...

    def bounds(self, resource_id: str) -> tuple[int, int, int, int] | None: ...


class AdbUi:
    """`input` and `wm` over plain adb: works wherever adbd does."""

    name = "adb"

    def __init__(self, adb: Adb, sdk: int) -> None:
        self.adb = adb
        self.sdk = sdk

    def wake(self) -> None:
        self.adb.shell(["input", "keyevent", str(KEYCODE_WAKEUP)], timeout=15)

    def sleep(self) -> None:
        self.adb.shell(["input", "keyevent", str(KEYCODE_SLEEP)], timeout=15)

    def swipe(self, x1: int, y1: int, x2: int, y2: int, duration: float) -> None:
        self.adb.shell(["input", "swipe", str(x1), str(y1), str(x2), str(y2), str(int(duration * 1000))], timeout=15)

    def key(self, code: int) -> None:
        self.adb.shell(["input", "keyevent", str(code)], timeout=15)

    def type_secret(self, secret: Secret) -> None:
        # The script goes to the phone's sh on stdin, so the secret is in no `sh -c` command line
        # and not in the adb service string; each key is its own `input` process (a key code, or
        # one character for `input text` when it needs shift), so no process ever holds the secret.
        self.adb.script_stdin(Secret(secret_script(secret)), timeout=30 + 2 * len(secret),
                              shown="input keyevent <secret>")

    def pattern(self, points: Sequence[tuple[int, int]]) -> None:
        if self.sdk < 30:
            raise DeviceError("pattern unlock without uiautomator2 needs `input motionevent` (Android 11+)")
        (x0, y0), rest = points[0], points[1:]
        script = [sh_join(["input", "motionevent", "DOWN", str(x0), str(y0)])]
        script += [sh_join(["input", "motionevent", "MOVE", str(x), str(y)]) for x, y in rest]
        x_last, y_last = points[-1]
        script.append(sh_join(["input", "motionevent", "UP", str(x_last), str(y_last)]))
        self.adb.script_stdin(Secret("; ".join(script)), timeout=30, shown="input motionevent <pattern>")

    def bounds(self, resource_id: str) -> tuple[int, int, int, int] | None:
        dump = self.adb.script("uiautomator dump /dev/tty", timeout=30).stdout
        return _bounds_in_xml(dump, resource_id)


class U2Ui:
    """uiautomator2's JSON-RPC server on the phone (wakeUp, sleep, swipe, pressKeyCode, swipePoints)."""

    name = "uiautomator2"

    def __init__(self, device: Any) -> None:
        self.d = device

    def wake(self) -> None:
        self.d.screen_on()

    def sleep(self) -> None:
        self.d.screen_off()

    def swipe(self, x1: int, y1: int, x2: int, y2: int, duration: float) -> None:
        self.d.swipe(x1, y1, x2, y2, duration=duration)

    def key(self, code: int) -> None:
        self.d.press(code)

    def type_secret(self, secret: Secret) -> None:
        # key events through the u2 server: the secret never appears in a command line on the phone
        for code, meta in secret_keys(secret):
            if meta:
                self.d.press(code, meta)
            else:
                self.d.press(code)

    def pattern(self, points: Sequence[tuple[int, int]]) -> None:
        self.d.swipe_points(list(points), duration=0.15 * len(points))

    def bounds(self, resource_id: str) -> tuple[int, int, int, int] | None:
        element = self.d(resourceId=resource_id)
        if not element.exists:
            return None
        box = element.info.get("bounds") or {}
        return int(box["left"]), int(box["top"]), int(box["right"]), int(box["bottom"])


def _bounds_in_xml(xml: str, resource_id: str) -> tuple[int, int, int, int] | None:
    match = re.search(rf'resource-id="{re.escape(resource_id)}"[^>]*bounds="\[(\d+),(\d+)\]\[(\d+),(\d+)\]"', xml)
    if not match:
        return None
    left, top, right, bottom = (int(v) for v in match.groups())
    return left, top, right, bottom


def _type_and_enter(ui: Ui, secret: Secret) -> None:
    ui.type_secret(secret)
    ui.key(KEYCODE_ENTER)


def start_u2(adb: Adb, timeout: float) -> tuple[U2Ui | None, str]:
    """Start uiautomator2 within `timeout`; (driver, "") or (None, why it could not start).

    u2 pushes its jar and starts `app_process`; on builds where that fails (no app_process for
    shell, SELinux, a wedged accessibility service) the harness falls back to adb `input`.
    """
    if os.environ.get("PHONEHOME_NO_U2"):
        return None, "disabled by PHONEHOME_NO_U2"
    box: dict[str, Any] = {}

    def connect() -> None:
        try:
            import uiautomator2

            box["device"] = uiautomator2.connect(adb.device())
        except Exception as exc:  # u2 raises many unrelated types; each means "cannot start"
            box["error"] = f"{type(exc).__name__}: {exc}"

    worker = threading.Thread(target=connect, name=f"u2-start-{adb.label}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        return None, f"uiautomator2 did not start within {timeout:g} s"
    if "device" in box:
        return U2Ui(box["device"]), ""
    return None, str(box.get("error", "unknown error")).splitlines()[0][:160]


# --- records -----------------------------------------------------------------------------
@dataclass(slots=True)
class StepResult:
    """One lifecycle step: host times, the driver used, the state before and after, verdict."""

    step: str
    driver: str
    started: float
    ended: float
    verified: bool
    before: ScreenState
    after: ScreenState
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class BootRecord:
    """Host times (epoch seconds) of each reboot stage and the clock offset measured after it."""

    issued: float
    gone: float | None = None
    back: float | None = None
    boot_completed: float | None = None
    package_manager: float | None = None
    clock_offset: float | None = None  # phone clock minus host clock, seconds
    clock_uncertainty: float | None = None
    reconnects: int = 0
    saw_gone: str = ""  # how "gone" was established: transport left, or boot id changed

    @property
    def total(self) -> float | None:
        return None if self.package_manager is None else self.package_manager - self.issued

    def stages(self) -> dict[str, float | None]:
        """Seconds spent in each stage, for reports and benchmarks."""
        def span(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else b - a

        return {"going_down": span(self.issued, self.gone), "down": span(self.gone, self.back),
                "booting": span(self.back, self.boot_completed),
                "package_manager": span(self.boot_completed, self.package_manager)}

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["stages"] = self.stages()
        return data


@dataclass(slots=True)
class RecoveryAttempt:
    action: str
    ok: bool
    detail: str
    at: float = field(default_factory=time.time)


@dataclass(slots=True)
class RecoveryReport:
    reason: str
    attempts: list[RecoveryAttempt] = field(default_factory=list)
    recovered: bool = False
    serial: str | None = None  # the transport serial the phone answers on now

    def describe(self) -> str:
        steps = "; ".join(f"{a.action}: {'ok' if a.ok else 'failed'} ({a.detail})" for a in self.attempts)
        return f"{self.reason} -> {'recovered' if self.recovered else 'unrecoverable'} [{steps}]"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds each wait may take (`--ph-boot-timeout` sets `boot`)."""

    gone: float = 60.0
    back: float = 180.0
    boot: float = 300.0
    package_manager: float = 60.0
    state: float = 8.0  # a screen/keyguard state to settle after a step
    reconnect: float = 30.0
    ui_start: float = 45.0


# --- the lifecycle -----------------------------------------------------------------------
_LETTER = {chr(ord("a") + i): 29 + i for i in range(26)}
_KEYS = {**{str(d): 7 + d for d in range(10)}, **_LETTER, " ": 62, ".": 56, ",": 55, "-": 69, "=": 70,
         "/": 76, "@": 77, ";": 74, "'": 75, "[": 71, "]": 72, "\\": 73, "`": 68, "+": 81, "*": 17, "#": 18}
_SHIFTED = {**{c.upper(): _LETTER[c] for c in _LETTER}, "!": 8, "$": 11, "%": 12, "^": 13, "&": 14, "(": 16,
            ")": 7, "_": 69, ":": 74, '"': 75, "?": 76, "{": 71, "}": 72, "|": 73, "~": 68, "<": 55, ">": 56}


def secret_keys(secret: Secret | str) -> list[tuple[int, int]]:
    """Key codes (and shift meta) that type `secret`, so it never appears in a command line."""
    codes = []
    for char in Secret(secret).reveal():
        if char in _KEYS:
            codes.append((_KEYS[char], 0))
        elif char in _SHIFTED:
            codes.append((_SHIFTED[char], _META_SHIFT_ON))
        else:
            raise DeviceError("the unlock secret holds a character that cannot be typed as a key event")
    return codes


def secret_script(secret: Secret | str) -> str:
    """Shell lines that type `secret` one key per `input` process (for the phone's sh on stdin)."""
    lines = []
    for (code, meta), char in zip(secret_keys(secret), Secret(secret).reveal(), strict=True):
        if meta:  # `input keyevent` cannot hold shift: one character, as text
            lines.append(sh_join(["input", "text", char]))
        else:
            lines.append(sh_join(["input", "keyevent", str(code)]))
    return "\n".join(lines)


def pattern_points(secret: Secret | str, box: tuple[int, int, int, int]) -> list[tuple[int, int]]:
    """Screen points of a pattern like `1-2-3-6-9` or `12369` (cells 1..9, row by row) in `box`."""
    text = re.sub(r"[\s,-]", "", Secret(secret).reveal())
    if not text.isdigit():
        raise DeviceError("a pattern secret lists cells 1-9, e.g. 1-2-3-6-9")
    cells = [int(c) for c in text]
    if len(cells) < 2 or any(c < 1 or c > 9 for c in cells):
        raise DeviceError("a pattern secret lists cells 1-9, e.g. 1-2-3-6-9")
    left, top, right, bottom = box
    width, height = (right - left) / 3, (bottom - top) / 3
    return [(int(left + width * ((c - 1) % 3 + 0.5)), int(top + height * ((c - 1) // 3 + 0.5))) for c in cells]


class Lifecycle:
    """Drives one phone's power, screen and keyguard, verifying each step."""

    def __init__(self, adb: Adb, *, sdk: int, timeouts: Timeouts | None = None, use_u2: bool = True,
                 relocate: Callable[[], str | None] | None = None) -> None:
        self.adb = adb
        self.relocate = relocate  # returns the phone's current serial when it may move (new port)
        self.sdk = sdk
        self.timeouts = timeouts or Timeouts()
        self.use_u2 = use_u2
        self._ui: Ui | None = None
        self.ui_note = ""  # why uiautomator2 is not used, when it is not
        self.hardware_serial: str | None = None
        self.recoveries: list[RecoveryReport] = []
        self.boots: list[BootRecord] = []

    # --- UI -------------------------------------------------------------------------------
    @property
    def ui(self) -> Ui:
        if self._ui is None:
            driver: Ui | None = None
            if self.use_u2:
                driver, self.ui_note = start_u2(self.adb, self.timeouts.ui_start)
                if driver is None:
                    log.warning("%s: uiautomator2 unavailable (%s); using adb input", self.adb.label, self.ui_note)
            else:
                self.ui_note = "uiautomator2 not requested"
            self._ui = driver or AdbUi(self.adb, self.sdk)
        return self._ui

    def _ui_call(self, action: Callable[[Ui], None]) -> str:
        """Run a UI action; if uiautomator2 fails mid-run, fall back to adb for it. Returns the driver used."""
        ui = self.ui
        try:
            action(ui)
            return ui.name
        except DeviceError:
            raise
        except Exception as exc:
            if isinstance(ui, AdbUi):
                raise DeviceError(f"{self.adb.label}: {type(exc).__name__}: {exc}") from None
            self.ui_note = f"uiautomator2 call failed ({type(exc).__name__}); adb input used"
            log.warning("%s: %s", self.adb.label, self.ui_note)
            fallback = AdbUi(self.adb, self.sdk)
            action(fallback)
            return fallback.name

    def state(self) -> ScreenState:
        return read_state(self.adb)

    def _await(self, want: Callable[[ScreenState], bool], timeout: float) -> ScreenState:
        deadline = time.monotonic() + timeout
        state = self.state()
        while not want(state) and time.monotonic() < deadline:
            time.sleep(0.2)
            state = self.state()
        return state

    def _finish(self, step: str, driver: str, started: float, before: ScreenState, after: ScreenState,
                verified: bool, detail: str, check: bool) -> StepResult:
        result = StepResult(step, driver, started, time.time(), verified, before, after, detail)
        log.info("%s: %s via %s -> %s (%s)", self.adb.label, step, driver, after.describe(),
                 "verified" if verified else "NOT verified")
        if check and not verified:
            raise StepNotVerified(f"{step} on {self.adb.label} not verified: {detail or after.describe()}")
        return result

    # --- steps ----------------------------------------------------------------------------
    def screen_on(self, *, check: bool = True) -> StepResult:
        started, before = time.time(), self.state()
        driver = "none (already awake)"
        if not before.awake:
            driver = self._ui_call(lambda ui: ui.wake())
        after = self._await(lambda s: s.awake, self.timeouts.state)
        return self._finish("screen-on", driver, started, before, after, after.awake,
                            "" if after.awake else "still not awake", check)

    def screen_off(self, *, check: bool = True) -> StepResult:
        started, before = time.time(), self.state()
        driver = "none (already asleep)"
        if before.awake:
            driver = self._ui_call(lambda ui: ui.sleep())
        after = self._await(lambda s: not s.awake, self.timeouts.state)
        return self._finish("screen-off", driver, started, before, after, not after.awake,
                            "" if not after.awake else "still awake", check)

    def unlock(self, method: str = "swipe", secret: Secret | None = None, *, check: bool = True) -> StepResult:
        """Wake, dismiss the keyguard (swipe), enter the secret for pin/password/pattern, verify.

        The secret is a `Secret` (a plain str is wrapped), so tracebacks and logs show it masked.
        """
        if isinstance(secret, str):
            secret = Secret(secret)
        if method not in UNLOCK_METHODS:
            raise DeviceError(f"unknown unlock method {method!r} (one of {', '.join(UNLOCK_METHODS)})")
        if method in {"pin", "password", "pattern"} and not secret:
            raise DeviceError(f"unlock method {method} needs a secret (profile unlock.secret_env)")
        started, before = time.time(), self.state()
        drivers: list[str] = []
        if not before.awake:
            drivers.append(self._ui_call(lambda ui: ui.wake()))
            before_wake = before
            before = self._await(lambda s: s.awake, self.timeouts.state)
            if not before.awake:
                return self._finish("unlock", drivers[0], started, before_wake, before, False,
                                    "screen did not turn on", check)
        if before.keyguard:
            width, height = self._screen_size()
            drivers.append(self._ui_call(
                lambda ui: ui.swipe(width // 2, int(height * 0.85), width // 2, int(height * 0.25), 0.3)))
            if method in {"pin", "password"}:
                assert secret is not None
                secret_keys(secret)  # refuse an untypeable secret before touching the phone
                time.sleep(0.3)  # the bouncer animates in after the swipe
                drivers.append(self._ui_call(lambda ui: _type_and_enter(ui, secret)))
            elif method == "pattern":
                assert secret is not None
                time.sleep(0.3)
                drivers.append(self._ui_call(lambda ui: self._draw_pattern(ui, secret)))
        after = self._await(lambda s: s.keyguard is False and s.awake, self.timeouts.state)
        if before.keyguard is None and after.keyguard is None:
            detail = "keyguard state not readable from dumpsys window on this build"
        else:
            detail = "" if after.unlocked else f"keyguard still showing after {method} unlock"
        driver = "+".join(dict.fromkeys(drivers)) or "none (already unlocked)"
        return self._finish("unlock", driver, started, before, after, after.unlocked, detail, check)

    def lock(self, method: str = "swipe", *, check: bool = True) -> StepResult:
        """Screen off, then the keyguard must be back (unless the phone has none)."""
        started, before = time.time(), self.state()
        driver = "none (already asleep)"
        if before.awake:
            driver = self._ui_call(lambda ui: ui.sleep())
        expect_keyguard = method != "none"
        after = self._await(lambda s: not s.awake and (s.keyguard is True or not expect_keyguard),
                            self.timeouts.state)
        verified = not after.awake and (after.keyguard is True or not expect_keyguard)
        detail = "" if verified else ("still awake" if after.awake else
                                      "screen off but keyguard not showing (lock delayed by lock_after_timeout?)")
        return self._finish("lock", driver, started, before, after, verified, detail, check)

    def _screen_size(self) -> tuple[int, int]:
        size = parse_wm_size(self.adb.shell(["wm", "size"], timeout=10).stdout)
        return size or (1080, 1920)

    def _draw_pattern(self, ui: Ui, secret: Secret) -> None:
        box = ui.bounds("com.android.systemui:id/lockPatternView")
        if box is None:
            raise DeviceError("pattern view (com.android.systemui:id/lockPatternView) not on screen")
        ui.pattern(pattern_points(secret, box))

    # --- boot -----------------------------------------------------------------------------
    def boot_id(self) -> str | None:
        with contextlib.suppress(DeviceError):
            text = self.adb.script("cat /proc/sys/kernel/random/boot_id", timeout=5).stdout.strip()
            if re.fullmatch(r"[0-9a-f-]{36}", text):
                return text
        return None

    def reboot(self, timeouts: Timeouts | None = None) -> BootRecord:
        """Issue a reboot and wait through every stage; the record holds each stage's host time."""
        t = timeouts or self.timeouts
        old_boot = self.boot_id()
        record = BootRecord(issued=time.time())
        log.info("%s: reboot issued", self.adb.label)
        self.adb.reboot()
        self._wait_gone(record, old_boot, t.gone)
        self.wait_boot(record, t)
        self.boots.append(record)
        self._ui = None  # the u2 server did not survive the reboot; start it again when needed
        return record

    def _wait_gone(self, record: BootRecord, old_boot: str | None, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                state = self.adb.state()
            except DeviceError:
                state = "unknown"
            if state != "device":
                record.gone, record.saw_gone = time.time(), f"transport {state}"
                return
            new_boot = self.boot_id()
            if old_boot and new_boot and new_boot != old_boot:
                record.gone, record.saw_gone = time.time(), "boot id changed (down too briefly to see)"
                return
            time.sleep(0.1)
        raise DeviceError(f"reboot of {self.adb.label}: the device never went away within {timeout:g} s "
                          "(reboot refused?)")

    def wait_boot(self, record: BootRecord | None = None, timeouts: Timeouts | None = None) -> BootRecord:
        """Wait for the transport, `sys.boot_completed=1`, then `pm path android`; measure the clock."""
        t = timeouts or self.timeouts
        record = record or BootRecord(issued=time.time())
        start = time.monotonic()
        record.reconnects += self._wait_transport(t.back, start)
        record.back = time.time()
        deadline = start + t.boot
        completed = ""
        while time.monotonic() < deadline:
            with contextlib.suppress(DeviceError):
                completed = self.adb.shell(["getprop", "sys.boot_completed"], timeout=10).stdout.strip()
                if completed == "1":
                    break
            if self.adb.is_tcp and self._transport_state() != "device":
                record.reconnects += self._wait_transport(max(1.0, deadline - time.monotonic()), time.monotonic())
            time.sleep(0.25)
        if completed != "1":
            raise DeviceError(f"{self.adb.label} came back but sys.boot_completed stayed "
                              f"{completed or 'unset'} for {t.boot:g} s after the reboot was issued")
        record.boot_completed = time.time()
        pm_deadline = time.monotonic() + t.package_manager
        while True:
            with contextlib.suppress(DeviceError):
                reply = self.adb.shell(["pm", "path", "android"], timeout=10)
                if reply.ok and reply.stdout.strip().startswith("package:"):
                    break
            if time.monotonic() >= pm_deadline:
                raise DeviceError(f"{self.adb.label}: boot completed but the package manager did not answer "
                                  f"within {t.package_manager:g} s")
            time.sleep(0.25)
        record.package_manager = time.time()
        record.clock_offset, record.clock_uncertainty = self.clock_offset()
        log.info("%s: boot done in %.1f s (%s), clock offset %+.3f s", self.adb.label, record.total or 0,
                 ", ".join(f"{k} {v:.1f}" for k, v in record.stages().items() if v is not None),
                 record.clock_offset or 0)
        return record

    def _transport_state(self) -> str:
        try:
            return self.adb.state()
        except DeviceError:
            return "unknown"

    def _wait_transport(self, timeout: float, start: float) -> int:
        """Until the server lists the phone as `device`; an IP:PORT one is reconnected by hand
        (adb 29 retries every 10 s and forgets it after 60 s). Returns reconnects made."""
        deadline = start + timeout
        reconnects = 0
        last_connect = 0.0
        while time.monotonic() < deadline:
            state = self._transport_state()
            if state == "device":
                return reconnects
            if state == "unauthorized":
                raise DeviceOffline(f"{self.adb.label} came back unauthorized")
            if self.adb.is_tcp and time.monotonic() - last_connect > 1.0:
                last_connect = time.monotonic()
                with contextlib.suppress(DeviceError):
                    if state in {"offline", "unknown"}:
                        self.adb.disconnect(timeout=5)
                    self.adb.connect(timeout=5)
                    reconnects += 1
                if state == "absent" and reconnects % 3 == 0:
                    moved = self._relocate(self.relocate)  # wireless debugging picks a new port per boot
                    if moved and moved != self.adb.serial:
                        log.warning("%s: back on a new transport %s", self.adb.label, label(moved))
                        self.adb.retarget(moved)
                        continue
            time.sleep(0.2)
        raise DeviceError(f"{self.adb.label} did not come back within {timeout:g} s")

    def clock_offset(self) -> tuple[float | None, float | None]:
        """Phone clock minus host clock (s) and its uncertainty (half the round trip)."""
        before = time.time()
        try:
            text = self.adb.script("date +%s.%N; date +%s", timeout=10).stdout.split()
        except DeviceError:
            return None, None
        after = time.time()
        phone: float | None = None
        for token in text:
            with contextlib.suppress(ValueError):
                phone = float(token)
                break
        if phone is None:
            return None, None
        resolution = 0.0 if "." in text[0] and text[0].replace(".", "").isdigit() else 1.0
        return phone - (before + after) / 2, (after - before) / 2 + resolution

    # --- recovery -------------------------------------------------------------------------
    def healthy(self) -> str | None:
        """None when the phone answers a shell and has booted, else what is wrong."""
        try:
            state = self.adb.state()
        except DeviceError as exc:
            return str(exc)
        if state != "device":
            return f"transport {state}"
        try:
            reply = self.adb.script("echo phonehome-ok; getprop sys.boot_completed", timeout=8)
        except DeviceError as exc:
            return str(exc)
        lines = reply.stdout.split()
        if not lines or lines[0] != "phonehome-ok":
            return "shell does not answer"
        if lines[-1] != "1":
            return "boot not completed"
        return None

    def remember_identity(self, hardware_serial: str | None) -> None:
        """The phone's `ro.serialno`, used to find it again if it returns on another port."""
        self.hardware_serial = hardware_serial or None

    def recover(self, reason: str, *, relocate: Callable[[], str | None] | None = None,
                reboot: bool = True) -> RecoveryReport:
        """Reconnect, look for the phone on a new port, then reboot; raise DeviceUnrecoverable if all fail."""
        relocate = relocate or self.relocate
        report = RecoveryReport(reason)
        self.recoveries.append(report)
        log.warning("%s: recovering: %s", self.adb.label, reason)

        def attempt(action: str, ok: bool, detail: str) -> bool:
            report.attempts.append(RecoveryAttempt(action, ok, detail))
            log.warning("%s: recovery %s: %s (%s)", self.adb.label, action, "ok" if ok else "failed", detail)
            return ok

        problem = self.healthy()
        if problem is None:
            attempt("probe", True, "device answers")
            return self._recovered(report)
        attempt("probe", False, problem)
        if self._reconnect():
            problem = self.healthy()
            if attempt("reconnect", problem is None, problem or "device answers"):
                return self._recovered(report)
        else:
            attempt("reconnect", False, f"transport {self._transport_state()}")
        found = self._relocate(relocate)
        if found:
            self.adb.retarget(found)
            problem = self.healthy()
            if attempt("relocate", problem is None, f"now at {self.adb.label}" if problem is None else problem):
                return self._recovered(report)
        else:
            attempt("relocate", False, "not found under another serial")
        state = self._transport_state()
        if state == "unauthorized":
            attempt("reboot", False, "skipped: unauthorized (accept the debugging prompt on the phone)")
        elif not reboot:
            attempt("reboot", False, "not allowed here")
        elif state != "device":
            attempt("reboot", False, f"skipped: transport {state}, adb cannot reach adbd")
        else:
            try:
                record = self.reboot()
                attempt("reboot", True, f"booted in {record.total or 0:.1f} s")
                return self._recovered(report)
            except DeviceError as exc:
                attempt("reboot", False, str(exc))
        raise DeviceUnrecoverable(f"device {self.adb.label} unrecoverable (infrastructure, not a finding): "
                                  f"{report.describe()}")

    def _recovered(self, report: RecoveryReport) -> RecoveryReport:
        report.recovered = True
        report.serial = self.adb.serial
        self._ui = None
        return report

    def _reconnect(self) -> bool:
        """Drop and re-open the transport; True once the server lists it as `device` again."""
        with contextlib.suppress(DeviceError):
            if self.adb.is_tcp:
                self.adb.disconnect(timeout=5)
            else:
                self.adb.reconnect(timeout=5)
        try:
            self._wait_transport(self.timeouts.reconnect, time.monotonic())
            return True
        except DeviceError:
            return False

    def _relocate(self, relocate: Callable[[], str | None] | None) -> str | None:
        """The phone's new transport serial: the caller's locator, else the same `ro.serialno` elsewhere."""
        if relocate is not None:
            with contextlib.suppress(Exception):
                found = relocate()
                if found:
                    probe = Adb(self.adb.client, found, timeout=self.adb.timeout)
                    if probe.is_tcp and self._transport_state_of(probe) != "device":
                        with contextlib.suppress(DeviceError):
                            probe.connect(timeout=5)
                        _wait_listed(probe, self.timeouts.reconnect)
                    return found
        if not self.hardware_serial:
            return None
        self._connect_mdns()
        with contextlib.suppress(DeviceError):
            listing = self.adb.host_query("host:devices", timeout=5)
            for serial, state in (row for row in parse_devices(listing) if row[0] != self.adb.serial):
                if state != "device":
                    continue
                other = Adb(self.adb.client, serial, timeout=10)
                with contextlib.suppress(DeviceError):
                    if other.shell(["getprop", "ro.serialno"], timeout=5).stdout.strip() == self.hardware_serial:
                        return serial
        return None

    def _transport_state_of(self, adb: Adb) -> str:
        try:
            return adb.state()
        except DeviceError:
            return "unknown"

    def _connect_mdns(self) -> None:
        """Wireless debugging (Android 11+) announces `adb-SERIAL-…` over mDNS with its new port."""
        assert self.hardware_serial is not None
        with contextlib.suppress(DeviceError):
            services = self.adb.host_query("host:mdns:services", timeout=5)
            for line in services.splitlines():
                parts = line.split()
                if len(parts) >= 3 and self.hardware_serial in parts[0]:
                    Adb(self.adb.client, parts[-1], timeout=10).connect(timeout=5)


def _wait_listed(adb: Adb, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(DeviceError):
            if adb.state() == "device":
                return
        time.sleep(0.2)

