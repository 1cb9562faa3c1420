"""Device profiles (`devices/<name>.yaml`): one SKU's market, approved endpoints and test settings.

The schema is in the team brief and README. Every problem (YAML error, unknown key, wrong type,
bad market code, unknown catalog id, an identifier of the wrong shape) is one `ConfigError`
naming file, line and field, so `phonehome` exits 2 with one line instead of a traceback.
Profiles are found by name in the `harness.devices` package (the top-level `devices/` folder of
a clone), or given as a path.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from harness.config import Node, parse_yaml
from harness.errors import ConfigError
from harness.identifiers import DEFAULT_REQUIRED, IdentifierSet, Kind
from harness.policy.catalog import PROTOCOLS, Catalog, host_matches, host_problem, load_catalog
from harness.policy.countries import country_problem
from harness.policy.geoip import shipped_database

PHASES = ("power-up", "screen-on", "unlock", "idle", "lock", "connectivity-change")
DWELL_PHASES = PHASES[1:]  # power-up lasts `settle` after boot_completed
DEFAULT_SETTLE = 90.0
DEFAULT_DWELL = {"screen-on": 10.0, "unlock": 10.0, "idle": 30.0, "lock": 10.0, "connectivity-change": 20.0}
UNLOCK_METHODS = ("none", "swipe", "pin", "password", "pattern")
SECRET_METHODS = frozenset({"pin", "password", "pattern"})
# settings each capture backend takes besides `backend` (the capture layer reads them)
CAPTURE_SETTINGS: dict[str, frozenset[str]] = {
    "gateway": frozenset({"interface", "filter", "snaplen", "max_bytes"}),
    "device": frozenset({"interface", "filter", "tcpdump", "snaplen", "max_bytes"}),
    "pcapdroid": frozenset({"package", "max_bytes"}),
    "file": frozenset({"path"}),
}
SIM_KINDS = frozenset({Kind.IMSI, Kind.ICCID, Kind.MSISDN})
_TOP_KEYS = {"model", "market", "approved", "require", "identifiers", "has_sim", "countries", "unlock", "capture",
             "settle", "dwell", "reset", "virtual"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True, slots=True)
class Approval:
    """One approved endpoint: a whole catalog entry, or a host (optionally one port/protocol)."""

    catalog: str | None = None
    host: str | None = None
    port: int | None = None
    proto: str | None = None

    def covers(self, client_id: str | None, host: str | None, port: int | None, proto: str | None) -> bool:
        if self.catalog is not None:
            return self.catalog == client_id
        if self.host is None or host is None or not host_matches(self.host, host):
            return False
        return (self.port is None or port is None or self.port == port) and \
            (self.proto is None or proto is None or self.proto == proto)


@dataclass(frozen=True, slots=True)
class CountryRule:
    """Destinations must (allow) or must not (deny) be in these countries."""

    mode: str  # "deny" | "allow"
    countries: frozenset[str]
    database: Path | None
    where: tuple[str, int | None, str | None]  # file, line, field of the rule (for errors at use)


@dataclass(frozen=True, slots=True)
class Unlock:
    method: str = "swipe"
    secret_env: str | None = None


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    backend: str | None = None
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Profile:
    name: str
    path: str
    market: str
    model: str | None = None
    approved: list[Approval] = field(default_factory=list)
    require: tuple[Kind, ...] = DEFAULT_REQUIRED
    identifiers: IdentifierSet = field(default_factory=IdentifierSet)
    has_sim: bool = True
    countries: CountryRule | None = None
    unlock: Unlock = field(default_factory=Unlock)
    capture: CaptureSettings = field(default_factory=CaptureSettings)
    settle: float = DEFAULT_SETTLE
    dwell: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_DWELL))
    reset: list[str] = field(default_factory=list)
    virtual: Any = None  # harness.virtual.spec.VirtualSpec when the profile has a `virtual:` section

    def approves(self, client_id: str | None, host: str | None = None, port: int | None = None,
                 proto: str | None = None) -> bool:
        return any(a.covers(client_id, host, port, proto) for a in self.approved)


# --- lookup ------------------------------------------------------------------------------------

def _profile_dirs() -> list[Traversable]:
    """Where named profiles live: the installed package data, else a clone's `devices/`."""
    try:
        return [resources.files("harness.devices")]
    except ModuleNotFoundError:  # an editable install without devices/__init__.py
        clone = Path(__file__).resolve().parent.parent / "devices"
        return [clone] if clone.is_dir() else []


