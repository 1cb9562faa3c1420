"""The uiautomator2 server, as `u2.jar` runs it on a phone: HTTP JSON-RPC behind `tcp:9008`.

uiautomator2 3.7 pushes `u2.jar`, then runs `CLASSPATH=/data/local/tmp/u2.jar app_process /
com.wetest.uia2.Main -p 9008` as a long-lived shell and polls `GET /ping`. Here `app_process`
checks that the class really is in the pushed jar's `classes.dex`, then serves the JSON-RPC
subset uiautomator2 uses, over the phone's own view tree (keyguard, home screen, dialogs), for as
long as that shell stream stays open. Only real uiautomator2 talks to it; nothing is patched.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import re
import socket
import time
import zipfile
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from harness.virtual import lockpattern
from harness.virtual.shell import Proc

if TYPE_CHECKING:
    from harness.virtual.android import AndroidDevice, View

MAIN_CLASS = "com.wetest.uia2.Main"


def _jar_has_class(jar: bytes, cls: str) -> bool:
    """Whether a jar's dex files define `cls` (the dex string table names every type it defines)."""
    descriptor = ("L" + cls.replace(".", "/") + ";").encode()
    try:
        with zipfile.ZipFile(io.BytesIO(jar)) as archive:
            for name in archive.namelist():
                if re.fullmatch(r"classes\d*\.dex", name) and descriptor in archive.read(name):
                    return True
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return False


async def app_process(device: AndroidDevice, p: Proc) -> int:
    """`app_process [vm-options] cmd-dir class [args]` for the uiautomator2 server class."""
    args = [a for a in p.argv[1:] if not a.startswith("-X")]
    if len(args) < 2:
        await p.err("Usage: app_process [java-options] cmd-dir start-class-name [options]\n")
        return 1
    cls, options = args[1], args[2:]
    classpath = p.env.get("CLASSPATH", "")
    jars = [device.fs.read(path) for path in classpath.split(":") if path]
    if not any(jar is not None and _jar_has_class(jar, cls) for jar in jars):
        await p.err(f'Exception in thread "main" java.lang.ClassNotFoundException: Didn\'t find class "{cls}" on '
                    f'path: DexPathList[[zip file "{classpath}"],nativeLibraryDirectories=[/system/lib64, '
                    "/system_ext/lib64]]\n")
        return 1
    if cls != MAIN_CLASS:
        await p.err(f"Error: {cls} is not a supported main class on this virtual phone\n")
        return 1
    port = 9008
    if "-p" in options[:-1]:
        with contextlib.suppress(ValueError):
            port = int(options[options.index("-p") + 1])
    if device.u2 is not None:
        await p.out("[server] INFO: [UiAutomator2Server] Starting Server\n"
                    "java.lang.IllegalStateException: UiAutomationService android.accessibilityservice."
                    "IAccessibilityServiceClient$Stub$Proxy@5deffd5already registered!\n")
        return 1
    server = U2Server(device, port, pid=p.shell.pid)
    device.u2 = server
    device.log("I", "UiAutomator2Server", f"Starting Server on port {port}", pid=server.pid)
    await p.out("[server] INFO: [UiAutomator2Server] Starting Server\n")
    try:
        await server.stopped.wait()
    finally:
        await server.stop()
        if device.u2 is server:
            device.u2 = None
    return 0


async def uiautomator_cmd(device: AndroidDevice, p: Proc) -> int:
    """`uiautomator dump [--compressed] [FILE]` (adbutils' dump_hierarchy)."""
    args = p.argv[1:]
    if args[:1] != ["dump"]:
        await p.err("Usage: uiautomator <subcommand> [options]\n\nAvailable subcommands:\n\nhelp: displays "
                    "help message\n\nruntest: executes UI automation tests\n\ndump: creates an XML dump of "
                    "current UI hierarchy\n\nevents: prints out accessibility events until terminated\n")
        return 1
    target = next((a for a in args[1:] if not a.startswith("-")), "/sdcard/window_dump.xml")
    if target in ("/dev/tty", "/dev/stdout"):
        await p.out(hierarchy_xml(device).rstrip("\n"))
        await p.out(f"UI hierchary dumped to: {target}\n")
        return 0
    problem = p.shell.fs.write(p.shell.abspath(target), hierarchy_xml(device).encode(), 0o644, int(time.time()))
    if problem:
        await p.err(f"ERROR: could not write {target}: {problem}\n")
        return 1
    await p.out(f"UI hierchary dumped to: {target}\n")
    return 0


