"""Selection, remote servers and the per-serial lock, through a real (private) adb server.

No phone is needed here: the errors for phones that are not there, a farm host's server that
does not answer, and two processes contending for one phone are all real.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import adbutils
import pytest

from harness.device.adb import Adb, DeviceOffline
from harness.device.cli import add_arguments, run
from harness.device.select import (
    Attached,
    DeviceBusy,
    SerialLock,
    describe_attached,
    lock_dir,
    lock_key,
    open_device,
    parse_spec,
    resolve,
)
from harness.errors import DeviceError


@pytest.fixture
def locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PHONEHOME_LOCK_DIR", str(tmp_path))
    return tmp_path


def test_no_device_attached_is_one_clear_error(empty_adb_server: dict[str, str]) -> None:
    with pytest.raises(DeviceError, match=r"^no usable device: no device attached$"):
        resolve([], env={})


def test_unknown_serial_names_it_masked_and_lists_attached(empty_adb_server: dict[str, str]) -> None:
    with pytest.raises(DeviceOffline) as info:
        open_device(parse_spec("R58M12345678"))
    message = str(info.value)
    assert "R58M12345678" not in message
    assert "serial …678 not found" in message and "no device attached" in message


def test_describe_attached_masks_usb_serials_not_addresses() -> None:
    text = describe_attached([Attached("R58M12345678", "unauthorized", None), Attached("127.0.0.1:5555", "device",
                                                                                          "Pixel_7")], "farm:5037")
    assert text == ("attached on adb server farm:5037: serial …678 (unauthorized), 127.0.0.1:5555 (device Pixel_7)")


def test_tcp_device_that_does_not_answer(adb_server: dict[str, str]) -> None:
    with socket.socket() as sock:  # a port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DeviceOffline, match=rf"device 127\.0\.0\.1:{port} not found"):
        open_device(parse_spec(f"127.0.0.1:{port}"), connect_timeout=3)


def test_remote_server_not_reachable_is_one_line(adb_server: dict[str, str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DeviceError, match=rf"adb server 127\.0\.0\.1:{port} not reachable .* for serial …456@"):
        open_device(parse_spec(f"R58M123456@127.0.0.1:{port}"))


def test_remote_server_is_used_for_listing(empty_adb_server: dict[str, str]) -> None:
    # the private server stands in for a farm host's: SERIAL@HOST:PORT must reach it, not 5037
    spec = parse_spec(f"R58M123456@127.0.0.1:{empty_adb_server['ANDROID_ADB_SERVER_PORT']}")
    with pytest.raises(DeviceOffline, match=r"not found; no device attached on adb server 127\.0\.0\.1:"):
        open_device(spec)


def test_devices_command_with_nothing_attached(empty_adb_server: dict[str, str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args([])) == 0
    assert "no device attached" in capsys.readouterr().err


_HOLDER = textwrap.dedent("""
    import sys, time, adbutils
    from harness.device.adb import Adb
    from harness.device.select import SerialLock
    lock = SerialLock(Adb(adbutils.AdbClient(port=int(sys.argv[1])), sys.argv[2])).acquire()
    print("held", flush=True)
    sys.stdin.readline()
""")


def test_one_process_per_serial(locks: Path, adb_server: dict[str, str]) -> None:
    port = int(adb_server["ANDROID_ADB_SERVER_PORT"])
    adb = Adb(adbutils.AdbClient(port=port), "R58M123456")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(port), "R58M123456"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ})
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DeviceBusy, match=rf"device serial …456 is in use by another phonehome process "
                                             rf"\(pid {holder.pid}\)"):
            SerialLock(adb).acquire()
        other = SerialLock(Adb(adbutils.AdbClient(port=port), "R58M999999")).acquire()  # other phones are free
        other.release()
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=10)
    with SerialLock(adb, wait=2) as lock:  # released when the holder exits
        assert lock.held
    names = [p.name for p in lock_dir().iterdir()]
    assert all("R58M" not in name for name in names)
    assert f"{lock_key(adb)}.lock" in names


def test_lock_dies_with_its_process(locks: Path, adb_server: dict[str, str]) -> None:
    port = int(adb_server["ANDROID_ADB_SERVER_PORT"])
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(port), "R58M123456"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait(timeout=10)
    adb = Adb(adbutils.AdbClient(port=port), "R58M123456")
    with SerialLock(adb) as lock:
        assert lock.held


def test_a_server_that_hangs_is_a_timeout_naming_the_call_never_the_serial() -> None:
    """An adb server that accepts and never answers (a wedged farm host): every call ends at its
    deadline with an error naming the call, and the hardware serial stays masked."""
    import threading
    import time

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        accepted: list[socket.socket] = []
        stop = threading.Event()

        def accept() -> None:
            silent.settimeout(0.2)
            while not stop.is_set():
                try:
                    accepted.append(silent.accept()[0])
                except OSError:
                    continue

        worker = threading.Thread(target=accept, daemon=True)
        worker.start()
        try:
            adb = Adb(adbutils.AdbClient(port=silent.getsockname()[1]), "R58M123456", timeout=1)
            calls = {"features": adb.features, "state": adb.state, "shell": lambda: adb.script("echo hi"),
                     "reboot": lambda: adb.reboot(timeout=1), "connect": lambda: adb.connect(timeout=1)}
            for name, call in calls.items():
                start = time.monotonic()
                with pytest.raises(DeviceError, match="timed out") as info:
                    call()
                assert time.monotonic() - start < 8, name
                assert "R58M123456" not in str(info.value) and "…456" in str(info.value), (name, str(info.value))
        finally:
            stop.set()
            worker.join(timeout=5)
            for conn in accepted:
                conn.close()


def test_devices_command_masks_usb_serials_unless_asked(capsys: pytest.CaptureFixture[str]) -> None:
    """A farm host's server listing a USB phone (its serial is the hardware serial): `phonehome devices
    --adb-server` shows it masked, and whole only with --show-serials. The server side is the adb host
    protocol (4-hex length, OKAY, length-prefixed reply), served here from a socket."""
    import argparse
    import threading

    replies = {"host:devices": "R58M123456\tunauthorized\n",
               "host:devices-l": "R58M123456             unauthorized usb:1-1 transport_id:3\n"}
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.settimeout(10)
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
                with conn:
                    head = conn.recv(4)
                    if len(head) < 4:  # the reachability probe connects and closes
                        continue
                    request = conn.recv(int(head, 16)).decode()
                    body = replies.get(request)
                    if body is None:
                        conn.sendall(b"FAIL0007unknown")
                    else:
                        conn.sendall(b"OKAY" + f"{len(body):04x}".encode() + body.encode())

        worker = threading.Thread(target=serve, daemon=True)
        worker.start()
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        where = f"127.0.0.1:{server.getsockname()[1]}"
        try:
            assert run(parser.parse_args(["--adb-server", where])) == 0
            table = capsys.readouterr().out
            assert "R58M123456" not in table and "…456" in table and "unauthorized" in table and where in table
            assert run(parser.parse_args(["--adb-server", where, "--show-serials", "--json"])) == 0
            assert '"serial": "R58M123456"' in capsys.readouterr().out
        finally:
            stop.set()
            server.close()
            worker.join(timeout=5)
