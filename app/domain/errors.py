"""The project's own exceptions, one tree. Each boundary maps it once: the CLI to an exit code
(``exit_code``), the console to a notification, the store from SQLAlchemy's errors (as httpx
maps httpcore's). Backend failures are ``integrations.base.BackendError`` (integrations never
import app); the lifecycle turns them into outcomes or ``Refused`` where a person asked."""
from __future__ import annotations


class JitError(Exception):
    """Any error of the product's own; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class Refused(JitError):
    """A rule refused the action. ``rule`` names the check or rule, ``message`` says why."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(f"{rule}: {message}")
        self.rule = rule
        self.message = message


class BadInput(Refused):
    """What was typed cannot be used: ``rule`` is the field, ``message`` the reason. Nothing was
    written. (Exit 1 like any refusal; HTTP 422 naming the field.)"""

    @property
    def field(self) -> str:
        return self.rule


class NotFound(Refused):
    exit_code = 3


class Conflict(Refused):
    """Someone else changed the request first; nothing was done."""

    exit_code = 4


class StoreError(JitError):
    """The database is unreachable or refused an operation."""

    exit_code = 5


class ConfigError(JitError):
    """The configuration is unusable; ``problems`` holds one ``key.path: reason`` each."""

    exit_code = 2

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class IdentityError(JitError):
    """Who is acting cannot be established."""

    exit_code = 2
