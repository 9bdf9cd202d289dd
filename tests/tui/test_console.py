"""The console driven with Pilot through the real lifecycle on a sandbox (SQLite, the sudo backend)."""
from __future__ import annotations

import dataclasses
import logging
import sys
import threading
from datetime import timedelta

import pytest
from textual.widgets import Input, Select, Static

from app.tui.modals import ConfirmModal
from app.tui.screens.bypass import BypassScreen
from app.tui.screens.detail import DetailScreen
from app.tui.screens.grants import GrantsScreen
from app.tui.screens.help import HelpScreen
from app.tui.screens.queue import QueueScreen
from app.tui.screens.reviews import ReviewsScreen
from app.tui.widgets.keyed_table import KeyedTable
from console_world import ADMIN, DEV, PROD, T0, RecordingConsole, World, settle, until

SIZE = (100, 30)


def console(world: World, person: str, **kwargs) -> RecordingConsole:
    return RecordingConsole(world.data(person), cursor_blink=False, **kwargs)


def table(app) -> KeyedTable:
    return app.screen.query_one(KeyedTable)


async def shown(pilot, *keys: str) -> None:
    """Wait until the current screen's table shows exactly these row keys (request ids)."""
    await until(pilot, lambda: table(pilot.app).shown_keys == list(keys), what=f"rows {keys}")


async def type_text(pilot, text: str) -> None:
    await pilot.press(*text)


async def confirm(pilot, **values: str) -> None:
    """Fill the confirmation modal's fields, press Enter in the last one, wait for the action to finish."""
    modal = pilot.app.screen
    assert isinstance(modal, ConfirmModal), f"expected the confirmation, got {modal!r}"
    for name, value in values.items():
        modal.query_one(f"#field-{name}", Input).value = value
    modal.query(Input).last().focus()
    await pilot.press("enter")
    await settle(pilot)


def titles(app) -> list[str]:
    return [title for title, _, _ in app.notes]


# ------------------------------------------------------------------ approvals
async def test_dual_approval_bob_then_carol_makes_it_active(world: World) -> None:
    rid = world.request("alice", PROD, timedelta(hours=2), "restart nginx after the TLS renewal", "CHG0000001")
    app = console(world, "bob")
    async with app.run_test(size=SIZE) as pilot:
        await shown(pilot, str(rid))
        await pilot.press("a")
        await settle(pilot)
        assert app.screen.title_text == f"Approve REQ-{rid}"
        await type_text(pilot, "ok for the renewal")
        await pilot.press("enter")  # Enter in the last field confirms
        await settle(pilot)
        assert ("REQ-1", "REQ-1: approved by bob; 1 of 2 approvals, still needs a member of system-owners.",
                "information") in app.notes
        view = world.lifecycle.get(rid)
        assert view.state == "pending" and [a.approver for a in view.approvals] == ["bob"]
        assert view.approvals[0].comment == "ok for the renewal"
        assert table(app).cell(str(rid), "approvals").plain == "1/2"  # the row updated in place

    app = console(world, "carol")
    async with app.run_test(size=SIZE) as pilot:
        await shown(pilot, str(rid))
        await pilot.press("a")
        await confirm(pilot)
        assert world.lifecycle.get(rid).state == "active"
        assert (world.root / "sudoers.d" / "jit_g1").exists()
        await shown(pilot)  # gone from the queue
        await pilot.press("2")
        await shown(pilot, str(rid))  # and among the active grants


