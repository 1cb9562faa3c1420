"""The `virtual:` section of a device profile: what the virtual phone is and what its firmware sends.

    virtual:
      model: Nokia 7 plus
      manufacturer: HMD Global
      android: 9                      # release; sdk follows unless given
      build_type: userdebug           # user | userdebug
      boot_seconds: 3
      identifiers: {imei: [...], imsi: [...], iccid: [...], wifi_mac: [...], android_id: [...], cell_id: [...]}
      sim: {present: true, mcc: "242", mnc: "01", operator: Telenor}
      packages: {com.example.app: "1.0"}
      private_dns: opportunistic      # off | opportunistic | a DNS-over-TLS host name
      mobile_data: false
      faults: [new-ip-mac]
      zone: {api.example.net: 203.0.113.80}   # extra names for the simulated internet's DNS
      clients:
        - name: activation
          package: com.example.app
          triggers: {power-up: 2, screen-on: 0, lock: 0, connectivity-change: 1, periodic: 3600}
          transport: http              # http https udp tcp dns coap ntp
          host: zzhc.vnet.cn           # or address: 42.99.2.15 (hard-coded, no DNS), or both
          port: 80
          method: POST
          path: /
          headers: {Content-Type: application/encrypted-json}
          body: {json: {IMEI1: "{imei1}", MACID: "{wifi_mac|upper}"}}   # or text: "...", form: {...}
          encode: [base64-mime]        # applied to the whole body, in order
          stop_when_registered: true
          success: {field: resultCode, equals: "0"}

Templates: `{name}` or `{name|step|step}` with the names in TEMPLATE_FIELDS and the steps in
ENCODERS; `{{`/`}}` are literal braces. Inside a JSON body, `{$json: {...}, $encode: [gzip,
base64]}` (or `$text:`) nests an encoded document in a field, as analytics SDKs do. Every
mistake is a ConfigError naming file, line and field.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import urllib.parse
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from harness.config import Node, parse_yaml
from harness.errors import ConfigError
from harness.identifiers import IdentifierSet, Kind
from harness.virtual.lockpattern import check_pattern

# Faults a profile (or `--fault`) can switch on; the device model and phone act on them.
FAULTS = frozenset({
    "drop-connection", "boot-never-completes", "tcpdump-dies", "unauthorized", "new-port", "no-sim",
    "new-ip-mac", "user-build", "private-dns-on", "mobile-data-on",
})
SDK_FOR_RELEASE = {8: 26, 9: 28, 10: 29, 11: 30, 12: 31, 13: 33, 14: 34, 15: 35}
BUILD_TYPES = ("user", "userdebug")
TRIGGERS = ("power-up", "screen-on", "unlock", "idle", "lock", "connectivity-change", "periodic")
TRANSPORTS = ("http", "https", "udp", "tcp", "dns", "coap", "ntp")
DEFAULT_PORTS = {"http": 80, "https": 443, "dns": 53, "coap": 5683, "ntp": 123}
NETWORKS = ("default", "cellular")
LOCKS = ("none", "swipe", "pin", "pattern")

ENCODERS: dict[str, Callable[[bytes], bytes]] = {
    "plain": lambda b: b,
    "url": lambda b: urllib.parse.quote_from_bytes(b, safe="").encode(),
    "base64": base64.b64encode,
    "base64-mime": base64.encodebytes,  # Android Base64.DEFAULT: 76 columns, "\n" after each line
    "base64url": base64.urlsafe_b64encode,
    "base64url-nopad": lambda b: base64.urlsafe_b64encode(b).rstrip(b"="),
    "hex": lambda b: b.hex().encode(),
    "hex-upper": lambda b: b.hex().upper().encode(),
    "md5": lambda b: hashlib.md5(b).hexdigest().encode(),
    "sha1": lambda b: hashlib.sha1(b).hexdigest().encode(),
    "sha256": lambda b: hashlib.sha256(b).hexdigest().encode(),
    "gzip": lambda b: gzip.compress(b, mtime=0),
    "zlib": zlib.compress,
    "upper": lambda b: b.upper(),
    "lower": lambda b: b.lower(),
    "nocolon": lambda b: b.replace(b":", b"").replace(b"-", b""),
    "utf16le": lambda b: b.decode("utf-8", "replace").encode("utf-16-le"),
}

TEMPLATE_FIELDS = frozenset({
    "imei1", "imei2", "meid", "imsi1", "imsi2", "iccid1", "iccid2", "msisdn1", "msisdn2",
    "wifi_mac",        # the factory (burned-in) MAC
    "wifi_mac_wire",   # the MAC the phone uses on its Wi-Fi network now (randomized on 10+)
    "bt_mac", "serial", "android_id", "cell_id",
    "model", "manufacturer", "android", "sdk", "fingerprint", "build_id", "mcc", "mnc", "operator",
    "package", "access_type", "regdate", "time", "time_ms", "nonce",
})
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([a-z0-9_]+)((?:\|[a-z0-9-]+)*)\}|[{}]")
_PACKAGE = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)+")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HOST = re.compile(r"(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9_-]{1,63}\.?")
_IPV4 = re.compile(r"(\d{1,3}\.){3}\d{1,3}")
_MCC = re.compile(r"\d{3}")
_MNC = re.compile(r"\d{2,3}")


# --- templates ------------------------------------------------------------------------------

def check_template(text: str, node: Node) -> None:
    """Reject unknown placeholders or steps and stray braces, naming the field."""
    for match in _PLACEHOLDER.finditer(text):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        if match.group(1) is None:
            raise node.error(f"stray '{token}' in template (write {token * 2} for a literal brace)")
        name = match.group(1)
        if name not in TEMPLATE_FIELDS:
            raise node.error(f"unknown placeholder {{{name}}} (known: {', '.join(sorted(TEMPLATE_FIELDS))})")
        for step in filter(None, match.group(2).split("|")):
            if step not in ENCODERS:
                raise node.error(f"unknown encoding '{step}' in {{{name}...}} (known: {', '.join(ENCODERS)})")


def render(text: str, values: Mapping[str, str]) -> str:
    """Fill a checked template; an unknown identifier renders as "" (what a phone without it sends)."""

    def fill(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        data = values.get(match.group(1) or "", "").encode()
        for step in filter(None, match.group(2).split("|")):
            data = ENCODERS[step](data)
        return data.decode("latin-1")

    return _PLACEHOLDER.sub(fill, text)


def encode(data: bytes, steps: list[str]) -> bytes:
    for step in steps:
        data = ENCODERS[step](data)
    return data


def render_json(template: Any, values: Mapping[str, str]) -> Any:
    """A JSON template filled in: strings rendered, `{$json|$text, $encode}` nodes encoded to strings."""
    if isinstance(template, str):
        return render(template, values)
    if isinstance(template, list):
        return [render_json(item, values) for item in template]
    if isinstance(template, dict):
        if "$encode" in template:
            inner = template.get("$json")
            data = json_bytes(render_json(inner, values)) if "$json" in template else \
                render(str(template.get("$text", "")), values).encode()
            return encode(data, list(template["$encode"])).decode("latin-1")
        return {render(str(k), values): render_json(v, values) for k, v in template.items()}
    return template


def json_bytes(value: Any) -> bytes:
    """Compact JSON, as Android's JSONObject.toString() writes it."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _check_json_template(node: Node) -> Any:
    value = node.value
    if isinstance(value, str):
        check_template(value, node)
        return value
    if isinstance(value, list):
        return [_check_json_template(item) for item in value]
    if isinstance(value, dict):
        if "$encode" in value or "$json" in value or "$text" in value:
            node.mapping({"$encode", "$json", "$text"})
            if ("$json" in value) == ("$text" in value):
                raise node.error("an encoded field needs exactly one of `$json:` or `$text:`")
            out: dict[str, Any] = {"$encode": _steps(node, "$encode", required=True)}
            if "$json" in value:
                out["$json"] = _check_json_template(value["$json"])
            else:
                text_node = value["$text"]
                out["$text"] = text_node.as_str()
                check_template(out["$text"], text_node)
            return out
        result = {}
        for key, child in value.items():
            check_template(key, child)
            result[key] = _check_json_template(child)
        return result
    return value


