"""LDAP / Active Directory: group membership grants, and people and groups read back.

The package's modules:

``backend``
    ``LdapBackend``: a grant is the person's membership of one group (its docstring
    covers AD TTL memberships, last members and the security rules), and the
    connection handling that keeps every ldap3 exception inside the package.
``directory``
    ``LdapDirectory``: whose groups, which members, which people, cached.
``dn``
    ``dn_error``, ``dn_key`` and ``dn_under``: checking and comparing DNs.
``results``
    The LDAP result codes the backend reacts to.

Every name below stays importable from ``integrations.ldap``.
"""
from __future__ import annotations

from integrations.ldap.backend import PERSON_RE, LdapBackend, T
from integrations.ldap.directory import LdapDirectory
from integrations.ldap.dn import dn_error, dn_key, dn_under
from integrations.ldap.results import (
    ATTRIBUTE_OR_VALUE_EXISTS,
    BUSY,
    COMPARE_FALSE,
    COMPARE_TRUE,
    ENTRY_ALREADY_EXISTS,
    INVALID_DN_SYNTAX,
    NO_SUCH_ATTRIBUTE,
    NO_SUCH_OBJECT,
    OBJECT_CLASS_VIOLATION,
    SUCCESS,
    TIME_LIMIT_EXCEEDED,
    TRANSIENT_CODES,
    UNAVAILABLE,
    UNWILLING_TO_PERFORM,
)
