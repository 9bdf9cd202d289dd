"""Issue 17: ServiceNow as a real instance behaves, over real HTTP against the simulator with an
instance's behaviour switched on: its clock moving (so the product's own notes update the change),
ties in the sort order, rows its ACLs remove after the limit, writes by others while the sync pages."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlmodel import select
from test_servicenow import make_client, notes

from app.clock import FrozenClock
from app.config import EngineSettings
from app.dev.sandbox import PEOPLE
from app.identity import StaticDirectory
from app.jobs.outbox import Deliverer
from app.jobs.sync import TicketSync
from app.lifecycle import Lifecycle, OutboxSettings
from app.lifecycle.ticket_facts import TicketGateway
from app.store import AuditEvent
from integrations.servicenow.simulator import Simulator, SimulatorOptions
from integrations.servicenow.tickets import Tickets, sn_time

H = timedelta(hours=1)


@pytest.fixture
def sim():
    simulator = Simulator(SimulatorOptions(seed="demo")).start()  # the wall clock: writes move sys_updated_on
    yield simulator
    simulator.stop()


@pytest.fixture
def world(store, policy, backend, sim):
    yield from make_world(store, policy, backend, sim, datetime.now(timezone.utc).replace(microsecond=0))


def make_world(store, policy, backend, sim, now):
    client = make_client(sim)
    tickets = Tickets(client)
    clock = FrozenClock(now)
    directory = StaticDirectory({name: frozenset(groups) for name, (_, groups) in PEOPLE.items()})
    gateway = TicketGateway(tickets)
    lc = Lifecycle(store, policy, directory, {"sudo": backend}, clock, EngineSettings(retry_backoff=timedelta(0)),
                   tickets=gateway, outbox=OutboxSettings(servicenow=True, webhook=False, create_change=False))
    sync = TicketSync(store, lc, tickets, gateway, clock, timedelta(days=7))
    yield type("World", (), {"lc": lc, "clock": clock, "now": now, "sync": sync, "sim": sim, "tickets": tickets,
                             "deliverer": Deliverer(store, clock, tickets=tickets, webhook=None), "store": store})
    client.close()


def user_id(sim, name: str) -> str:
    return next(r["sys_id"] for r in sim.records("sys_user") if r["user_name"] == name)


def add_change(w, number: str, *, assignee: str = "alice", target: str = "web-prod-01", **more) -> dict:
    alice = next(r for r in w.sim.records("change_request") if r["number"] == "CHG0000001")
    values = {"number": number, "state": "-1", "approval": "approved", "type": "normal",
              "start_date": sn_time(w.now - H), "end_date": sn_time(w.now + 2 * H),
              "assigned_to": user_id(w.sim, assignee), "assignment_group": alice["assignment_group"],
              "u_jit_target": target, "u_jit_role": "service-admin", **more}
    return w.sim.insert("change_request", values)


def events(w, action: str) -> list[AuditEvent]:
    with w.store.transaction() as s:
        return list(s.exec(select(AuditEvent).where(AuditEvent.action == action)))


# ------------------------------------------------------------------ 1. a refusal is noted once
def test_a_refused_change_is_refused_and_noted_once_however_often_the_sync_runs(world):
    w = world
    add_change(w, "CHG0000030", assignee="erin")  # erin is not eligible for service-admin: refused
    for _ in range(5):
        w.sync.run_once()
        w.deliverer.run_once()
    refusals = [e for e in events(w, "request.refused") if "CHG0000030" in e.details]
    assert len(refusals) == 1
    assert len([n for n in notes(w.sim, "CHG0000030") if "refused" in n.lower()]) == 1
    changed = next(r for r in w.sim.records("change_request") if r["number"] == "CHG0000030")
    assert int(changed["sys_mod_count"]) == 1  # the note did update the change: it was read again, not decided


def test_a_new_version_of_a_refused_change_is_decided_again(world):
    w = world
    c = add_change(w, "CHG0000031", assignee="erin")
    w.sync.run_once()
    w.deliverer.run_once()
    w.tickets.client.update("change_request", c["sys_id"], {"assigned_to": user_id(w.sim, "alice")})
    report = w.sync.run_once()
    assert report.created == 1 and [v.ticket for v in w.lc.list()].count("CHG0000031") == 1


# ------------------------------------------------------------------ 4. closed requested items
@pytest.mark.parametrize(("values", "says"), [({"state": "3"}, "Closed Complete"), ({"state": "4"}, "Closed Incomplete"),
                                              ({"state": "7"}, "Closed Skipped"),
                                              ({"state": "2", "active": "false"}, "Work in Progress (inactive)")])
def test_a_closed_requested_item_does_not_pass_the_ticket_checks(world, values, says):
    w = world
    w.sim.insert("sc_req_item", {"number": "RITM0000040", "short_description": "access", "state": "1",
                                 "requested_for": user_id(w.sim, "alice")})
    item = next(r for r in w.sim.records("sc_req_item") if r["number"] == "RITM0000040")
    opened = w.lc.preview("alice", "web-prod-01", "service-admin", H, "renew the TLS certificate", "RITM0000040")
    assert [c.passed for c in opened.checks if c.name == "item_open"] == [True]
    w.tickets.client.update("sc_req_item", item["sys_id"], values)
    closed = w.lc.preview("alice", "web-prod-01", "service-admin", H, "renew the TLS certificate", "RITM0000040")
    [check] = [c for c in closed.checks if c.name == "item_open"]
    assert not check.passed and says in check.message and not closed.allowed


def test_a_grant_for_a_requested_item_ends_when_the_item_is_closed(world, backend):
    w = world
    item = w.sim.insert("sc_req_item", {"number": "RITM0000041", "short_description": "access", "state": "2",
                                        "requested_for": user_id(w.sim, "alice")})
    rid = w.lc.submit("alice", "web-prod-01", "service-admin", H, "renew the TLS certificate", "RITM0000041").request.id
    w.lc.approve("bob", rid)
    assert w.lc.approve("carol", rid).request.state == "active"
    w.tickets.client.update("sc_req_item", item["sys_id"], {"state": "7"})  # Closed Skipped
    assert w.sync.run_once().ended == 1
    view = w.lc.get(rid)
    assert view.state == "revoked" and "closed" in view.closed_reason
    assert view.grant.id not in backend.artifacts  # (the seed's own CHG0000001 became a grant in that run too)


# ------------------------------------------------------------------ 2. the sync never loses a change
@pytest.fixture
def timed():
    """A simulator whose clock the test moves, with changes CHG0000051..55 a second apart."""
    t = [datetime(2026, 12, 4, 9, 0, tzinfo=timezone.utc)]
    simulator = Simulator(SimulatorOptions(clock=lambda: t[0])).start()
    for i in range(1, 6):
        simulator.insert("change_request", {"number": f"CHG00000{50 + i}", "u_jit_target": "web-dev-01",
                                            "u_jit_role": "service-admin"})
        t[0] += timedelta(seconds=1)
    client = make_client(simulator, page_size=2)
    yield simulator, Tickets(client), t
    client.close()
    simulator.stop()


def numbers(tickets: Tickets, since: datetime) -> list[str]:
    return [t.number for t in tickets.changes_since(since)]


def test_a_change_edited_while_the_sync_pages_is_still_read(timed):
    sim, tickets, t = timed
    first = next(r for r in sim.records("change_request") if r["number"] == "CHG0000051")
    calls = []

    def edit_between_pages(table, params):
        calls.append(table)
        if table == "change_request" and len(calls) == 2:  # someone edits CHG0000051 after page one
            t[0] += timedelta(seconds=30)
            with sim._lock:
                sim._update_locked("change_request", sim._index["change_request"][first["sys_id"]],
                                   {"short_description": "edited"}, "someone")
    sim.before_list = edit_between_pages
    read = numbers(tickets, datetime(2026, 12, 4, 8, 0, tzinfo=timezone.utc))
    assert sorted(set(read)) == [f"CHG00000{50 + i}" for i in range(1, 6)]  # offset paging skipped CHG0000053
    assert read[-1] == "CHG0000051"  # read again at its new place, last


def test_changes_in_one_second_come_back_whole_whatever_the_tie_order(timed):
    import random
    sim, tickets, t = timed
    for i in range(6, 12):  # six more in one second
        sim.insert("change_request", {"number": f"CHG00000{50 + i}", "u_jit_target": "web-dev-01",
                                      "u_jit_role": "service-admin"})
    sim.tie_order = random.Random(7)
    read = numbers(tickets, datetime(2026, 12, 4, 8, 0, tzinfo=timezone.utc))
    assert sorted(read) == [f"CHG00000{50 + i}" for i in range(1, 12)]  # each once, none lost


def test_a_page_an_acl_made_short_does_not_end_the_read(timed):
    sim, tickets, t = timed
    sim.hidden = lambda user, table, row: table == "change_request" and row["number"] in ("CHG0000051", "CHG0000052")
    read = numbers(tickets, datetime(2026, 12, 4, 8, 0, tzinfo=timezone.utc))
    assert read == ["CHG0000053", "CHG0000054", "CHG0000055"]  # the first page came back empty: not the end


def test_a_change_that_becomes_visible_late_is_read_by_the_next_run(store, policy, backend):
    t = [datetime.now(timezone.utc).replace(microsecond=0)]
    sim = Simulator(SimulatorOptions(seed="demo", clock=lambda: t[0])).start()
    try:
        for w in make_world(store, policy, backend, sim, t[0]):
            sim.hidden = lambda user, table, row: row.get("number") == "CHG0000061"  # not yet committed
            add_change(w, "CHG0000061", target="web-dev-01")
            t[0] += timedelta(seconds=5)
            add_change(w, "CHG0000062", target="web-dev-01", assignee="dave")
            w.sync.run_once()
            assert w.sync.status().watermark == t[0]  # past CHG0000061's sys_updated_on
            sim.hidden = None  # its update is committed: visible, stamped 5 s before the watermark
            w.sync.run_once()
            assert {"CHG0000061", "CHG0000062"} <= {v.ticket for v in w.lc.list()}
            w.sync.run_once()  # and read again within the window: nothing new is made of it
            assert [v.ticket for v in w.lc.list()].count("CHG0000061") == 1
    finally:
        sim.stop()


# ------------------------------------------------------------------ 8. hourly rate limits
def test_an_hourly_rate_limit_defers_calls_instead_of_retrying(store, policy, backend):
    import time
    sim = Simulator(SimulatorOptions(seed="demo", rate_limit=3, rate_window=3600)).start()
    try:
        for w in make_world(store, policy, backend, sim, datetime.now(timezone.utc).replace(microsecond=0)):
            start = time.monotonic()
            report = w.sync.run_once()  # its reads spend the hour's three calls, then 429, Retry-After ~3600
            assert report.error and "deferred until" in report.error and "Retry-After" in report.error
            assert time.monotonic() - start < 2  # not four waits of 30 s
            assert sim.stats["429"] == 1 and w.tickets.client.breaker.state == "rate-limited"
            again = w.sync.run_once()  # the next run does not even ask until the hour is over
            assert again.error and "rate limit" in again.error and sim.stats["429"] == 1
    finally:
        sim.stop()


# ------------------------------------------------------------------ 7. notes without the journal's role
def _noted_change(w) -> str:
    """A request for CHG0000001 whose grant, once approved, owes the change a note."""
    rid = w.lc.submit("alice", "web-prod-01", "service-admin", H, "renew the TLS certificate", "CHG0000001").request.id
    w.lc.approve("bob", rid)
    w.lc.approve("carol", rid)
    return f"JIT REQ-{rid}"


def test_a_note_is_written_once_when_the_journal_table_answers_403(world):
    w = world
    w.sim.forbidden = lambda user, table: table == "sys_journal_field"  # no audit_viewer-like role
    prefix = _noted_change(w)
    w.sim.faults.update({"fail_after_write_next": 1})  # written, but its answer is lost: retried
    w.deliverer.run_once()
    w.deliverer.run_once()
    mine = [n for n in notes(w.sim, "CHG0000001") if n.startswith(prefix)]
    assert len(mine) == 1 and "Access granted" in mine[0]
    with w.store.transaction() as s:
        from app.store import OutboxRow
        assert {o.state for o in s.exec(select(OutboxRow))} == {"sent"}  # not failed for good


def test_a_note_is_written_once_when_the_journal_table_answers_an_empty_200(world):
    w = world
    w.sim.hidden = lambda user, table, row: table == "sys_journal_field"  # an ACL removes every row
    prefix = _noted_change(w)
    w.sim.faults.update({"fail_after_write_next": 1})
    w.deliverer.run_once()
    w.deliverer.run_once()
    assert len([n for n in notes(w.sim, "CHG0000001") if n.startswith(prefix)]) == 1


# ------------------------------------------------------------------ 6. a missing custom field
def test_a_jit_field_the_instance_does_not_have_stops_the_sync_naming_it(world):
    w = world
    w.sync.tickets = Tickets(w.tickets.client, target_field="u_jit_host")  # a typo of the instance's u_jit_target
    before = w.sim.stats["GET /api/now/table/change_request"]
    report = w.sync.run_once()
    assert report.error and "servicenow.target_field: 'u_jit_host' is not a field of change_request" in report.error
    assert report.read == 0 and w.lc.list() == []  # without the check: ISNOTEMPTY dropped, every change read
    assert w.sim.stats["GET /api/now/table/change_request"] - before == 1  # the one-row check only
    assert "u_jit_host" in w.sync.status().last_error
    w.sync.tickets = w.tickets  # configured right: it runs
    assert w.sync.run_once().error is None and len(w.lc.list()) == 1


# ------------------------------------------------------------------ 5. later changes to a handled change
@pytest.mark.parametrize(("edit", "says"), [
    ({"approval": "rejected"}, "is no longer approved in ServiceNow (approval 'rejected', Implement)"),
    ({"state": "-5"}, "is no longer approved in ServiceNow (approval 'approved', New)"),
    ("later", "the window of CHG0000001 moved: it starts"),
])
def test_a_change_rejected_reverted_or_moved_later_ends_its_grant(world, backend, edit, says):
    w = world
    assert w.sync.run_once().created == 1  # the seed's CHG0000001: alice's active grant
    [view] = w.lc.list()
    assert view.state == "active"
    c = next(r for r in w.sim.records("change_request") if r["number"] == "CHG0000001")
    values = {"start_date": sn_time(w.now + 2 * H), "end_date": sn_time(w.now + 6 * H)} if edit == "later" else edit
    w.tickets.client.update("change_request", c["sys_id"], values)
    report = w.sync.run_once()
    view = w.lc.get(view.id)
    assert view.state == "revoked" and says in view.closed_reason and report.ended == 1
    assert view.grant.id not in backend.artifacts
    w.deliverer.run_once()
    assert any("revoked by servicenow" in n and says in n for n in notes(w.sim, "CHG0000001"))


def test_a_shortened_change_window_shortens_the_grant(world, backend):
    w = world
    w.sync.run_once()
    [view] = w.lc.list()
    assert view.expires_at == w.now + 4 * H
    c = next(r for r in w.sim.records("change_request") if r["number"] == "CHG0000001")
    w.tickets.client.update("change_request", c["sys_id"], {"end_date": sn_time(w.now + H)})
    w.sync.run_once()
    view = w.lc.get(view.id)
    assert view.state == "active" and view.expires_at == w.now + H and view.grant.expires_at == w.now + H
    assert backend.artifacts[view.grant.id].not_after == w.now + H  # the artifact itself ends then
    w.deliverer.run_once()
    assert any("now ends" in n and "shortened" in n for n in notes(w.sim, "CHG0000001"))
    w.sync.run_once()  # read again unchanged: nothing more happens
    assert w.lc.get(view.id).version == view.version


def test_without_a_count_from_the_instance_only_an_empty_page_ends_a_read(timed):
    sim, tickets, t = timed
    sim.no_count = True  # as sysparm_no_count=true: no X-Total-Count on any answer
    sim.hidden = lambda user, table, row: table == "change_request" and row["number"] == "CHG0000051"
    before = sim.stats["GET /api/now/table/change_request"]
    assert numbers(tickets, datetime(2026, 12, 4, 8, 0, tzinfo=timezone.utc)) == [
        "CHG0000052", "CHG0000053", "CHG0000054", "CHG0000055"]  # the short first page did not end it
    assert sim.stats["GET /api/now/table/change_request"] - before == 4  # 1+2+2 rows, then the empty page


# ------------------------------------------------------------------ 3. blackouts as schedule entries
def _blackout(w, name: str, tz: str, start_local: datetime, end_local: datetime, **span) -> None:
    schedule = w.sim.insert("cmn_schedule_blackout", {"name": name, "time_zone": tz})
    w.sim.insert("cmn_schedule_span", {"schedule": schedule["sys_id"], "name": name,
                                       "start_date_time": start_local.strftime("%Y%m%dT%H%M%S"),
                                       "end_date_time": end_local.strftime("%Y%m%dT%H%M%S"), **span})


def _blackout_check(w, minutes: int = 15):
    d = w.lc.preview("alice", "web-prod-01", "service-admin", timedelta(minutes=minutes), "renew the TLS certificate",
                     "CHG0000001")
    return next(c for c in d.checks if c.name == "change_blackout")


def test_a_weekly_blackout_in_its_own_time_zone_refuses(world):
    from zoneinfo import ZoneInfo
    w = world
    assert _blackout_check(w).passed
    berlin = w.now.astimezone(ZoneInfo("Europe/Berlin")).replace(tzinfo=None)
    a_week_ago = berlin - timedelta(days=7)  # the entry began a week ago; it repeats on this weekday
    _blackout(w, "Friday freeze", "Europe/Berlin", a_week_ago - timedelta(minutes=30), a_week_ago + timedelta(minutes=30),
              repeat_type="weekly", days_of_week=str(berlin.isoweekday()), repeat_count="1")
    check = _blackout_check(w)  # read as UTC it would start an hour or two from now, and pass
    assert not check.passed and "Friday freeze" in check.message


def test_a_daily_blackout_until_yesterday_no_longer_refuses(world):
    w = world
    start = w.now.replace(tzinfo=None) - timedelta(days=5, minutes=30)
    _blackout(w, "Nightly batch", "UTC", start, start + timedelta(hours=1), repeat_type="daily",
              repeat_until=(w.now - timedelta(days=1)).strftime("%Y%m%d"))
    assert _blackout_check(w).passed
    _blackout(w, "Nightly batch 2", "UTC", start, start + timedelta(hours=1), repeat_type="daily")
    check = _blackout_check(w)
    assert not check.passed and "Nightly batch 2" in check.message


def test_a_blackout_repeat_jit_cannot_read_fails_the_check_closed(world):
    w = world
    start = w.now.replace(tzinfo=None) + timedelta(days=40)
    _blackout(w, "Quarter close", "UTC", start, start + timedelta(hours=2), repeat_type="monthly")
    check = _blackout_check(w)
    assert not check.passed and "Quarter close" in check.message and "'monthly'" in check.message
    assert "fails closed" in check.message


# ------------------------------------------------------------------ released means released (issue 18)
@pytest.mark.parametrize("end", ["release", "revoke"])
def test_a_ticket_driven_grant_ended_early_is_not_granted_again_from_its_change(world, backend, end):
    """Reproduction attempt of issue 18 ("release, then `jit engine` grants it again"): the grant's
    end writes a note, which updates the change, so every later sync reads it again; none of those
    reads, nor an edit of the change itself, makes a new request from it."""
    w = world
    add_change(w, "CHG0000041")
    w.sim.approve("CHG0000041", "bob", "carol")  # the tier's approvers, in ServiceNow: granted from the change
    w.sync.run_once()
    [view] = [v for v in w.lc.list() if v.ticket == "CHG0000041"]
    assert view.state == "active" and view.grant.id in backend.artifacts
    if end == "release":
        w.lc.release("alice", view.id)
    else:
        w.lc.revoke("erin", view.id, "not needed after all")
    for _ in range(3):
        w.deliverer.run_once()  # the grant's notes: the change is updated, so the sync reads it again
        report = w.sync.run_once()
        assert report.created == 0 and not report.error
    sys_id = next(r["sys_id"] for r in w.sim.records("change_request") if r["number"] == "CHG0000041")
    w.tickets.client.update("change_request", sys_id, {"short_description": "edited after the release"})
    assert w.sync.run_once().created == 0
    assert [(v.id, v.state) for v in w.lc.list() if v.ticket == "CHG0000041"] == [
        (view.id, "released" if end == "release" else "revoked")]
    assert backend.artifacts == {k: v for k, v in backend.artifacts.items() if k != view.grant.id}
    assert len([n for n in notes(w.sim, "CHG0000041") if "granted" in n.lower()]) == 1


def test_a_sync_run_that_changes_something_logs_one_line_and_an_idle_one_none(world, caplog):
    import logging
    caplog.set_level(logging.INFO, logger="jit.activity")
    add_change(world, "CHG0000042", assignee="erin")  # refused: erin is not eligible
    world.sync.run_once()
    runs = [r.getMessage() for r in caplog.records if r.name == "jit.activity" and "sync.run" in r.getMessage()]
    assert len(runs) == 1 and "refused=1" in runs[0] and runs[0].startswith("sync.run read=")
    caplog.clear()
    world.sync.run_once()  # nothing new: the refusal is not decided again
    assert not [r for r in caplog.records if r.name == "jit.activity"]