def _steps(node: Node, key: str, *, required: bool = False) -> list[str]:
    child = node.get(key)
    if child is None or child.value is None:
        if required:
            raise node.error(f"missing required key '{key}'")
        return []
    items = [child] if isinstance(child.value, str) else child.items()
    steps = []
    for item in items:
        step = item.as_str()
        if step not in ENCODERS:
            raise item.error(f"unknown encoding '{step}' (known: {', '.join(ENCODERS)})")
        steps.append(step)
    return steps


# --- the spec -------------------------------------------------------------------------------

@dataclass(slots=True)
class SimSpec:
    present: bool = True
    state: str = "READY"
    mcc: str = ""
    mnc: str = ""
    operator: str = ""


@dataclass(slots=True)
class Success:
    """When the server's answer means "registered": all given conditions hold."""

    status: int | None = None     # HTTP status, or CoAP code as class*100+detail (2.04 -> 204)
    field: str | None = None      # a top-level key of a JSON answer ...
    equals: str | None = None     # ... whose value (as text) must be this
    contains: str | None = None   # text the answer must contain

    def met(self, status: int | None, body: bytes) -> bool:
        if self.status is not None and status != self.status:
            return False
        if self.status is None and (status is None or not 200 <= status < 300):
            return False
        if self.contains is not None and self.contains.encode() not in body:
            return False
        if self.field is not None:
            try:
                answer = json.loads(body)
            except ValueError:
                return False
            if not isinstance(answer, dict) or self.field not in answer:
                return False
            if self.equals is not None and str(answer[self.field]) != self.equals:
                return False
        return True


