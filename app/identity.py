"""Who is acting, and which groups they are in."""
from __future__ import annotations

import os
import pwd
import re
from typing import Mapping, Protocol

from app.config import Config
from app.domain.errors import IdentityError
from policies.names import PERSON


def account_name(uid: int) -> str:
    """The account database's name for ``uid``: who the kernel says runs a process (or, for the
    server to come, holds the other end of a Unix socket). Never ``$LOGNAME`` or ``$USER``, which
    anyone sets (``getpass.getuser()`` believes them first)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise IdentityError(f"uid {uid} has no entry in the account database") from None


def acting_user(config: Config, environ: Mapping[str, str]) -> str:
    """The OS account running ``jit`` (its real uid, from the kernel); ``JIT_USER`` only where the
    config allows impersonation (the sandbox)."""
    override = environ.get("JIT_USER")
    if override:
        if not config.settings.identity.allow_impersonation:
            raise IdentityError("JIT_USER is set but [identity] allow_impersonation is false in "
                                f"{config.source}; refusing to act as another person")
        person = override
    else:
        person = account_name(os.getuid())
    if not re.fullmatch(PERSON, person):
        raise IdentityError(f"user name {person!r} is not a valid account name")
    return person


class Directory(Protocol):
    """Where people's groups come from: the static table or LDAP/AD (integrations.ldap.LdapDirectory)."""

    def groups_of(self, person: str) -> frozenset[str]: ...

    def members_of(self, group: str) -> list[str]: ...

    def people(self) -> list[str]: ...


class StaticDirectory:
    """People and groups written in the config (the sandbox's directory)."""

    def __init__(self, people: Mapping[str, frozenset[str]]) -> None:
        self._people = {p: frozenset(g) for p, g in people.items()}

    @classmethod
    def from_config(cls, config: Config) -> "StaticDirectory":
        return cls({name: frozenset(p.groups) for name, p in config.settings.directory.people.items()})

    def groups_of(self, person: str) -> frozenset[str]:
        return self._people.get(person, frozenset())

    def members_of(self, group: str) -> list[str]:
        return sorted(p for p, groups in self._people.items() if group in groups)

    def people(self) -> list[str]:
        return sorted(self._people)
