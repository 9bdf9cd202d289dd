"""The scheduled reconcile runs beside the engine: it must never restore a grant the engine just
revoked, nor report as drift an artifact the engine removed while the reconcile was listing.

Found by the revocation-lag benchmark: with thousands of sudo drop-ins, listing them takes
long enough that grants expire meanwhile, and the reconcile put their files back."""
from __future__ import annotations

from datetime import timedelta

from app.jobs.reconcile import Reconciler
from integrations.fake import FakeBackend


class RacingBackend(FakeBackend):
    """Runs ``during`` once, inside the named call, as the engine would run beside the reconcile."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.hook: tuple[str, object] | None = None

    def _fire(self, method: str) -> None:
        if self.hook is not None and self.hook[0] == method:
            during, self.hook = self.hook[1], None
            during()

    def list_managed(self):
        listed = super().list_managed()
        self._fire("list_managed")
        return listed

    def inspect(self, grant):
        self._fire("inspect")
        return super().inspect(grant)


def _world(lifecycle, clock):
    backend = RacingBackend("sudo")
    lifecycle.backends["sudo"] = backend
    rid = lifecycle.submit("alice", "web-dev-01", "service-admin", timedelta(minutes=10),
                           "check the nginx config").request.id
    assert len(backend.artifacts) == 1

    def engine_expires_it():
        clock.advance(timedelta(minutes=11))
        assert lifecycle.expire_due() == 1
    return backend, rid, engine_expires_it, Reconciler(lifecycle.store, {"sudo": backend}, clock)


def test_a_grant_revoked_while_the_reconcile_lists_is_not_restored_nor_reported(lifecycle, clock):
    backend, rid, engine_expires_it, reconciler = _world(lifecycle, clock)
    backend.hook = ("list_managed", engine_expires_it)
    findings = reconciler.run(fix=True)
    assert findings == []
    assert backend.artifacts == {}
    assert lifecycle.get(rid).state == "expired"


def test_a_grant_revoked_between_inspect_and_restore_is_not_restored(lifecycle, clock):
    backend, rid, engine_expires_it, reconciler = _world(lifecycle, clock)
    backend.hook = ("inspect", engine_expires_it)  # the artifact is gone when inspected: revoked, not missing
    findings = reconciler.run(fix=True)
    assert [f.kind for f in findings] == []
    assert backend.artifacts == {}
    assert ("apply", lifecycle.get(rid).grant.id) not in backend.calls[1:]  # only the first apply, no restore


def test_a_really_missing_artifact_is_still_restored(lifecycle, clock):
    backend, rid, _, reconciler = _world(lifecycle, clock)
    backend.artifacts.clear()  # someone removed it by hand; the grant is still active
    findings = reconciler.run(fix=True)
    assert [(f.kind, f.action) for f in findings] == [("missing", "restored")]
    assert len(backend.artifacts) == 1