@dataclass(slots=True)
class ClientSpec:
    """One firmware client: what it sends, where, and on which triggers."""

    name: str
    package: str
    triggers: dict[str, float]       # trigger -> delay in seconds (periodic: the interval)
    transport: str
    host: str | None = None          # a template for dns transport's query lives in `query`
    address: str | None = None       # a hard-coded server address (no DNS lookup)
    port: int = 0
    network: str = "default"         # or "cellular": bound to mobile data
    method: str = "POST"
    path: str = "/"
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None                 # str (text) or a JSON/form template
    body_format: str = "text"        # text | json | form
    encode: list[str] = field(default_factory=list)
    query: str | None = None         # dns: the name to look up (a template)
    content_format: int | None = None  # coap Content-Format option
    stop_when_registered: bool = False
    success: Success = field(default_factory=Success)
    log_tag: str = ""


@dataclass(slots=True)
class VirtualSpec:
    name: str
    model: str = "Virtual Phone"
    manufacturer: str = "phonehome"
    android: int = 14
    sdk: int = 34
    build_type: str = "userdebug"
    fingerprint: str = ""
    boot_seconds: float = 3.0
    identifiers: IdentifierSet = field(default_factory=IdentifierSet)
    sim: SimSpec = field(default_factory=SimSpec)
    packages: dict[str, str] = field(default_factory=dict)
    pcapdroid: bool = False
    private_dns: Any = "opportunistic"  # "off" | "opportunistic" | a host name (True: dns.google, the fault)
    mobile_data: bool = False
    clients: list[ClientSpec] = field(default_factory=list)
    faults: set[str] = field(default_factory=set)
    lock: str = "swipe"
    pin: str | None = None
    pattern: str | None = None  # cells 1-9 of the 3x3 grid, row by row, in drawing order ("14789")
    timezone: str = "UTC"
    clock_offset: float = 0.0
    zone: dict[str, str] = field(default_factory=dict)  # name (or *.suffix) -> IPv4, added to the simulated DNS

    def ident(self, kind: Kind, slot: int = 1) -> str:
        values = self.identifiers.values.get(kind, [])
        return values[slot - 1] if 0 < slot <= len(values) and values[slot - 1] else ""

    @property
    def private_dns_host(self) -> str | None:
        """The DNS-over-TLS server the phone must use, or None (plain DNS, opportunistic included)."""
        mode = self.private_dns
        if mode is True or ("private-dns-on" in self.faults and mode in (None, False, "off", "opportunistic")):
            return "dns.google"
        if isinstance(mode, str) and mode not in ("", "off", "opportunistic"):
            return mode
        return None

    def ssaid(self, package: str) -> str:
        """The Android ID `package` sees (per app since Android 8); the device model answers the same."""
        values = [v.lower() for v in self.identifiers.values.get(Kind.ANDROID_ID, []) if v]
        serial = self.ident(Kind.SERIAL) or hashlib.sha1(self.name.encode()).hexdigest()[:12].upper()
        shell_id = values[0] if values else hashlib.sha256(serial.encode()).hexdigest()[:16]
        ordered = sorted(self.packages)
        if package not in ordered:
            return shell_id
        index = ordered.index(package)
        return values[(index + 1) % len(values)] if values else \
            hashlib.sha256((shell_id + package).encode()).hexdigest()[:16]


