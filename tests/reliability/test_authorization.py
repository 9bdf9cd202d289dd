"""Every authorization rule, each proven by one test, through the real CLI and lifecycle.

A real sandbox (visudo-checked sudoers drop-ins, SQLite and PostgreSQL) with the five sandbox people
plus three who sit in more than one group, so that each refusal is the rule under test and not a
side effect of someone simply lacking a group:

- mallory: engineers + managers (may request production access and may approve);
- olga:    managers + system-owners (covers both groups of a dual approval on her own);
- sam:     oncall + security + engineers (may bypass and is a reviewer).

Each test asserts the refusal's rule and message and that nothing else changed: the request's state
and version, its approvals, grant and review, the sudoers directory, and the audit log, which gains
at most the one refusal event the README promises ("every decision, including refusals") and still
verifies. Scattered unit tests of the same rules stay in tests/unit; this file is where to read them all.
"""
from __future__ import annotations

import io
import os
import pwd
import shutil
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from app.bootstrap import build
from app.cli.main import main
from app.config import load_config
from app.dev.sandbox import write_sandbox
from app.domain.errors import Refused
from app.queries.console import ConsoleData
from app.store import audit
from tests.serving import dev_server

pytestmark = pytest.mark.skipif(shutil.which("visudo", path=os.environ["PATH"] + ":/usr/sbin") is None,
                                reason="sudo's visudo is not installed")

EXTRA_PEOPLE = {"mallory": ["engineers", "managers"], "olga": ["managers", "system-owners"],
                "sam": ["oncall", "security", "engineers"]}
REASON = "restart nginx after the TLS renewal"


class Sandbox:
    def __init__(self, root: Path, db_url: str, *, impersonation: bool = True) -> None:
        self.config = write_sandbox(root / "sb", servicenow_url=None)
        text = self.config.read_text().replace('url = ""', f'url = "{db_url}"', 1)
        text += "".join(f'\n[directory.people.{name}]\ngroups = {groups!r}\n'.replace("'", '"')
                        for name, groups in EXTRA_PEOPLE.items())
        self.config.write_text(text)
        self.sudoers = self.config.parent / "sudoers.d"
        self.env = {"JIT_CONFIG": str(self.config), "HOME": str(root), "PATH": os.environ["PATH"]}
        self.engine = sa.create_engine(db_url)
        self._server = dev_server(self.config, impersonation=impersonation)  # JIT_USER honoured only in dev mode
        self._server.__enter__()

    def close(self) -> None:
        self._server.__exit__(None, None, None)
        self.engine.dispose()

    def jit(self, *argv: str, user: str | None = None) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        env = dict(self.env, **({"JIT_USER": user} if user else {}))
        rc = main(list(argv), env, out, err)
        return rc, out.getvalue(), err.getvalue()

    def ok(self, *argv: str, user: str) -> str:
        rc, out, err = self.jit(*argv, user=user)
        assert rc == 0, err
        return out

    def request(self, user: str, target: str = "web-prod-01", *extra: str) -> int:
        ticket = ["--ticket", "CHG0000001"] if target == "web-prod-01" else []  # the high tier needs one
        duration = "2h" if target == "web-prod-01" else "10m"
        out = self.ok("request", target, "service-admin", "--duration", duration, "--reason", REASON, *ticket, *extra,
                      user=user)
        return int(out.split()[0].removeprefix("REQ-"))

    def state(self) -> dict[str, object]:
        """Everything an authorization refusal must leave alone (the audit log apart from one refusal event)."""
        with self.engine.connect() as conn:
            def rows(sql: str) -> list[tuple]:
                return [tuple(r) for r in conn.execute(sa.text(sql)).all()]
            return {
                "requests": rows("SELECT id, state, version, requester, expires_at FROM access_request ORDER BY id"),
                "approvals": rows("SELECT request_id, approver, comment FROM approval ORDER BY id"),
                "grants": rows("SELECT id, request_id, status, ref FROM grant_record ORDER BY id"),
                "reviews": rows("SELECT request_id, state, reviewer FROM bypass_review ORDER BY id"),
                "outbox": rows("SELECT count(*) FROM outbox"),
                "sudoers": sorted(os.listdir(self.sudoers)),
            }

    def audit(self) -> list[tuple]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text("SELECT seq, actor, action FROM audit_event ORDER BY seq"))]

    def services(self):
        return build(load_config(self.config), environ={})


@pytest.fixture
def sb(tmp_path: Path, db_url: str):
    s = Sandbox(tmp_path, db_url)
    yield s
    s.close()


