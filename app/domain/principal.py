"""Who is acting and how that was proven, for the audit.

The server authenticates each call (the kernel's peer uid, a client certificate, an OIDC token)
and runs the use-case inside ``acting(principal)``; every audit event that person's action
writes then records ``authenticated`` (``peer-uid:1001``, ``cert:<sha256>``, ``oidc:<iss>/<sub>``).
A context variable rather than one more argument on every use-case: the lifecycle's callers
that are not a person (the engine, the sync) simply have none."""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Principal:
    person: str
    how: str  # e.g. "peer-uid:1001"; in dev mode "dev:JIT_USER by peer-uid:1000"


AGENT = "agent:"  # a host's ``jit agent`` acts as "agent:<host>", never as a person


def agent_host(principal: Principal) -> str | None:
    """The host a principal is the agent of, or None for a person."""
    return principal.person[len(AGENT):] if principal.person.startswith(AGENT) else None


_ACTING: ContextVar[Principal | None] = ContextVar("jit_acting", default=None)


@contextmanager
def acting(principal: Principal) -> Iterator[Principal]:
    token = _ACTING.set(principal)
    try:
        yield principal
    finally:
        _ACTING.reset(token)


def authenticated(actor: str) -> str | None:
    """How ``actor`` was authenticated, when ``actor`` is the person acting now; else None."""
    p = _ACTING.get()
    return p.how if p is not None and p.person == actor else None