# --- parsing --------------------------------------------------------------------------------

_VIRTUAL_KEYS = {"model", "manufacturer", "android", "sdk", "build_type", "fingerprint", "boot_seconds",
                 "identifiers", "sim", "packages", "pcapdroid", "private_dns", "mobile_data", "clients",
                 "faults", "lock", "pin", "pattern", "timezone", "clock_offset", "zone"}
_CLIENT_KEYS = {"name", "package", "triggers", "transport", "host", "address", "port", "network", "method",
                "path", "headers", "body", "encode", "query", "content_format", "stop_when_registered",
                "success", "log_tag"}


def parse_virtual(node: Node, name: str) -> VirtualSpec:
    """Check and read a profile's `virtual:` section (`node` is that section)."""
    children = node.mapping(_VIRTUAL_KEYS)
    spec = VirtualSpec(name=name)
    spec.model = node.str("model", spec.model)
    spec.manufacturer = node.str("manufacturer", spec.manufacturer)
    spec.android = node.int("android")
    if spec.android not in SDK_FOR_RELEASE:
        raise node.require("android").error(f"expected an Android release {min(SDK_FOR_RELEASE)} to "
                                            f"{max(SDK_FOR_RELEASE)}")
    spec.sdk = node.int("sdk", SDK_FOR_RELEASE[spec.android])
    if not SDK_FOR_RELEASE[spec.android] <= spec.sdk <= SDK_FOR_RELEASE[spec.android] + 1:
        raise node.require("sdk").error(f"API level {spec.sdk} does not belong to Android {spec.android}")
    spec.build_type = _choice(node, "build_type", BUILD_TYPES, spec.build_type)
    spec.fingerprint = node.str("fingerprint", "")
    spec.boot_seconds = _seconds(node, "boot_seconds", spec.boot_seconds)
    if "identifiers" in children:
        spec.identifiers = _identifiers(children["identifiers"])
    if "sim" in children:
        spec.sim = _sim(children["sim"])
    if "packages" in children:
        spec.packages = _packages(children["packages"])
    spec.pcapdroid = node.bool("pcapdroid", False)
    spec.private_dns = _private_dns(node)
    spec.mobile_data = node.bool("mobile_data", False)
    for item in node.list("faults", []):
        fault = item.as_str()
        if fault not in FAULTS:
            raise item.error(f"unknown fault (known: {', '.join(sorted(FAULTS))})")
        spec.faults.add(fault)
    spec.lock = _choice(node, "lock", LOCKS, spec.lock)
    pin_node = children.get("pin")
    if pin_node is not None and pin_node.value is not None:
        pin = str(pin_node.value)
        if isinstance(pin_node.value, bool) or not re.fullmatch(r"\d{4,16}", pin):
            raise pin_node.error("expected a PIN of 4 to 16 digits (quote it)")
        spec.pin = pin
    if spec.lock == "pin" and spec.pin is None:
        raise node.require("lock").error("lock: pin needs `pin:`")
    pattern_node = children.get("pattern")
    if pattern_node is not None and pattern_node.value is not None:
        if isinstance(pattern_node.value, bool):
            raise pattern_node.error("expected a pattern: cells 1-9 in drawing order, e.g. \"1-4-7-8-9\"")
        try:
            spec.pattern = check_pattern(str(pattern_node.value))
        except ValueError as exc:
            raise pattern_node.error(str(exc)) from None
    if spec.lock == "pattern" and spec.pattern is None:
        raise node.require("lock").error("lock: pattern needs `pattern:`")
    spec.timezone = node.str("timezone", spec.timezone)
    spec.clock_offset = node.number("clock_offset", 0.0)
    if "zone" in children:
        spec.zone = _zone(children["zone"])
    seen: set[str] = set()
    for item in node.list("clients", []):
        client = _client(item)
        if client.name in seen:
            raise item.require("name").error(f"a second client named {client.name}")
        seen.add(client.name)
        if client.package != "android" and client.package not in spec.packages:
            spec.packages[client.package] = "1.0"  # a client is an installed app
        spec.clients.append(client)
    return spec


def _choice(node: Node, key: str, allowed: tuple[str, ...], default: str) -> str:
    value = node.str(key, default)
    if value not in allowed:
        raise node.require(key).error(f"expected one of {', '.join(allowed)}")
    return value


