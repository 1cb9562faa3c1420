"""The catalog of carrier/country activation clients, kept as data (`catalog.yaml`) and checked at load.

Every entry names what a capture can show (hosts, addresses, protocol/ports) and what a build can
contain (Android packages), with the public source of each fact, so a finding can say why a host
counts as an activation endpoint. Users add entries with a file of the same schema.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from harness.config import Node, load_yaml, parse_yaml
from harness.errors import ConfigError
from harness.policy.countries import country_problem

_ID = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")
_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOST = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})+")
_PACKAGE = re.compile(r"[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)+")
_ENTRY_KEYS = {"id", "name", "carrier", "country", "hosts", "addresses", "endpoints", "packages", "sources", "notes"}
_ENDPOINT_KEYS = {"proto", "ports", "path", "note"}
_SOURCE_KEYS = {"what", "url"}
PROTOCOLS = frozenset({"tcp", "udp"})


def host_problem(text: str) -> str | None:
    """Why `text` is not a host name or `*.suffix` pattern (lower case), or None."""
    if text != text.lower():
        return f"{text!r}: write host names in lower case"
    if not _HOST.fullmatch(text) or len(text) > 253:
        return f"{text!r} is not a host name or '*.suffix' pattern"
    return None


def host_matches(pattern: str, host: str) -> bool:
    """`pattern` is an exact name, or `*.suffix` matching every name under the suffix."""
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:])
    return host == pattern


@dataclass(frozen=True, slots=True)
class Endpoint:
    proto: str
    ports: tuple[int, ...]
    path: str | None = None
    note: str | None = None

    def __str__(self) -> str:
        ports = ",".join(str(p) for p in self.ports)
        return f"{self.proto}/{ports}" + (f" /{self.path}" if self.path else "")


@dataclass(frozen=True, slots=True)
class Source:
    what: str
    url: str | None = None

    def __str__(self) -> str:
        return self.url or self.what


@dataclass(frozen=True, slots=True)
class Client:
    """One activation/self-registration client."""

    id: str
    name: str
    carrier: str
    country: str
    hosts: tuple[str, ...]
    addresses: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    endpoints: tuple[Endpoint, ...]
    packages: tuple[str, ...]
    sources: tuple[Source, ...]
    origin: str  # the catalog file it came from

    def matches_host(self, host: str) -> bool:
        return any(host_matches(pattern, host) for pattern in self.hosts)

    def matches_address(self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if isinstance(address, str):
            try:
                address = ipaddress.ip_address(address)
            except ValueError:
                return False
        ip = address
        return any(ip.version == net.version and ip in net for net in self.addresses)

    def port_known(self, proto: str, port: int | None) -> bool:
        return any(ep.proto == proto and port in ep.ports for ep in self.endpoints)

    @property
    def source(self) -> str:
        """The first source, as the one line a finding carries."""
        return str(self.sources[0])

    def describe(self) -> str:
        return f"{self.carrier} ({self.country}) activation client {self.id}"


@dataclass(frozen=True, slots=True)
class Catalog:
    clients: tuple[Client, ...]

    def get(self, client_id: str) -> Client | None:
        return next((c for c in self.clients if c.id == client_id), None)

    def by_host(self, host: str) -> Client | None:
        return next((c for c in self.clients if c.matches_host(host)), None)

    def by_address(self, address: str) -> Client | None:
        try:  # parsed once, not once per client (called for every flow of a capture)
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        return next((c for c in self.clients if c.addresses and c.matches_address(ip)), None)

    def by_package(self, package: str) -> Client | None:
        return next((c for c in self.clients if package in c.packages), None)

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.clients]


def _strings(node: Node, key: str, check: Callable[[str], str | None]) -> tuple[str, ...]:
    values = node.get(key)
    if values is None or values.value is None:
        return ()
    out = []
    for item in values.items():
        text = item.as_str()
        problem = check(text)
        if problem:
            raise item.error(problem)
        out.append(text)
    return tuple(out)


def _network(node: Node) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    try:
        return ipaddress.ip_network(node.as_str(), strict=False)
    except ValueError:
        raise node.error(f"{node.value!r} is not an IP address or network") from None


def _endpoint(node: Node) -> Endpoint:
    node.mapping(_ENDPOINT_KEYS)
    proto = node.str("proto")
    if proto not in PROTOCOLS:
        raise node.require("proto").error(f"expected one of {', '.join(sorted(PROTOCOLS))}")
    ports = []
    for item in node.list("ports"):
        port = item.as_int()
        if not 0 < port < 65536:
            raise item.error("a port is 1 to 65535")
        ports.append(port)
    if not ports:
        raise node.require("ports").error("at least one port")
    return Endpoint(proto, tuple(ports), node.str("path", None), node.str("note", None))


def _source(node: Node) -> Source:
    node.mapping(_SOURCE_KEYS)
    url = node.str("url", None)
    if url is not None and not url.startswith(("https://", "http://")):
        raise node.require("url").error("expected an http(s) URL")
    return Source(" ".join(node.str("what").split()), url)


def _client(node: Node) -> Client:
    node.mapping(_ENTRY_KEYS)
    client_id = node.str("id")
    if not _ID.fullmatch(client_id):
        raise node.require("id").error("expected lower-case letters, digits and '-'")
    country = node.str("country")
    problem = country_problem(country)
    if problem:
        raise node.require("country").error(problem)
    hosts = _strings(node, "hosts", host_problem)
    addresses_node = node.get("addresses")
    addresses = tuple(_network(item) for item in addresses_node.items()) \
        if addresses_node is not None and addresses_node.value is not None else ()
    if not hosts and not addresses:
        raise node.error("an entry needs at least one host or address")
    packages = _strings(node, "packages", lambda p: None if _PACKAGE.fullmatch(p) else
                        f"{p!r} is not an Android package name")
    sources = tuple(_source(item) for item in node.list("sources"))
    if not sources:
        raise node.require("sources").error("every entry names at least one public source")
    endpoints = tuple(_endpoint(item) for item in node.list("endpoints", []))
    return Client(client_id, node.str("name", client_id), node.str("carrier"), country, hosts, addresses,
                  endpoints, packages, sources, node.path)


def parse_catalog(root: Node) -> list[Client]:
    """The entries of one catalog file; every problem is a ConfigError with file, line and field."""
    root.mapping({"version", "clients"})
    version = root.int("version", 1)
    if version != 1:
        raise root.require("version").error("this phonehome reads catalog version 1")
    return [_client(item) for item in root.list("clients")]


def _merge(parts: list[list[Client]]) -> Catalog:
    seen: dict[str, Client] = {}
    for clients in parts:
        for client in clients:
            if client.id in seen:
                raise ConfigError(client.origin, None, "clients",
                                  f"id {client.id!r} is already defined in {seen[client.id].origin}")
            seen[client.id] = client
    return Catalog(tuple(seen.values()))


@cache
def builtin_clients() -> tuple[Client, ...]:
    text = resources.files("harness.policy").joinpath("catalog.yaml").read_text(encoding="utf-8")
    return tuple(parse_catalog(parse_yaml(text, "harness/policy/catalog.yaml")))


def load_catalog(extra: list[Path] | tuple[Path, ...] = ()) -> Catalog:
    """The built-in catalog plus the users' extra files (ids must not repeat)."""
    parts = [list(builtin_clients())]
    parts += [parse_catalog(load_yaml(Path(path))) for path in extra]
    return _merge(parts)
