"""Device profiles: the schema of the team brief, defaults, and every mistake as file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness import profile as profile_mod
from harness.errors import ConfigError
from harness.identifiers import DEFAULT_REQUIRED, Kind
from harness.policy import geoip
from harness.policy.geoip import BUILTIN
from harness.profile import DEFAULT_DWELL, load_profile, profile_names

DATA = Path(__file__).parent / "data" / "profiles"


def test_full_profile() -> None:
    p = load_profile(DATA / "nokia7plus-no.yaml")
    assert (p.name, p.market, p.model) == ("nokia7plus-no", "NO", "Nokia 7 Plus")
    assert p.require == (Kind.IMEI, Kind.IMSI, Kind.ICCID, Kind.WIFI_MAC)
    assert p.identifiers.values[Kind.IMEI] == ["358240051111110", "358240051111128"]
    assert (p.unlock.method, p.unlock.secret_env) == ("pin", "PHONEHOME_UNLOCK")
    assert (p.capture.backend, p.capture.settings) == ("gateway", {"interface": "eth1"})
    assert p.settle == 75 and p.dwell["screen-on"] == 5 and p.dwell["lock"] == DEFAULT_DWELL["lock"]
    assert p.reset == ["pm clear com.qualcomm.qti.autoregistration"]
    assert p.approves(None, "activation.example.no", 443, "tcp")
    assert not p.approves(None, "activation.example.no", 80, "tcp")
    assert not p.approves("china-telecom-zzhc", "zzhc.vnet.cn", 80, "tcp")


def test_defaults_and_catalog_approval() -> None:
    p = load_profile(DATA / "china-sku.yaml")
    assert p.require == DEFAULT_REQUIRED and p.settle == 90 and p.unlock.method == "swipe"
    assert p.countries is None and p.virtual is None and not p.identifiers.values
    assert p.approves("china-telecom-zzhc") and not p.approves("china-unicom-dm")


def test_no_sim_drops_sim_identifiers_from_require() -> None:
    p = load_profile(DATA / "wifi-only.yaml")
    assert not p.has_sim and p.require == (Kind.IMEI, Kind.WIFI_MAC)


BAD = [
    # (YAML, line, field, words in the message)
    ('market: "NO"\n  bad: [\n', None, None, "YAML error"),
    ('market: "NO"\ncolour: blue\n', 2, "colour", "unknown key"),
    ("market: NO\n", 1, "market", "quote NO"),
    ('market: "XX"\n', 1, "market", "not an ISO 3166-1"),
    ('market: "no"\n', 1, "market", "upper case"),
    ("model: x\n", 1, None, "missing required key 'market'"),
    ('market: "NO"\nsettle: soon\n', 2, "settle", "expected a number"),
    ('market: "NO"\nsettle: -5\n', 2, "settle", "0 or more"),
    ('market: "NO"\nhas_sim: maybe\n', 2, "has_sim", "true or false"),
    ('market: "NO"\napproved:\n  - catalog: china-telecom-zzhx\n', 3, "approved[0].catalog", "unknown catalog id"),
    ('market: "NO"\napproved:\n  - catalog: china-telecom-zzhc\n    host: a.example.com\n', 3, "approved[0]",
     "either"),
    ('market: "NO"\napproved:\n  - host: "Bad Host"\n', 3, "approved[0].host", "lower case"),
    ('market: "NO"\napproved:\n  - host: a.example.com\n    port: 70000\n', 4, "approved[0].port", "1 to 65535"),
    ('market: "NO"\nrequire: [imei, phone_number]\n', 2, "require[1]", "unknown identifier kind"),
    ('market: "NO"\nhas_sim: false\nrequire: [imei, iccid]\n', 3, "require[1]", "has_sim: false"),
    ('market: "NO"\nidentifiers:\n  imei: ["35824005111111X"]\n', 3, "imei[0]", "14 to 16 digits"),
    ('market: "NO"\nidentifiers:\n  imei: "358240051111110"\n  shoe_size: ["44"]\n', 4, "shoe_size", "unknown kind"),
    ('market: "NO"\ncountries:\n  deny: [CN]\n  allow: [NO]\n  database: x.mmdb\n', 2, "countries", "exactly one"),
    ('market: "NO"\ncountries:\n  deny: [CN, Mars]\n  database: x.mmdb\n', 3, "countries.deny[1]", "not an ISO"),
    ('market: "NO"\nunlock: {method: pin}\n', 2, "unlock", "secret_env"),
    ('market: "NO"\nunlock: {method: face}\n', 2, "unlock.method", "expected one of"),
    ('market: "NO"\nunlock: {method: pin, secret_env: "1 2"}\n', 2, "unlock.secret_env", "environment variable"),
    ('market: "NO"\ncapture: {backend: wifi}\n', 2, "capture.backend", "expected one of"),
    ('market: "NO"\ncapture:\n  backend: file\n  interface: eth0\n', 4, "capture.interface", "unknown key"),
    ('market: "NO"\ndwell: {sleep: 3}\n', 2, "dwell.sleep", "unknown key"),
    ('market: "NO"\nreset: [1, 2]\n', 2, "reset[0]", "expected a string"),
    ('market: "NO"\nvirtual: [1]\n', 2, "virtual", "expected a mapping"),
]


@pytest.mark.parametrize(("text", "line", "field", "words"), BAD)
def test_bad_profile(tmp_path: Path, text: str, line: int | None, field: str | None, words: str) -> None:
    path = tmp_path / "sku.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    error = caught.value
    assert error.path == str(path)
    if line is not None:
        assert error.line == line
    assert error.field == field
    assert words in error.message


def test_identifier_errors_are_masked(tmp_path: Path) -> None:
    path = tmp_path / "sku.yaml"
    path.write_text('market: "NO"\nidentifiers:\n  imei: ["3582400511111A0"]\n')
    with pytest.raises(ConfigError) as caught:
        load_profile(path)
    assert "3582400511111A0" not in str(caught.value) and "…1A0" in str(caught.value)


def test_country_database_path_is_relative_to_the_profile(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "sku.yaml"
    path.write_text('market: "NO"\ncountries:\n  allow: ["NO", SE]\n  database: ../Country.mmdb\n')
    rule = load_profile(path).countries
    assert rule is not None and rule.mode == "allow" and rule.countries == {"NO", "SE"}
    assert rule.database == tmp_path / "sub" / ".." / "Country.mmdb"
    assert rule.where == (str(path), 4, "countries.database")


def test_country_rule_without_database_uses_the_shipped_one(tmp_path: Path) -> None:
    path = tmp_path / "sku.yaml"
    path.write_text('market: "NO"\ncountries:\n  deny: [CN]\n')
    rule = load_profile(path).countries
    assert rule is not None and rule.database == BUILTIN  # iptocc, a dependency: nothing to download
    assert rule.where == (str(path), 2, "countries")


def test_country_rule_without_database_needs_iptocc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(geoip, "_iptocc_version", lambda: None)  # as if it were not installed
    path = tmp_path / "sku.yaml"
    path.write_text('market: "NO"\ncountries:\n  deny: [CN]\n')
    with pytest.raises(ConfigError, match=r"`database:` is required.*iptocc") as caught:
        load_profile(path)
    assert (caught.value.line, caught.value.field) == (2, "countries")


def test_missing_profile_file_and_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such profile file"):
        load_profile(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="no profile of that name"):
        load_profile("no-such-sku")
    with pytest.raises(ConfigError, match="not a profile name"):
        load_profile("two words")


def test_lookup_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profile_mod, "_profile_dirs", lambda: [DATA])
    assert {"china-sku", "nokia7plus-no", "wifi-only"} <= set(profile_names())
    p = load_profile("china-sku")
    assert (p.name, p.market, p.path) == ("china-sku", "CN", "devices/china-sku.yaml")


def test_virtual_section_is_kept_for_the_virtual_phone(tmp_path: Path) -> None:
    path = tmp_path / "virt.yaml"
    path.write_text('market: "NO"\nvirtual:\n  android: 9\n')
    assert load_profile(path).virtual is not None


@pytest.mark.parametrize("name", profile_names())
def test_shipped_profiles_load(name: str) -> None:
    p = load_profile(name)
    assert p.name == name and len(p.market) == 2