def _seconds(node: Node, key: str, default: float) -> float:
    value = node.number(key, default)
    if value < 0:
        raise node.require(key).error("expected a number of seconds, 0 or more")
    return value


def _identifiers(node: Node) -> IdentifierSet:
    children = node.mapping()
    lines = {key: child.line for key, child in children.items()}
    try:
        return IdentifierSet.from_mapping(node.plain(), node.path, lines)
    except ConfigError as exc:
        where = f"{node.field}.{exc.field}" if exc.field else node.field
        raise ConfigError(exc.path, exc.line or node.line, where, exc.message) from None


def _sim(node: Node) -> SimSpec:
    node.mapping({"present", "state", "mcc", "mnc", "operator"})
    present = node.bool("present", True)
    sim = SimSpec(present=present, state=node.str("state", "READY" if present else "ABSENT"))
    for key, pattern in (("mcc", _MCC), ("mnc", _MNC)):
        child = node.get(key)
        if child is None or child.value is None:
            continue
        text = str(child.value)
        if isinstance(child.value, bool) or not pattern.fullmatch(text):
            raise child.error(f"expected {'3' if key == 'mcc' else '2 or 3'} digits (quote it: \"01\")")
        setattr(sim, key, text)
    sim.operator = node.str("operator", "")
    return sim


def _packages(node: Node) -> dict[str, str]:
    packages: dict[str, str] = {}
    for package, child in node.mapping().items():
        if not _PACKAGE.fullmatch(package):
            raise child.error("not an Android package name (like com.example.app)")
        if child.value is None or isinstance(child.value, (bool, dict, list)):
            raise child.error("expected a version name, like \"1.0\"")
        packages[package] = str(child.value)
    return packages


def _private_dns(node: Node) -> str:
    value = node.str("private_dns", "opportunistic")
    if value not in ("off", "opportunistic") and not _HOST.fullmatch(value):
        raise node.require("private_dns").error("expected off, opportunistic or a DNS-over-TLS host name")
    return value


def _zone(node: Node) -> dict[str, str]:
    zone: dict[str, str] = {}
    for name, child in node.mapping().items():
        bare = name[2:] if name.startswith("*.") else name
        if not _HOST.fullmatch(bare):
            raise child.error("not a host name (or *.suffix)")
        address = child.as_str()
        if not _IPV4.fullmatch(address) or any(int(part) > 255 for part in address.split(".")):
            raise child.error("expected an IPv4 address")
        zone[name.lower()] = address
    return zone


def _client(node: Node) -> ClientSpec:
    children = node.mapping(_CLIENT_KEYS)
    name = node.str("name")
    if not _NAME.fullmatch(name):
        raise node.require("name").error("expected letters, digits, '.', '_' or '-'")
    package = node.str("package")
    if package != "android" and not _PACKAGE.fullmatch(package):  # "android": the system server
        raise node.require("package").error("not an Android package name (like com.example.app)")
    transport = _choice(node, "transport", TRANSPORTS, "http")
    client = ClientSpec(name=name, package=package, triggers=_triggers(node), transport=transport)
    client.host = node.str("host", None)
    if client.host is not None and not _HOST.fullmatch(client.host):
        raise node.require("host").error("not a host name")
    client.address = node.str("address", None)
    if client.address is not None and (not _IPV4.fullmatch(client.address) or
                                       any(int(part) > 255 for part in client.address.split("."))):
        raise node.require("address").error("expected an IPv4 address")
    client.port = node.int("port", DEFAULT_PORTS.get(transport, 0))
    if not 0 < client.port < 65536:
        where = children.get("port") or node
        raise where.error("expected a port 1 to 65535" if "port" in children else
                          f"transport {transport} needs `port:`")
    client.network = _choice(node, "network", NETWORKS, "default")
    client.method = node.str("method", "POST" if "body" in children else "GET")
    client.path = node.str("path", "/")
    check_template(client.path, children.get("path") or node)
    headers = children.get("headers")
    if headers is not None:
        for key, child in headers.mapping().items():
            value = child.value if isinstance(child.value, str) else None
            if value is None:
                raise child.error("expected a string header value")
            check_template(value, child)
            client.headers[key] = value
    if "body" in children:
        client.body, client.body_format = _body(children["body"])
    client.encode = _steps(node, "encode")
    client.query = node.str("query", None)
    if transport == "dns":
        if client.query is None:
            raise node.error("transport dns needs `query:` (the name to look up, a template)")
        check_template(client.query, node.require("query"))
    elif client.query is not None:
        raise node.require("query").error("only transport dns takes `query:`")
    elif client.host is None and client.address is None:
        raise node.error(f"transport {transport} needs `host:` or `address:`")
    if transport == "https" and client.host is None:
        raise node.error("transport https needs `host:` (the TLS server name)")
    client.content_format = node.int("content_format", None)
    client.stop_when_registered = node.bool("stop_when_registered", False)
    if "success" in children:
        client.success = _success(children["success"])
    client.log_tag = node.str("log_tag", "") or package.rsplit(".", 1)[-1]
    return client