async def test_own_request_is_not_offered_and_the_lifecycle_refuses_it(world: World) -> None:
    rid = world.request("alice", PROD, timedelta(hours=2), "restart nginx after the TLS renewal", "CHG0000001")
    app = console(world, "alice")
    async with app.run_test(size=SIZE) as pilot:
        await shown(pilot, str(rid))
        assert app.screen.check_action("approve", ()) is False  # alice approves nothing: not offered
        await pilot.press("a")
        await settle(pilot)
        assert isinstance(app.screen, QueueScreen)

    # Offer it anyway: what decides is the lifecycle, and its refusal is what the operator sees. The
    # console itself now says at the key press that it is her own request; past that guard (as a
    # console that did not know would), the server refuses.
    data = world.data("alice")
    data.operator = dataclasses.replace(data.operator, can_approve=True)
    app = RecordingConsole(data, cursor_blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await shown(pilot, str(rid))
        await pilot.press("a")
        await settle(pilot)
        assert any(f"REQ-{rid} is your own request" in m for _, m, _ in app.notes)
        app.start_action("approve", rid, "alice's own request")
        await settle(pilot)
        await confirm(pilot)
        assert (f"REQ-{rid} refused: approval", "a requester can never approve their own request.", "error") \
            in app.notes
        assert world.lifecycle.get(rid).state == "pending"
        await shown(pilot, str(rid))


async def test_second_approval_by_the_same_person_is_refused_with_its_rule(world: World) -> None:
    rid = world.request("alice", PROD, timedelta(hours=2), "restart nginx after the TLS renewal", "CHG0000001")
    world.lifecycle.approve("bob", rid)
    app = console(world, "bob")
    async with app.run_test(size=SIZE) as pilot:
        await shown(pilot, str(rid))
        await pilot.press("a")  # the console knows: dimmed, and the key says why
        await settle(pilot)
        assert any(f"you approved REQ-{rid} already" in m for _, m, _ in app.notes)
        app.start_action("approve", rid, "bob again")  # past the console's guard, the server refuses
        await settle(pilot)
        await confirm(pilot)
        assert (f"REQ-{rid} refused: approval", "bob has already approved this request; one person counts once.",
                "error") in app.notes
        assert len(world.lifecycle.get(rid).approvals) == 1


async def test_deny_needs_a_reason_then_closes_the_request(world: World) -> None:
    rid = world.request("alice", DEV, timedelta(hours=3), "longer dev work on the nginx config")
    app = console(world, "bob")
    async with app.run_test(size=SIZE) as pilot:
        await shown(pilot, str(rid))
        await pilot.press("d")
        await settle(pilot)
        await pilot.press("enter")  # no reason yet
        await settle(pilot)
        assert isinstance(app.screen, ConfirmModal)
        assert "reason is required" in str(app.screen.query_one("#modal-error", Static).content)
        await type_text(pilot, "use the shared dev box")
        await pilot.press("enter")
        await settle(pilot)
        view = world.lifecycle.get(rid)
        assert (view.state, view.closed_by, view.closed_reason) == ("denied", "bob", "use the shared dev box")
        await shown(pilot)


async def test_cancelling_the_modal_does_nothing(world: World) -> None:
    rid = world.request("alice", DEV, timedelta(hours=3), "longer dev work on the nginx config")
    app = console(world, "bob")
    async with app.run_test(size=SIZE) as pilot:
        await shown(pilot, str(rid))
        await pilot.press("d")
        await settle(pilot)
        await pilot.press("escape")
        await settle(pilot)
        assert isinstance(app.screen, QueueScreen)
        assert world.lifecycle.get(rid).state == "pending"


# ------------------------------------------------------------------ grants
async def test_erin_revokes_an_active_grant(world: World) -> None:
    rid = world.request("alice", DEV, timedelta(minutes=10), "check the nginx config on dev")  # self-service
    drop_in = world.root / "sudoers.d" / "jit_g1"
    assert drop_in.exists()
    app = console(world, "erin")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await shown(pilot, str(rid))
        assert app.screen.check_action("extend", ()) is False  # security revokes, it does not extend
        await pilot.press("r")
        await confirm(pilot, reason="suspicious activity on the dev box")
        view = world.lifecycle.get(rid)
        assert (view.state, view.closed_by) == ("revoked", "erin")
        assert not drop_in.exists()
        await shown(pilot)


async def test_bob_extends_a_grant_and_the_row_updates_in_place(world: World) -> None:
    rid = world.request("alice", DEV, timedelta(hours=1), "longer dev work on the nginx config")
    world.lifecycle.approve("bob", rid)
    before = world.lifecycle.get(rid).expires_at
    app = console(world, "bob")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await shown(pilot, str(rid))
        await pilot.press("e")
        await settle(pilot)
        await confirm(pilot, by="soon", reason="the config needs more work")  # not a duration
        assert isinstance(app.screen, ConfirmModal)
        assert "is not a duration" in str(app.screen.query_one("#modal-error", Static).content)
        await confirm(pilot, by="90m")
        after = world.lifecycle.get(rid).expires_at
        assert after - before == timedelta(minutes=90)
        await until(pilot, lambda: table(app).cell(str(rid), "expires").plain == after.strftime("%H:%M:%S"),
                    what="the new expiry on screen")


async def test_countdown_updates_only_the_cells_whose_text_changed(world: World) -> None:
    world.clock.at = T0 - timedelta(minutes=20)
    old = world.request("alice", DEV, timedelta(minutes=10), "check the nginx config on dev")  # past expiry at T0
    world.clock.at = T0
    live = world.request("dave", DEV, timedelta(minutes=10), "check the dev proxy settings")
    app = console(world, "erin")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await shown(pilot, str(old), str(live))
        grid = table(app)
        assert grid.cell(str(old), "left").plain == "  expired XX"
        assert grid.cell(str(live), "left").plain == "  0:10:00 ! "
        drawn: list[str] = []  # the rows whose line was drawn again, by their label
        original = grid._line
        grid._line = lambda cells, *a: (drawn.append(cells[0].plain), original(cells, *a))[1]

        world.clock.advance(timedelta(seconds=1))
        await until(pilot, lambda: grid.cell(str(live), "left").plain == "  0:09:59 ! ", what="the tick")
        await pilot.pause(1.1)  # another tick: nothing changed, so nothing is drawn again
        assert set(drawn) == {f"REQ-{live}"}

        world.clock.advance(timedelta(minutes=5))  # under five minutes: the error marker
        await until(pilot, lambda: grid.cell(str(live), "left").plain == "  0:04:59 !!", what="the error marker")
        assert "bold" in str(grid.cell(str(live), "left").style)
        assert set(drawn) == {f"REQ-{live}"}


# ------------------------------------------------------------------ bypass and reviews
async def test_dave_bypasses_from_the_form_and_a_second_is_refused(world: World) -> None:
    app = console(world, "dave")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("b")
        await settle(pilot)
        form = app.screen
        assert isinstance(form, BypassScreen)
        assert form.query_one("#bypass-duration", Input).value == "1h"
        assert app.focused is form.query_one("#bypass-incident", Input)  # straight to the incident
        form.query_one("#bypass-choice", Select).value = (PROD, ADMIN)
        await type_text(pilot, "INC0000042")
        await pilot.press("tab")
        await type_text(pilot, "nginx down, customers affected")
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, GrantsScreen)  # done: the grants, with the bypass on them
        [view] = world.lifecycle.open_reviews()
        assert (view.kind, view.state, view.requester, view.ticket) == ("bypass", "active", "dave", "INC0000042")
        await shown(pilot, str(view.id))

        await pilot.press("b")
        await settle(pilot)
        form = app.screen
        form.query_one("#bypass-choice", Select).value = (PROD, ADMIN)
        form.query_one("#bypass-incident", Input).value = "INC0000043"
        form.query_one("#bypass-reason", Input).value = "nginx down again"
        await pilot.press("ctrl+s")
        await settle(pilot)
        assert app.screen is form  # refused: the form stays, saying why
        assert "refused (policy)" in str(form.query_one("#bypass-error", Static).content)
        assert "Bypass refused: policy" in titles(app)


