"""Webhooks a receiver can trust (issue 19): text escaped for its markup, each message signed
(HMAC-SHA256 over the timestamp and the body, as Slack and GitHub sign theirs), over real HTTP."""
from __future__ import annotations

import json
import time

import pytest

from integrations.notify import REPLAY_WINDOW_S, Webhook, escape_markup, signature, verify
from tests.webhook_receiver import Receiver


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def test_a_signed_message_verifies_and_a_changed_or_old_one_does_not(receiver):
    hook = Webhook(receiver.url, secret="s3cret-shared")
    hook.send({"text": "REQ-7 alice -> service-admin on web-prod-01 needs approval", "event": "request.submitted"})
    hook.close()
    [(headers, body)] = receiver.raw
    stamp, given = headers["X-Jit-Request-Timestamp"], headers["X-Jit-Signature"]
    assert given.startswith("v1=") and abs(int(stamp) - time.time()) < 5
    assert verify(b"s3cret-shared", stamp, body, given)  # README's receiver check
    assert not verify(b"s3cret-shared", stamp, body.replace(b"REQ-7", b"REQ-8"), given)  # a changed body
    assert not verify(b"another-secret", stamp, body, given)  # forged with another key
    assert not verify(b"s3cret-shared", str(int(stamp) - REPLAY_WINDOW_S - 1), body,
                      signature(b"s3cret-shared", str(int(stamp) - REPLAY_WINDOW_S - 1), body))  # a replay
    assert not verify(b"s3cret-shared", "not-a-number", body, given)


def test_without_a_secret_nothing_claims_a_signature(receiver):
    hook = Webhook(receiver.url)
    hook.send({"text": "hello"})
    hook.close()
    [(headers, _)] = receiver.raw
    assert "X-Jit-Signature" not in headers and not hook.signed


@pytest.mark.parametrize("typed,shown", [
    ("<!channel> approve this now", "&lt;!channel&gt; approve this now"),
    ("see <https://evil.example/login|the runbook>", "see &lt;https://evil.example/login|the runbook&gt;"),
    ("R&D <@U123>", "R&amp;D &lt;@U123&gt;"),
])
def test_typed_markup_reaches_the_receiver_as_plain_text(receiver, typed, shown):
    hook = Webhook(receiver.url, secret="k")
    hook.send({"text": f"REQ-1 reason: {typed}"})
    hook.close()
    assert receiver.texts() == [f"REQ-1 reason: {shown}"]
    assert escape_markup(escape_markup("<")) == "&amp;lt;"  # applied once per message, by send


def test_a_request_reason_with_a_mention_reaches_approvers_escaped(tmp_path, receiver, monkeypatch):
    """End to end through the outbox: the reason alice types is in the webhook's text, escaped, and
    the message is signed with the secret from the environment."""
    from datetime import timedelta
    from app.bootstrap import build
    from app.config import load_config
    from app.dev.sandbox import write_sandbox
    config = write_sandbox(tmp_path / "sb", servicenow_url=None)
    env = {"JIT_WEBHOOK_URL": receiver.url, "JIT_WEBHOOK_SECRET": "from-the-environment"}
    sv = build(load_config(config), environ=env)
    try:
        sv.lifecycle.submit("alice", "web-prod-01", "service-admin", timedelta(hours=1),
                            "restart nginx <!channel> now", "CHG0000001")
        sv.deliverer.run_once()
    finally:
        sv.close()
    [text] = [t for t in receiver.texts() if "needs" in t]
    assert "&lt;!channel&gt;" in text and "<!channel>" not in text
    headers, body = receiver.raw[receiver.texts().index(text)]
    assert verify(b"from-the-environment", headers["X-Jit-Request-Timestamp"], body, headers["X-Jit-Signature"])
    assert json.loads(body)["text"] == text