def assert_refused_and_unchanged(sb: Sandbox, before: dict, audit_before: list, *, refusal_event: tuple | None):
    """Nothing changed but, where the README promises it, one audited refusal; the chain still verifies."""
    assert sb.state() == before
    events = sb.audit()
    assert events[:len(audit_before)] == audit_before
    assert [(actor, action) for _, actor, action in events[len(audit_before):]] == \
        ([refusal_event] if refusal_event else [])
    with closing(sb.services()) as sv, sv.store.transaction() as s:
        assert audit.verify(s).ok


def refused_cli(sb: Sandbox, *argv: str, user: str, rc: int = 1) -> str:
    code, out, err = sb.jit(*argv, user=user)
    assert code == rc, (code, out, err)
    lines = err.splitlines()  # one refusal: its line, then (a policy refusal) one line per failing check
    assert lines[0].startswith("refused: ") and all(line.startswith("  ") for line in lines[1:]), err
    assert "Traceback" not in err, err
    return err.strip()


# ------------------------------------------------------------------ approvals
def test_self_approval_is_refused_even_for_an_approver(sb):
    rid = sb.request("mallory")  # mallory is a manager too: only the self-approval rule can refuse her
    before, audit_before = sb.state(), sb.audit()
    err = refused_cli(sb, "approve", str(rid), user="mallory")
    assert err == "refused: approval: a requester can never approve their own request."
    assert_refused_and_unchanged(sb, before, audit_before, refusal_event=("mallory", "approval.refused"))


def test_one_person_counts_once(sb):
    rid = sb.request("alice")
    assert "1 of 2" in sb.ok("approve", str(rid), user="bob")
    before, audit_before = sb.state(), sb.audit()
    err = refused_cli(sb, "approve", str(rid), user="bob")
    assert err == "refused: approval: bob has already approved this request; one person counts once."
    assert_refused_and_unchanged(sb, before, audit_before, refusal_event=("bob", "approval.refused"))
    assert before["requests"][0][1] == "pending" and before["sudoers"] == []


def test_one_person_in_both_groups_cannot_complete_a_dual_approval_alone(sb):
    rid = sb.request("alice")
    out = sb.ok("approve", str(rid), user="olga")  # managers and system-owners: still one approval
    assert "1 of 2" in out
    before, audit_before = sb.state(), sb.audit()
    err = refused_cli(sb, "approve", str(rid), user="olga")
    assert err == "refused: approval: olga has already approved this request; one person counts once."
    assert_refused_and_unchanged(sb, before, audit_before, refusal_event=("olga", "approval.refused"))
    assert [r[1] for r in before["requests"]] == ["pending"] and before["sudoers"] == []
    assert "approvals complete" in sb.ok("approve", str(rid), user="carol")  # a second person completes it


@pytest.mark.parametrize("outsider", ["erin", "dave", "alice"])
def test_approval_by_someone_outside_the_approver_groups(sb, outsider):
    rid = sb.request("mallory")
    before, audit_before = sb.state(), sb.audit()
    err = refused_cli(sb, "approve", str(rid), user=outsider)
    assert err == (f"refused: approval: {outsider} is in none of the approver groups (managers, system-owners).")
    assert_refused_and_unchanged(sb, before, audit_before, refusal_event=(outsider, "approval.refused"))


# ------------------------------------------------------------------ emergency bypass and its review
BYPASS = ["bypass", "web-prod-01", "service-admin", "--duration", "1h", "--incident", "INC0000001",
          "--reason", "site down, nginx wedged at 3am"]


@pytest.mark.parametrize("outsider", ["alice", "bob", "erin"])
def test_bypass_outside_the_emergency_group(sb, outsider):
    before, audit_before = sb.state(), sb.audit()
    err = refused_cli(sb, *BYPASS, user=outsider)
    assert err.startswith("refused: policy:")
    assert f"emergency_group: {outsider} is not in the emergency group 'oncall'; only on-call may bypass" in err
    assert_refused_and_unchanged(sb, before, audit_before, refusal_event=(outsider, "bypass.refused"))
    assert before["requests"] == [] and before["sudoers"] == []


