"""``LdapDirectory``: people and groups read from LDAP / AD through an ``LdapBackend``.

It shares the backend's settings, connection and error handling (every search runs
inside the backend's ``_run``, so no ldap3 exception escapes here either).
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, TypeVar

from ldap3 import Connection
from ldap3.utils.conv import escape_filter_chars

from integrations.base import BackendError
from integrations.ldap.backend import _ATTR_RE, PERSON_RE, LdapBackend, _values
from integrations.ldap.dn import _has_control_chars, _required_dn

T = TypeVar("T")


class LdapDirectory:
    """People and groups read from LDAP / AD, for identity and eligibility checks.

    Shares ``backend``'s settings and connection. ``groups_of`` names (``group_name_attr``) the
    groups under ``group_base`` whose ``member`` holds the person's DN (direct membership); a person
    who resolves to no entry or to several has no groups. ``members_of`` resolves a group name to
    the ``user_attr`` values of its members that are user entries (a name matching several groups
    is an error). ``people`` lists the ``user_attr`` values that name exactly one user entry.
    Answers are cached for ``cache_ttl`` seconds of ``clock`` (monotonic). An outage raises a
    transient ``BackendError``."""

    def __init__(
        self,
        backend: LdapBackend,
        *,
        group_base: str | None = None,
        group_name_attr: str = "cn",
        cache_ttl: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(backend, LdapBackend):
            raise ValueError("backend must be an LdapBackend")
        base = group_base if group_base is not None else backend.group_base
        if base is None:
            raise ValueError("group_base is required (here or on the backend)")
        self.group_base = _required_dn("group_base", base)
        if not isinstance(group_name_attr, str) or not _ATTR_RE.fullmatch(group_name_attr):
            raise ValueError("group_name_attr must be an attribute name ([A-Za-z][A-Za-z0-9-]*)")
        if isinstance(cache_ttl, bool) or not isinstance(cache_ttl, (int, float)) or cache_ttl < 0:
            raise ValueError("cache_ttl must be a non-negative number of seconds")
        if not callable(clock):
            raise ValueError("clock must be callable")
        self.backend = backend
        self.group_name_attr = group_name_attr
        self.cache_ttl = float(cache_ttl)
        self._clock = clock
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}
        self._cache_lock = threading.Lock()

    def groups_of(self, person: str) -> frozenset[str]:
        if not isinstance(person, str) or not PERSON_RE.fullmatch(person):
            return frozenset()
        return self._cached(("groups_of", person), lambda: self._groups_of(person))

    def members_of(self, group: str) -> list[str]:
        if not isinstance(group, str) or not group or _has_control_chars(group):
            return []
        return list(self._cached(("members_of", group), lambda: self._members_of(group)))

    def people(self) -> list[str]:
        return list(self._cached(("people", ""), self._people))

    def invalidate(self) -> None:
        """Forget every cached answer."""
        with self._cache_lock:
            self._cache.clear()

    # -- helpers -----------------------------------------------------------

    def _cached(self, key: tuple[str, str], load: Callable[[], T]) -> T:
        now = self._clock()
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None and now < hit[0]:
                return hit[1]
        value = load()
        if self.cache_ttl > 0:
            with self._cache_lock:
                self._cache[key] = (now + self.cache_ttl, value)
        return value

    def _groups_of(self, person: str) -> frozenset[str]:
        b = self.backend

        def op(conn: Connection) -> frozenset[str]:
            users = b._find_users(conn, person)
            if len(users) != 1:
                return frozenset()
            flt = f"(member={escape_filter_chars(users[0])})"
            entries = b._search(conn, self.group_base, flt, [self.group_name_attr], what="group_base")
            return frozenset(v for _, attrs in entries for v in _values(attrs, self.group_name_attr)[:1])

        return b._run(f"groups of {person}", op)

    def _members_of(self, group: str) -> tuple[str, ...]:
        b = self.backend

        def op(conn: Connection) -> tuple[str, ...]:
            flt = f"({self.group_name_attr}={escape_filter_chars(group)})"
            entries = b._search(conn, self.group_base, flt, ["member"], what="group_base")
            if not entries:
                return ()
            if len(entries) > 1:
                raise BackendError(f"group name {group!r} matches {len(entries)} entries under "
                                   f"{self.group_base}: {', '.join(dn for dn, _ in entries)}")
            people = {b._person_of(conn, m) for m in _values(entries[0][1], "member")}
            return tuple(sorted(p for p in people if p is not None))

        return b._run(f"members of {group}", op)

    def _people(self) -> tuple[str, ...]:
        b = self.backend

        def op(conn: Connection) -> tuple[str, ...]:
            flt = f"(objectClass={escape_filter_chars(b.user_object_class)})"
            counts: dict[str, int] = {}
            for _, attrs in b._search(conn, b.user_base, flt, [b.user_attr], what="user_base"):
                for value in set(_values(attrs, b.user_attr)):
                    counts[value] = counts.get(value, 0) + 1
            return tuple(sorted(p for p, n in counts.items() if n == 1 and PERSON_RE.fullmatch(p)))

        return b._run("list people", op)
