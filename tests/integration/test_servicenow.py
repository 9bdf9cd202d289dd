"""ServiceNow end to end over real HTTP: pysnow's own requests through the simulator.

Client calls, faults (429, 500, timeouts, dropped connections, outage), ticket validation,
ticket-driven elevation, closed-ticket revocation, write-back without duplicates, change
auto-creation and webhooks, all against `Simulator` on 127.0.0.1.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlmodel import select
from webhook_receiver import Receiver

from app.clock import FrozenClock
from app.config import EngineSettings
from app.dev.sandbox import PEOPLE
from app.domain.errors import Refused
from app.identity import StaticDirectory
from app.jobs.engine import Engine
from app.jobs.outbox import Deliverer
from app.jobs.sync import TicketSync
from app.lifecycle import Lifecycle, OutboxSettings
from app.lifecycle.ticket_facts import TicketGateway
from app.store import OutboxRow
from integrations.notify import Webhook
from integrations.servicenow.client import CircuitBreaker, Credentials, ServiceNowClient, Unavailable
from integrations.servicenow.simulator import Simulator, SimulatorOptions
from integrations.servicenow.tickets import Tickets, sn_time

H = timedelta(hours=1)
M = timedelta(minutes=1)


@pytest.fixture
def now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


@pytest.fixture
def sim(now):
    simulator = Simulator(SimulatorOptions(seed="demo", clock=lambda: now)).start()
    yield simulator
    simulator.stop()


def make_client(sim, **kw) -> ServiceNowClient:
    kw.setdefault("retries", 3)
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 2)
    return ServiceNowClient(sim.base_url, Credentials("admin", "admin"), **kw)


@pytest.fixture
def client(sim):
    c = make_client(sim)
    yield c
    c.close()


@pytest.fixture
def tickets(client) -> Tickets:
    return Tickets(client)


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture
def world(store, policy, backend, now, tickets, receiver):
    """A lifecycle wired to the simulator and a webhook, on SQLite and PostgreSQL."""
    clock = FrozenClock(now)
    directory = StaticDirectory({name: frozenset(groups) for name, (_, groups) in PEOPLE.items()})
    gateway = TicketGateway(tickets)
    lc = Lifecycle(store, policy, directory, {"sudo": backend}, clock, EngineSettings(retry_backoff=timedelta(0)),
                   tickets=gateway, outbox=OutboxSettings(servicenow=True, webhook=True, create_change=False))
    webhook = Webhook(receiver.url, timeout=2)
    deliverer = Deliverer(store, clock, tickets=tickets, webhook=webhook)
    sync = TicketSync(store, lc, tickets, gateway, clock, timedelta(days=7))
    engine = Engine(lc, EngineSettings(), clock, sync=sync, deliverer=deliverer)
    yield type("World", (), {"lc": lc, "clock": clock, "engine": engine, "deliverer": deliverer, "sync": sync})
    webhook.close()


def change(sim, number):
    return next(r for r in sim.records("change_request") if r["number"] == number)


def notes(sim, number):
    table = "change_request" if number.startswith("CHG") else "incident"
    sys_id = next(r for r in sim.records(table) if r["number"] == number)["sys_id"]
    return [j["value"] for j in sim.journal(sys_id)]


# ------------------------------------------------------------------ client
def test_client_pages_with_pysnow_and_patches(sim, now):
    for i in range(7):
        sim.insert("incident", {"short_description": f"paging {i}", "state": "1"})
    client = make_client(sim, page_size=3)
    rows = list(client.query("incident", "short_descriptionSTARTSWITHpaging", ["number", "short_description"]))
    assert sorted(r["short_description"] for r in rows) == [f"paging {i}" for i in range(7)]
    assert sim.stats["GET /api/now/table/incident"] >= 3  # three pages, not one
    one = client.find_one("incident", "short_description=paging 3", ["sys_id"])
    updated = client.update("incident", one["sys_id"], {"state": "2"})
    assert updated["state"] == "2" and sim.stats["PATCH /api/now/table/incident"] == 1
    assert sim.stats["PUT /api/now/table/incident"] == 0
    assert client.get("incident", one["sys_id"])["state"] == "2"
    assert client.get("incident", "0" * 32) is None
    created = client.create("incident", {"short_description": "made by pysnow"})
    assert created["number"].startswith("INC") and sim.stats["POST /api/now/table/incident"] == 1
    client.close()


def test_tickets_reads_what_the_product_needs(tickets, now):
    t = tickets.find("CHG0000001")
    assert (t.assignee, t.state, t.approval, t.jit_target, t.jit_role) == (
        "alice", "-1", "approved", "web-prod-01", "service-admin")
    assert t.start == now - H and t.end == now + 4 * H and t.cmdb_ci == "web-prod-01"
    assert tickets.group_members(t.group) == {"alice", "dave"}
    assert tickets.find("CHG0009999") is None
    assert [c.number for c in tickets.changes_since(now - H)] == ["CHG0000001"]
    assert [name for name, *_ in tickets.blackouts(now + 11 * 24 * H, now + 12 * 24 * H)] == ["Year-end freeze"]
    assert tickets.blackouts(now, now + H) == []


def test_query_values_are_validated_before_any_query(tickets, sim):
    before = sum(sim.stats.values())
    for bad in ("CHG0000001^ORnumberISNOTEMPTY", "CHG1", "chg0000001", "CHG0000001\n"):
        with pytest.raises(Exception, match="not valid"):
            tickets.find(bad)
    assert sum(sim.stats.values()) == before  # nothing reached ServiceNow


def test_retries_429_with_retry_after(sim):
    waits = []
    client = make_client(sim, sleep=lambda s: (waits.append(s), time.sleep(s)))
    sim.options.rate_limit, sim.options.rate_window = 2, 1.0
    for _ in range(2):
        list(client.query("incident", "state=1", ["number"]))
    rows = list(client.query("incident", "state=1", ["number"]))  # the third request in the window: 429
    assert rows and sim.stats["429"] >= 1
    assert waits and waits[0] >= 1.0  # waited Retry-After seconds, not the 10 ms backoff
    client.close()


@pytest.mark.parametrize("fault", ["fail_next", "drop_next", "timeout_next"])
def test_transient_faults_are_retried(sim, fault):
    client = make_client(sim, timeout=0.5)
    sim.faults.update({fault: 2, "timeout_s": 2})
    assert client.find_one("change_request", "number=CHG0000001", ["number"])["number"] == "CHG0000001"
    client.close()


def test_breaker_opens_on_a_dead_instance_and_recovers(sim):
    clock = [0.0]
    client = make_client(sim, retries=1, breaker=CircuitBreaker(threshold=2, cooldown=30, clock=lambda: clock[0]))
    sim.faults.update({"down": True})
    with pytest.raises(Unavailable):
        client.find_one("incident", "state=1")
    calls = sum(sim.stats.values())
    started = time.monotonic()
    with pytest.raises(Unavailable, match="circuit open"):
        client.find_one("incident", "state=1")
    assert time.monotonic() - started < 0.1 and sum(sim.stats.values()) == calls  # no call at all
    sim.faults.update({"down": False})
    clock[0] = 31  # half-open: one trial call, which succeeds and closes the breaker
    assert client.find_one("change_request", "number=CHG0000001", ["number"]) is not None
    assert client.breaker.state == "closed"
    client.close()


def test_credentials_never_appear_in_errors(sim):
    client = ServiceNowClient(sim.base_url, Credentials("admin", "s3cr3t-pw"), retries=0, backoff=0.01)
    with pytest.raises(Exception) as info:
        client.find_one("incident", "state=1")
    assert "s3cr3t-pw" not in str(info.value) and "401" in str(info.value)
    assert "s3cr3t-pw" not in repr(client._credentials)


def test_oauth_password_grant(sim, monkeypatch):
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    client = ServiceNowClient(sim.base_url, Credentials("admin", "admin", "jit", "jit-secret"), retries=0)
    assert client.find_one("change_request", "number=CHG0000001", ["number"])["number"] == "CHG0000001"
    client.close()


# ------------------------------------------------------------ validation
def test_valid_change_passes_every_ticket_check(world):
    view = world.lc.submit("alice", "web-prod-01", "service-admin", 2 * H, "renew the TLS certificate",
                           "CHG0000001").request
    names = {c["name"]: c["passed"] for c in view.checks}
    assert names == {**names, "ticket_exists": True, "change_approved": True, "change_assignee": True,
                     "change_window": True, "change_blackout": True}


@pytest.mark.parametrize("who,ticket,hours,check", [
    ("alice", "CHG0000002", 2, "change_window"),       # approved, but its window is tomorrow
    ("alice", "CHG0000003", 2, "change_approved"),     # still awaiting approval
    ("alice", "CHG0000004", 2, "change_approved"),     # closed
    ("alice", "CHG0000001", 5, "change_window"),       # runs past the window's end
    ("alice", "CHG0009999", 2, "ticket_exists"),
    ("alice", "INC0000044", 2, "incident_open"),       # resolved incident
])
def test_ticket_checks_refuse_with_the_check_named(world, who, ticket, hours, check):
    with pytest.raises(Refused, match=check):
        world.lc.submit(who, "web-prod-01", "service-admin", hours * H, "renew the TLS certificate", ticket)
    assert world.lc.list() == []


def test_requester_outside_assignee_and_group_is_refused(world, sim, now):
    bob = next(u for u in sim.records("sys_user") if u["user_name"] == "bob")
    c = change(sim, "CHG0000001")
    sim.insert("change_request", {"number": "CHG0000010", "state": "-1", "approval": "approved",
                                  "start_date": sn_time(now - H), "end_date": sn_time(now + 4 * H),
                                  "assigned_to": bob["sys_id"], "assignment_group": "", "cmdb_ci": c["cmdb_ci"]})
    with pytest.raises(Refused, match="change_assignee.*neither the assignee \\(bob\\)"):
        world.lc.submit("alice", "web-prod-01", "service-admin", H, "renew the TLS certificate", "CHG0000010")


def glide(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S")


def add_blackout(sim, name: str, start: datetime, end: datetime, **span) -> None:
    """A blackout schedule (UTC) with one entry, as an instance keeps it."""
    schedule = sim.insert("cmn_schedule_blackout", {"name": name, "time_zone": span.pop("time_zone", "UTC")})
    sim.insert("cmn_schedule_span", {"schedule": schedule["sys_id"], "name": name, "start_date_time": glide(start),
                                     "end_date_time": glide(end), **span})


def test_blackout_refuses(world, sim, now):
    add_blackout(sim, "Black Friday", now + 30 * M, now + 3 * H)
    with pytest.raises(Refused, match="change_blackout.*Black Friday"):
        world.lc.submit("alice", "web-prod-01", "service-admin", H, "renew the TLS certificate", "CHG0000001")


def test_servicenow_down_fails_closed_for_requests_and_open_for_bypass(world, sim):
    sim.faults.update({"down": True})
    with pytest.raises(Refused, match="ticket_exists.*could not be validated"):
        world.lc.submit("alice", "web-prod-01", "service-admin", H, "renew the TLS certificate", "CHG0000001")
    view = world.lc.bypass("dave", "web-prod-01", "service-admin", H, "INC0000042", "nginx down for everyone").request
    assert view.state == "active"
    assert any(c["name"] == "incident_open" and "not verified" in c["message"] for c in view.checks)


def test_bypass_needs_an_open_incident(world):
    with pytest.raises(Refused, match="incident_open.*Resolved"):
        world.lc.bypass("dave", "web-prod-01", "service-admin", H, "INC0000044", "nginx down for everyone")


# ----------------------------------------------------- ticket-driven sync
def test_sync_turns_the_approved_change_into_one_active_grant(world, sim, backend, now):
    report = world.sync.run_once()
    assert (report.read, report.created, report.refused) == (1, 1, 0)
    [view] = world.lc.list()
    assert (view.requester, view.state, view.approval_model, view.ticket) == (
        "alice", "active", "servicenow", "CHG0000001")
    assert view.starts_at == now and view.expires_at == now + 4 * H  # the change window from now on
    assert len(backend.artifacts) == 1
    again = world.sync.run_once()
    assert again.created == 0 and len(world.lc.list()) == 1  # re-reading never makes a second request
    world.deliverer.run_once()
    assert any("Access granted to alice on web-prod-01" in n for n in notes(sim, "CHG0000001"))


def test_sync_clips_to_policy_and_waits_for_console_when_approval_does_not_count(world, sim, now, policy):
    c = change(sim, "CHG0000001")
    sim.insert("change_request", {"number": "CHG0000020", "state": "-2", "approval": "approved",
                                  "start_date": sn_time(now + H), "end_date": sn_time(now + 30 * H),
                                  "assigned_to": c["assigned_to"], "assignment_group": c["assignment_group"],
                                  "u_jit_target": "web-dev-01", "u_jit_role": "service-admin"})
    world.sync.run_once()
    view = next(v for v in world.lc.list() if v.ticket == "CHG0000020")
    assert view.state == "pending" and view.approval_model == "single"  # low tier: ServiceNow's approval doesn't count
    assert view.starts_at == now + H and view.expires_at - view.starts_at == 24 * H  # clipped to the 24h maximum


def test_sync_outage_loses_no_ticket(world, sim, now):
    sim.faults.update({"down": True})
    report = world.sync.run_once()
    assert report.error and report.created == 0
    status = world.sync.status()
    assert status.last_error and status.watermark <= now and status.errors
    sim.faults.update({"down": False})
    world.sync.tickets.client.breaker.success()
    assert world.sync.run_once().created == 1


def test_closed_ticket_revokes_early_with_a_note(world, sim, backend):
    world.sync.run_once()
    [view] = world.lc.list()
    c = change(sim, "CHG0000001")
    client = world.sync.tickets.client
    client.update("change_request", c["sys_id"], {"state": "3", "close_code": "successful"})
    report = world.sync.run_once()
    assert report.ended == 1
    view = world.lc.get(view.id)
    assert view.state == "revoked" and "closed" in view.closed_reason and backend.artifacts == {}
    world.deliverer.run_once()
    assert any("revoked by servicenow" in n for n in notes(sim, "CHG0000001"))


# --------------------------------------------------------------- write-back
def test_every_step_is_written_back_once(world, sim):
    lc = world.lc
    rid = lc.submit("alice", "web-prod-01", "service-admin", 2 * H, "renew the TLS certificate", "CHG0000001").request.id
    lc.approve("bob", rid)
    lc.approve("carol", rid)
    lc.release("alice", rid)
    denied = lc.submit("dave", "web-prod-01", "service-admin", H, "renew the TLS certificate", "CHG0000001").request.id
    lc.deny("carol", denied, "alice has it in hand")
    sim.faults.update({"fail_after_write_next": 1})  # the first note is written but its answer is lost
    world.deliverer.run_once()
    world.deliverer.run_once()
    texts = notes(sim, "CHG0000001")
    assert [t.split(":")[0] for t in texts] == [f"JIT REQ-{rid}", f"JIT REQ-{rid}", f"JIT REQ-{denied}"]
    assert "Access granted" in texts[0] and "released" in texts[1] and "denied by carol" in texts[2]
    assert len(texts) == len(set(texts))  # no duplicate despite the lost answer
    with world.lc.store.transaction() as s:
        assert {o.state for o in s.exec(select(OutboxRow).where(OutboxRow.channel == "servicenow")).all()} == {"sent"}


def test_notes_survive_an_outage(world, sim):
    rid = world.lc.submit("alice", "web-prod-01", "service-admin", H, "renew the TLS certificate",
                          "CHG0000001").request.id
    world.lc.approve("bob", rid)
    world.lc.approve("carol", rid)
    sim.faults.update({"down": True})
    report = world.deliverer.run_once()
    assert report.retried == 1 and notes(sim, "CHG0000001") == []  # the webhook still went out
    sim.faults.update({"down": False})
    world.sync.tickets.client.breaker.success()
    world.clock.advance(10 * M)
    assert world.deliverer.run_once().sent == 1
    assert len(notes(sim, "CHG0000001")) == 1


def test_bypass_review_is_noted_on_the_incident(world, sim):
    rid = world.lc.bypass("dave", "web-prod-01", "service-admin", H, "INC0000042", "nginx down for all").request.id
    world.lc.review("erin", rid, "justified", "outage confirmed")
    world.deliverer.run_once()
    texts = notes(sim, "INC0000042")
    assert any("reviewed by erin: justified" in t for t in texts) and any("Access granted to dave" in t for t in texts)


def test_auto_created_change_for_ticketless_request_and_bypass(world, sim):
    world.lc.outbox = OutboxSettings(servicenow=True, webhook=False, create_change=True)
    rid = world.lc.submit("alice", "web-dev-01", "service-admin", 10 * M, "check the nginx config").request.id
    bid = world.lc.bypass("dave", "web-prod-01", "service-admin", H, "INC0000042", "nginx down for all").request.id
    sim.faults.update({"fail_after_write_next": 1})  # the first change is created, its answer lost
    world.deliverer.run_once()
    world.clock.advance(10 * M)
    world.deliverer.run_once()
    made = [r for r in sim.records("change_request") if "[jit:req-" in r.get("description", "")]
    assert len(made) == 2  # one each, none twice
    by_type = {r["type"]: r for r in made}
    assert set(by_type) == {"normal", "emergency"}
    assert world.lc.get(rid).ticket == by_type["normal"]["number"]
    assert world.lc.get(bid).ticket == "INC0000042"  # the bypass keeps its incident; the change is noted there
    assert any(by_type["emergency"]["number"] in t for t in notes(sim, "INC0000042"))


def test_webhook_hears_approval_needed_escalation_bypass_and_expiry(world, receiver):
    lc = world.lc
    lc.submit("alice", "web-prod-01", "service-admin", H, "renew the TLS certificate", "CHG0000001")
    world.clock.advance(31 * M)
    lc.escalate_and_lapse()
    lc.bypass("dave", "web-prod-01", "service-admin", 20 * M, "INC0000042", "nginx down for all")
    world.clock.advance(6 * M)
    assert lc.warn_expiring(timedelta(minutes=15)) == 1
    assert lc.warn_expiring(timedelta(minutes=15)) == 0  # once per grant
    world.deliverer.run_once()
    texts = receiver.texts()
    assert any("needs dual approval" in t for t in texts)
    assert any("escalated" in t for t in texts)
    assert any("EMERGENCY BYPASS" in t for t in texts)
    assert any("expires at" in t for t in texts)
    assert len(texts) == 4


def test_expiry_is_written_back(world, sim):
    rid = world.lc.submit("dave", "web-prod-01", "service-admin", H, "renew the TLS certificate",
                          "CHG0000001").request.id
    world.lc.approve("bob", rid)
    world.lc.approve("carol", rid)
    world.clock.advance(H + timedelta(seconds=1))
    world.engine.run_once()  # expires the grant, then delivers the notes
    texts = notes(sim, "CHG0000001")
    assert any(f"JIT REQ-{rid}: Access for dave" in t and "expired and was removed" in t for t in texts)


def test_continuous_engine_runs_the_sync_job(store, policy, backend, tickets):
    """The sync is an APScheduler job of `jit engine`; real clock here."""
    from app.clock import system_clock
    directory = StaticDirectory({name: frozenset(groups) for name, (_, groups) in PEOPLE.items()})
    gateway = TicketGateway(tickets)
    lc = Lifecycle(store, policy, directory, {"sudo": backend}, system_clock, tickets=gateway)
    sync = TicketSync(store, lc, tickets, gateway, system_clock, timedelta(days=7))
    engine = Engine(lc, EngineSettings(sweep_interval=timedelta(minutes=10)), system_clock, sync=sync,
                    sync_interval=timedelta(seconds=1))
    engine.start()
    try:
        deadline = time.monotonic() + 10  # the request exists a moment before the run's status is saved
        while time.monotonic() < deadline and not (lc.list() and sync.status() and sync.status().last_ok_at):
            time.sleep(0.1)
        assert [v.ticket for v in lc.list()] == ["CHG0000001"]
        assert sync.status().last_ok_at is not None
    finally:
        engine.stop()