def profile_names() -> list[str]:
    return sorted(p.name[: -len(".yaml")] for d in _profile_dirs() for p in d.iterdir()
                  if p.name.endswith(".yaml"))


def _locate(name_or_path: str | Path) -> tuple[str, str, str, Path]:
    """(name, source shown in errors, YAML text, folder that relative paths in it start from)."""
    text_form = str(name_or_path)
    as_path = Path(text_form)
    looks_like_path = isinstance(name_or_path, Path) or "/" in text_form or text_form.endswith((".yaml", ".yml"))
    if looks_like_path or as_path.is_file():
        try:
            return as_path.stem, text_form, as_path.read_text(encoding="utf-8"), as_path.parent
        except FileNotFoundError:
            raise ConfigError(text_form, None, None, "no such profile file") from None
        except OSError as exc:
            raise ConfigError(text_form, None, None, f"cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(text_form, None, None, "not UTF-8 text") from None
    if not _NAME.fullmatch(text_form):
        raise ConfigError(text_form, None, None, "not a profile name or a path to a .yaml file")
    for directory in _profile_dirs():
        candidate = directory.joinpath(f"{text_form}.yaml")
        if candidate.is_file():
            return (text_form, f"devices/{text_form}.yaml", candidate.read_text(encoding="utf-8"),
                    Path(str(directory)))
    known = ", ".join(profile_names()) or "none"
    raise ConfigError(text_form, None, None, f"no profile of that name (known: {known}; or give a path)")


def load_profile(name_or_path: str | Path, catalog: Catalog | None = None) -> Profile:
    """Read and check a profile; approvals are checked against `catalog` (default: built-in)."""
    name, source, text, base = _locate(name_or_path)
    root = parse_yaml(text, source)
    return parse_profile(root, name, catalog or load_catalog(), base)


# --- schema ------------------------------------------------------------------------------------

def parse_profile(root: Node, name: str, catalog: Catalog, base: Path) -> Profile:
    top = root.mapping(_TOP_KEYS)
    market_node = root.require("market")
    problem = country_problem(market_node.value)
    if problem:
        raise market_node.error(problem)
    profile = Profile(name=name, path=root.path, market=str(market_node.value))
    profile.model = root.str("model", None)
    profile.approved = [_approval(item, catalog) for item in root.list("approved", [])]
    profile.has_sim = root.bool("has_sim", True)
    profile.require = _require(root, profile.has_sim)
    if "identifiers" in top:
        profile.identifiers = _identifiers(top["identifiers"])
    if "countries" in top:
        profile.countries = _countries(top["countries"], base)
    if "unlock" in top:
        profile.unlock = _unlock(top["unlock"])
    if "capture" in top:
        profile.capture = _capture(top["capture"])
    profile.settle = _seconds(root, "settle", DEFAULT_SETTLE)
    if "dwell" in top:
        node = top["dwell"]
        node.mapping(set(DWELL_PHASES))
        profile.dwell.update({phase: _seconds(node, phase, DEFAULT_DWELL[phase]) for phase in DWELL_PHASES})
    profile.reset = root.str_list("reset", [])
    if "virtual" in top:
        profile.virtual = _virtual(top["virtual"], name)
    return profile


def _approval(node: Node, catalog: Catalog) -> Approval:
    node.mapping({"catalog", "host", "port", "proto"})
    client_id = node.str("catalog", None)
    host = node.str("host", None)
    if (client_id is None) == (host is None):
        raise node.error("an approval names either `catalog: ID` or `host: NAME`")
    if client_id is not None:
        if node.get("port") is not None or node.get("proto") is not None:
            raise node.error("port/proto go with `host:`; `catalog:` approves the whole entry")
        if catalog.get(client_id) is None:
            raise node.require("catalog").error(f"unknown catalog id (known: {', '.join(catalog.ids)})")
        return Approval(catalog=client_id)
    assert host is not None
    problem = host_problem(host)
    if problem:
        raise node.require("host").error(problem)
    port = node.int("port", None)
    if port is not None and not 0 < port < 65536:
        raise node.require("port").error("a port is 1 to 65535")
    proto = node.str("proto", None)
    if proto is not None and proto not in PROTOCOLS:
        raise node.require("proto").error(f"expected one of {', '.join(sorted(PROTOCOLS))}")
    return Approval(host=host, port=port, proto=proto)


def _require(root: Node, has_sim: bool) -> tuple[Kind, ...]:
    node = root.get("require")
    if node is None or node.value is None:
        return tuple(k for k in DEFAULT_REQUIRED if has_sim or k not in SIM_KINDS)
    kinds: list[Kind] = []
    for item in node.items():
        try:
            kind = Kind(item.as_str())
        except ValueError:
            raise item.error(f"unknown identifier kind (known: {', '.join(k.value for k in Kind)})") from None
        if not has_sim and kind in SIM_KINDS:
            raise item.error(f"{kind} cannot be known: the profile says has_sim: false")
        kinds.append(kind)
    return tuple(dict.fromkeys(kinds))


def _identifiers(node: Node) -> IdentifierSet:
    children = node.mapping()
    lines = {key: child.line for key, child in children.items()}
    return IdentifierSet.from_mapping(node.plain(), node.path, lines)


def _countries(node: Node, base: Path) -> CountryRule:
    children = node.mapping({"deny", "allow", "database"})
    modes = [m for m in ("deny", "allow") if m in children]
    if len(modes) != 1:
        raise node.error("give exactly one of `deny:` or `allow:` (a list of country codes)")
    mode = modes[0]
    codes = set()
    for item in node.list(mode):
        problem = country_problem(item.value)
        if problem:
            raise item.error(problem)
        codes.add(str(item.value))
    db_node = children.get("database")
    database: Path | None
    if db_node is not None and db_node.value is not None:
        database = Path(db_node.as_str()).expanduser()
        if not database.is_absolute():
            database = base / database
        where = (db_node.path, db_node.line, db_node.field)
    else:
        database = shipped_database()
        where = (node.path, node.line, node.field)
        if database is None:
            raise node.error("`database:` is required: the built-in IP-to-country database (the iptocc package) "
                             "is not installed; `pip install iptocc`, or name a MaxMind-format .mmdb "
                             "(GeoLite2-Country, DB-IP IP-to-Country Lite, ...)")
    return CountryRule(mode, frozenset(codes), database, where)


def _unlock(node: Node) -> Unlock:
    node.mapping({"method", "secret_env"})
    method = node.str("method", "swipe")
    if method not in UNLOCK_METHODS:
        raise node.require("method").error(f"expected one of {', '.join(UNLOCK_METHODS)}")
    secret_env = node.str("secret_env", None)
    if secret_env is not None and not _ENV_NAME.fullmatch(secret_env):
        raise node.require("secret_env").error("expected the name of an environment variable")
    if method in SECRET_METHODS and secret_env is None:
        raise node.error(f"unlock method {method} needs `secret_env:` (the variable holding the secret)")
    return Unlock(method, secret_env)


def _capture(node: Node) -> CaptureSettings:
    children = node.mapping()
    backend = node.str("backend", None)
    if backend is not None and backend not in CAPTURE_SETTINGS:
        raise node.require("backend").error(f"expected one of {', '.join(CAPTURE_SETTINGS)}")
    allowed = {"backend"} | (CAPTURE_SETTINGS[backend] if backend else set())
    node.mapping(allowed)
    return CaptureSettings(backend, {k: v.plain() for k, v in children.items() if k != "backend"})


def _seconds(node: Node, key: str, default: float) -> float:
    value = node.number(key, default)
    if value < 0:
        raise node.require(key).error("expected a number of seconds, 0 or more")
    return value


def _virtual(node: Node, name: str) -> Any:
    """The `virtual:` section, parsed by the virtual phone's own schema when it is installed."""
    node.mapping()
    if importlib.util.find_spec("harness.virtual.spec") is None:
        return node
    from harness.virtual.spec import parse_virtual  # type: ignore[import-not-found,unused-ignore]

    return parse_virtual(node, name)
