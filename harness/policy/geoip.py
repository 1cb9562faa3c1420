"""Destination country of an IP address, offline: the shipped database or the user's .mmdb.

Nothing is downloaded at run time. The shipped database is the `iptocc` package (a dependency):
the five Regional Internet Registries' delegation files compiled into its wheel (no file or
network access when looking up), IPv4 and IPv6, refreshed with each release. It gives the
country each block is *registered* to, which is what a market rule asks ("does the phone talk
to a Chinese network?"); it agrees with MaxMind for ~95 % of IPv4 addresses. A profile's
`countries: database:` names a MaxMind-format .mmdb instead: GeoLite2-Country or
GeoIP2-Country, DB-IP "IP to Country Lite" (CC BY 4.0), IPinfo's country databases... A
distribution of phonehome may also ship one as `harness/policy/Country.mmdb`; it is then the
default. Records are read as MaxMind lays them out (`country.iso_code`, then
`registered_country.iso_code`) or as IPinfo does (`country_code`, or `country` as a string).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import maxminddb

from harness.errors import ConfigError

SHIPPED_NAME = "Country.mmdb"
# what a rule's `database` is when it uses the iptocc package (a relative path: a profile's own
# `database:` is always made absolute, so it can never be mistaken for this)
BUILTIN = Path("builtin:iptocc")


def _iptocc_version() -> str | None:
    try:
        return version("iptocc")
    except PackageNotFoundError:
        return None


def shipped_database() -> Path | None:
    """The database used when a rule names none: a `Country.mmdb` a distribution shipped inside
    the package, else the iptocc package (`BUILTIN`), else None (neither is installed)."""
    candidate = resources.files("harness.policy").joinpath(SHIPPED_NAME)
    if candidate.is_file():
        return Path(str(candidate))
    return BUILTIN if _iptocc_version() is not None else None


def is_public(address: str) -> bool:
    """Only globally routed unicast addresses have a country."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return ip.is_global and not ip.is_multicast


def _iso(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    for key in ("country", "registered_country"):
        value = record.get(key)
        if isinstance(value, dict) and isinstance(value.get("iso_code"), str):
            return str(value["iso_code"]).upper()
        if isinstance(value, str) and len(value) == 2:
            return value.upper()
    code = record.get("country_code")
    return code.upper() if isinstance(code, str) and len(code) == 2 else None


class CountryDatabase:
    """Lookups in one .mmdb file, or in iptocc's (`path` is `BUILTIN`); `where` (file, line,
    field) says where the profile asked for it."""

    def __init__(self, path: Path, where: tuple[str, int | None, str | None]) -> None:
        self.path = path
        source, line, field = where
        self._reader: Any = None
        self._lookup: Callable[[str], str | None] | None = None
        if path == BUILTIN:
            try:
                from iptocc import country_code
            except ImportError:
                raise ConfigError(source, line, field, "the built-in country database (the iptocc package) is "
                                  "not installed: `pip install iptocc`, or name a .mmdb in `database:`") from None
            self._lookup = country_code
            self.description = f"iptocc {_iptocc_version()} (RIR delegations)"
            return
        try:
            self._reader = maxminddb.open_database(str(path))
        except FileNotFoundError:
            raise ConfigError(source, line, field, f"country database {path} does not exist") from None
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            raise ConfigError(source, line, field, f"cannot read country database {path}: {exc}") from None
        self.description = str(self._reader.metadata().database_type)

    def country(self, address: str) -> str | None:
        """ISO code of `address`, or None (private, unknown, or not in this database)."""
        if not is_public(address):
            return None
        if self._lookup is not None:
            try:
                code = self._lookup(address)
            except ValueError:
                return None
            return code.upper() if isinstance(code, str) and len(code) == 2 else None
        try:
            return _iso(self._reader.get(address))
        except (ValueError, maxminddb.InvalidDatabaseError):  # an IPv6 lookup in an IPv4-only file
            return None

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
