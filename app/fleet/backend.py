"""The ``agent`` backend: a sudo grant written by its host's own ``jit agent``.

The server does not touch the host. ``apply`` waits until every host the rule names reports the
grant's drop-in in place with the grant's end (``NOTAFTER``), so a grant becomes active only once
its hosts hold it; ``revoke`` waits until none of them reports it any more. The agents learn
what to hold from ``desired.py`` (a grant in 'applying' or 'active'), so neither call has to tell
them anything. A host that does not answer within ``wait`` seconds fails the apply (the request
fails, and the host removes the drop-in if it writes it later) or leaves the revocation to be
retried by the engine, with ``grant.revoke_failed`` in the audit, until the host reports it gone.
The rule's own ``NOTAFTER`` ends it on time meanwhile."""
from __future__ import annotations

from datetime import datetime
from typing import Sequence

from app.fleet.reports import HostReports, Report
from integrations.base import Artifact, BackendError, GrantSpec, InvalidGrant
from integrations.sudo import SudoRules, hosts_of, rule_of


def _second(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None  # sudoers times have whole seconds


class AgentBackend(SudoRules):
    name = "agent"

    def __init__(self, *, wait: float = 10.0) -> None:
        if not 0 < wait <= 50:
            raise ValueError("wait must be between 0 and 50 seconds (below the engine's lease)")
        self.wait = wait
        self.reports: HostReports | None = None  # attached by bootstrap once the store exists

    def attach(self, reports: HostReports) -> None:
        self.reports = reports

    # validate_role, role_warnings, describe, shared_key: SudoRules (the agent checks again on its host)

    # -- the protocol -----------------------------------------------------------------------------
    def apply(self, grant: GrantSpec) -> str:
        result = self.apply_many([grant])[0]
        if isinstance(result, BackendError):
            raise result
        return result

    def apply_many(self, grants: Sequence[GrantSpec]) -> list[str | BackendError]:
        """Wait (together, up to ``wait`` seconds) until each grant's hosts hold it; per grant its
        reference, or why not (a host refused it, or did not write it in time)."""
        results: list[str | BackendError | None] = [None] * len(grants)
        waiting: dict[int, list[str]] = {}
        for i, grant in enumerate(grants):
            try:
                rule_of(grant)
                waiting[i] = hosts_of(grant)
            except InvalidGrant as exc:
                results[i] = exc

        def settled() -> bool:
            for i in list(waiting):
                grant, hosts = grants[i], waiting[i]
                reports = [self._reports().of(h) for h in hosts]
                refused = [(h, r.refused[grant.grant_id]) for h, r in zip(hosts, reports)
                           if r is not None and grant.grant_id in r.refused]
                if refused:
                    host, why = refused[0]
                    results[i] = BackendError(f"host {host} refused grant {grant.grant_id}: {why}")
                    del waiting[i]
                elif all(_holds(r, grant) for r in reports):
                    results[i] = _ref(hosts, grant)
                    del waiting[i]
            return not waiting

        if not self._reports().wait_until(settled, self.wait):
            for i, hosts in waiting.items():
                late = [h for h in hosts if not _holds(self._reports().of(h), grants[i])]
                results[i] = BackendError(f"host {_seen(self._reports(), late[0])} has not written grant "
                                          f"{grants[i].grant_id} within {self.wait:g} s")
        return results  # type: ignore[return-value]  (every entry is set)

    def revoke(self, grant: GrantSpec) -> None:
        result = self.revoke_many([grant])[0]
        if result is not None:
            raise result

    def revoke_many(self, grants: Sequence[GrantSpec]) -> list[BackendError | None]:
        """Wait (together, up to ``wait`` seconds) until no host lists any of ``grants``; per grant
        None (gone everywhere) or why not. Expiry uses it for a batch: one silent host then costs
        the batch one ``wait``, not one per grant."""
        hosts = [_hosts_or_none(g) or [g.target.lower()] for g in grants]

        def gone() -> bool:
            return not any(_listed(self._reports().of(h), g) for g, hs in zip(grants, hosts) for h in hs)

        self._reports().wait_until(gone, self.wait)
        results: list[BackendError | None] = []
        for g, hs in zip(grants, hosts):
            still = [h for h in hs if _listed(self._reports().of(h), g)]
            results.append(BackendError(f"host {_seen(self._reports(), still[0])} still holds grant {g.grant_id} "
                                        f"after {self.wait:g} s (its NOTAFTER ends the rule all the same)")
                           if still else None)
        return results

    def inspect(self, grant: GrantSpec) -> Artifact | None:
        hosts = _hosts_or_none(grant) or [grant.target.lower()]
        holding = [(h, r.held[grant.grant_id]) for h in hosts if (r := self._reports().of(h)) is not None
                   and grant.grant_id in r.held]
        if not holding:
            return None
        if len(holding) < len(hosts):  # half there is missing where it matters: reconcile restores it
            return None
        held = holding[0][1]
        return Artifact(ref=_ref(hosts, grant), grant_id=grant.grant_id, person=held.person, target=grant.target,
                        role=grant.role, not_before=held.not_before, not_after=held.not_after,
                        details={"hosts": [h for h, _ in holding]})

    def list_managed(self) -> list[Artifact]:
        found = []
        for report in self._reports().all():
            for held in report.held.values():
                found.append(Artifact(ref=f"agent:{report.host}:{held.ref}", grant_id=held.grant_id,
                                      person=held.person, not_before=held.not_before, not_after=held.not_after,
                                      details={"hosts": [report.host], "reported_at": report.reported_at.isoformat()}))
        return sorted(found, key=lambda a: (a.grant_id or 0, a.ref))

    def _reports(self) -> HostReports:
        if self.reports is None:
            raise BackendError("the agent backend is not attached to a store (a bug in bootstrap)")
        return self.reports


def _hosts_or_none(grant: GrantSpec) -> list[str] | None:
    try:
        return hosts_of(grant)
    except InvalidGrant:
        return None


def _listed(report: Report | None, grant: GrantSpec) -> bool:
    return report is not None and grant.grant_id in report.held


def _holds(report: Report | None, grant: GrantSpec) -> bool:
    """The host reports the grant's drop-in with the grant's end (an extension rewrites it)."""
    held = report.held.get(grant.grant_id) if report is not None else None
    return held is not None and _second(held.not_after) == _second(grant.expires_at)


def _ref(hosts: list[str], grant: GrantSpec) -> str:
    return f"agent:{','.join(hosts)}:jit_g{grant.grant_id}"


def _seen(reports: HostReports, host: str) -> str:
    report = reports.of(host)
    return f"{host} (last report {report.reported_at:%Y-%m-%d %H:%M:%S} UTC)" if report else f"{host} (never reported)"