def hierarchy_xml(device: AndroidDevice, max_depth: int = 50) -> str:
    """The window hierarchy as uiautomator's AccessibilityNodeInfoDumper writes it."""
    lines = ["<?xml version='1.0' encoding='UTF-8' standalone='yes' ?>", '<hierarchy rotation="0">']

    def emit(view: View, index: int, depth: int) -> None:
        left, top, right, bottom = view.bounds
        attrs = {
            "index": str(index), "text": view.text, "resource-id": view.resource_id, "class": view.cls,
            "package": view.package, "content-desc": view.desc, "checkable": _b(view.checkable),
            "checked": _b(view.checked), "clickable": _b(view.clickable), "enabled": _b(view.enabled),
            "focusable": _b(view.focusable), "focused": "false", "scrollable": _b(view.scrollable),
            "long-clickable": _b(view.long_clickable), "password": _b(view.password),
            "selected": _b(view.selected), "visible-to-user": "true",
            "bounds": f"[{left},{top}][{right},{bottom}]",
        }
        rendered = " ".join(f"{k}={quoteattr(v)}" for k, v in attrs.items())
        pad = "  " * depth
        if view.children and depth < max_depth:
            lines.append(f"{pad}<node {rendered}>")
            for child_index, child in enumerate(view.children):
                emit(child, child_index, depth + 1)
            lines.append(f"{pad}</node>")
        else:
            lines.append(f"{pad}<node {rendered} />")

    emit(device.ui_tree(), 0, 1)
    lines.append("</hierarchy>")
    return "\n".join(lines) + "\n"


def _b(value: bool) -> str:
    return "true" if value else "false"


# Selector masks (uiautomator2 `Selector`): field -> bit
_MASKS = {
    "text": 0x01, "textContains": 0x02, "textMatches": 0x04, "textStartsWith": 0x08, "className": 0x10,
    "classNameMatches": 0x20, "description": 0x40, "descriptionContains": 0x80, "descriptionMatches": 0x0100,
    "descriptionStartsWith": 0x0200, "checkable": 0x0400, "checked": 0x0800, "clickable": 0x1000,
    "longClickable": 0x2000, "scrollable": 0x4000, "enabled": 0x8000, "focusable": 0x010000,
    "focused": 0x020000, "selected": 0x040000, "packageName": 0x080000, "packageNameMatches": 0x100000,
    "resourceId": 0x200000, "resourceIdMatches": 0x400000, "index": 0x800000, "instance": 0x01000000,
}


def _field_matches(view: View, key: str, want: Any) -> bool:
    text, desc = view.text, view.desc
    checks: dict[str, Any] = {
        "text": lambda: text == want, "textContains": lambda: want in text,
        "textMatches": lambda: re.fullmatch(want, text, re.S) is not None,
        "textStartsWith": lambda: text.startswith(want), "className": lambda: view.cls == want,
        "classNameMatches": lambda: re.fullmatch(want, view.cls) is not None,
        "description": lambda: desc == want, "descriptionContains": lambda: want in desc,
        "descriptionMatches": lambda: re.fullmatch(want, desc, re.S) is not None,
        "descriptionStartsWith": lambda: desc.startswith(want), "checkable": lambda: view.checkable == want,
        "checked": lambda: view.checked == want, "clickable": lambda: view.clickable == want,
        "longClickable": lambda: view.long_clickable == want, "scrollable": lambda: view.scrollable == want,
        "enabled": lambda: view.enabled == want, "focusable": lambda: view.focusable == want,
        "focused": lambda: want is False, "selected": lambda: view.selected == want,
        "packageName": lambda: view.package == want,
        "packageNameMatches": lambda: re.fullmatch(want, view.package) is not None,
        "resourceId": lambda: view.resource_id == want,
        "resourceIdMatches": lambda: re.fullmatch(want, view.resource_id) is not None,
    }
    check = checks.get(key)
    return bool(check()) if check is not None else True


