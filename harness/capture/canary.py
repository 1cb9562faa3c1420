"""The canary: the phone sends a fresh random marker that a working capture must contain.

A capture that saw nothing of the phone looks exactly like a phone that sent nothing. So before
a capture stops, the phone itself sends a marker nobody could have predicted; the analyzer (which
alone reads packets, `analyze(..., canary=MARKER)`) looks for it and a capture without it is
`unverified`, never clean.

Two ways, both real traffic from the phone's own network stack:

* `dns` (default): `ping -c 1 <marker>.canary.phonehome.test`; the resolver's query carries the
  marker as one label. No server needs to exist (the name does not resolve; the query is what
  counts). With Private DNS on, the query may travel as DNS-over-TLS and the marker is
  invisible: the mode is read and recorded, and a warning says so.
* `http`: `GET /phonehome-canary/<marker>` to an endpoint of the test network through the
  phone's `nc` (toybox); use it where DNS cannot work.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from harness.capture.base import Shell
from harness.device.adb import sh_quote
from harness.errors import PhonehomeError

CANARY_DOMAIN = "canary.phonehome.test"
_SEP = "PHONEHOME-CANARY-SEP"
ENCRYPTED_DNS = frozenset({"opportunistic", "hostname"})


@dataclass(slots=True)
class Canary:
    """One marker the phone was asked to send, and what could stop it from being seen."""

    marker: str
    method: str  # "dns" | "http"
    target: str  # the DNS name looked up, or the URL fetched
    sent: float  # host time the command ran
    exit_code: int | None
    private_dns: str  # private_dns_mode as read: off, opportunistic, hostname, unset, unknown
    warning: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def new_marker() -> str:
    """Lowercase letters and digits only: one valid DNS label, unchanged by case-folding resolvers."""
    return "ph" + secrets.token_hex(10)


def canary_name(marker: str, domain: str = CANARY_DOMAIN) -> str:
    return f"{marker}.{domain}"


def private_dns_warning(mode: str) -> str | None:
    if mode in ENCRYPTED_DNS:
        return (f"Private DNS is {mode}: the DNS canary may travel as DNS-over-TLS and stay invisible; turn Private "
                "DNS off or use an HTTP canary")
    if mode == "unset":
        return "Private DNS is unset (opportunistic from Android 9): the DNS canary may travel as DNS-over-TLS"
    return None


def send_canary(shell: Shell, *, method: str = "dns", domain: str = CANARY_DOMAIN, url: str | None = None,
                marker: str | None = None, timeout: float = 30.0) -> Canary:
    """Make the phone send a fresh marker; returns what was sent (give `.marker` to the analyzer).

    The command's own exit code is recorded but proves nothing: an unresolvable name is the
    normal case for `dns`. Only the analyzer, finding the marker in the capture, proves it.
    """
    marker = marker or new_marker()
    if method == "dns":
        target = canary_name(marker, domain)
        command = f"ping -c 1 -W 2 {sh_quote(target)} >/dev/null 2>&1"
    elif method == "http":
        if not url:
            raise PhonehomeError("the http canary needs a url (http://HOST[:PORT]/ on the test network)")
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise PhonehomeError(f"canary url {url!r}: expected http://HOST[:PORT]/")
        host, port = parts.hostname, parts.port or 80
        path = f"{parts.path.rstrip('/')}/phonehome-canary/{marker}"
        target = f"http://{host}:{port}{path}"
        request = f"GET {path} HTTP/1.0\\r\\nHost: {host}\\r\\nUser-Agent: phonehome-canary\\r\\n\\r\\n"
        command = f"printf {sh_quote(request)} | nc -w 3 {sh_quote(host)} {port} >/dev/null 2>&1"
    else:
        raise PhonehomeError(f"unknown canary method {method!r} (dns or http)")
    sent = time.time()
    result = shell.script(f"settings get global private_dns_mode 2>/dev/null; echo {_SEP}; {command}; echo $?",
                          timeout)
    mode_text, _, rest = result.stdout.partition(_SEP)
    mode = mode_text.strip() or "unknown"
    mode = "unset" if mode == "null" else mode
    code_text = rest.strip().splitlines()[-1:] if rest.strip() else []
    exit_code = int(code_text[0]) if code_text and code_text[0].isdigit() else None
    warning = private_dns_warning(mode) if method == "dns" else None
    return Canary(marker, method, target, sent, exit_code, mode, warning)