def _triggers(node: Node) -> dict[str, float]:
    child = node.require("triggers")
    triggers: dict[str, float] = {}
    if isinstance(child.value, list):  # [power-up, lock]: no delay
        for item in child.items():
            trigger = item.as_str()
            if trigger not in TRIGGERS:
                raise item.error(f"unknown trigger (known: {', '.join(TRIGGERS)})")
            triggers[trigger] = 0.0
    else:
        for trigger, value in child.mapping().items():
            if trigger not in TRIGGERS:
                raise value.error(f"unknown trigger (known: {', '.join(TRIGGERS)})")
            triggers[trigger] = _seconds(child, trigger, 0.0)
    if not triggers:
        raise child.error("a client needs at least one trigger")
    if triggers.get("periodic") == 0:
        raise child.require("periodic").error("a periodic interval must be more than 0 seconds")
    return triggers


def _body(node: Node) -> tuple[Any, str]:
    if isinstance(node.value, str):
        check_template(node.value, node)
        return node.value, "text"
    children = node.mapping({"text", "json", "form"})
    if len(children) != 1:
        raise node.error("a body is one of `text:`, `json:` or `form:`")
    kind, child = next(iter(children.items()))
    if kind == "text":
        text = child.as_str()
        check_template(text, child)
        return text, "text"
    if kind == "form":
        form = {}
        for key, value in child.mapping().items():
            if value.value is None or isinstance(value.value, (dict, list)):
                raise value.error("expected a value")
            text = str(value.value).lower() if isinstance(value.value, bool) else str(value.value)
            check_template(text, value)
            form[key] = text
        return form, "form"
    return _check_json_template(child), "json"


def _success(node: Node) -> Success:
    node.mapping({"status", "field", "equals", "contains"})
    success = Success(status=node.int("status", None), field=node.str("field", None),
                      contains=node.str("contains", None))
    equals = node.get("equals")
    if equals is not None and equals.value is not None:
        if success.field is None:
            raise equals.error("`equals:` compares the value of `field:`; give `field:`")
        success.equals = str(equals.value)
    return success


# --- loading --------------------------------------------------------------------------------

def _profile_file(name_or_path: str | Path) -> tuple[str, Path, str]:
    """(name, file, how errors name it: `devices/NAME.yaml` for a shipped profile, as profile.py does)."""
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or "/" in text or text.endswith((".yaml", ".yml")):
        return Path(text).stem, Path(text), text
    if not _NAME.fullmatch(text):
        raise ConfigError(text, None, None, "not a profile name or a path to a .yaml file")
    try:
        folder = resources.files("harness.devices")
    except ModuleNotFoundError:
        folder = Path(__file__).resolve().parents[2] / "devices"
    candidate = folder.joinpath(f"{text}.yaml")
    if not candidate.is_file():
        known = sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))
        raise ConfigError(text, None, None, f"no profile of that name (known: {', '.join(known) or 'none'})")
    return text, Path(str(candidate)), f"devices/{text}.yaml"


def load_virtual(name_or_path: str | Path) -> VirtualSpec:
    """The virtual phone of a profile (a name in devices/ or a path); ConfigError if it has none."""
    name, path, source = _profile_file(name_or_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(source, None, None, "no such profile file") from None
    except OSError as exc:
        raise ConfigError(source, None, None, f"cannot read: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(source, None, None, "not UTF-8 text") from None
    root = parse_yaml(text, source)
    section = root.mapping().get("virtual")
    if section is None or section.value is None:
        raise ConfigError(source, None, None, "this profile has no `virtual:` section (it is not a virtual phone)")
    return parse_virtual(section, name)