def test_review_by_the_bypasser_is_refused_even_for_a_reviewer(sb):
    out = sb.ok(*BYPASS, user="sam")  # sam is on call and a security reviewer
    rid = int(out.split()[0].removeprefix("REQ-").rstrip(":"))
    before, audit_before = sb.state(), sb.audit()
    assert before["reviews"] == [(rid, "open", None)] and len(before["sudoers"]) == 1
    err = refused_cli(sb, "review", str(rid), "--outcome", "justified", "--comment", "I was right", user="sam")
    assert err == "refused: review: the person who bypassed can never review their own bypass"
    assert_refused_and_unchanged(sb, before, audit_before, refusal_event=None)
    err = refused_cli(sb, "review", str(rid), "--outcome", "justified", "--comment", "fine", user="bob")
    assert err == "refused: review: bob is not in the reviewer group 'security'"
    assert_refused_and_unchanged(sb, before, audit_before, refusal_event=None)
    assert "reviewed: justified" in sb.ok("review", str(rid), "--outcome", "justified", "--comment", "ok",
                                          user="erin")


# ------------------------------------------------------------------ impersonation
@pytest.fixture
def production(tmp_path: Path, db_url: str):
    """The same installation served without dev mode, as production runs."""
    s = Sandbox(tmp_path / "prod", db_url, impersonation=False)
    yield s
    s.close()


@pytest.mark.parametrize("argv", [["approve", "{rid}"], ["deny", "{rid}", "--reason", "no"],
                                  ["request", "web-dev-01", "service-admin", "--duration", "10m", "--reason", REASON]],
                         ids=["approve", "deny", "request"])
def test_jit_user_changes_nothing_outside_dev_mode(production, argv):
    """bob is a manager; a client setting JIT_USER=bob is still the account the kernel names."""
    me = pwd.getpwuid(os.getuid()).pw_name
    assert production.ok("whoami", user="bob").startswith(f"{me}  groups: (none)")
    rid = _pending_request(production)
    before, audit_before = production.state(), production.audit()
    code, out, err = production.jit(*[a.format(rid=rid) for a in argv], user="bob")
    assert code == 1 and me in err and "bob" not in err, (code, out, err)
    events = production.audit()[len(audit_before):]
    assert [actor for _, actor, _ in events] in ([], [me])  # at most the refusal, and never as bob
    assert production.state() == before


def _pending_request(sb: Sandbox) -> int:
    """A pending production request created without impersonation (the lifecycle, as alice's own session)."""
    with closing(sb.services()) as sv:
        return sv.lifecycle.submit("alice", "web-prod-01", "service-admin", timedelta(hours=2), REASON,
                                   "CHG0000001").request.id


# ------------------------------------------------------------------ the console
def _console_case(sb: Sandbox, action: str):
    """(operator, capability flag, call) for a console action that operator may not take."""
    pending = sb.request("alice")
    active = sb.request("alice", "web-dev-01")  # self-service: active at once
    bypass = int(sb.ok(*BYPASS, user="dave").split()[0].removeprefix("REQ-").rstrip(":"))
    return {
        "approve": ("erin", "can_approve", lambda c: c.approve(pending, "looks fine")),
        "deny": ("alice", "can_approve", lambda c: c.deny(pending, "no")),
        "revoke": ("alice", "can_revoke", lambda c: c.revoke(active, "stop")),
        "review": ("bob", "can_review", lambda c: c.review(bypass, "justified", "fine")),
        "bypass": ("bob", "can_bypass", lambda c: c.bypass("web-prod-01", "service-admin", timedelta(hours=1),
                                                           "INC0000001", "site down, nginx wedged")),
    }[action]


@pytest.mark.parametrize("action", ["approve", "deny", "revoke", "review", "bypass"])
def test_console_action_the_operator_may_not_take(sb, action):
    """The console does not offer it (ConsoleData.operator says no) and, called anyway, the lifecycle refuses
    with the same rule and reason; nothing changes."""
    person, flag, call = _console_case(sb, action)
    before, audit_before = sb.state(), sb.audit()
    with closing(sb.services()) as sv:
        console = ConsoleData(sv, person)
        assert getattr(console.operator, flag) is False
        with pytest.raises(Refused) as info:
            call(console)
    expected = {"approve": ("approval", "erin is in none of the approver groups (managers, system-owners)."),
                "deny": ("deny", "a requester cancels their own request ('jit cancel'), not denies it"),
                "revoke": ("revoke", "alice is not a security operator or an approver of this tier"),
                "review": ("review", "bob is not in the reviewer group 'security'"),
                "bypass": ("policy", None)}[action]
    assert info.value.rule == expected[0]
    if expected[1]:
        assert info.value.message == expected[1]
    else:
        assert "bob is not in the emergency group 'oncall'" in info.value.message
    event = {"approve": ("erin", "approval.refused"), "bypass": ("bob", "bypass.refused")}.get(action)
    assert_refused_and_unchanged(sb, before, audit_before, refusal_event=event)
