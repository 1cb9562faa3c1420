"""Firmware clients sending real traffic from the phone's namespace, captured at the gateway.

Each shipped profile runs against the simulated internet while tcpdump listens in the router
namespace; the tests read the capture back (scapy) and check what must and must not be in it.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import secrets
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scapy.contrib.coap import CoAP
from scapy.layers.inet import IP, UDP
from vnet_capture import Capture, dns_queries, http_requests, router_capture, tcp_streams, tls_server_names

from harness.config import parse_yaml
from harness.identifiers import Kind
from harness.virtual.firmware import FirmwareRunner
from harness.virtual.internet import Internet, Reply
from harness.virtual.network import PhoneNetwork
from harness.virtual.spec import VirtualSpec, load_virtual, parse_virtual

CT = "china-telecom-autoregistration"
CT_PACKAGE = "com.qualcomm.qti.autoregistration"


def wire_mac(spec: VirtualSpec) -> str:
    """The MAC on the Wi-Fi link: the factory one, or (Android 10+) the per-network random one."""
    macs = spec.identifiers.values[Kind.WIFI_MAC]
    return macs[1] if spec.android >= 10 and len(macs) > 1 else macs[0]


def identifier_strings(spec: VirtualSpec) -> set[str]:
    values = {v for identifier in spec.identifiers for v in [identifier.value] if len(v) >= 6}
    for mac in spec.identifiers.values.get(Kind.WIFI_MAC, []):
        values |= {mac.upper(), mac.replace(":", ""), mac.replace(":", "").upper()}
    return values


def spec_from(text: str, name: str = "custom") -> VirtualSpec:
    return parse_virtual(parse_yaml(textwrap.dedent(text), f"{name}.yaml").require("virtual"), name)


class Rig:
    """Network, simulated internet, gateway capture and firmware for one spec; torn down by the fixture."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.network: PhoneNetwork | None = None
        self.internet: Internet | None = None
        self.capture: Capture | None = None
        self.runner: FirmwareRunner | None = None
        self.logcat: list[tuple[str, str, str]] = []

    def start(self, spec: VirtualSpec, replies: dict[str, Reply] | None = None) -> FirmwareRunner:
        self.network = PhoneNetwork.create("f" + secrets.token_hex(4), wifi_mac=wire_mac(spec),
                                           mobile_data=spec.mobile_data)
        self.internet = Internet.for_spec(self.network, spec, replies=replies)
        self.internet.start()
        self.capture = router_capture(self.network, self.tmp_path / "gateway.pcap")
        self.runner = self.new_runner(spec)
        return self.runner

    def new_runner(self, spec: VirtualSpec) -> FirmwareRunner:
        assert self.network is not None
        runner = FirmwareRunner(spec, self.network, self.tmp_path / "state")
        runner.logcat = lambda level, tag, message: self.logcat.append((level, tag, message))
        runner.start()
        return runner

    def fire(self, event: str, client: str, count: int = 1) -> None:
        """Send `event` and wait until `client` has sent `count` times on it."""
        assert self.runner is not None
        self.runner.event(event)
        self.wait(client, "power-up" if event == "boot" else event, count)

    def wait(self, client: str, trigger: str, count: int = 1) -> None:
        """Wait until `client` has sent `count` times on `trigger` (a deadline, not a timing check)."""
        assert self.runner is not None
        done = self.runner.wait_sent(lambda sent: len([s for s in sent if s["client"] == client and
                                                       s["trigger"] == trigger]) >= count, 30)
        assert done, f"{client} did not send on {trigger}: {self.runner.sent()}"

    def finish(self) -> Any:
        assert self.capture is not None and self.runner is not None
        self.runner.stop()
        self.capture.stop()
        return self.capture.packets()

    def close(self) -> None:
        for part in (self.runner, self.capture, self.internet):
            if part is not None:
                part.stop()
        if self.network is not None:
            self.network.destroy()


@pytest.fixture
def rig(netns_available: None, tool: Any, tmp_path: Path) -> Iterator[Rig]:
    tool("tcpdump")
    setup = Rig(tmp_path)
    try:
        yield setup
    finally:
        setup.close()


def assert_no_plaintext_identifier(packets: Any, spec: VirtualSpec) -> None:
    raw = b"".join(bytes(p) for p in packets)
    for value in identifier_strings(spec):
        assert value.encode() not in raw, f"an identifier of kind {value[:0]}… is in the capture in clear"