async def test_bypass_is_only_offered_to_on_call(world: World) -> None:
    app = console(world, "bob")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.check_action("bypass", ()) is False
        await pilot.press("b")
        await settle(pilot)
        assert not isinstance(app.screen, BypassScreen)


async def test_erin_reviews_a_bypass_dave_cannot_review_his_own(world: World) -> None:
    rid = world.lifecycle.bypass("dave", PROD, ADMIN, timedelta(hours=1), "INC0000042",
                                 "nginx down, customers affected").request.id
    app = console(world, "dave")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await shown(pilot, str(rid))
        assert app.screen.check_action("justified", ()) is False
        await pilot.press("y")
        await settle(pilot)
        assert isinstance(app.screen, ReviewsScreen)

    app = console(world, "erin")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("3")
        await shown(pilot, str(rid))
        await pilot.press("y")
        await confirm(pilot, comment="outage INC0000042 confirmed")
        review = world.lifecycle.get(rid).review
        assert (review["state"], review["reviewer"]) == ("justified", "erin")
        await shown(pilot)


# ------------------------------------------------------------------ queue: filter, sort, live updates
async def test_filter_and_sort_the_queue(world: World) -> None:
    a = world.request("alice", PROD, timedelta(hours=2), "restart nginx after the TLS renewal", "CHG0000001")
    world.clock.advance(timedelta(minutes=1))
    b = world.request("alice", DEV, timedelta(hours=3), "longer dev work on the nginx config")
    world.clock.advance(timedelta(minutes=1))
    c = world.request("dave", PROD, timedelta(hours=1), "rotate the nginx access logs", "CHG0000002")
    app = console(world, "bob")
    async with app.run_test(size=SIZE) as pilot:
        await shown(pilot, str(a), str(b), str(c))
        await pilot.press("down", "down")  # the cursor on c
        await pilot.press("slash")
        await type_text(pilot, "web-prod")
        await shown(pilot, str(a), str(c))
        assert table(app).current_key == str(c)  # the cursor stayed on its row
        await pilot.press("enter")  # keep the filter, back to the table
        assert isinstance(app.focused, KeyedTable)
        await pilot.press("s", "s")  # urgency -> oldest -> requester
        await shown(pilot, str(a), str(c))
        assert "order: requester" in str(app.screen.query_one("#queue-status", Static).content)
        await pilot.press("slash", "escape")  # clear
        await shown(pilot, str(a), str(b), str(c))
        await pilot.press("slash")
        await type_text(pilot, "[b]")  # typed text is never taken for markup
        await shown(pilot)
        assert "filter '[b]': 0 shown" in str(app.screen.query_one("#queue-status", Static).content)


