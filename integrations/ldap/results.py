"""The LDAP result codes (RFC 4511) the LDAP backend reacts to, and which of them are transient."""
from __future__ import annotations

SUCCESS = 0
TIME_LIMIT_EXCEEDED = 3
COMPARE_FALSE = 5
COMPARE_TRUE = 6
NO_SUCH_ATTRIBUTE = 16
ATTRIBUTE_OR_VALUE_EXISTS = 20
NO_SUCH_OBJECT = 32
INVALID_DN_SYNTAX = 34
BUSY = 51
UNAVAILABLE = 52
UNWILLING_TO_PERFORM = 53
OBJECT_CLASS_VIOLATION = 65
ENTRY_ALREADY_EXISTS = 68  # AD's answer to adding a member that is already there
TRANSIENT_CODES = frozenset({TIME_LIMIT_EXCEEDED, BUSY, UNAVAILABLE})
