"""Distinguished names: checking them (``dn_error``), comparing them (``dn_key``, ``dn_under``).

``dn_error`` is stricter than ldap3's ``safe_dn``: no extended DNs, no UPNs, no control
characters, no filter metacharacters. ``_required_dn`` turns a refusal into the
``ValueError`` of a setting. ``_has_control_chars`` is the control character test, also
applied to URIs and group names.
"""
from __future__ import annotations

import unicodedata
from typing import Any

from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn, safe_dn


def _has_control_chars(value: str) -> bool:
    """C0 and C1 controls (NEL U+0085 included) and the Unicode line and paragraph separators."""
    return any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in value)


def dn_error(value: Any) -> str | None:
    """Why ``value`` is not an acceptable DN, or None. Stricter than ``safe_dn``: no extended DNs
    (``<GUID=...>``), no UPNs, no control characters, no filter metacharacters."""
    if not isinstance(value, str):
        return "must be a string"
    if not value.strip():
        return "must not be empty"
    if _has_control_chars(value):
        return "must not contain newlines or control characters"
    if value.startswith("<"):
        return "extended DNs (<GUID=...>, <SID=...>) are not accepted"
    for char in "()*":
        if char in value:
            return "must not contain '(', ')' or '*'"
    try:
        parse_dn(value)
        safe_dn(value)
    except LDAPInvalidDnError as exc:
        return f"{value!r} is not a valid DN ({exc})"
    return None


def dn_key(dn: str) -> tuple[tuple[str, str], ...]:
    """A comparison key for a DN: attribute types and values lowercased, spaces around them
    stripped. Falls back to the lowercased string for values ``parse_dn`` cannot read."""
    try:
        # only ASCII spaces are insignificant in a DN (RFC 4514); str.strip() would also drop U+0085,
        # U+00A0 or U+3000 and make 'dc=example\x85' look like 'dc=example'
        return tuple((a.strip(" ").lower(), v.strip(" ").lower()) for a, v, _ in parse_dn(dn))
    except LDAPInvalidDnError:
        return (("", dn.strip().lower()),)


def dn_under(dn: str, base: str, *, strictly: bool = False) -> bool:
    """True when ``dn`` lies in the subtree of ``base`` (strictly below it when asked)."""
    d, b = dn_key(dn), dn_key(base)
    if len(d) < len(b) or (strictly and len(d) == len(b)):
        return False
    return d[len(d) - len(b):] == b


def _required_dn(what: str, value: Any) -> str:
    err = dn_error(value)
    if err is not None:
        raise ValueError(f"{what}: {err}")
    return value
