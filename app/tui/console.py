"""``JitConsole``: the approval console. Screens show; the data source (``ConsoleSource``: the
database's ``ConsoleData`` or the API's ``RemoteConsoleData``) decides; workers do the waiting."""
from __future__ import annotations

import dataclasses
import gc
import logging
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

from textual import events, on, work
from textual.actions import parse as parse_action
from textual.app import App
from textual.binding import Binding
from textual.logging import TextualHandler
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Input

from app.domain.errors import BadInput, Refused
from app.domain.console import ConsoleSource
from app.tui.actions import ACTIONS, perform
from app.tui.commands import ConsoleCommands
from app.tui.modals import ConfirmModal
from app.tui.screens.audit import AuditScreen
from app.tui.screens.base import Chrome, ConsoleScreen, RowScreen
from app.tui.screens.bypass import BypassScreen
from app.tui.screens.detail import DetailScreen
from app.tui.screens.grants import GrantsScreen
from app.tui.screens.health import HealthScreen
from app.tui.screens.help import HelpScreen, KeyHelp
from app.tui.screens.queue import QueueScreen
from app.tui.screens.reviews import ReviewsScreen
from app.tui.widgets.filter_bar import FilterBar
from app.tui.widgets.whoami import WhoAmI
from app.tui import formatting as fmt
from policies.authority import offered

VIEWS: dict[str, type[ConsoleScreen]] = {
    "queue": QueueScreen, "grants": GrantsScreen, "reviews": ReviewsScreen, "audit": AuditScreen,
    "health": HealthScreen,
}
SCREEN_NAMES = {
    QueueScreen: "Queue", GrantsScreen: "Active grants", ReviewsScreen: "Reviews", AuditScreen: "Audit log",
    HealthScreen: "Health", DetailScreen: "Request detail", BypassScreen: "Emergency bypass",
}


