"""The virtual phone's contained network: real namespaces, veths, routes and packets.

Every packet these tests send goes to an address inside namespaces the test made; a packet to an
address nobody serves must die inside (checked on the router's link and on every host interface).
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.sendrecv import AsyncSniffer
from vnet_capture import router_capture, tcp_streams

from harness.errors import PhonehomeError
from harness.virtual import network as net
from harness.virtual.internet import Internet
from harness.virtual.network import PhoneNetwork, cleanup_leftovers

UNKNOWN = "198.51.100.7"  # served by nobody, in no zone
MAC = "c0:ee:fb:4a:12:7e"


def new_tag() -> str:
    return "t" + secrets.token_hex(4)


def netns_list() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def host_links(*filters: str) -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show", *filters], capture_output=True, text=True, check=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


def ip_in(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def network(netns_available: None) -> Iterator[PhoneNetwork]:
    phone_net = PhoneNetwork.create(new_tag(), wifi_mac=MAC)
    try:
        yield phone_net
    finally:
        phone_net.destroy()


@pytest.fixture
def internet(network: PhoneNetwork) -> Iterator[Internet]:
    servers = Internet(network)
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


async def http_post(network: PhoneNetwork, host: str, address: str, marker: bytes) -> bytes:
    reader, writer = await network.open_connection(80, address)
    writer.write(b"POST / HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Length: " +
                 str(len(marker)).encode() + b"\r\nConnection: close\r\n\r\n" + marker)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return answer


def test_three_namespaces_and_no_veth_in_the_host(netns_available: None) -> None:
    before = host_links()
    with PhoneNetwork.create(new_tag(), wifi_mac=MAC) as phone_net:
        assert set(phone_net.namespaces) <= netns_list()
        assert host_links() == before, "an interface appeared in the host namespace"
        phone_links = ip_in(phone_net.phone_ns, "-o", "link")
        assert "wlan0" in phone_links and "rmnet_data0" in phone_links
        assert f"link/ether {MAC}" in ip_in(phone_net.phone_ns, "link", "show", "wlan0")
        router_links = ip_in(phone_net.router_ns, "-o", "link")
        assert phone_net.router_capture_iface in router_links and "wan0" in router_links
        # forwarding only in the router; the internet namespace drops what is not its own
        for ns, forward in ((phone_net.phone_ns, "0"), (phone_net.router_ns, "1"), (phone_net.internet_ns, "0")):
            out = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/sys/net/ipv4/ip_forward"],
                                 capture_output=True, text=True, check=True).stdout.strip()
            assert out == forward, ns
        # public addresses exist only inside the internet namespace
        assert phone_net.dns_server in ip_in(phone_net.internet_ns, "addr", "show", "lo")
        host_addrs = subprocess.run(["ip", "addr"], capture_output=True, text=True, check=True).stdout
        assert phone_net.dns_server not in host_addrs
    assert not set(phone_net.namespaces) & netns_list()


def test_a_connection_from_the_phone_reaches_the_simulated_server(network: PhoneNetwork,
                                                                  internet: Internet) -> None:
    host_addrs = subprocess.run(["ip", "addr"], capture_output=True, text=True, check=True).stdout
    assert "42.99.2.15" not in host_addrs
    answer = asyncio.run(http_post(network, "zzhc.vnet.cn", "42.99.2.15", b"hello"))
    assert answer.startswith(b"HTTP/1.1 200")
    assert b'"resultCode":"1"' in answer  # non-zero: the 2019 client stays unregistered
    seen = [r for r in internet.requests() if r["proto"] == "http"]
    assert seen[-1]["client"] == network.phone_ip
    assert (seen[-1]["dst"], seen[-1]["dport"], seen[-1]["host"]) == ("42.99.2.15", 80, "zzhc.vnet.cn")


def test_names_resolve_through_the_simulated_dns(network: PhoneNetwork, internet: Internet) -> None:
    script = textwrap.dedent("""
        import socket
        print(socket.gethostbyname("zzhc.vnet.cn"))
        print(socket.gethostbyname("x7f3.canary.phonehome.test"))
        try:
            socket.gethostbyname("no-such-host.example.org")
        except socket.gaierror:
            print("nxdomain")
    """)
    out = subprocess.run(network.exec_argv([sys.executable, "-c", script]), capture_output=True, text=True,
                         check=True, timeout=30).stdout.split()
    assert out == ["42.99.2.15", "198.18.0.77", "nxdomain"]
    queried = {(r["host"], r["rcode"]) for r in internet.requests() if r["proto"] == "dns"}
    assert ("zzhc.vnet.cn", 0) in queried and ("no-such-host.example.org", 3) in queried


def test_a_packet_to_an_unknown_address_is_dropped_inside(network: PhoneNetwork, internet: Internet,
                                                          tmp_path: Path, tool: Callable[[str], str]) -> None:
    tool("tcpdump")
    # every host interface that can carry a packet (a down one cannot, and scapy cannot open it)
    host_sniffer = AsyncSniffer(iface=sorted(host_links("up")), store=True,
                                lfilter=lambda p: IP in p and UNKNOWN in (p[IP].src, p[IP].dst))
    host_sniffer.start()
    capture = router_capture(network, tmp_path / "router.pcap")
    try:
        async def attempt() -> str:
            try:
                await asyncio.wait_for(network.open_connection(80, UNKNOWN), 3)
            except TimeoutError:
                return "timeout"
            except OSError as exc:
                return f"error {exc}"
            return "connected"

        outcome = asyncio.run(attempt())
    finally:
        capture.stop()
        host_sniffer.stop()
    assert outcome == "timeout"  # no answer, not even a refusal: dropped, as on a dead route
    syns = [p for p in capture.packets() if IP in p and TCP in p and p[IP].dst == UNKNOWN]
    assert syns, "the SYN should leave the phone through the access point"
    assert all(p[IP].src == network.phone_ip for p in syns)
    assert host_sniffer.results is not None and len(host_sniffer.results) == 0, "a packet reached the host"


def test_gateway_capture_sees_the_phones_traffic(network: PhoneNetwork, internet: Internet, tmp_path: Path,
                                                 tool: Callable[[str], str]) -> None:
    tool("tcpdump")
    marker = b"ph-marker-" + secrets.token_hex(8).encode()
    capture = router_capture(network, tmp_path / "gateway.pcap")
    try:
        asyncio.run(http_post(network, "zzhc.vnet.cn", "42.99.2.15", marker))
    finally:
        capture.stop()
    streams = tcp_streams(capture.packets())
    sent = [data for (src, _sp, dst, dport), data in streams.items()
            if src == network.phone_ip and dst == "42.99.2.15" and dport == 80]
    assert any(marker in data for data in sent)


def test_mobile_data_bypasses_the_router(network: PhoneNetwork, internet: Internet, tmp_path: Path,
                                         tool: Callable[[str], str]) -> None:
    tool("tcpdump")
    network.set_mobile_data(True)
    network.set_wifi(False)
    assert "default via 10.120.0.1 dev rmnet_data0" in ip_in(network.phone_ns, "route")
    marker = b"cellular-" + secrets.token_hex(8).encode()
    capture = router_capture(network, tmp_path / "gateway.pcap")
    try:
        answer = asyncio.run(http_post(network, "zzhc.vnet.cn", "42.99.2.15", marker))
    finally:
        capture.stop()
    assert answer.startswith(b"HTTP/1.1 200")
    assert internet.requests()[-1]["client"] == network.cell_ip
    assert not [p for p in capture.packets() if IP in p and "42.99.2.15" in (p[IP].src, p[IP].dst)]
    # Wi-Fi back: the default route returns to the access point and the router sees traffic again
    network.set_wifi(True)
    capture = router_capture(network, tmp_path / "gateway2.pcap")
    try:
        asyncio.run(http_post(network, "zzhc.vnet.cn", "42.99.2.15", marker))
    finally:
        capture.stop()
    assert any(marker in data for data in tcp_streams(capture.packets()).values())


def test_no_network_at_all_when_both_links_are_off(network: PhoneNetwork, internet: Internet) -> None:
    network.set_wifi(False)

    async def attempt() -> None:
        await network.open_connection(80, "42.99.2.15")

    with pytest.raises(OSError):
        asyncio.run(attempt())


def test_renew_gives_a_new_address_and_mac(network: PhoneNetwork, internet: Internet) -> None:
    old_ip, old_mac = network.phone_ip, network.phone_mac
    network.renew(new_ip=True, new_mac=True)
    assert network.phone_ip != old_ip and network.phone_mac != old_mac
    assert int(network.phone_mac[:2], 16) & 0x03 == 0x02  # locally administered unicast, as Android randomizes
    shown = ip_in(network.phone_ns, "addr", "show", "wlan0")
    assert f"inet {network.phone_ip}/24" in shown and f"link/ether {network.phone_mac}" in shown
    asyncio.run(http_post(network, "zzhc.vnet.cn", "42.99.2.15", b"after-renew"))
    assert internet.requests()[-1]["client"] == network.phone_ip
    network.renew(new_ip="192.168.1.23", new_mac="02:11:22:33:44:55")
    assert (network.phone_ip, network.phone_mac) == ("192.168.1.23", "02:11:22:33:44:55")
    with pytest.raises(ValueError):
        network.renew(new_ip="10.0.0.5")


def test_destroy_removes_everything_and_is_idempotent(netns_available: None) -> None:
    phone_net = PhoneNetwork.create(new_tag(), wifi_mac=MAC)
    proc = subprocess.Popen(phone_net.exec_argv(["sleep", "600"]))
    deadline = time.monotonic() + 30  # until `ip netns exec` has entered the namespace
    while proc.pid not in net._netns_pids(phone_net.phone_ns) and time.monotonic() < deadline:
        time.sleep(0.05)
    phone_net.destroy()
    phone_net.destroy()
    assert proc.wait(10) != 0  # the process inside was ended with its namespace
    assert not set(phone_net.namespaces) & netns_list()
    assert not phone_net.run_dir.exists()
    assert not any((net.NETNS_ETC / ns).exists() for ns in phone_net.namespaces)
    with pytest.raises(PhonehomeError):
        phone_net.set_wifi(True)


def test_a_tag_in_use_is_refused_and_left_alone(network: PhoneNetwork) -> None:
    with pytest.raises(PhonehomeError, match="in use"):
        PhoneNetwork.create(network.tag, wifi_mac=MAC)
    assert set(network.namespaces) <= netns_list()  # the failed attempt removed nothing of the first
    assert network.run_dir.exists()


def test_cleanup_leftovers_removes_only_dead_owners(netns_available: None) -> None:
    tag = new_tag()
    script = textwrap.dedent(f"""
        import os, signal
        from harness.virtual.internet import Internet
        from harness.virtual.network import PhoneNetwork
        Internet(PhoneNetwork.create({tag!r}, wifi_mac={MAC!r})).start()
        print("made", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)  # a crash: no destroy, no atexit
    """)
    crashed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert crashed.stdout.strip() == "made" and crashed.returncode == -signal.SIGKILL
    leftovers = {f"ph-{tag}-phone", f"ph-{tag}-router", f"ph-{tag}-inet"}
    assert leftovers <= netns_list()
    # the servers notice their parent is gone (their stdin ends) and exit by themselves
    deadline = time.monotonic() + 30
    while net._netns_pids(f"ph-{tag}-inet") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not net._netns_pids(f"ph-{tag}-inet")
    with PhoneNetwork.create(new_tag(), wifi_mac=MAC) as alive:  # a live owner: this process
        removed = cleanup_leftovers()
        assert leftovers <= set(removed)
        assert not set(alive.namespaces) & set(removed)
        assert set(alive.namespaces) <= netns_list()
    assert not leftovers & netns_list()
    assert not (net.RUN_ROOT / f"ph-{tag}").exists()


def test_without_root_one_clear_error(netns_available: None) -> None:
    script = textwrap.dedent("""
        import os
        from harness.errors import PhonehomeError
        from harness.virtual.network import PhoneNetwork, cleanup_leftovers
        os.setgid(65534); os.setuid(65534)  # drop root after start-up: the interpreter may live under /root
        print(cleanup_leftovers())
        try:
            PhoneNetwork.create("nobody1", wifi_mac="02:00:00:00:00:01")
        except PhonehomeError as exc:
            print(exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "[]" and len(lines) == 2 and "needs root" in lines[1], done
    assert "Traceback" not in done.stderr


def test_open_connection_reaches_a_service_on_the_phone_itself(network: PhoneNetwork) -> None:
    server = subprocess.Popen(network.exec_argv([sys.executable, "-c", textwrap.dedent("""
        import socket
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 9008)); s.listen(); print("up", flush=True)
        c, _ = s.accept(); c.sendall(b"pong"); c.close()
    """)]), stdout=subprocess.PIPE)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == b"up"

        async def ping() -> bytes:
            reader, writer = await network.open_connection(9008)
            data = await reader.read()
            writer.close()
            return data

        assert asyncio.run(ping()) == b"pong"
    finally:
        server.kill()
        server.wait()


def test_a_private_adb_server_sends_nothing_on_the_host_network(netns_available: None) -> None:
    """adb 36 looks for wireless-debugging phones with mDNS unless ADB_MDNS=0: multicast on the
    host's LAN within its first second. The servers the tests and the demo start must not."""
    from harness.device.server import private_adb_server

    links = sorted(host_links("up") - {"lo"})
    if not links:
        pytest.skip("no host network interface to watch")
    sniffer = AsyncSniffer(iface=links, store=True, lfilter=lambda p: UDP in p and 5353 in (p[UDP].sport, p[UDP].dport))
    sniffer.start()
    time.sleep(0.5)
    try:
        with private_adb_server():
            time.sleep(3)
    finally:
        sniffer.stop()
    assert sniffer.results is not None and len(sniffer.results) == 0, "mDNS left the host"