def test_nokia7plus_2019_posts_base64_json_to_china_telecom(rig: Rig) -> None:
    spec = load_virtual("nokia7plus-2019")
    runner = rig.start(spec)
    rig.fire("boot", CT)
    rig.fire("screen-on", CT)
    rig.fire("lock", CT)
    rig.fire("connectivity-change", CT)
    packets = rig.finish()
    assert rig.network is not None and rig.internet is not None
    phone_ip = rig.network.phone_ip

    posts = [r for r in http_requests(tcp_streams(packets))
             if r.flow[0] == phone_ip and r.flow[2:] == ("42.99.2.15", 80) and r.method == "POST"]
    assert len(posts) == 4  # power-up, screen-on, lock, connectivity-change
    ids = spec.identifiers.values
    for post in posts:
        assert post.path == "/" and post.headers["host"] == "zzhc.vnet.cn"
        assert post.headers["content-type"] == "application/encrypted-json"
        lines = post.body.split(b"\n")
        assert lines[-1] == b"" and all(len(line) == 76 for line in lines[:-2])  # Base64.DEFAULT
        fields = json.loads(base64.b64decode(post.body))
        assert list(fields) == ["REGVER", "MEID", "IMEI1", "IMEI2", "MODEL", "SWVER", "SIM1CDMAIMSI", "SIM1ICCID",
                                "SIM1LTEIMSI", "SIM1CELLID", "MACID", "ACCESSTYPE", "REGDATE"]
        assert fields["MEID"] == fields["IMEI1"] == ids[Kind.IMEI][0]
        assert fields["IMEI2"] == ids[Kind.IMEI][1]
        assert fields["SIM1ICCID"] == ids[Kind.ICCID][0]
        assert fields["SIM1LTEIMSI"] == ids[Kind.IMSI][0]
        assert fields["SIM1CELLID"] == ids[Kind.CELL_ID][0]
        assert fields["MACID"] == ids[Kind.WIFI_MAC][0]
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", fields["REGDATE"])
    assert (phone_ip, "zzhc.vnet.cn", 53) in dns_queries(packets)
    assert_no_plaintext_identifier(packets, spec)  # a byte grep finds nothing: the point of the incident
    assert not runner.registered  # the server answered resultCode 1: it keeps firing
    served = [r for r in rig.internet.requests() if r["proto"] == "http" and r["host"] == "zzhc.vnet.cn"]
    assert len(served) == 4 and all(r["client"] == phone_ip for r in served)
    # nothing identifying in what the runner reports or logs
    shown = json.dumps(runner.sent()) + json.dumps(rig.logcat)
    assert not any(value in shown for value in identifier_strings(spec))
    assert any(tag == "AutoRegistration" for _level, tag, _message in rig.logcat)


def test_nokia7plus_fixed_talks_only_to_its_approved_endpoint_over_tls(rig: Rig) -> None:
    spec = load_virtual("nokia7plus-fixed")
    runner = rig.start(spec)
    rig.fire("boot", "activation")
    rig.fire("unlock", "play-services")
    rig.fire("connectivity-change", "connectivity-check")
    packets = rig.finish()
    names = {name for _flow, name in tls_server_names(tcp_streams(packets))}
    assert {"activation.example.no", "android.googleapis.com"} <= names
    assert all(p[IP].dst != "42.99.2.15" for p in packets if IP in p)
    assert not [q for q in dns_queries(packets) if "vnet.cn" in q[1]]
    assert_no_plaintext_identifier(packets, spec)
    assert runner.registered == {"activation"}  # the approved server activated it ...
    activations = [s for s in runner.sent() if s["client"] == "activation"]
    assert [s["trigger"] for s in activations] == ["power-up"]  # ... so it did not send again


def test_clean_sends_dns_ntp_and_tls_without_identifiers(rig: Rig) -> None:
    spec = load_virtual("clean")
    rig.start(spec)
    rig.fire("boot", "ntp")
    rig.wait("play-checkin", "power-up")
    rig.fire("screen-on", "weather")
    packets = rig.finish()
    assert rig.network is not None
    queried = {name for _src, name, _port in dns_queries(packets)}
    assert {"time.android.com", "www.google.com", "android.googleapis.com", "api.weather.example"} <= queried
    assert [p for p in packets if UDP in p and p[UDP].dport == 123 and p[IP].dst == "216.239.35.0"]
    names = {name for _flow, name in tls_server_names(tcp_streams(packets))}
    assert {"www.google.com", "android.googleapis.com", "api.weather.example"} <= names
    assert [(r.method, r.path) for r in http_requests(tcp_streams(packets))] == [("GET", "/generate_204")]
    assert_no_plaintext_identifier(packets, spec)
    # Android 14 uses the per-network random MAC on the wire, never the factory one
    macs = spec.identifiers.values[Kind.WIFI_MAC]
    assert rig.network.phone_mac == macs[1] != macs[0]


