"""The store's page-at-a-time helpers (``insert_rows``, ``next_ids``, ``among``), on SQLite and PostgreSQL."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
import sqlalchemy as sa

from app.store import GrantRow, JSONText, RequestRow, among, insert_rows, next_ids
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


def _grant(i: int, request_id: int, status: str, expires_at) -> dict:
    return dict(id=request_id, request_id=request_id, backend="sudo", person=f"user{i}", target="web-prod-01",
                role="service-admin", params={}, starts_at=T0, expires_at=expires_at, status=status, attempts=0,
                updated_at=T0, version=1)


def test_due_grants_are_read_through_the_status_expiry_index(store):
    """The expiry pass reads only the grants due, in expiry order, through (status, expires_at)
    (migration 0007): on status alone it read and sorted every active grant, so its cost grew with
    how many were held. 5,000 active grants, 100 of them due, 1,000 revoked."""
    held, due = 5000, 100
    with store.transaction() as s:
        ids = next_ids(s, RequestRow.__table__, held + 1000)
        insert_rows(s, RequestRow.__table__, [_row(i, id=n, state="active") for i, n in enumerate(ids)])
        insert_rows(s, GrantRow.__table__, [
            _grant(i, n, "active" if i < held else "revoked",
                   T0 + timedelta(seconds=(i - due) if i < held else -i)) for i, n in enumerate(ids)])
    pg = store.dialect == "postgresql"
    query = ("SELECT id FROM grant_record WHERE status = 'active' AND expires_at <= {now} "
             "ORDER BY expires_at LIMIT 100").format(now="'2026-11-24 10:00:00+00'" if pg else "'2026-11-24 10:00:00'")
    with store.transaction() as s:
        conn = s.connection()
        conn.exec_driver_sql("ANALYZE")
        plan = " | ".join(str(row[0] if pg else row[-1]) for row in conn.exec_driver_sql(
            ("EXPLAIN " if pg else "EXPLAIN QUERY PLAN ") + query).all())
        found = len(conn.exec_driver_sql(query).all())
    assert found == due
    assert "ix_grant_record_status_expires_at" in plan, plan
    assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan  # the index gives expiry order itself


def test_migration_0008_links_ticket_driven_requests_by_their_change(db_url):
    """Requests recorded before 0008 had only the ticket's number; a ticket-driven one gets its
    change's sys_id from its source_ref, one made from the CLI stays unlinked (matched by number)."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    from app.store.database import MIGRATIONS, Store
    store = Store(db_url)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0007")
        for i, source in ((1, f"change_request:{'ab' * 16}"), (2, None)):
            conn.execute(RequestRow.__table__.insert().values(**_row(i, id=i, ticket="CHG0000001", source_ref=source)))
    store.migrate()
    with store.transaction() as s:
        links = dict(s.execute(sa.select(RequestRow.id, RequestRow.ticket_sys_id)).all())
        indexes = {ix["name"] for ix in sa.inspect(s.connection()).get_indexes("access_request")}
    store.dispose()
    assert links == {1: "ab" * 16, 2: None}
    assert "ix_access_request_ticket_sys_id" in indexes
