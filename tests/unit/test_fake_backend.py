"""The in-memory FakeBackend used as a test double."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from integrations.base import Backend, BackendError, GrantSpec
from integrations.fake import FakeBackend

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def grant(gid: int = 1) -> GrantSpec:
    return GrantSpec(gid, 10, "alice", "web1", "ops", T0, T0 + timedelta(hours=1), {"x": 1})


def test_lifecycle_is_idempotent() -> None:
    fake = FakeBackend()
    assert isinstance(fake, Backend)
    assert fake.validate_role({}) == []
    assert fake.apply(grant(1)) == fake.apply(grant(1))
    fake.apply(grant(2))
    assert [a.grant_id for a in fake.list_managed()] == [1, 2]
    art = fake.inspect(grant(1))
    assert art is not None and art.person == "alice" and art.not_after == T0 + timedelta(hours=1)
    fake.revoke(grant(1))
    fake.revoke(grant(1))
    assert fake.inspect(grant(1)) is None
    assert [a.grant_id for a in fake.list_managed()] == [2]
    assert fake.calls[:3] == [("apply", 1), ("apply", 1), ("apply", 2)]


def test_fail_apply_counter() -> None:
    fake = FakeBackend()
    fake.fail_apply = 2
    for _ in range(2):
        with pytest.raises(BackendError) as info:
            fake.apply(grant())
        assert info.value.transient
    assert fake.list_managed() == [] and fake.fail_apply == 0
    fake.apply(grant())
    assert fake.inspect(grant()) is not None
    assert fake.calls[:3] == [("apply", 1)] * 3


def test_fail_revoke_counter() -> None:
    fake = FakeBackend()
    fake.apply(grant())
    fake.fail_revoke = 1
    with pytest.raises(BackendError):
        fake.revoke(grant())
    assert fake.inspect(grant()) is not None
    fake.revoke(grant())
    assert fake.list_managed() == []
