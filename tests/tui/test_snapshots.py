"""Snapshots of every console screen on fixed data (the story) and a frozen clock.

Review changes with ``pytest tests/tui --snapshot-report``'s HTML before ``--snapshot-update``."""
from __future__ import annotations

from console_world import World, settle
from app.tui.console import JitConsole

WIDE = (100, 30)
SMALL = (80, 24)


def console(world: World, person: str) -> JitConsole:
    return JitConsole(world.data(person), cursor_blink=False)


def keys(*presses: str):
    """run_before: settle, press each key and settle again, so the screenshot never races a worker."""
    async def run(pilot) -> None:
        await settle(pilot)
        for key in presses:
            await pilot.press(key)
            await settle(pilot)
    return run


def test_queue(snap_compare, story_world: World) -> None:
    # bob: REQ-1 escalated (marked "!"), 1 of 2 approvals; REQ-4 and REQ-8 waiting.
    assert snap_compare(console(story_world, "bob"), terminal_size=WIDE, run_before=keys("down"))


def test_queue_80x24(snap_compare, story_world: World) -> None:
    assert snap_compare(console(story_world, "bob"), terminal_size=SMALL, run_before=keys("down"))


def test_detail(snap_compare, story_world: World) -> None:
    assert snap_compare(console(story_world, "bob"), terminal_size=WIDE, run_before=keys("enter"))


def test_grants(snap_compare, story_world: World) -> None:
    # REQ-7 expires in 4 min ("!!"), REQ-5 in 12 min ("!"), the bypass and REQ-3 later.
    assert snap_compare(console(story_world, "erin"), terminal_size=WIDE, run_before=keys("2", "down", "down", "down"))


def test_bypass_form(snap_compare, story_world: World) -> None:
    assert snap_compare(console(story_world, "dave"), terminal_size=WIDE, run_before=keys("b"))


def test_reviews(snap_compare, story_world: World) -> None:
    assert snap_compare(console(story_world, "erin"), terminal_size=WIDE, run_before=keys("3"))


def test_audit(snap_compare, story_world: World) -> None:
    assert snap_compare(console(story_world, "erin"), terminal_size=WIDE, run_before=keys("4"))


def test_health(snap_compare, story_world: World) -> None:
    assert snap_compare(console(story_world, "erin"), terminal_size=WIDE, run_before=keys("5"))


def test_help(snap_compare, story_world: World) -> None:
    assert snap_compare(console(story_world, "bob"), terminal_size=WIDE, run_before=keys("question_mark"))


def test_confirm_modal(snap_compare, story_world: World) -> None:
    assert snap_compare(console(story_world, "bob"), terminal_size=WIDE, run_before=keys("d"))