def test_analytics_sdk_hides_identifiers_from_a_byte_grep(rig: Rig) -> None:
    spec = load_virtual("analytics-2021")
    rig.start(spec)
    rig.fire("boot", "analytics-events")
    rig.fire("screen-on", "analytics-beacon")
    packets = rig.finish()
    ids = spec.identifiers.values
    posts = [r for r in http_requests(tcp_streams(packets)) if r.headers.get("host") == "collect.appmetrics.example"]
    assert posts and posts[0].headers["content-encoding"] == "gzip"
    document = json.loads(gzip.decompress(posts[0].body))
    assert document["device"]["did"] == hashlib.sha256(ids[Kind.IMEI][0].encode()).hexdigest()
    assert document["device"]["hw"] == hashlib.sha256(ids[Kind.WIFI_MAC][0].encode()).hexdigest()
    inner = json.loads(gzip.decompress(base64.b64decode(document["ctx"])))
    assert (inner["c"], inner["s"]) == (ids[Kind.ICCID][0], ids[Kind.IMSI][0])
    beacons = [name for _src, name, _port in dns_queries(packets) if name.endswith(".b.appmetrics.example")]
    assert beacons
    label = beacons[0].split(".")[0]
    assert bytes.fromhex(label).decode() == spec.ssaid("com.orbit.analytics")
    assert spec.ssaid("com.orbit.analytics") in ids[Kind.ANDROID_ID]
    assert_no_plaintext_identifier(packets, spec)


REGISTERING = """
virtual:
  android: 9
  identifiers: {imei: ["354387091234560"], iccid: ["8947080012345678900"], wifi_mac: ["c0:ee:fb:4a:12:7e"]}
  clients:
    - name: china-telecom-autoregistration
      package: com.qualcomm.qti.autoregistration
      triggers: [power-up, screen-on]
      transport: http
      host: zzhc.vnet.cn
      body: {json: {MEID: "{imei1}", SIM1ICCID: "{iccid1}"}}
      encode: [base64-mime]
      stop_when_registered: true
      success: {field: resultCode, equals: "0"}
    - name: witness
      package: com.example.witness
      triggers: [power-up, screen-on]
      transport: udp
      host: time.android.com
      port: 7
      body: "still here"
"""


def test_registration_persists_across_restarts_until_pm_clear(rig: Rig) -> None:
    spec = spec_from(REGISTERING)
    success = Reply(200, '{"resultCode":"0","resultDesc":"Success"}', "application/json")
    runner = rig.start(spec, replies={"zzhc.vnet.cn/*": success})
    rig.fire("boot", CT)
    assert runner.registered == {CT}
    rig.fire("screen-on", "witness")  # the event went through ...
    assert len([s for s in runner.sent() if s["client"] == CT]) == 1  # ... but a registered client is quiet
    runner.stop()  # a reboot: a new firmware process, the app's data kept
    rig.runner = runner = rig.new_runner(spec)
    assert runner.registered == {CT}
    rig.fire("boot", "witness")
    rig.fire("screen-on", "witness")
    assert not [s for s in runner.sent() if s["client"] == CT]
    assert runner.clear_package(CT_PACKAGE) is True
    assert runner.clear_package("com.example.unknown") is False
    assert runner.registered == set()
    rig.fire("screen-on", CT)  # it registers again
    assert runner.registered == {CT}
    assert rig.internet is not None
    served = [r for r in rig.internet.requests() if r["proto"] == "http" and r["host"] == "zzhc.vnet.cn"]
    assert len(served) == 2
    rig.finish()


CELLULAR = """
virtual:
  android: 11
  mobile_data: true
  identifiers: {imei: ["354387091234560"], wifi_mac: ["c0:ee:fb:4a:12:7e"]}
  clients:
    - name: over-cellular
      package: com.example.carrier
      network: cellular
      triggers: [power-up]
      transport: http
      host: zzhc.vnet.cn
      body: "{imei1|base64}"
    - name: over-wifi
      package: com.example.app
      triggers: [power-up]
      transport: http
      host: connectivitycheck.gstatic.com
      path: /generate_204
"""


