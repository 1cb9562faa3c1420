"""`--guess`: identifier-shaped values when the phone's identifiers are unknown (field captures).

Only shapes that are unlikely by chance are reported, and always marked as guesses:
  * IMEI: exactly 15 digits (not part of a longer number), Luhn-valid, starting with a GSMA
    reporting-body prefix (35, 86, 01...): about 1 in 600 random 15-digit numbers passes both.
  * ICCID: 19 or 20 digits (optionally a trailing F), starting 89 (telecom), Luhn-valid.
  * MAC: six octets with one consistent `:`/`-` separator given as a *value* (after `=`, `:` or
    `>`, as in key=value, JSON, headers, XML), or 12 hex digits right after a key naming a MAC
    (`mac`, `bssid`, `addr`). All-zero, broadcast and Android's `02:00:00:00:00:00` placeholder
    are not identifiers. `bt`/`bluetooth` in the key makes it a Bluetooth MAC.
Guesses run on every decoded layer too, so a Base64 body of JSON is covered.
"""

from __future__ import annotations

import re

from harness.analyzer.matcher import Trigger, luhn_ok
from harness.identifiers import Kind

# GSMA reporting body identifiers: the first two digits of every allocated TAC
IMEI_PREFIXES = frozenset({"01", "10", "30", "33", "35", "44", "45", "49", "50", "51", "52", "53", "54",
                           "86", "91", "98", "99"})
_NOT_MACS = frozenset({"000000000000", "ffffffffffff", "020000000000"})
_HEX = frozenset(b"0123456789abcdefABCDEF")
_BT_KEY = re.compile(rb"bt|bluetooth|bdaddr", re.IGNORECASE)
_VALUE_CONTEXT = re.compile(rb"[=:>][ \t\"']{0,3}$")

Guess = tuple[str, int, int, str]  # kind, start, end, value


def check_digits(buf: bytes, start: int, end: int) -> list[Guess]:
    """An IMEI or ICCID guess for the digit run buf[start:end] (15+ digits), if it is one."""
    digits = buf[start:end].decode()
    if len(digits) == 15 and digits[:2] in IMEI_PREFIXES and luhn_ok(digits):
        return [(Kind.IMEI.value, start, end, digits)]
    if len(digits) in (19, 20) and digits.startswith("89") and luhn_ok(digits):
        stop = end + 1 if buf[end : end + 1] in (b"F", b"f") else end
        return [(Kind.ICCID.value, start, stop, digits)]
    return []


def check_mac(trig: Trigger, buf: bytes, end: int) -> Guess | None:
    """The MAC guess a trigger ending at `end` stands for, or None when the shape is no MAC."""
    if trig is Trigger.GUESS_MAC:
        start = end - 17
        text = buf[start:end]
        seps = {text[i] for i in range(2, 17, 3)}
        if len(seps) != 1 or _longer(buf, end, seps.pop()):
            return None
        if not _VALUE_CONTEXT.search(buf, max(0, start - 8), start):
            return None
        return _mac(buf, start, end, text)
    if trig is Trigger.GUESS_MAC_KEYED:
        start = end - 12
        if buf[end] in _HEX or buf[start - 1] in _HEX:
            return None
        return _mac(buf, start, end, buf[start:end])
    return None


def _longer(buf: bytes, end: int, sep: int) -> bool:
    """The six octets continue (an IPv6 address, a longer hex dump): not a MAC."""
    return buf[end] == sep and buf[end + 1] in _HEX


def _mac(buf: bytes, start: int, end: int, text: bytes) -> Guess | None:
    value = text.decode()
    hexdigits = re.sub(r"[^0-9a-fA-F]", "", value).lower()
    if hexdigits in _NOT_MACS:
        return None
    kind = Kind.BT_MAC if _BT_KEY.search(buf, max(0, start - 48), start) else Kind.WIFI_MAC
    return kind.value, start, end, value
