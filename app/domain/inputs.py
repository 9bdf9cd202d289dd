"""Checks of what people type, before anything is decided or written: each raises ``Refused``
naming the field and the reason. The identifier patterns themselves live in ``policies/names.py``."""
from __future__ import annotations

import re

from app.domain.errors import BadInput
from policies.names import NAME, PERSON, TARGET

PERSON_RE = re.compile(PERSON)
TARGET_RE = re.compile(TARGET)
ROLE_RE = re.compile(NAME)
MAX_TEXT = 2000
MAX_ID = 2**31 - 1  # request ids are INTEGER keys: PostgreSQL refuses to even compare a larger one
# Unicode's Cc (C0, DEL, C1) but tab, Zl, Zp, and the bidi embeddings, overrides and isolates
CONTROL_RE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
SURROGATE_RE = re.compile("[\ud800-\udfff]")  # Unicode's Cs


def check_text(field_name: str, value: str | None, *, required: bool, limit: int = MAX_TEXT) -> str | None:
    """The text stripped, or None when empty and not required; Refused when it cannot be stored or shown safely."""
    if value is None or not value.strip():
        if required:
            raise BadInput(field_name, "is required")
        return None
    if len(value) > limit:
        raise BadInput(field_name, f"is longer than {limit} characters")
    if CONTROL_RE.search(value):
        raise BadInput(field_name, "must not contain control characters, line breaks or bidi overrides")
    if SURROGATE_RE.search(value):  # undecodable bytes from argv; not storable as UTF-8
        raise BadInput(field_name, "must be valid Unicode text (it holds an unpaired surrogate)")
    return value.strip()


def check_person(field_name: str, person: str) -> None:
    if not PERSON_RE.fullmatch(person or ""):
        raise BadInput(field_name, f"{person!r} is not a valid account name")


def check_names(target: str, role: str) -> None:
    if not TARGET_RE.fullmatch(target or ""):
        raise BadInput("target", f"{target!r} is not a valid target name (letters, digits, '.' and '-')")
    if not ROLE_RE.fullmatch(role or ""):
        raise BadInput("role", f"{role!r} is not a valid role name (lower-case letters, digits and '-')")
