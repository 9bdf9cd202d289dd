"""Who is acting, and which groups they are in."""
from __future__ import annotations

import pwd
from typing import TYPE_CHECKING, Mapping, Protocol

from app.domain.errors import IdentityError

if TYPE_CHECKING:
    from app.config import Config


def account_name(uid: int) -> str:
    """The account database's name for ``uid``: who the kernel says runs a process (or, for the
    server, holds the other end of a Unix socket). Never ``$LOGNAME`` or ``$USER``, which
    anyone sets (``getpass.getuser()`` believes them first)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        raise IdentityError(f"uid {uid} has no entry in the account database") from None


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
