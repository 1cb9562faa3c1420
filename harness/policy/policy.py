"""Policy: which contacts, destinations and installed packages are findings for a device's market.

  * `unapproved-activation-client`: a DNS lookup of a catalog host (an attempted contact), or a
    flow to a catalog host or address (a contact; a hard-coded 42.99.2.15 counts without any
    name), unless the profile approves that catalog entry or host. No profile: none approved.
  * `unapproved-country`: with the profile's `countries:` rule, a destination in a denied country
    (or, with `allow:`, outside the allowed ones, an unknown country included: fail closed).
  * `activation-package-installed`: a catalog client's Android package on the build, unless the
    profile approves that catalog entry (the device layer lists packages and calls
    `audit_packages`).
The analyzer gathers lookups and destinations from the capture; policy decides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from harness.analyzer.model import Encoding, Finding, Flow, Rule
from harness.policy.catalog import Catalog, Client, load_catalog
from harness.policy.geoip import CountryDatabase, is_public
from harness.profile import CountryRule, Profile

# how the analyzer learnt a flow's name -> the place in the traffic that said it
_HOW_LOCATION = {
    "tls-sni": Encoding.TLS_SNI, "http-host": Encoding.HTTP_HEADER, "coap-uri-host": Encoding.COAP_URI,
    "dns-answer": Encoding.DNS_ANSWER, "dns-query": Encoding.DNS_QNAME,
}


@dataclass(slots=True)
class Lookup:
    """A DNS name the phone asked for (or got an answer for) on `flow`."""

    name: str
    flow: Flow
    frame: int
    time: float | None
    how: str = "dns-query"  # or "dns-answer": the answer was captured, the question was not
    app: str | None = None


@dataclass(slots=True)
class Destination:
    """One flow as policy sees it: where it went and every name it is known by."""

    flow: Flow
    frame: int
    time: float | None
    names: list[tuple[str, str]] = field(default_factory=list)  # (host, how), how the flow used it first
    host: str | None = None  # the name reports show for this flow
    app: str | None = None


def _not_approved(profile: Profile | None) -> str:
    return f"not approved for market {profile.market}" if profile else "no profile, so nothing is approved"


def _detail(client: Client, contact: str, matched_by: str, known_port: bool | None) -> dict[str, object]:
    detail: dict[str, object] = {"catalog": client.id, "carrier": client.carrier, "country": client.country,
                                 "source": client.source, "contact": contact, "matched_by": matched_by}
    if known_port is not None:
        detail["known_port"] = known_port
    return detail


def _approved(profile: Profile | None, client: Client, host: str | None, port: int | None,
              proto: str | None) -> bool:
    return profile is not None and profile.approves(client.id, host, port, proto)


def activation_findings(catalog: Catalog, profile: Profile | None, lookups: Iterable[Lookup],
                        destinations: Iterable[Destination]) -> list[Finding]:
    """Lookups of and flows to catalog endpoints that the profile does not approve."""
    findings: list[Finding] = []
    seen_lookups: set[tuple[Flow, str]] = set()
    for lookup in lookups:
        client = catalog.by_host(lookup.name)
        if client is None or _approved(profile, client, lookup.name, None, None):
            continue
        if (lookup.flow, lookup.name) in seen_lookups:  # one finding per lookup flow and name
            continue
        seen_lookups.add((lookup.flow, lookup.name))
        what = "DNS lookup" if lookup.how == "dns-query" else "DNS answer"
        findings.append(Finding(
            rule=Rule.UNAPPROVED_ACTIVATION_CLIENT, identifier=None, slot=None, host=lookup.name,
            dst=lookup.flow.dst, dport=lookup.flow.dport, proto=lookup.flow.proto, frames=[lookup.frame],
            encoding=[_HOW_LOCATION[lookup.how]], time=lookup.time,
            evidence=f"{what} of {lookup.name}: {client.describe()}, {_not_approved(profile)}",
            src=lookup.flow.src, sport=lookup.flow.sport, app=lookup.app,
            detail=_detail(client, "attempted", lookup.how, None)))
    for dest in destinations:
        flow = dest.flow
        match = _match(catalog, dest)
        if match is None:
            continue
        client, name, how = match
        names: list[str | None] = [name] if name else [n for n, _ in dest.names] or [None]
        if any(_approved(profile, client, n, flow.dport, flow.proto) for n in names):
            continue
        host = name or dest.host
        where = f"{host} ({flow.dst})" if host and host != flow.dst else flow.dst
        findings.append(Finding(
            rule=Rule.UNAPPROVED_ACTIVATION_CLIENT, identifier=None, slot=None, host=host, dst=flow.dst,
            dport=flow.dport, proto=flow.proto, frames=[dest.frame],
            encoding=[_HOW_LOCATION[how]] if how in _HOW_LOCATION else [], time=dest.time,
            evidence=f"{flow.proto} connection to {where}:{flow.dport}: {client.describe()}, "
                     f"{_not_approved(profile)}",
            src=flow.src, sport=flow.sport, app=dest.app,
            detail=_detail(client, "connection", how, client.port_known(flow.proto, flow.dport))))
    return findings


def _match(catalog: Catalog, dest: Destination) -> tuple[Client, str | None, str] | None:
    """The catalog entry a flow reached, the name that says so (None: by address) and how."""
    for name, how in dest.names:
        client = catalog.by_host(name)
        if client is not None:
            return client, name, how
    client = catalog.by_address(dest.flow.dst)
    return (client, None, "address") if client is not None else None


def country_findings(rule: CountryRule, database: CountryDatabase, profile: Profile,
                     destinations: Iterable[Destination]) -> list[Finding]:
    """One finding per destination (address, port, protocol) the country rule forbids."""
    grouped: dict[tuple[str, int, str], Finding] = {}
    listed = ", ".join(sorted(rule.countries))
    for dest in destinations:
        flow = dest.flow
        if not is_public(flow.dst):
            continue
        country = database.country(flow.dst)
        if rule.mode == "deny":
            if country not in rule.countries:
                continue
            why = f"in {country}, denied for market {profile.market} (deny: {listed})"
        else:
            if country in rule.countries:
                continue
            why = (f"in {country}" if country else "in an unknown country") + \
                f", outside those allowed for market {profile.market} (allow: {listed})"
        key = (flow.dst, flow.dport, flow.proto)
        found = grouped.get(key)
        if found is not None:
            found.frames.append(dest.frame)
            continue
        where = f"{dest.host} ({flow.dst})" if dest.host else flow.dst
        grouped[key] = Finding(
            rule=Rule.UNAPPROVED_COUNTRY, identifier=None, slot=None, host=dest.host, dst=flow.dst,
            dport=flow.dport, proto=flow.proto, frames=[dest.frame], encoding=[], time=dest.time,
            evidence=f"{flow.proto} connection to {where}:{flow.dport} {why}", src=flow.src, sport=flow.sport,
            app=dest.app, detail={"country": country, "country_rule": rule.mode, "countries": sorted(rule.countries),
                                  "database": str(rule.database)})
    for finding in grouped.values():
        finding.frames.sort()
    return list(grouped.values())


def audit_packages(installed: Mapping[str, str], profile: Profile | None,
                   catalog: Catalog | None = None) -> list[Finding]:
    """Findings for installed packages (name -> version) that implement an unapproved catalog client."""
    catalog = catalog or load_catalog()
    findings = []
    for package in sorted(installed):
        client = catalog.by_package(package)
        if client is None or (profile is not None and profile.approves(client.id)):
            continue
        version = installed[package]
        shown = f"{package} {version}" if version else package
        findings.append(Finding(
            rule=Rule.ACTIVATION_PACKAGE_INSTALLED, identifier=None, slot=None, host=None, dst=None, dport=None,
            proto=None, frames=[], encoding=[], time=None,
            evidence=f"{shown} is installed: {client.describe()}, {_not_approved(profile)}",
            detail={"package": package, "version": version or None, "catalog": client.id, "carrier": client.carrier,
                    "country": client.country, "source": client.source}))
    return findings