class JitConsole(App[None]):
    """The console for ``data.operator``.

    ``keymap`` remaps bindings by id (``{"approve": "y", "view-grants": "g"}``). The engine runs
    elsewhere (in ``jit server``); the health screen shows its heartbeats."""

    CSS_PATH = str(Path(__file__).with_name("console.tcss"))  # absolute: subclasses elsewhere find it too
    TITLE = "JIT console"
    COMMANDS = App.COMMANDS | {ConsoleCommands}
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide"), (140, "-huge")]
    ENGINE_SECONDS = 10.0  # how often the header asks whether an engine is heard from
    POLL_SECONDS: ClassVar[float] = 1.0
    RELOAD_EVERY = 0.3  # seconds between reloads while changes keep coming (a change shows within 0.5 s)

    BINDINGS = [
        Binding("1", "view('queue')", "Queue", id="view-queue", show=False, tooltip="Pending requests"),
        Binding("2", "view('grants')", "Grants", id="view-grants", show=False,
                tooltip="Active grants with their countdown"),
        Binding("3", "view('reviews')", "Reviews", id="view-reviews", show=False,
                tooltip="Emergency bypasses awaiting review"),
        Binding("4", "view('audit')", "Audit", id="view-audit", show=False, tooltip="The audit log"),
        Binding("5", "view('health')", "Health", id="view-health", show=False,
                tooltip="Engine, sync, exposure, audit chain"),
        Binding("b", "bypass", "Bypass", id="bypass", tooltip="Emergency bypass: elevate at once, reviewed later"),
        Binding("question_mark", "help", "Help", id="help", tooltip="The keys of this screen and the app"),
        Binding("q", "quit", "Quit", id="quit", show=False, tooltip="Leave the console"),
    ]

    @dataclass
    class TokenRead(Message):
        """The change token, read by the poll worker (None when the read failed)."""

        token: int | None

    @dataclass
    class ActionFinished(Message):
        action: str
        request_id: int | None
        ok: bool

    def __init__(self, data: ConsoleSource, *, keymap: dict[str, str] | None = None,
                 cursor_blink: bool = True) -> None:
        super().__init__()
        self.data = data
        self.operator = data.operator
        self.cursor_blink = cursor_blink
        self.keymap = dict(keymap or {})
        self.token: int | None = None
        self.engine_note = ""  # the header's warning when no engine is heard from (check_engine)
        self._polling = False
        self._frozen = False
        self._reloaded_at = 0.0
        self._reload_timer: Timer | None = None
        self._moved_handlers: list[logging.Handler] = []
        self._log_handler = TextualHandler()
        for name, screen in VIEWS.items():
            self.add_mode(name, partial(self._make, screen))

    def _make(self, screen: type[ConsoleScreen]) -> ConsoleScreen:
        return screen(self.data, self.chrome())

    def chrome(self) -> Chrome:
        keys = {}
        for binding in self.BINDINGS:
            if isinstance(binding, Binding) and binding.id and binding.id.startswith("view-"):
                key = self.keymap.get(binding.id, binding.key).split(",")[0].strip()
                keys[binding.id.removeprefix("view-")] = self.get_key_display(Binding(key, ""))
        return Chrome(self.operator, keys)

    # ------------------------------------------------------------ lifecycle
    def on_mount(self) -> None:
        self._keep_logs_off_the_screen()
        if self.keymap:
            self.set_keymap(self.keymap)
        self._polling = True
        self._read_token()  # the queue opens once the token is known: see _token_read

    def first_load_shown(self) -> None:
        """Called by a screen once its first load is on screen. The objects alive then (modules,
        widgets, 10,000 queue rows) live as long as the console: moved out of the cyclic
        collector's way, a full collection no longer stalls a key press (~60 ms measured)."""
        if not self._frozen:
            self._frozen = True
            gc.collect()
            gc.freeze()

    def _open_first_view(self) -> None:
        self.switch_mode("queue")
        self.set_interval(getattr(self.data, "poll_seconds", self.POLL_SECONDS), self._poll)
        self.check_engine()
        self.set_interval(self.ENGINE_SECONDS, self.check_engine)

    @work(thread=True, group="engine", exclusive=True, exit_on_error=False)
    def check_engine(self) -> None:
        """Is an engine heard from? If not, the header of every screen says so (heartbeats change no
        audit event, so the change token cannot tell)."""
        try:
            status = self.data.engine_status()
        except Exception:  # noqa: BLE001 - a failed read says nothing about the engine; the next try will
            return
        if status.alive:
            note = ""
        elif status.last_seen is None:
            note = "no engine has reported: nothing activates or expires grants"
        else:
            note = (f"no engine heard from for {fmt.age(self.data.clock() - status.last_seen)}: "
                    "nothing activates or expires grants")
        self.call_from_thread(self._show_engine_note, note)

    def _show_engine_note(self, note: str) -> None:
        if note != self.engine_note:
            self.engine_note = note
            for bar in self.screen.query(WhoAmI):
                bar.refresh()

    def on_unmount(self) -> None:
        if self._frozen:
            gc.unfreeze()  # back to the collector: the console's objects may now be garbage
        root = logging.getLogger()
        for handler in self._moved_handlers:
            root.addHandler(handler)
        if self._moved_handlers:
            root.removeHandler(self._log_handler)

    def _keep_logs_off_the_screen(self) -> None:
        """Log records written to the terminal would tear the screen (the engine's, a ServiceNow warning):
        while the console runs, they go to Textual's log (``textual console``) instead."""
        root = logging.getLogger()
        terminal = (sys.__stderr__, sys.__stdout__)
        self._moved_handlers = [h for h in root.handlers if type(h) is logging.StreamHandler and h.stream in terminal]
        for handler in self._moved_handlers:
            root.removeHandler(handler)
        if self._moved_handlers:
            self._log_handler.setFormatter(self._moved_handlers[0].formatter)
            root.addHandler(self._log_handler)

    # ------------------------------------------------------------ live updates
    def _poll(self) -> None:
        if getattr(self.data, "token_in_memory", False):  # the API's client: no call, so no worker thread
            self._apply_token(self.data.change_token())
        elif not self._polling:
            self._polling = True
            self._read_token()

    @work(thread=True, group="poll", exit_on_error=False)
    def _read_token(self) -> None:
        try:
            token = self.data.change_token()
        except Exception:  # noqa: BLE001 - the next poll tries again; the screens keep what they show
            token = None
        self.post_message(self.TokenRead(token))

    @on(TokenRead)
    def _token_read(self, message: TokenRead) -> None:
        self._polling = False
        self._apply_token(message.token)

    def _apply_token(self, token: int | None) -> None:
        if self.current_mode == self.DEFAULT_MODE:
            # The first read comes before the first view loads: a change after it moves the token,
            # and the first poll does not load everything a second time.
            self.token = token
            self._open_first_view()
            return
        if token is not None and token != self.token:
            self.token = token
            self._reload_soon()

    def _reload_soon(self) -> None:
        """The first change after a quiet second reloads at once; a burst of changes (10,000
        escalations, a change window opening) reloads every RELOAD_EVERY, not on every poll."""
        if self._reload_timer is not None:
            return  # one is due: it will show this change too
        wait = self._reloaded_at + self.RELOAD_EVERY - time.monotonic()
        if wait <= 0:
            self._reloaded_at = time.monotonic()
            self.reload_visible()
        else:
            self._reload_timer = self.set_timer(wait, self._deferred_reload)

    def _deferred_reload(self) -> None:
        self._reload_timer = None
        self._reloaded_at = time.monotonic()
        self.reload_visible()

    def reload_visible(self) -> None:
        """Reload the screen the operator sees (the one under a modal, if a modal is open)."""
        for screen in reversed(self.screen_stack):
            if isinstance(screen, ConsoleScreen):
                screen.reload()
                return

    # ------------------------------------------------------------ navigation
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "bypass":
            return offered(self.operator, "bypass")
        return True

    def action_view(self, view: str) -> None:
        if view in VIEWS and self.current_mode != view:
            self.switch_mode(view)

    def open_request(self, request_id: int) -> None:
        self.push_screen(DetailScreen(self.data, self.chrome(), request_id))

    @on(ConsoleScreen.OpenRequested)
    def _open_requested(self, message: ConsoleScreen.OpenRequested) -> None:
        self.open_request(message.request_id)

    def action_bypass(self) -> None:
        if not offered(self.operator, "bypass"):
            self.notify("the emergency bypass is for the on-call group", severity="warning", markup=False)
            return
        if not isinstance(self.screen, BypassScreen):
            self.push_screen(BypassScreen(self.data, self.chrome()), callback=self._bypassed)

    def _bypassed(self, message: str | None) -> None:
        if message:
            self.notify(message, title="Emergency bypass", markup=False)
            self.action_view("grants")
            self.reload_visible()

    def on_key(self, event: events.Key) -> None:
        """A key that reached the app (Textual's own handler runs the bindings): when every binding of
        it here is one this operator may not use now (not offered, or not on this row), say why
        instead of doing nothing."""
        why = self._why_refused(event.key)
        if why is not None:
            self.notify(why, severity="warning", markup=False)

    def _bound(self, node: Any) -> Any:
        """``node``'s bindings as they are bound now: a copy with the keymap applied (as Textual's
        ``Screen._binding_chain`` makes it)."""
        bound = node._bindings.copy()
        if self._keymap:
            bound.apply_keymap(self._keymap)
        return bound

    def _why_refused(self, key: str) -> str | None:
        focused = self.focused
        chain = [n for n in (focused, self.screen, self) if n is not None]
        refusal = None
        for node in chain:
            for binding in self._bound(node).key_to_bindings.get(key, ()):
                _, action, params = parse_action(binding.action)
                if node.check_action(action, params):
                    return None  # a binding takes this key: nothing to explain
                if refusal is None and isinstance(node, RowScreen) and action in node.ROW_ACTIONS:
                    refusal = f"{binding.description}: {node.why_not(action)}"
                elif refusal is None and action == "bypass":
                    refusal = f"Bypass: only the emergency group may bypass; {self.operator.person} is not in it"
        return refusal

    async def action_quit(self) -> None:
        """Leave the console; when something typed would be lost (the bypass form, a comment being
        written), ask first."""
        typed = [box for screen in self.screen_stack for box in screen.query(Input) if box.value.strip()
                 and box.value != getattr(box, "prefilled", None) and not isinstance(box, FilterBar)]
        if not typed:
            self.exit()
            return
        self.push_screen(ConfirmModal("Quit the console?", "What you typed here is not sent and will be lost.", [],
                                      confirm="Quit", variant="error", cursor_blink=self.cursor_blink),
                         callback=lambda values: self.exit() if values is not None else None)

    def action_help(self) -> None:
        screen = self.screen
        if isinstance(screen, HelpScreen):
            return
        name = SCREEN_NAMES.get(type(screen), type(screen).__name__)
        self.push_screen(HelpScreen(name, self._keys_of(screen, name) + self._keys_of(self, "Everywhere")))

    def _keys_of(self, node: Any, section: str) -> list[KeyHelp]:
        """The bindings ``node`` offers now (keymap applied, those its check_action hides left out)."""
        found: dict[str, tuple[list[str], Binding, bool | None]] = {}  # action -> its keys, the binding to describe
        for bindings in self._bound(node).key_to_bindings.values():
            for binding in bindings:
                if not binding.tooltip:
                    continue
                _, action, params = parse_action(binding.action)
                state = node.check_action(action, params)
                if state is False:
                    continue
                keys, described, _ = found.setdefault(binding.action, ([], binding, state))
                keys.append(self.get_key_display(binding))  # one action, several keys: q and Textual's ctrl+q
                if binding.id and not described.id:  # ours, not Textual's own, describes it
                    found[binding.action] = (keys, binding, state)
        def dimmed(action: str) -> str:  # why a key shown is not usable now
            if isinstance(node, RowScreen) and node.current() is not None:
                return f" (not here: {node.why_not(parse_action(action)[1])})"
            return " (nothing selected)"
        return [KeyHelp(section, ", ".join(sorted(keys, key=len)), b.description + ("" if state else dimmed(b.action)),
                        b.tooltip, b.id or "") for keys, b, state in found.values()]

    # ------------------------------------------------------------ actions
    def start_action(self, action: str, request_id: int, summary: str) -> None:
        """Ask for confirmation (and a comment or reason), then run the action in a worker."""
        spec = ACTIONS[action]
        if not offered(self.operator, action):
            self.notify(f"{spec.verb} is not offered to {self.operator.person}", severity="warning", markup=False)
            return
        self._ask(action, request_id, summary, list(spec.fields))

    def _ask(self, action: str, request_id: int, summary: str, fields: list, error: str = "") -> None:
        spec = ACTIONS[action]
        title = f"{spec.verb} REQ-{request_id}" + (f" as {action}" if spec.verb == "Review" else "")
        self.push_screen(ConfirmModal(title, summary, fields, confirm=spec.confirm, variant=spec.variant,
                                      cursor_blink=self.cursor_blink, error=error),
                         callback=partial(self._confirmed, action, request_id, summary))

    def _ask_again(self, action: str, request_id: int, summary: str, values: dict[str, str], error: str) -> None:
        """The server refused what was typed (a policy check, a bad field): the form again, as typed."""
        fields = [dataclasses.replace(f, value=values.get(f.name, f.value)) for f in ACTIONS[action].fields]
        self._ask(action, request_id, summary, fields, error)

    @on(ConsoleScreen.ActionRequested)
    def _action_requested(self, message: ConsoleScreen.ActionRequested) -> None:
        self.start_action(message.action, message.request_id, message.summary)

    def _confirmed(self, action: str, request_id: int, summary: str, values: dict[str, str] | None) -> None:
        if values is not None:
            self._perform(action, request_id, values, summary)

    @work(thread=True, group="actions", exit_on_error=False)
    def _perform(self, action: str, request_id: int, values: dict[str, str], summary: str = "") -> None:
        label = f"REQ-{request_id}"
        ok = False
        try:
            message = perform(self.data, action, request_id, values)
        except Refused as exc:
            self.notify(exc.message, title=f"{label} refused: {exc.rule}", severity="error", timeout=10,
                        markup=False)
            if (isinstance(exc, BadInput) or exc.rule == "policy") and ACTIONS[action].fields:
                self.call_from_thread(self._ask_again, action, request_id, summary, values,
                                      f"✗ refused ({exc.rule}): {exc.message}")
        except Exception as exc:  # noqa: BLE001 - the operator sees it; nothing half-done is shown as done
            self.notify(f"{type(exc).__name__}: {exc}", title=f"{label}: {action} failed", severity="error",
                        timeout=10, markup=False)
        else:
            ok = True
            self.notify(message, title=label, markup=False)
        self.post_message(self.ActionFinished(action, request_id, ok))

    @on(ActionFinished)
    def _action_finished(self) -> None:
        self.reload_visible()
