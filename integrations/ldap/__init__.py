"""LDAP / Active Directory backend and directory; see ``backend``."""
from __future__ import annotations

from integrations.ldap.backend import (  # noqa: F401
    ATTRIBUTE_OR_VALUE_EXISTS,
    BUSY,
    COMPARE_FALSE,
    COMPARE_TRUE,
    dn_error,
    dn_key,
    dn_under,
    ENTRY_ALREADY_EXISTS,
    INVALID_DN_SYNTAX,
    LdapBackend,
    LdapDirectory,
    NO_SUCH_ATTRIBUTE,
    NO_SUCH_OBJECT,
    OBJECT_CLASS_VIOLATION,
    PERSON_RE,
    SUCCESS,
    T,
    TIME_LIMIT_EXCEEDED,
    TRANSIENT_CODES,
    UNAVAILABLE,
    UNWILLING_TO_PERFORM,
)
