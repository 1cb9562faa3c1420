"""Destination country of an IP address, from an offline MaxMind-format (.mmdb) database.

Nothing is downloaded at run time. No maintained package on PyPI ships an IP-to-country
database under a license we can depend on, so the user names one: MaxMind GeoLite2-Country or
GeoIP2-Country, DB-IP "IP to Country Lite" (CC BY 4.0), IPinfo's country databases... A
distribution of phonehome may also ship one as `harness/policy/Country.mmdb`; it is then the
default. Records are read as MaxMind lays them out (`country.iso_code`, then
`registered_country.iso_code`) or as IPinfo does (`country_code`, or `country` as a string).
"""

from __future__ import annotations

import ipaddress
from importlib import resources
from pathlib import Path
from typing import Any

import maxminddb

from harness.errors import ConfigError

SHIPPED_NAME = "Country.mmdb"


def shipped_database() -> Path | None:
    """The database a distribution shipped inside the package, if any."""
    candidate = resources.files("harness.policy").joinpath(SHIPPED_NAME)
    return Path(str(candidate)) if candidate.is_file() else None


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
    """Lookups in one .mmdb file; `path`, `line`, `field` say where the profile named it."""

    def __init__(self, path: Path, where: tuple[str, int | None, str | None]) -> None:
        self.path = path
        source, line, field = where
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
        try:
            return _iso(self._reader.get(address))
        except (ValueError, maxminddb.InvalidDatabaseError):  # an IPv6 lookup in an IPv4-only file
            return None

    def close(self) -> None:
        self._reader.close()