async def test_changes_made_elsewhere_appear_within_two_seconds(world: World) -> None:
    first = world.request("alice", DEV, timedelta(hours=3), "longer dev work on the nginx config")
    app = console(world, "bob")
    async with app.run_test(size=SIZE) as pilot:
        await shown(pilot, str(first))
        await pilot.press("down")
        second = world.request("dave", PROD, timedelta(hours=1), "rotate the nginx access logs", "CHG0000002")
        took = await until(pilot, lambda: table(app).shown_keys == [str(first), str(second)], timeout=2.0,
                           what="the new request in the queue")
        assert took < 2.0
        assert table(app).current_key == str(first)  # the cursor did not move
        world.lifecycle.deny("erin", first, "not this week")
        await until(pilot, lambda: table(app).shown_keys == [str(second)], timeout=2.0, what="the denial")


# ------------------------------------------------------------------ detail
async def test_detail_shows_checks_approvals_history_and_the_ticket_loading(world: World) -> None:
    rid = world.request("alice", PROD, timedelta(hours=2), "restart nginx after the TLS renewal", "CHG0000001")
    world.lifecycle.approve("bob", rid, "ok for the renewal")
    data = world.data("carol")
    gate = threading.Event()
    asked: list[str] = []

    def slow_ticket(number: str) -> dict:
        asked.append(number)
        gate.wait(10)
        return {"number": number, "status": "found", "state": "Scheduled", "approval": "approved",
                "start": T0, "end": T0 + timedelta(hours=4), "assignee": "alice", "group": "web-ops", "error": ""}

    data.ticket = slow_ticket
    app = RecordingConsole(data, cursor_blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await shown(pilot, str(rid))
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, DetailScreen)

        def text(key: str) -> str:
            return str(screen.query_one(f"#detail-{key}", Static).content)

        await until(pilot, lambda: "loading…" in text("ticket"), what="the ticket loading")
        await until(pilot, lambda: "business_need" in text("checks"), what="the checks")
        assert "✓ pass duration_reasonable: 2h is within the 8h maximum" in text("checks")
        assert "bob (managers)" in text("approvals") and "ok for the renewal" in text("approvals")
        assert "request.submitted" in text("history") and "approval.given" in text("history")
        assert screen.check_action("approve", ()) is True and screen.check_action("revoke", ()) is False
        gate.set()
        await until(pilot, lambda: "Scheduled" in text("ticket"), what="the ticket")
        assert asked == ["CHG0000001"]

        def broken(number: str) -> dict:
            raise TimeoutError("ServiceNow did not answer within 10s")

        data.ticket = broken
        await pilot.press("t")
        await until(pilot, lambda: "ServiceNow unavailable" in text("ticket"), what="the outage")
        assert "did not answer" in text("ticket")

        await pilot.press("a")
        await confirm(pilot)
        await until(pilot, lambda: "[ACTIVE]" in str(screen.query_one("#detail-summary", Static).content),
                    what="the detail reloaded")
        assert screen.check_action("approve", ()) is False and screen.check_action("revoke", ()) is True
        await pilot.press("escape")
        assert isinstance(app.screen, QueueScreen)


