"""Policy: the activation-client catalog, endpoint contacts (by name and by bare address), the
destination-country rule on a real .mmdb file written here, and the installed-package audit."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from analyze_kit import IDS, PHONE, clean_packets, raw_tcp, run_cli, syn_only, write_ids, write_pcap

from harness import sample
from harness.analyzer import analyze
from harness.errors import ConfigError
from harness.identifiers import IdentifierSet
from harness.policy.catalog import load_catalog
from harness.policy.geoip import BUILTIN, CountryDatabase
from harness.policy.policy import audit_packages
from harness.profile import load_profile

# --- a MaxMind DB writer, for tests only (format: maxmind.github.io/MaxMind-DB) -----------------


def _ctrl(kind: int, size: int) -> bytes:
    """Control byte(s) of a data field: type and payload size (sizes < 285 are enough here)."""
    extra = b""
    if size >= 29:
        extra, size = bytes([size - 29]), 29
    if kind <= 7:
        return bytes([(kind << 5) | size]) + extra
    return bytes([size, kind - 7]) + extra


def _encode(value: Any) -> bytes:
    if isinstance(value, str):
        raw = value.encode()
        return _ctrl(2, len(raw)) + raw
    if isinstance(value, dict):
        return _ctrl(7, len(value)) + b"".join(_encode(k) + _encode(v) for k, v in value.items())
    if isinstance(value, list):
        return _ctrl(11, len(value)) + b"".join(_encode(v) for v in value)
    if isinstance(value, tuple):  # (type, int): uint16 = 5, uint32 = 6, uint64 = 9
        kind, number = value
        raw = number.to_bytes((number.bit_length() + 7) // 8, "big")
        return _ctrl(kind, len(raw)) + raw
    raise TypeError(value)


def write_mmdb(path: Path, countries: dict[str, str]) -> Path:
    """An IPv6 tree (IPv4 under ::/96) mapping each network to {"country": {"iso_code": CC}}."""
    nodes: list[list[Any]] = [[None, None]]
    data = b""
    for network, iso in countries.items():
        net = ipaddress.ip_network(network)
        bits_total = 128 if net.version == 6 else 32
        offset = 0 if net.version == 6 else 96
        address = int(net.network_address)
        bits = [0] * offset + [(address >> (bits_total - 1 - i)) & 1 for i in range(bits_total)]
        depth = offset + net.prefixlen
        pointer = ("data", len(data))
        data += _encode({"country": {"iso_code": iso}})
        node = 0
        for i in range(depth - 1):
            child = nodes[node][bits[i]]
            if child is None:
                nodes.append([None, None])
                child = nodes[node][bits[i]] = ("node", len(nodes) - 1)
            node = child[1]
        nodes[node][bits[depth - 1]] = pointer
    count = len(nodes)

    def record(entry: Any) -> int:
        if entry is None:
            return count
        return entry[1] if entry[0] == "node" else count + 16 + entry[1]

    tree = b"".join(struct.pack(">I", record(a))[1:] + struct.pack(">I", record(b))[1:] for a, b in nodes)
    meta = _encode({"node_count": (6, count), "record_size": (5, 24), "ip_version": (5, 6),
                    "database_type": "phonehome-test-Country", "languages": ["en"],
                    "binary_format_major_version": (5, 2), "binary_format_minor_version": (5, 0),
                    "build_epoch": (9, 1_700_000_000), "description": {"en": "test"}})
    path.write_bytes(tree + b"\0" * 16 + data + b"\xab\xcd\xefMaxMind.com" + meta)
    return path


@pytest.fixture
def mmdb(tmp_path: Path) -> Path:
    return write_mmdb(tmp_path / "Country.mmdb", {"42.99.0.0/16": "CN", "185.0.0.0/8": "NO",
                                                    "2a00:1450::/32": "NO", "2408::/16": "CN"})


def test_mmdb_writer_and_lookup(mmdb: Path) -> None:
    db = CountryDatabase(mmdb, (str(mmdb), None, None))
    try:
        assert db.country("42.99.2.15") == "CN"
        assert db.country("185.12.3.4") == "NO"
        assert db.country("2a00:1450::1") == "NO"
        assert db.country("8.8.8.8") is None  # not in this database
        assert db.country("10.1.2.3") is None and db.country("192.168.1.1") is None  # private
    finally:
        db.close()


def test_unreadable_database_is_a_config_error(tmp_path: Path) -> None:
    bogus = tmp_path / "x.mmdb"
    bogus.write_bytes(b"not a database")
    with pytest.raises(ConfigError, match="cannot read country database") as caught:
        CountryDatabase(bogus, ("p.yaml", 7, "countries.database"))
    assert (caught.value.line, caught.value.field) == (7, "countries.database")


# --- the catalog -----------------------------------------------------------------------------


def test_builtin_catalog_has_the_three_chinese_carriers() -> None:
    catalog = load_catalog()
    telecom = catalog.get("china-telecom-zzhc")
    assert telecom is not None and telecom.country == "CN" and "com.qualcomm.qti.autoregistration" in telecom.packages
    assert telecom.matches_host("zzhc.vnet.cn") and telecom.matches_address("42.99.2.15")
    ports = {(e.proto, p) for e in telecom.endpoints for p in e.ports}
    assert {("tcp", 80), ("tcp", 9998), ("tcp", 9999), ("udp", 5683)} <= ports
    assert any(e.path == "nb" for e in telecom.endpoints)
    assert {c.carrier for c in catalog.clients} >= {"China Telecom", "China Unicom", "China Mobile"}
    assert catalog.by_host("dm.wo.com.cn").id == "china-unicom-dm"  # type: ignore[union-attr]
    assert catalog.by_host("shipei.fxltsbl.com").id == "china-mobile-dm"  # type: ignore[union-attr]
    assert catalog.by_host("vnet.cn") is None and catalog.by_host("xzzhc.vnet.cn") is None
    for client in catalog.clients:
        assert client.sources and all(s.what for s in client.sources)


BAD_CATALOGS = [
    ("clients:\n  - id: x-y\n    carrier: C\n    country: CN\n    hosts: [a.example]\n    colour: red\n"
     "    sources: [{what: w}]\n", 6, "clients[0].colour", "unknown key"),
    ("clients:\n  - id: x-y\n    carrier: C\n    country: ZZ\n    hosts: [a.example]\n    sources: [{what: w}]\n",
     4, "clients[0].country", "not an ISO"),
    ("clients:\n  - id: x-y\n    carrier: C\n    country: CN\n    hosts: [a.example]\n", 2, "clients[0]",
     "missing required key 'sources'"),
    ("clients:\n  - id: x-y\n    carrier: C\n    country: CN\n    hosts: ['not a host']\n    sources: [{what: w}]\n",
     5, "clients[0].hosts[0]", "not a host name"),
    ("clients:\n  - id: x-y\n    carrier: C\n    country: CN\n    addresses: [42.99.2.300]\n    sources: [{what: w}]\n",
     5, "clients[0].addresses[0]", "not an IP"),
    ("clients:\n  - id: x-y\n    carrier: C\n    country: CN\n    hosts: [a.example]\n    sources: [{what: w}]\n"
     "    endpoints: [{proto: sctp, ports: [1]}]\n", 7, "clients[0].endpoints[0].proto", "expected one of"),
    ("clients:\n  - id: china-telecom-zzhc\n    carrier: C\n    country: CN\n    hosts: [a.example]\n"
     "    sources: [{what: w}]\n", None, "clients", "already defined"),
]


@pytest.mark.parametrize(("text", "line", "field", "words"), BAD_CATALOGS)
def test_bad_extra_catalog(tmp_path: Path, text: str, line: int | None, field: str, words: str) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_catalog([extra])
    assert (caught.value.path, caught.value.line, caught.value.field) == (str(extra), line, field)
    assert words in caught.value.message


# --- endpoint contacts -----------------------------------------------------------------------


def _analyze(tmp_path: Path, packets: list[Any], **kwargs: Any) -> Any:
    capture = write_pcap(tmp_path / "c.pcap", packets)
    return analyze(capture, IdentifierSet.from_mapping(IDS, "test"), **kwargs)


def _contacts(report: Any) -> list[Any]:
    return [f for f in report.findings if f.rule == "unapproved-activation-client"]


def test_hard_coded_address_without_any_name_is_a_contact(tmp_path: Path) -> None:
    clock = [sample.START]
    report = _analyze(tmp_path, raw_tcp(sample.ZZHC_IP, 9999, b"\x00\x01hello", clock))
    (finding,) = _contacts(report)
    assert (finding.host, finding.dst, finding.dport) == (None, sample.ZZHC_IP, 9999)
    assert finding.detail["matched_by"] == "address" and finding.detail["known_port"] is True
    assert report.status == "leak"


def test_a_syn_that_got_no_answer_is_still_a_contact(tmp_path: Path) -> None:
    report = _analyze(tmp_path, clean_packets() + syn_only(sample.ZZHC_IP, 80, [sample.START + 5]))
    assert [f.frames for f in _contacts(report)] == [[len(clean_packets()) + 1]]


def test_china_mobile_lookup_is_an_attempted_contact(tmp_path: Path) -> None:
    clock = [sample.START]
    report = _analyze(tmp_path, sample.dns_exchange("m.fxltsbl.com", "120.197.0.9", 36200, clock))
    (finding,) = _contacts(report)
    assert finding.detail["contact"] == "attempted" and finding.detail["carrier"] == "China Mobile"
    assert finding.host == "m.fxltsbl.com" and finding.encoding == ["dns-qname"]
    assert "no profile" in finding.evidence


def test_name_from_dns_answer_attributes_a_later_flow(tmp_path: Path) -> None:
    clock = [sample.START]
    packets = sample.dns_exchange("dm.wo.com.cn", "123.125.0.77", 36300, clock)
    packets += raw_tcp("123.125.0.77", 6001, b"GET /register?ver=1.1 HTTP/1.1\r\n\r\n", clock)
    report = _analyze(tmp_path, packets)
    connection = next(f for f in _contacts(report) if f.detail["contact"] == "connection")
    assert (connection.host, connection.detail["catalog"], connection.detail["matched_by"]) == (
        "dm.wo.com.cn", "china-unicom-dm", "dns-answer")


def test_host_approval_with_port(tmp_path: Path) -> None:
    profile_file = tmp_path / "p.yaml"
    profile_file.write_text('market: CN\napproved:\n  - host: zzhc.vnet.cn\n    port: 80\n')
    profile = load_profile(profile_file)
    clock = [sample.START]
    packets = sample.dns_exchange("zzhc.vnet.cn", sample.ZZHC_IP, 36400, clock)
    packets += raw_tcp(sample.ZZHC_IP, 80, b"POST / HTTP/1.1\r\nHost: zzhc.vnet.cn\r\n\r\n", clock)
    packets += raw_tcp(sample.ZZHC_IP, 9999, b"POST / HTTP/1.1\r\nHost: zzhc.vnet.cn\r\n\r\n", clock, sport=41600)
    report = _analyze(tmp_path, packets, profile=profile)
    assert [(f.detail["contact"], f.dport) for f in _contacts(report)] == [("connection", 9999)]


def test_extra_catalog_from_the_command_line(tmp_path: Path) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text("clients:\n  - id: example-activation\n    carrier: Example Mobile\n    country: SE\n"
                     "    hosts: ['*.activate.example']\n    sources: [{what: internal test entry}]\n")
    clock = [sample.START]
    capture = write_pcap(tmp_path / "c.pcap", sample.dns_exchange("eu.activate.example", "185.1.2.3", 36500, clock))
    out = tmp_path / "f.json"
    done = run_cli("analyze", capture, "--identifiers", write_ids(tmp_path / "i.json"), "--catalog", extra,
                   "--json", out)
    assert done.returncode == 1, done.stdout + done.stderr
    (finding,) = json.loads(out.read_text())["findings"]
    assert (finding["catalog"], finding["country"]) == ("example-activation", "SE")


# --- destination countries -------------------------------------------------------------------


def _country_profile(tmp_path: Path, rule: str, database: Path) -> Any:
    path = tmp_path / "countries.yaml"
    path.write_text(f'market: "NO"\ncountries:\n  {rule}\n  database: {database}\n')
    return load_profile(path)


def test_denied_country(tmp_path: Path, mmdb: Path) -> None:
    clock = [sample.START]
    packets = clean_packets() + raw_tcp("42.99.7.7", 443, b"\x16\x03\x01", clock) + \
        raw_tcp("42.99.7.7", 443, b"\x16\x03\x01", clock, sport=41601)
    report = _analyze(tmp_path, packets, profile=_country_profile(tmp_path, "deny: [CN]", mmdb))
    (finding,) = [f for f in report.findings if f.rule == "unapproved-country"]
    assert (finding.dst, finding.dport, finding.detail["country"]) == ("42.99.7.7", 443, "CN")
    assert len(finding.frames) == 2  # two flows to one destination: one finding
    assert report.status == "leak"


def test_allow_list_fails_closed_on_unknown_countries(tmp_path: Path, mmdb: Path) -> None:
    clock = [sample.START]
    packets = raw_tcp("185.9.9.9", 443, b"x", clock) + raw_tcp("8.8.4.4", 443, b"x", clock, sport=41602) + \
        raw_tcp("10.9.9.9", 443, b"x", clock, sport=41603)
    report = _analyze(tmp_path, packets, profile=_country_profile(tmp_path, 'allow: ["NO"]', mmdb))
    flagged = {(f.dst, f.detail["country"]) for f in report.findings if f.rule == "unapproved-country"}
    assert flagged == {("8.8.4.4", None)}  # NO is allowed, 10/8 is private, 8.8.4.4 has no known country


def test_country_rule_with_a_broken_database_exits_2(tmp_path: Path) -> None:
    broken = tmp_path / "broken.mmdb"
    broken.write_bytes(b"\0" * 100)
    profile = tmp_path / "p.yaml"
    profile.write_text(f'market: "NO"\ncountries:\n  deny: [CN]\n  database: {broken}\n')
    capture = write_pcap(tmp_path / "c.pcap", clean_packets())
    done = run_cli("analyze", capture, "--profile", profile)
    assert done.returncode == 2
    assert f"{profile}:4: countries.database: cannot read country database" in done.stderr


def test_shipped_database_looks_up_offline() -> None:
    """iptocc's data is inside its wheel: lookups open no file and need no network at all."""
    db = CountryDatabase(BUILTIN, ("p.yaml", 2, "countries"))
    try:
        assert db.description.startswith("iptocc ")
        assert db.country("42.99.2.15") == "CN"  # China Telecom's hard-coded zzhc address
        assert db.country("8.8.8.8") == "US" and db.country("2001:4860:4860::8888") == "US"
        assert db.country("10.1.2.3") is None and db.country("fe80::1") is None  # private, link-local
        assert db.country("not an address") is None
    finally:
        db.close()
    package = Path(importlib.util.find_spec("iptocc").origin or "").parent  # type: ignore[union-attr]
    assert {p.suffix for p in package.iterdir() if p.is_file()} <= {".py", ".pyi", ".so", ".typed", ""}
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.skip("needs root and unshare(1) for a process without any network")
    code = ("from harness.policy.geoip import BUILTIN, CountryDatabase as D\n"
            "print(D(BUILTIN, ('p', 1, 'f')).country('42.99.2.15'))")
    done = subprocess.run(["unshare", "--net", sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)
    if done.returncode != 0 and "unshare failed" in done.stderr:
        pytest.skip(f"unshare --net: {done.stderr.strip()}")
    assert (done.returncode, done.stdout.strip()) == (0, "CN"), done.stderr


def test_country_rule_with_the_shipped_database(tmp_path: Path) -> None:
    """No `database:`: the shipped one. A flow to a Chinese address is `unapproved-country`."""
    clock = [sample.START]
    packets = clean_packets() + raw_tcp("42.99.7.7", 443, b"\x16\x03\x01", clock) + \
        raw_tcp("8.8.4.4", 443, b"x", clock, sport=41602)
    path = tmp_path / "countries.yaml"
    path.write_text('market: "NO"\ncountries:\n  deny: [CN]\n')
    report = _analyze(tmp_path, packets, profile=load_profile(path))
    (finding,) = [f for f in report.findings if f.rule == "unapproved-country"]
    assert (finding.dst, finding.dport, finding.detail["country"]) == ("42.99.7.7", 443, "CN")
    assert finding.detail["database"] == str(BUILTIN) and report.status == "leak"
    path.write_text('market: "NO"\ncountries:\n  allow: ["NO"]\n')
    report = _analyze(tmp_path, packets, profile=load_profile(path))
    flagged = {(f.dst, f.detail["country"]) for f in report.findings if f.rule == "unapproved-country"}
    assert {("42.99.7.7", "CN"), ("8.8.4.4", "US")} <= flagged  # and the clean traffic's US servers
    assert all(country != "NO" and not dst.startswith("10.") for dst, country in flagged)
    capture = write_pcap(tmp_path / "cli.pcap", packets)
    done = run_cli("analyze", capture, "--profile", path)
    assert done.returncode == 1 and "unapproved-country" in done.stdout + done.stderr


# --- installed packages ----------------------------------------------------------------------


def test_audit_packages() -> None:
    installed = {"com.android.settings": "14", "com.qualcomm.qti.autoregistration": "1.0",
                 "com.spreadtrum.dm": ""}
    norway = load_profile(Path(__file__).parent / "data" / "profiles" / "nokia7plus-no.yaml")
    findings = audit_packages(installed, norway)
    assert [(f.rule, f.detail["package"], f.detail["catalog"]) for f in findings] == [
        ("activation-package-installed", "com.qualcomm.qti.autoregistration", "china-telecom-zzhc"),
        ("activation-package-installed", "com.spreadtrum.dm", "china-unicom-dm")]
    assert "not approved for market NO" in findings[0].evidence
    china = load_profile(Path(__file__).parent / "data" / "profiles" / "china-sku.yaml")
    assert [f.detail["package"] for f in audit_packages(installed, china)] == ["com.spreadtrum.dm"]
    assert len(audit_packages(installed, None)) == 2
    assert audit_packages({"com.android.settings": "14"}, None) == []


def test_lookup_and_flow_to_catalog_host_with_the_phone_never_named(tmp_path: Path) -> None:
    """A lookup's finding points at the resolver the phone asked, and says the name it asked for."""
    clock = [sample.START]
    report = _analyze(tmp_path, sample.dns_exchange("zzhc.vnet.cn", sample.ZZHC_IP, 36600, clock))
    (finding,) = _contacts(report)
    assert (finding.src, finding.dst, finding.dport, finding.proto) == (PHONE, sample.RESOLVER_IP, 53, "udp")


# entries past the three Chinese self-registration services: (id, host, a documentation-range
# answer address, port, package)
MORE_CLIENTS = [
    ("china-mobile-omadm", "dm.monternet.com", "203.0.113.70", 7001, "com.zte.zdm"),
    ("sprint-omadm", "oma.ssprov.sprint.com", "198.51.100.80", 80, None),  # its packages ship everywhere
]


@pytest.mark.parametrize(("client_id", "host", "answer", "port", "package"), MORE_CLIENTS)
def test_more_clients_flagged_abroad_and_approved_at_home(tmp_path: Path, client_id: str, host: str, answer: str,
                                                          port: int, package: str | None) -> None:
    client = load_catalog().get(client_id)
    assert client is not None and client.matches_host(host) and client.port_known("tcp", port) and client.sources
    assert package in client.packages if package else not client.packages
    home = "US" if client.country != "US" else "NO"
    foreign, own = tmp_path / "foreign.yaml", tmp_path / "own.yaml"
    foreign.write_text(f'market: "{home}"\n')
    own.write_text(f'market: "{client.country}"\napproved:\n  - catalog: {client_id}\n')
    clock = [sample.START]
    packets = sample.dns_exchange(host, answer, 36700, clock)
    packets += raw_tcp(answer, port, f"POST / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode(), clock)
    abroad = _analyze(tmp_path, packets, profile=load_profile(foreign))
    assert {f.detail["contact"] for f in _contacts(abroad)} == {"attempted", "connection"}
    assert all(f.detail["catalog"] == client_id and f.host == host for f in _contacts(abroad))
    assert _contacts(_analyze(tmp_path, packets, profile=load_profile(own))) == []
    if package:
        installed = {package: "1", "com.android.settings": "14"}
        assert [f.detail["catalog"] for f in audit_packages(installed, load_profile(foreign))] == [client_id]
        assert audit_packages(installed, load_profile(own)) == []


def test_china_mobile_lab_dm_address_is_a_contact(tmp_path: Path) -> None:
    clock = [sample.START]
    (finding,) = _contacts(_analyze(tmp_path, raw_tcp("218.206.176.97", 7001, b"POST / HTTP/1.1\r\n\r\n", clock)))
    assert (finding.detail["catalog"], finding.detail["matched_by"]) == ("china-mobile-omadm", "address")
