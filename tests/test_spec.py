"""The `virtual:` profile section: shipped profiles load, every mistake names file, line and field,
and the payload template language encodes exactly as the clients it imitates do."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import textwrap
from pathlib import Path

import pytest

from harness.config import parse_yaml
from harness.errors import ConfigError
from harness.identifiers import Kind
from harness.profile import load_profile
from harness.virtual.spec import (
    ENCODERS,
    FAULTS,
    check_template,
    json_bytes,
    load_virtual,
    parse_virtual,
    render,
    render_json,
)

SHIPPED = ["clean", "nokia7plus-2019", "nokia7plus-fixed", "analytics-2021"]

MINIMAL = """\
market: "NO"
virtual:
  model: Test Phone
  android: 11
  identifiers: {imei: ["354387091234560"], android_id: ["3f9c2a7be41d0856"]}
  clients:
    - name: c1
      package: com.example.one
      triggers: {power-up: 1}
      transport: http
      host: zzhc.vnet.cn
      body: {json: {IMEI: "{imei1}"}}
"""


def parse(text: str, source: str = "devices/test.yaml") -> object:
    root = parse_yaml(text, source)
    return parse_virtual(root.require("virtual"), "test")


def error_of(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_load(name: str) -> None:
    spec = load_virtual(name)
    assert spec.name == name and spec.clients
    assert spec.boot_seconds <= 5  # demo profiles boot fast
    assert spec.identifiers.known(Kind.IMEI) and spec.identifiers.known(Kind.WIFI_MAC)
    profile = load_profile(name)  # the whole profile, through the profile schema
    assert profile.virtual.name == name and profile.market == "NO"


def test_the_versions_the_device_model_needs_are_shipped() -> None:
    assert {load_virtual(name).android for name in SHIPPED} >= {9, 11, 14}
    assert {load_virtual(name).sdk for name in SHIPPED} >= {28, 30, 34}


def test_the_2019_profile_is_the_incident() -> None:
    spec = load_virtual("nokia7plus-2019")
    assert spec.android == 9 and "com.qualcomm.qti.autoregistration" in spec.packages
    client = next(c for c in spec.clients if c.package == "com.qualcomm.qti.autoregistration")
    assert (client.transport, client.host, client.port, client.method, client.path) == \
        ("http", "zzhc.vnet.cn", 80, "POST", "/")
    assert client.headers["Content-Type"] == "application/encrypted-json"
    assert client.encode == ["base64-mime"] and client.body_format == "json"
    assert list(client.body) == ["REGVER", "MEID", "IMEI1", "IMEI2", "MODEL", "SWVER", "SIM1CDMAIMSI", "SIM1ICCID",
                                 "SIM1LTEIMSI", "SIM1CELLID", "MACID", "ACCESSTYPE", "REGDATE"]
    assert {"power-up", "screen-on", "lock", "connectivity-change"} <= set(client.triggers)
    assert client.triggers["power-up"] <= 3
    fixed = load_virtual("nokia7plus-fixed")
    assert "com.qualcomm.qti.autoregistration" not in fixed.packages
    assert all(c.host != "zzhc.vnet.cn" and c.address != "42.99.2.15" for c in fixed.clients)
    approved = {a.host for a in load_profile("nokia7plus-fixed").approved}
    assert {c.host for c in fixed.clients if c.package == "com.example.activation.no"} <= approved


def test_a_profile_given_as_a_path(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(MINIMAL)
    spec = load_virtual(str(path))
    assert spec.name == "mine" and spec.android == 11 and spec.sdk == 30
    assert spec.packages == {"com.example.one": "1.0"}  # a client's package is installed


def test_a_profile_without_a_virtual_section(tmp_path: Path) -> None:
    path = tmp_path / "real.yaml"
    path.write_text('market: "NO"\n')
    with pytest.raises(ConfigError, match="no `virtual:` section"):
        load_virtual(str(path))
    with pytest.raises(ConfigError, match="no profile of that name"):
        load_virtual("no-such-profile")
    with pytest.raises(ConfigError, match="no such profile file"):
        load_virtual(str(tmp_path / "missing.yaml"))


def test_an_error_in_a_profile_file_names_that_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(MINIMAL.replace("transport: http", "transport: smoke-signals"))
    with pytest.raises(ConfigError) as info:
        load_virtual(str(path))
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 10, "virtual.clients[0].transport")


@pytest.mark.parametrize(("change", "line", "field", "message"), [
    (("  android: 11", "  android: eleven"), 4, "virtual.android", "expected an integer"),
    (("  android: 11", "  android: 7"), 4, "virtual.android", "Android release"),
    (("  model: Test Phone", "  model: Test Phone\n  colour: red"), 4, "virtual.colour", "unknown key"),
    (("      transport: http", "      transport: carrier-pigeon"), 10, "virtual.clients[0].transport",
     "expected one of"),
    (("      triggers: {power-up: 1}", "      triggers: {reboot: 1}"), 9, "virtual.clients[0].triggers.reboot",
     "unknown trigger"),
    (("      triggers: {power-up: 1}", "      triggers: {power-up: -1}"), 9,
     "virtual.clients[0].triggers.power-up", "0 or more"),
    (("{imei1}", "{imei9}"), 12, "virtual.clients[0].body.json.IMEI", "unknown placeholder"),
    (("{imei1}", "{imei1|rot13}"), 12, "virtual.clients[0].body.json.IMEI", "unknown encoding"),
    (("      host: zzhc.vnet.cn", "      host: zzhc.vnet.cn\n      port: 70000"), 12, "virtual.clients[0].port",
     "port"),
    (("      package: com.example.one", "      package: not a package"), 8, "virtual.clients[0].package",
     "package name"),
    (('["354387091234560"]', '["35438709"]'), 5, "virtual.identifiers.imei[0]", "digits"),
    (("  android: 11", "  android: 11\n  faults: [meteor-strike]"), 5, "virtual.faults[0]", "unknown fault"),
    (("  android: 11", "  android: 11\n  sim: {mcc: 242, mnc: 01}"), 5, "virtual.sim.mnc", "quote it"),
    (("      host: zzhc.vnet.cn\n", ""), 7, "virtual.clients[0]", "needs `host:` or `address:`"),
    (("  android: 11", "  android: 11\n  zone: {api.example.net: 300.1.2.3}"), 5, "virtual.zone.api.example.net",
     "IPv4"),
    (("      host: zzhc.vnet.cn", "      host: zzhc.vnet.cn\n      success: {equals: 0}"), 12,
     "virtual.clients[0].success.equals", "give `field:`"),
])
def test_mistakes_name_file_line_and_field(change: tuple[str, str], line: int, field: str, message: str) -> None:
    old, new = change
    assert old in MINIMAL
    error = error_of(MINIMAL.replace(old, new, 1))
    assert (error.path, error.line, error.field) == ("devices/test.yaml", line, field), str(error)
    assert message in error.message
    assert str(error).startswith(f"devices/test.yaml:{line}: {field}: ")


def test_dns_clients_need_a_query_and_https_a_host() -> None:
    dns = MINIMAL.replace("      transport: http\n      host: zzhc.vnet.cn\n", "      transport: dns\n")
    assert "needs `query:`" in error_of(dns).message
    https = MINIMAL.replace("      transport: http\n      host: zzhc.vnet.cn\n",
                            "      transport: https\n      address: 42.99.2.15\n")
    assert "TLS server name" in error_of(https).message


def test_template_checks() -> None:
    node = parse_yaml("x: 1\n", "f.yaml").require("x")
    check_template("{{literal}} {imei1|sha256|upper} {wifi_mac}", node)
    for bad in ("{imei1", "}", "{IMEI1}", "{imei1|}"):
        with pytest.raises(ConfigError):
            check_template(bad, node)


def test_base64_mime_is_androids_base64_default() -> None:
    data = json_bytes({"IMEI1": "354387091234560", "MODEL": "x" * 200})
    encoded = ENCODERS["base64-mime"](data)
    lines = encoded.split(b"\n")
    assert all(len(line) == 76 for line in lines[:-2]) and 0 < len(lines[-2]) <= 76 and lines[-1] == b""
    assert base64.b64decode(encoded) == data
    assert b"354387091234560" not in encoded  # why a byte grep misses it


def test_render_fills_and_encodes() -> None:
    values = {"imei1": "354387091234560", "wifi_mac": "c0:ee:fb:4a:12:7e", "android_id": "3f9c2a7be41d0856"}
    assert render("{imei1|sha256}", values) == hashlib.sha256(b"354387091234560").hexdigest()
    assert render("{wifi_mac|nocolon|upper}", values) == "C0EEFB4A127E"
    assert render("{android_id|hex}.b.example", values) == b"3f9c2a7be41d0856".hex() + ".b.example"
    assert render("{{x}} {imei2}", values) == "{x} "  # an unknown identifier is empty, as on a phone without it
    nested = render_json({"v": 2, "ctx": {"$json": {"i": "{imei1}"}, "$encode": ["gzip", "base64"]}}, values)
    assert nested["v"] == 2
    assert json.loads(gzip.decompress(base64.b64decode(nested["ctx"]))) == {"i": "354387091234560"}


def test_per_app_android_id() -> None:
    spec = load_virtual("analytics-2021")
    ids = spec.identifiers.values[Kind.ANDROID_ID]
    assert spec.ssaid("com.orbit.analytics") in ids
    assert spec.ssaid("com.not.installed") == ids[0]  # what `settings get secure android_id` shows


def test_private_dns_modes() -> None:
    assert parse(MINIMAL).private_dns_host is None  # type: ignore[attr-defined]
    text = MINIMAL.replace("  android: 11", "  android: 11\n  private_dns: dns.google")
    assert parse(text).private_dns_host == "dns.google"  # type: ignore[attr-defined]
    faulty = MINIMAL.replace("  android: 11", "  android: 11\n  faults: [private-dns-on]")
    assert parse(faulty).private_dns_host == "dns.google"  # type: ignore[attr-defined]
    assert "private-dns-on" in FAULTS


def test_a_list_of_triggers_and_a_success_rule() -> None:
    text = MINIMAL.replace("      triggers: {power-up: 1}", "      triggers: [screen-on, lock]") + textwrap.indent(
        "stop_when_registered: true\nsuccess: {field: resultCode, equals: 0}\n", " " * 6)
    client = parse(text).clients[0]  # type: ignore[attr-defined]
    assert client.triggers == {"screen-on": 0.0, "lock": 0.0}
    assert client.success.met(200, b'{"resultCode":"0"}')
    assert not client.success.met(200, b'{"resultCode":"1"}')
    assert not client.success.met(500, b'{"resultCode":"0"}')
    assert not client.success.met(200, b"not json")