# ------------------------------------------------------------------ keys, help, palette
async def test_keymap_remaps_bindings_by_id(world: World) -> None:
    rid = world.request("alice", DEV, timedelta(hours=3), "longer dev work on the nginx config")
    app = console(world, "bob", keymap={"approve": "y", "view-grants": "g"})
    async with app.run_test(size=SIZE) as pilot:
        await shown(pilot, str(rid))
        assert "g Grants" in str(app.screen.query_one("#nav").render())
        await pilot.press("a")
        await settle(pilot)
        assert isinstance(app.screen, QueueScreen)
        await pilot.press("y")
        await settle(pilot)
        assert isinstance(app.screen, ConfirmModal)
        await pilot.press("escape")
        await pilot.press("g")
        await settle(pilot)
        assert isinstance(app.screen, GrantsScreen)


@pytest.mark.parametrize(("person", "offered", "hidden"), [
    ("bob", {"Approve", "Deny", "Filter", "Sort", "Queue", "Help"}, {"Bypass"}),
    ("alice", {"Filter", "Sort"}, {"Approve", "Deny", "Bypass"}),
    ("dave", {"Bypass"}, {"Approve", "Deny"}),
])
async def test_help_lists_the_keys_offered_here_and_everywhere(world: World, person: str, offered: set[str],
                                                              hidden: set[str]) -> None:
    app = console(world, person)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        await settle(pilot)
        assert isinstance(app.screen, HelpScreen)
        described = {k.description.split(" (")[0] for k in app.screen.keys}
        assert offered <= described and not (hidden & described)
        assert {k.section for k in app.screen.keys} == {"Queue", "Everywhere"}
        await pilot.press("escape")
        assert isinstance(app.screen, QueueScreen)


async def test_command_palette_offers_the_same_actions(world: World) -> None:
    rid = world.request("alice", DEV, timedelta(hours=3), "longer dev work on the nginx config")
    app = console(world, "bob")
    async with app.run_test(size=SIZE) as pilot:
        await shown(pilot, str(rid))
        await pilot.press("ctrl+p")
        await settle(pilot)
        await type_text(pilot, f"Approve REQ-{rid}")
        await pilot.pause(0.3)
        await settle(pilot)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmModal), what="the confirmation")
        assert app.screen.title_text == f"Approve REQ-{rid}"
        await confirm(pilot)
        assert world.lifecycle.get(rid).state == "active"

        await pilot.press("ctrl+p")
        await settle(pilot)
        await type_text(pilot, "Open audit log")
        await pilot.pause(0.3)
        await settle(pilot)
        await pilot.press("enter")
        await until(pilot, lambda: app.current_mode == "audit", what="the audit log")


async def test_audit_log_filters_in_the_database_and_shows_the_chain(world: World) -> None:
    world.request("alice", DEV, timedelta(hours=3), "longer dev work on the nginx config")
    world.lifecycle.bypass("dave", PROD, ADMIN, timedelta(hours=1), "INC0000042", "nginx down, customers affected")
    app = console(world, "erin")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        # submitted (REQ-1, pending); bypass.used, grant.applying, grant.active (REQ-2); newest first
        await shown(pilot, "4", "3", "2", "1")
        status = app.screen.query_one("#audit-chain", Static)
        await until(pilot, lambda: "✓ verified: 4 events, chain intact" in str(status.content), what="the chain")
        await pilot.press("slash")
        await type_text(pilot, "bypass")
        await shown(pilot, "2")
        assert table(app).cell("2", "action").plain == "bypass.used"
        await pilot.press("enter", "enter")  # keep the filter, then open the event's request
        await settle(pilot)
        assert isinstance(app.screen, DetailScreen) and app.screen.request_id == 2


async def test_log_records_stay_off_the_screen_while_the_console_runs(world: World) -> None:
    root = logging.getLogger()
    terminal = logging.StreamHandler(sys.__stderr__)  # what logging.basicConfig in bootstrap installs
    root.addHandler(terminal)
    try:
        app = console(world, "bob")
        async with app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            assert terminal not in root.handlers
        assert terminal in root.handlers and app._log_handler not in root.handlers
    finally:
        root.removeHandler(terminal)


