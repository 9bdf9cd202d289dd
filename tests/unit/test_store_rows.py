"""The store's page-at-a-time helpers (``insert_rows``, ``next_ids``, ``among``), on SQLite and PostgreSQL."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app.store import JSONText, RequestRow, among, insert_rows, next_ids
from tests.conftest import T0


def _row(i: int, **values) -> dict:
    return dict(kind="request", requester=f"user{i}", target="web-prod-01", role="service-admin", environment=None,
                tier=None, backend=None, params={}, reason="work", ticket=None, state="approved",
                approval_model="single", approver_groups=[], checks=[], scheduled=False, duration_s=3600,
                starts_at=T0, expires_at=T0, created_at=T0, updated_at=T0, escalated_at=None, closed_by=None,
                closed_reason=None, source_ref=f"change_request:{i:032x}", version=1) | values


def test_next_ids_are_new_ascending_and_not_handed_out_again(store):
    with store.transaction() as s:
        s.add(RequestRow(**_row(0)))
    with store.transaction() as s:
        first = next_ids(s, RequestRow.__table__, 3)
        insert_rows(s, RequestRow.__table__, [_row(i + 1, id=n) for i, n in enumerate(first)])
    with store.transaction() as s:
        after = RequestRow(**_row(9))
        s.add(after)  # the ORM's own insert takes an id none of the others has
        s.flush()
        assert next_ids(s, RequestRow.__table__, 0) == []
    with store.transaction() as s:
        ids = s.exec(sa.select(RequestRow.id).order_by(RequestRow.id)).scalars().all()
    assert first == sorted(first) and len(set(first)) == 3 and ids[0] not in first
    assert len(set(ids)) == 5 and after.id in ids and after.id > max(first)


def test_rows_read_back_as_written_and_a_plain_string_is_still_encoded_as_json(store):
    """Every kind of column the sync writes (binary COPY on PostgreSQL), with text COPY would escape."""
    checks = [{"name": "business_need", "passed": True, "message": "é \"quoted\" \u2028"}]
    odd = "tab\there\nnew line \\N back\\slash \U0001f510 é"
    later = T0 + timedelta(hours=2, microseconds=7)
    with store.transaction() as s:
        [n, m] = next_ids(s, RequestRow.__table__, 2)
        insert_rows(s, RequestRow.__table__, [
            _row(1, id=n, checks=JSONText(json.dumps(checks)), params={"commands": ["/usr/bin/id", odd]},
                 reason=odd, expires_at=later, escalated_at=later, scheduled=True, duration_s=2**31 - 1),
            _row(2, id=m, checks="[not json, a string]", approver_groups=["security"])])
    with store.transaction() as s:
        one, two = s.exec(sa.select(RequestRow).order_by(RequestRow.id)).scalars().all()
    assert one.checks == checks and one.params == {"commands": ["/usr/bin/id", odd]} and one.reason == odd
    assert (one.starts_at, one.expires_at, one.escalated_at, one.scheduled, one.duration_s) == (
        T0, later, later, True, 2**31 - 1)
    assert two.checks == "[not json, a string]" and two.approver_groups == ["security"]
    assert (two.escalated_at, two.closed_by, two.scheduled) == (None, None, False)


@pytest.mark.parametrize("wanted", [[], ["user2"], ["user1", "user3", "nobody", "o'brien"]])
def test_among_matches_what_in_matches(store, wanted):
    with store.transaction() as s:
        insert_rows(s, RequestRow.__table__, [_row(i, id=n) for i, n in
                                              zip(range(1, 4), next_ids(s, RequestRow.__table__, 3))])
    with store.transaction() as s:
        found = sorted(s.exec(sa.select(RequestRow.requester).where(among(s, RequestRow.requester, wanted))).scalars())
        expected = sorted(s.exec(sa.select(RequestRow.requester).where(RequestRow.requester.in_(wanted))).scalars())
    assert found == expected == sorted(set(wanted) & {"user1", "user2", "user3"})


def test_a_page_of_holdings_is_read_through_the_requester_index(sqlite_store):
    """On state alone, every page of the sync scanned every approved request (migration 0006)."""
    with sqlite_store.transaction() as s:
        plan = s.connection().exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT target FROM access_request WHERE requester IN ('a', 'b') "
            "AND state IN ('approved', 'active')").all()
    assert "ix_access_request_requester_state" in " ".join(str(row[-1]) for row in plan)