def find(root: View, selector: dict[str, Any]) -> list[View]:
    """Every view matching a uiautomator2 selector, in document order (`instance` picks one)."""
    mask = int(selector.get("mask", 0))
    keys = [k for k, bit in _MASKS.items() if mask & bit and k not in ("index", "instance")]
    found = [v for v in root.walk() if all(_field_matches(v, k, selector.get(k)) for k in keys)]
    relations = selector.get("childOrSibling") or []
    subs = selector.get("childOrSiblingSelector") or []
    for relation, sub in zip(relations, subs, strict=False):
        nxt: list[View] = []
        for view in found:
            pool = list(view.walk())[1:] if relation == "child" else _siblings(root, view)
            nxt.extend(v for v in find_in(pool, sub))
        found = nxt
    if mask & _MASKS["instance"]:
        instance = int(selector.get("instance", 0))
        return found[instance : instance + 1]
    return found


def find_in(pool: list[View], selector: dict[str, Any]) -> list[View]:
    mask = int(selector.get("mask", 0))
    keys = [k for k, bit in _MASKS.items() if mask & bit and k not in ("index", "instance")]
    return [v for v in pool if all(_field_matches(v, k, selector.get(k)) for k in keys)]


def _siblings(root: View, target: View) -> list[View]:
    for view in root.walk():
        if any(child is target for child in view.children):
            return [c for c in view.children if c is not target]
    return []


def _selector_text(selector: dict[str, Any]) -> str:
    mask = int(selector.get("mask", 0))
    parts = [f"{k.upper()}={selector.get(k)}" for k, bit in _MASKS.items() if mask & bit]
    return "UiSelector[" + ", ".join(parts) + "]"


def _bounds(view: View) -> dict[str, int]:
    left, top, right, bottom = view.bounds
    return {"bottom": bottom, "left": left, "right": right, "top": top}