# ------------------------------------------------------------------ a worker that raises
def gone(*args) -> None:
    raise ConnectionError("the database went away")


async def test_a_failed_load_is_notified_and_the_queue_keeps_its_rows(world: World) -> None:
    rid = world.request("alice", DEV, timedelta(hours=3), "longer dev work on the nginx config")
    data = world.data("bob")
    app = RecordingConsole(data, cursor_blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await shown(pilot, str(rid))
        data.queue = gone
        app.screen.reload()
        await until(pilot, lambda: ("Could not load the queue", "ConnectionError: the database went away", "error")
                    in app.notes, what="the failure notified")
        assert table(app).shown_keys == [str(rid)]  # what was shown stays
        del data.queue  # the database is back: the console still answers and loads
        await pilot.press("2")
        await until(pilot, lambda: isinstance(app.screen, GrantsScreen), what="the grants")
        await pilot.press("1")
        world.lifecycle.deny("erin", rid, "not this week")
        await shown(pilot)


async def test_a_failed_verification_is_shown_in_the_chain_status_not_notified(world: World) -> None:
    world.request("alice", DEV, timedelta(hours=3), "longer dev work on the nginx config")
    data = world.data("erin")
    data.audit_status = gone
    app = RecordingConsole(data, cursor_blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("4")
        await shown(pilot, "1")
        status = app.screen.query_one("#audit-chain", Static)
        await until(pilot, lambda: "✗ CHAIN BROKEN: could not verify: the database went away" in str(status.content),
                    what="the chain's status")
        assert app.notes == []


async def test_a_failed_bypass_keeps_the_form_open_saying_why(world: World) -> None:
    data = world.data("dave")
    data.bypass = gone
    app = RecordingConsole(data, cursor_blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("b")
        await settle(pilot)
        form = app.screen
        assert isinstance(form, BypassScreen)
        form.query_one("#bypass-choice", Select).value = (PROD, ADMIN)
        form.query_one("#bypass-incident", Input).value = "INC0000042"
        form.query_one("#bypass-reason", Input).value = "nginx down, customers affected"
        await pilot.press("ctrl+s")
        error = form.query_one("#bypass-error", Static)
        await until(pilot, lambda: "✗ failed: ConnectionError: the database went away" in str(error.content),
                    what="the form saying why")
        assert app.screen is form and not form.query_one("#bypass-go").disabled  # try again
        assert app.notes == []  # the form says it; a refusal alone is notified too


# ------------------------------------------------------------------ the engine, seen from the header
def header(app) -> str:
    from app.tui.widgets.whoami import WhoAmI
    return str(app.screen.query_one(WhoAmI).render())


async def test_the_header_says_when_no_engine_is_heard_from(world: World) -> None:
    app = console(world, "bob")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: "no engine has reported" in header(app), what="the warning")
        assert header(app).index("no engine") < header(app).index("operator")  # before what a narrow bar cuts
        world.services.engine.heartbeat()  # an engine reports (the world's clock: now)
        app.check_engine()
        await until(pilot, lambda: "no engine" not in header(app), what="the warning gone")
        world.clock.at = world.clock.at + timedelta(minutes=7)  # silent since
        app.check_engine()
        await until(pilot, lambda: "no engine heard from for 7m" in header(app), what="how long")
        await pilot.press("2")  # every screen's header says it
        await until(pilot, lambda: isinstance(app.screen, GrantsScreen) and "no engine heard from" in header(app),
                    what="the grants screen's header")


# ------------------------------------------------------------------ keys: j/k, q, the ids of [console.keys]
async def test_j_and_k_move_like_the_arrows(world: World) -> None:
    for _ in range(3):
        world.request("alice", PROD, timedelta(hours=1), "restart nginx after the TLS renewal", "CHG0000001")
    app = console(world, "bob")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: len(table(app).shown_keys) == 3, what="three rows")
        start = table(app).current_key
        await pilot.press("j")
        assert table(app).current_key == table(app).shown_keys[1] != start
        await pilot.press("k")
        assert table(app).current_key == start


async def test_q_quits_at_once_with_nothing_typed_and_asks_when_something_would_be_lost(world: World) -> None:
    app = console(world, "dave")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("b")
        await until(pilot, lambda: isinstance(app.screen, BypassScreen), what="the bypass form")
        await settle(pilot)
        assert "loading" not in str(app.screen.query_one("#bypass-choice", Select).prompt)  # no stale row
        app.screen.query_one("#bypass-reason", Input).value = "nginx down for every customer"
        app.set_focus(None)
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmModal), what="the question")
        assert "Quit the console?" in str(app.screen.query_one("#modal-title", Static).render())
        await pilot.press("escape")  # no: back to the form, what was typed kept
        await until(pilot, lambda: isinstance(app.screen, BypassScreen), what="the form again")
        assert app.screen.query_one("#bypass-reason", Input).value == "nginx down for every customer"
        assert app.is_running
    quiet = console(world, "bob")
    async with quiet.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("q")
        await settle(pilot)
        assert not quiet.is_running  # nothing typed: no question
    untouched = console(world, "dave")
    async with untouched.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("b")
        await until(pilot, lambda: isinstance(untouched.screen, BypassScreen), what="the bypass form")
        await settle(pilot)
        untouched.set_focus(None)
        await pilot.press("q")  # only the prefilled duration: nothing typed is lost
        await settle(pilot)
        assert not untouched.is_running


