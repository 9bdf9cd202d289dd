"""The state machines are data (app/domain/states.py): every transition the code performs is in the
table (``require()`` refuses any other before a write), every row of the table is performed by the
scenarios below, and README's and ARCHITECTURE's diagrams name exactly the table's transitions."""
from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest
from sqlmodel import select

from app.domain import states
from app.domain.errors import Refused
from app.domain.states import GRANT_TRANSITIONS, REQUEST_TRANSITIONS, IllegalTransition, require
from app.store import GrantRow, RequestRow
from app.store import grants as grant_store
from app.store import requests as request_store

H, M = timedelta(hours=1), timedelta(minutes=1)
REASON = "restart nginx after the TLS renewal"
ROOT = Path(__file__).resolve().parents[2]


def prod(lc, who="alice"):
    return lc.submit(who, "web-prod-01", "service-admin", 2 * H, REASON, "CHG0000001").request.id


def dev(lc, who="alice", minutes=10, **kw):
    return lc.submit(who, "web-dev-01", "service-admin", minutes * M, REASON, **kw).request.id


def test_a_transition_outside_the_table_is_refused_before_anything_is_written(lifecycle, store):
    with pytest.raises(IllegalTransition):
        require("request", "expired", "active")
    with pytest.raises(IllegalTransition):
        require("grant", "revoked", "active")
    rid = prod(lifecycle)
    with store.transaction() as s, pytest.raises(IllegalTransition):
        request_store.transition(s, s.get(RequestRow, rid), "active", lifecycle.clock())
    assert lifecycle.get(rid).state == "pending" and lifecycle.get(rid).version == 1


def test_every_row_of_both_tables_is_performed(lifecycle, backend, clock, store):
    with states.recording() as seen:
        # pending: one approval of two, escalation, the last approval, the activation, the grant applied
        rid = prod(lifecycle)
        lifecycle.approve("bob", rid)
        clock.advance(31 * M)
        lifecycle.escalate_and_lapse()
        lifecycle.approve("carol", rid)
        lifecycle.revoke("erin", rid, "done early")  # active -> revoking -> revoked
        longer = dev(lifecycle)  # (a dual-approved one is never extended by one person)
        lifecycle.extend("bob", longer, 10 * M, "the restart takes longer")  # active -> active, both
        lifecycle.release("alice", longer)
        lifecycle.deny("bob", prod(lifecycle), "not in the window")
        lifecycle.cancel("alice", prod(lifecycle))
        lifecycle.release("alice", dev(lifecycle))  # self-service: created approved
        lifecycle.bypass("dave", "web-prod-01", "service-admin", H, "INC0000042", "nginx down for all")
        # scheduled requests: cancelled, revoked, lapsed before their start; extended before it
        later = clock() + 2 * H
        lifecycle.cancel("alice", dev(lifecycle, start=later))
        lifecycle.revoke("erin", dev(lifecycle, start=later), "no longer needed")
        waits = dev(lifecycle, start=later)
        lifecycle.extend("alice", waits, 2 * M, "two more minutes")  # approved -> approved
        lapses = prod(lifecycle)
        clock.advance(25 * H)
        lifecycle.escalate_and_lapse()  # the scheduled one's window passed; the pending one waited too long
        # the backend refuses: failed; its removal fails, retried later: revoking -> revoking
        backend.fail_apply = 10
        dev(lifecycle)
        backend.fail_apply = 0
        rid = dev(lifecycle)
        backend.fail_revoke = 100  # every retry too
        lifecycle.release("alice", rid)
        backend.fail_revoke = 0
        clock.advance(H)
        lifecycle.recover()
        # expiry
        dev(lifecycle)
        clock.advance(11 * M)
        lifecycle.expire_due()
        # a crash mid-apply, taken over and finished; and one whose window ended meanwhile
        for expires_in in (10 * M, -M):
            rid = dev(lifecycle, start=clock() + H)
            clock.advance(H)
            with store.transaction() as s:
                s.add(GrantRow(request_id=rid, backend="sudo", person="alice", target="web-dev-01",
                               role="service-admin", params={}, starts_at=clock() - M, expires_at=clock() + expires_in,
                               status="applying", owner="elsewhere:1", lease_until=clock() - M, updated_at=clock()))
            lifecycle.recover()
    assert lifecycle.get(lapses).state == "lapsed" and lifecycle.get(waits).state == "lapsed"
    table = {("request", t.source, t.target) for t in REQUEST_TRANSITIONS} | \
            {("grant", t.source, t.target) for t in GRANT_TRANSITIONS}
    assert table - seen == set(), "rows of the table no scenario performed"
    assert seen <= table


def test_a_grant_transition_names_the_version_it_read(lifecycle, store):
    rid = dev(lifecycle)
    with store.transaction() as s:
        row = s.exec(select(GrantRow)).first()
        stale = GrantRow(**{k: getattr(row, k) for k in GrantRow.model_fields})
    lifecycle.extend("alice", rid, M, "a minute more")
    with store.transaction() as s, pytest.raises(Refused):
        grant_store.transition(s, stale, "revoking", lifecycle.clock())


def _arrows(text: str) -> set[tuple[str, str]]:
    """``a -> b -> c | d`` chains in a diagram line, as (source, target) pairs."""
    pairs = set()
    for chain in re.findall(r"`([a-z |>-]+)`", text) or [text]:
        steps = [set(re.findall(r"[a-z]+", part)) for part in chain.split("->")]
        for left, right in zip(steps, steps[1:]):
            pairs |= {(a, b) for a in left for b in right}
    return pairs


@pytest.mark.parametrize("doc", ["README.md", "../shared/ARCHITECTURE.md"])
def test_the_diagrams_name_the_tables_transitions(doc):
    path = (ROOT / doc).resolve()
    if not path.exists():
        pytest.skip(f"{path} is not beside this checkout")
    text = path.read_text()
    line = re.search(r"Request: (.+?)\.(?:\s|$)", text.replace("\n", " ")).group(1)
    drawn = _arrows(line)
    moves = {(t.source, t.target) for t in REQUEST_TRANSITIONS if t.source and t.source != t.target}
    assert drawn == moves, (sorted(drawn - moves), sorted(moves - drawn))
