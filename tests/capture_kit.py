"""A small test network for the capture tests: "phones" and a router, each its own namespace.

    with NetLab() as lab:
        a = lab.add_phone()            # namespace phXXXXXXpN with wlan0, on the router's bridge
        shell = lab.shell(a)           # runs `sh -c` inside it (the backends' `Shell`)
        lab.udp(a, lab.router_ip, 9, [b"x"] * 3)

Every namespace is named `ph...`; veths are created directly inside the namespaces (no end ever
lies in the host namespace); there is no default route and no forwarding, so every packet stays
between the lab's own addresses. Inside a lab namespace, `/etc/resolv.conf` is the lab's (the
router's address), so a name lookup goes to the router and nowhere else. Everything is removed on
exit, also after a failure.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from harness.device.adb import ShellResult

SUBNET = "10.77.0"


@dataclass(slots=True)
class LabPhone:
    ns: str
    ip: str
    mac: str
    iface: str = "wlan0"


def run(argv: list[str], *, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done


def random_mac() -> str:
    return "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))


class NetLab:
    """A router namespace with a bridge `br0` (the capture point) and phone namespaces on it."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.router = f"ph{self.tag}r"
        self.router_ip = f"{SUBNET}.1"
        self.bridge = "br0"
        self.phones: list[LabPhone] = []
        self.namespaces: list[str] = []
        self.dir = Path(tempfile.mkdtemp(prefix="phonehome-netlab-"))
        self.resolv = self.dir / "resolv.conf"
        self.resolv.write_text(f"nameserver {self.router_ip}\noptions timeout:1 attempts:1\n")

    def __enter__(self) -> NetLab:
        try:
            self._ns(self.router)
            self.ip(self.router, "link", "add", self.bridge, "type", "bridge")
            self.ip(self.router, "addr", "add", f"{self.router_ip}/24", "dev", self.bridge)
            self.ip(self.router, "link", "set", self.bridge, "up")
            self.ip(self.router, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _ns(self, name: str) -> None:
        """A quiet namespace: IPv6 off, no IGMP reports; the only packets are the tests' own."""
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)
        run(["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
             "net.ipv6.conf.default.disable_ipv6=1", "net.ipv4.igmp_link_local_mcast_reports=0"])

    def ip(self, ns: str, *args: str) -> str:
        return run(["ip", "-n", ns, *args]).stdout

    def add_phone(self, mac: str | None = None) -> LabPhone:
        index = len(self.phones) + 1
        phone = LabPhone(f"ph{self.tag}p{index}", f"{SUBNET}.{index + 1}", mac or random_mac())
        self._ns(phone.ns)
        port = f"v{index}"
        run(["ip", "link", "add", port, "netns", self.router, "type", "veth", "peer", "name", phone.iface,
             "netns", phone.ns])
        self.ip(self.router, "link", "set", port, "master", self.bridge)
        self.ip(self.router, "link", "set", port, "up")
        self.ip(phone.ns, "link", "set", phone.iface, "address", phone.mac)
        self.ip(phone.ns, "addr", "add", f"{phone.ip}/24", "dev", phone.iface)
        self.ip(phone.ns, "link", "set", phone.iface, "up")
        self.ip(phone.ns, "link", "set", "lo", "up")
        self.phones.append(phone)
        return phone

    def readdress(self, phone: LabPhone, *, mac: str | None = None, ip: str | None = None) -> None:
        """What DHCP and MAC randomization do across a reboot."""
        if mac:
            self.ip(phone.ns, "link", "set", phone.iface, "down")
            self.ip(phone.ns, "link", "set", phone.iface, "address", mac)
            self.ip(phone.ns, "link", "set", phone.iface, "up")
            phone.mac = mac
        if ip:
            self.ip(phone.ns, "addr", "flush", "dev", phone.iface)
            self.ip(phone.ns, "addr", "add", f"{ip}/24", "dev", phone.iface)
            phone.ip = ip

    def argv(self, ns: str, command: str) -> list[str]:
        """`sh -c command` inside `ns`, with the lab's resolv.conf."""
        inner = f"mount --bind {shlex.quote(str(self.resolv))} /etc/resolv.conf && {command}"
        return ["ip", "netns", "exec", ns, "unshare", "-m", "sh", "-c", inner]

    def shell(self, phone: LabPhone) -> NetnsShell:
        return NetnsShell(self, phone.ns)

    def udp(self, phone: LabPhone, dst: str, port: int, payloads: list[bytes], *, sport: int = 0) -> None:
        """Send UDP datagrams from inside the phone's namespace (real sockets, the kernel's stack)."""
        code = ("import socket,sys\n"
                "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                f"s.bind(('', {sport}))\n"
                f"for p in {payloads!r}: s.sendto(p,({dst!r},{port}))\n")
        run(["ip", "netns", "exec", phone.ns, sys.executable, "-c", code])

    def tcp_listen_and_send(self, server: str, client: LabPhone, server_ip: str, port: int, data: bytes) -> None:
        """A TCP connection from `client` to a listener in namespace `server` carrying `data`."""
        listener = subprocess.Popen(
            ["ip", "netns", "exec", server, sys.executable, "-c",
             "import socket\n"
             "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
             f"s.bind(({server_ip!r},{port})); s.listen(1); print('ready', flush=True)\n"
             "c,_=s.accept()\n"
             "while c.recv(65536): pass\n"],
            stdout=subprocess.PIPE, text=True)
        try:
            assert listener.stdout is not None
            assert listener.stdout.readline().strip() == "ready"
            code = ("import socket\n"
                    f"c=socket.create_connection(({server_ip!r},{port}),timeout=5); c.sendall({data!r}); c.close()\n")
            run(["ip", "netns", "exec", client.ns, sys.executable, "-c", code])
            listener.wait(10)
        finally:
            if listener.poll() is None:
                listener.kill()
            listener.wait()

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            with contextlib.suppress(Exception):
                run(["ip", "netns", "del", ns], check=False)
        self.namespaces.clear()
        with contextlib.suppress(OSError):
            self.resolv.unlink()
            os.rmdir(self.dir)


class NetnsShell:
    """The backends' `Shell` for a lab phone: `sh -c` inside its namespace."""

    def __init__(self, lab: NetLab, ns: str) -> None:
        self.lab = lab
        self.ns = ns
        self.commands: list[str] = []

    def script(self, text: str, timeout: float | None = None) -> ShellResult:
        self.commands.append(text)
        done = subprocess.run(self.lab.argv(self.ns, text), capture_output=True, text=True, timeout=timeout or 30,
                              check=False)
        return ShellResult(text, done.returncode, done.stdout, done.stderr)


def packets(path: Path) -> list[object]:
    """Every packet of a capture, dissected by scapy (the reference reader for the tests)."""
    from scapy.utils import rdpcap

    return list(rdpcap(str(path)))


def udp_payloads(path: Path, port: int) -> list[bytes]:
    from scapy.layers.inet import UDP

    return [bytes(p[UDP].payload) for p in packets(path) if UDP in p and p[UDP].dport == port]  # type: ignore[operator,index]