async def test_help_lists_q_and_every_binding_id_is_one_config_knows() -> None:
    from textual.binding import Binding
    import app.tui.console as app_module
    from app.domain.console import BINDING_IDS
    from app.tui import modals
    from app.tui.screens import audit, bypass, detail, event, grants, health, help, queue, reviews
    from app.tui.widgets import filter_bar
    ids = {b.id for module in (app_module, modals, audit, bypass, detail, event, grants, health, help, queue, reviews,
                               filter_bar)
           for cls in vars(module).values() if isinstance(cls, type) and cls.__module__ == module.__name__
           for b in getattr(cls, "BINDINGS", []) if isinstance(b, Binding) and b.id}
    assert ids == set(BINDING_IDS)
    quit_binding = next(b for b in app_module.JitConsole.BINDINGS if b.id == "quit")
    assert quit_binding.tooltip  # so the help lists it


async def test_help_shows_q(world: World) -> None:
    app = console(world, "bob")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), what="help")
        text = str(app.screen.query_one("#help-keys", Static).render())
        assert "  q, ^q  Quit       quit          Leave the console" in text.splitlines()


async def test_a_key_one_may_not_use_says_why_and_is_not_offered(world: World) -> None:
    rid = world.request("alice", PROD, timedelta(hours=1), "restart nginx after the TLS renewal", "CHG0000001")
    world.lifecycle.approve("bob", rid)  # bob gave his approval: the dual request waits for a system owner
    app = console(world, "bob")
    async with app.run_test(size=SIZE) as pilot:
        await shown(pilot, str(rid))
        assert app.screen.check_action("approve", ()) is None  # dimmed, not offered on this row
        await pilot.press("a")
        await settle(pilot)
        assert not isinstance(app.screen, ConfirmModal)
        assert any(f"Approve: you approved REQ-{rid} already: one person counts once" in message
                   for _, message, _ in app.notes)
    other = console(world, "alice")
    async with other.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("b")  # alice is not on call
        await settle(pilot)
        assert not isinstance(other.screen, BypassScreen)
        assert any("only the emergency group may bypass; alice is not in it" in m for _, m, _ in other.notes)
        await pilot.press("2")
        await until(pilot, lambda: isinstance(other.screen, GrantsScreen), what="grants")
        await pilot.press("r")  # alice may not revoke
        await settle(pilot)
        assert any(m.startswith("Revoke: ") for _, m, _ in other.notes)
        other.notes.clear()
        await pilot.press("slash", "r", "e")  # typed into the filter: no word about revoking
        await settle(pilot)
        assert other.notes == []


async def test_a_policy_refusal_keeps_what_was_typed_to_be_corrected(world: World) -> None:
    rid = world.request("alice", DEV, timedelta(hours=1), "longer dev work on the nginx config")
    world.lifecycle.approve("bob", rid)
    app = console(world, "bob")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await shown(pilot, str(rid))
        await pilot.press("e")
        await settle(pilot)
        await confirm(pilot, by="30d", reason="the config needs a lot more work")  # past the 24h maximum
        await until(pilot, lambda: isinstance(app.screen, ConfirmModal) and "refused" in str(
            app.screen.query_one("#modal-error", Static).content), what="the form again, with the refusal")
        modal = app.screen
        assert "duration_reasonable" in str(modal.query_one("#modal-error", Static).content)
        assert modal.query_one("#field-by", Input).value == "30d"
        assert modal.query_one("#field-reason", Input).value == "the config needs a lot more work"
        await confirm(pilot, by="1h")  # corrected: only the duration
        assert world.lifecycle.get(rid).expires_at - world.lifecycle.get(rid).starts_at == timedelta(hours=2)