def obj_info(view: View) -> dict[str, Any]:
    return {
        "bounds": _bounds(view), "checkable": view.checkable, "checked": view.checked,
        "childCount": len(view.children), "className": view.cls, "clickable": view.clickable,
        "contentDescription": view.desc or None, "enabled": view.enabled, "focusable": view.focusable,
        "focused": False, "longClickable": view.long_clickable, "packageName": view.package,
        "resourceName": view.resource_id or None, "scrollable": view.scrollable, "selected": view.selected,
        "text": view.text, "visibleBounds": _bounds(view),
    }


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class U2Server:
    """The JSON-RPC server u2.jar runs; reachable only through the phone's `tcp:PORT` forwards."""

    def __init__(self, device: AndroidDevice, port: int, pid: int) -> None:
        self.device = device
        self.port = port
        self.pid = pid
        self.stopped = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._touch: list[tuple[float, float]] = []  # the injected gesture in progress (DOWN, MOVEs)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A fresh connection to the server, as a TCP connect to localhost:PORT on the phone would be."""
        if self.stopped.is_set():
            raise ConnectionRefusedError(f"connect to port {self.port} refused")
        ours, theirs = socket.socketpair()
        server_reader, server_writer = await asyncio.open_connection(sock=ours)
        self._writers.add(server_writer)
        task = asyncio.ensure_future(self._serve(server_reader, server_writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return await asyncio.open_connection(sock=theirs)

    async def stop(self) -> None:
        self.stopped.set()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await reader.readline()
                if not request:
                    return
                method, path, *_ = [*request.decode("latin-1").split(), "", ""]
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    key, _, value = line.decode("latin-1").partition(":")
                    headers[key.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                status, content_type, payload = await self._handle(method, path, body)
                head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n"
                        "Connection: close\r\n\r\n").encode()
                writer.write(head + payload)
                await writer.drain()
                return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _handle(self, method: str, path: str, body: bytes) -> tuple[str, str, bytes]:
        if method == "GET" and path == "/ping":
            return "200 OK", "text/plain; charset=utf-8", b"pong"
        if method == "POST" and path.startswith("/jsonrpc/0"):
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                return "400 Bad Request", "text/plain", b"bad json"
            reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request.get("id")}
            try:
                reply["result"] = await self.call(str(request.get("method")), request.get("params"))
            except RpcError as exc:
                reply["error"] = {"code": exc.code, "message": exc.message, "data": exc.message}
            return "200 OK", "application/json; charset=utf-8", json.dumps(reply).encode()
        return "404 Not Found", "text/plain", b"Not Found"

    async def call(self, method: str, params: Any) -> Any:
        """One JSON-RPC method of the subset uiautomator2 uses."""
        device = self.device
        args = list(params) if isinstance(params, list) else ([] if params is None else [params])
        width, height = device.size
        if method == "deviceInfo":
            return {
                "currentPackageName": device.current_window()[0], "displayHeight": height,
                "displayRotation": 0, "displaySizeDpX": width * 160 // device.density,
                "displaySizeDpY": height * 160 // device.density, "displayWidth": width,
                "productName": device.product, "screenOn": device.screen_on, "sdkInt": device.spec.sdk,
                "naturalOrientation": True,
            }
        if method == "wakeUp":
            await device.wake("android.server.wm:TURN_ON")
            return None
        if method == "sleep":
            await device.sleep("application")
            return None
        if method == "isScreenOn":
            return device.screen_on
        if method == "pressKey":
            from harness.virtual.android import U2_KEYS

            code = U2_KEYS.get(str(args[0]).lower()) if args else None
            if code is None:
                return False
            await device.key(code)
            return True
        if method == "pressKeyCode":
            await device.key(int(args[0]))
            return True
        if method == "takeScreenshot":
            return base64.b64encode(device.screenshot_png()).decode()
        if method == "dumpWindowHierarchy":
            depth = int(args[1]) if len(args) > 1 and args[1] else 50
            return hierarchy_xml(device, depth)
        if method == "click" and len(args) >= 2 and not isinstance(args[0], dict):
            return await device.tap(float(args[0]), float(args[1])) or True
        if method in ("swipe", "drag") and len(args) >= 4:
            await device.swipe(*(float(v) for v in args[:4]))
            return True
        if method == "swipePoints" and args and len(args[0]) >= 2:
            # UiDevice.swipe(Point[] segments, int segmentSteps): DOWN, `steps - 1` MOVEs per segment, UP
            flat = [float(v) for v in args[0]]
            points = list(zip(flat[0::2], flat[1::2], strict=False))
            steps = int(args[1]) if len(args) > 1 and args[1] else 1
            await device.gesture(lockpattern.interpolate(points, steps), points[-1])
            return True
        if method == "injectInputEvent" and len(args) >= 3:
            action, x, y = int(args[0]), float(args[1]), float(args[2])
            if action == 0:  # MotionEvent.ACTION_DOWN
                self._touch = [(x, y)]
            elif action == 2 and self._touch:  # ACTION_MOVE
                self._touch.append((x, y))
            elif action in (1, 3) and self._touch:  # ACTION_UP, ACTION_CANCEL
                points, self._touch = self._touch, []
                if action == 1:
                    await device.gesture(points, (x, y))
            return True
        if method in ("objInfo", "exist", "waitForExists", "waitUntilGone", "count", "objInfoOfAllInstances",
                      "getText", "setText", "clearTextField", "click", "longClick"):
            return await self._selector_call(method, args)
        if method in ("getLastToast", "getClipboard", "getLastTraversedText"):
            return None
        if method in ("clearLastToast", "clearLastTraversedText", "freezeRotation", "setOrientation",
                      "setClipboard", "makeToast", "openNotification", "openQuickSettings", "pasteClipboard"):
            return True
        raise RpcError(-32601, f"Method not found: {method}")

    async def _selector_call(self, method: str, args: list[Any]) -> Any:
        selector = args[0] if args and isinstance(args[0], dict) else {}
        if method in ("waitForExists", "waitUntilGone"):
            timeout = (float(args[1]) if len(args) > 1 else 0.0) / 1000
            deadline = time.monotonic() + timeout
            while True:
                present = bool(find(self.device.ui_tree(), selector)) and self.device.screen_on
                if present == (method == "waitForExists"):
                    return True
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(0.1)
        views = find(self.device.ui_tree(), selector) if self.device.screen_on else []
        if method == "exist":
            return bool(views)
        if method == "count":
            return len(views)
        if method == "objInfoOfAllInstances":
            return [obj_info(v) for v in views]
        if not views:
            raise RpcError(-32002, f"androidx.test.uiautomator.UiObjectNotFoundException: {_selector_text(selector)}")
        view = views[0]
        if method == "objInfo":
            return obj_info(view)
        if method == "getText":
            return view.text
        if method in ("click", "longClick"):
            left, top, right, bottom = view.bounds
            return await self.device.tap((left + right) / 2, (top + bottom) / 2)
        if method in ("setText", "clearTextField"):
            text = str(args[1]) if method == "setText" and len(args) > 1 else ""
            await self.device.type_text(text)
            return True
        return None