def test_a_cellular_client_bypasses_the_gateway(rig: Rig) -> None:
    spec = spec_from(CELLULAR)
    rig.start(spec)
    rig.fire("boot", "over-cellular")
    rig.wait("over-wifi", "power-up")
    packets = rig.finish()
    assert rig.internet is not None and rig.network is not None
    clients = {r["host"]: r["client"] for r in rig.internet.requests() if r["proto"] == "http"}
    assert clients == {"zzhc.vnet.cn": rig.network.cell_ip, "connectivitycheck.gstatic.com": rig.network.phone_ip}
    assert all(p[IP].dst != "42.99.2.15" for p in packets if IP in p)  # the gateway never saw it
    assert not [q for q in dns_queries(packets) if q[1] == "zzhc.vnet.cn"]


PRIVATE_DNS = """
virtual:
  android: 14
  private_dns: dns.google
  identifiers: {imei: ["354387091234560"], wifi_mac: ["c0:ee:fb:4a:12:7e"]}
  clients:
    - name: reporter
      package: com.example.app
      triggers: [power-up]
      transport: http
      host: zzhc.vnet.cn
"""


def test_private_dns_hides_names_in_dns_over_tls(rig: Rig) -> None:
    spec = spec_from(PRIVATE_DNS)
    rig.start(spec)
    rig.fire("boot", "reporter")
    packets = rig.finish()
    assert {name for _src, name, _port in dns_queries(packets)} == {"dns.google"}  # only the bootstrap
    streams = tcp_streams(packets)
    assert ("dns.google" in {name for flow, name in tls_server_names(streams) if flow[2:] == ("8.8.8.8", 853)})
    assert rig.internet is not None
    assert [r for r in rig.internet.requests() if r["proto"] == "dot" and r["host"] == "zzhc.vnet.cn"]
    assert [r for r in http_requests(streams) if r.headers.get("host") == "zzhc.vnet.cn"]


COAP = """
virtual:
  android: 11
  identifiers: {imei: ["354387091234560"], wifi_mac: ["c0:ee:fb:4a:12:7e"]}
  clients:
    - name: nb-iot-registration
      package: com.example.nbiot
      triggers: [power-up]
      transport: coap
      address: 42.99.2.15
      path: /nb
      content_format: 50
      body: {json: {REGVER: "2", IMEI: "{imei1}"}}
      encode: [base64]
"""


def test_coap_registration_is_real_coap_on_the_wire(rig: Rig) -> None:
    spec = spec_from(COAP)
    runner = rig.start(spec)
    rig.fire("boot", "nb-iot-registration")
    packets = rig.finish()
    requests = [CoAP(bytes(p[UDP].payload)) for p in packets if UDP in p and p[UDP].dport == 5683]
    assert len(requests) == 1
    message = requests[0]
    assert message.code == 2 and message.type == 0  # a confirmable POST
    options = dict(message.options)
    assert options["Uri-Path"] == b"nb" and options["Content-Format"] == b"\x32"
    assert json.loads(base64.b64decode(message.payload.load))["IMEI"] == "354387091234560"
    assert [s["status"] for s in runner.sent()] == [204]  # 2.04 Changed
    assert not [q for q in dns_queries(packets)]  # a hard-coded address: no lookup


OWN_HOSTS = """
virtual:
  android: 14
  identifiers: {imei: ["354387091234560"], wifi_mac: ["c0:ee:fb:4a:12:7e"]}
  zone: {"*.telemetry.example.org": 203.0.113.99}
  clients:
    - name: listed
      package: com.example.one
      triggers: [power-up]
      transport: https
      host: eu.telemetry.example.org
    - name: unlisted
      package: com.example.two
      triggers: [power-up]
      transport: http
      host: brand-new-host.example.com
    - name: hard-coded
      package: com.example.three
      triggers: [power-up]
      transport: udp
      address: 192.0.2.77
      port: 7
      body: "ping"
"""


def test_a_profiles_own_hosts_and_addresses_get_servers(rig: Rig) -> None:
    spec = spec_from(OWN_HOSTS)
    runner = rig.start(spec)
    runner.event("boot")
    assert runner.wait_sent(lambda sent: len(sent) == 3, 30), runner.sent()
    assert all(s["ok"] for s in runner.sent()), runner.sent()
    assert {s["client"]: s["dst"] for s in runner.sent()}["listed"] == "203.0.113.99"
    assert rig.internet is not None
    assert {r["proto"] for r in rig.internet.requests()} >= {"https", "http", "udp-echo"}
    rig.finish()