async def test_the_first_enter_after_correcting_a_field_confirms(world: World) -> None:
    rid = world.request("alice", DEV, timedelta(hours=1), "longer dev work on the nginx config")
    world.lifecycle.approve("bob", rid)
    before = world.lifecycle.get(rid).expires_at
    app = console(world, "bob")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("2")
        await shown(pilot, str(rid))
        await pilot.press("e")
        await settle(pilot)
        modal = app.screen
        modal.query_one("#field-by", Input).value = "soon"
        modal.query_one("#field-reason", Input).value = "the config needs more work"
        modal.query_one("#field-reason", Input).focus()
        await pilot.press("enter")  # refused by the form: the focus goes to the duration
        await settle(pilot)
        assert app.focused is modal.query_one("#field-by", Input)
        app.focused.value = "45m"
        await pilot.press("enter")  # this Enter confirms: nothing else is missing
        await settle(pilot)
        assert not isinstance(app.screen, ConfirmModal)
        assert world.lifecycle.get(rid).expires_at - before == timedelta(minutes=45)


async def test_at_80_columns_the_columns_that_decide_stay_on_screen(world: World) -> None:
    world.request("alice", PROD, timedelta(hours=1), "restart nginx after the TLS renewal", "CHG0000001")
    world.request("alice", DEV, timedelta(minutes=10), "check the nginx config on dev")  # active
    app = console(world, "erin")
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: table(app).row_count == 1, what="the queue")
        header = "".join(seg.text for seg in table(app).render_line(0)._segments)
        assert all(name in header for name in ("Request", "Target", "Role", "Verdict", "Ticket")), header
        await pilot.press("2")
        await until(pilot, lambda: isinstance(app.screen, GrantsScreen) and table(app).row_count == 1,
                    what="the grants")
        header = "".join(seg.text for seg in table(app).render_line(0)._segments)
        assert all(name in header for name in ("Grantee", "Left", "Backend", "Kind")), header


async def test_a_request_for_what_the_person_already_holds_is_flagged_to_the_approver(world: World) -> None:
    held = world.request("alice", DEV, timedelta(minutes=10), "check the nginx config on dev")  # active at once
    again = world.request("alice", DEV, timedelta(hours=2), "longer dev work on the nginx config")  # pending
    other = world.request("dave", DEV, timedelta(hours=2), "profile the staging cache")
    app = console(world, "bob")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: table(app).row_count == 2, what="the queue")
        assert f"holds REQ-{held}" in table(app).cell(str(again), "verdict").plain
        assert "holds" not in table(app).cell(str(other), "verdict").plain
        assert f"alice already holds this role on web-dev-01: REQ-{held} until" in app.screen._summary(
            app.screen.by_key[str(again)])



async def test_an_event_about_no_request_opens_on_its_own(world: World) -> None:
    with pytest.raises(Exception):  # refused: over the 8h maximum; the refusal is audited, about no request
        world.request("alice", PROD, timedelta(hours=9), "a whole day on the web tier", "CHG0000001")
    app = console(world, "erin")
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("4")
        await until(pilot, lambda: table(app).row_count >= 1, what="the audit log")
        [seq] = [k for k in table(app).shown_keys if app.screen.by_seq[k].action == "request.refused"]
        while table(app).current_key != seq:
            await pilot.press("down")
        await pilot.press("enter")
        from app.tui.screens.event import EventScreen
        await until(pilot, lambda: isinstance(app.screen, EventScreen), what="the event")
        await until(pilot, lambda: "duration_reasonable" in str(app.screen.query_one("#event-details", Static).render()),
                    what="its details")
        shown = str(app.screen.query_one("#event-details", Static).render())
        assert "request.refused" in shown and "alice" in shown and "hash" in shown
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, EventScreen), what="back to the log")
