"""The /v1 API itself, over its real Unix socket: the OpenAPI document against the routes, bad
bodies refused with the field named and nothing written, the per-principal rate limit, and the
event stream (resumable, and fed by another server on the same PostgreSQL)."""
from __future__ import annotations

import json
import queue
import threading
import time
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

from app.bootstrap import build
from app.config import load_config
from app.dev.sandbox import write_sandbox
from app.server.api import make_app
from app.server.routes import ROUTES
from tests.serving import dev_server

REASON = "restart nginx after the TLS renewal"


def api(sv, user: str = "alice") -> httpx.Client:
    sock = sv.config.path(sv.config.settings.server.socket)
    return httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://jit", timeout=10,
                        headers={"X-Jit-User": user})


@pytest.fixture
def served(tmp_path):
    with dev_server(write_sandbox(tmp_path / "sb", servicenow_url=None)) as sv:
        yield sv


def written(sv) -> tuple:
    with sv.store.engine.connect() as conn:
        return tuple(conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one()
                     for t in ("access_request", "audit_event", "grant_record", "approval"))


# ------------------------------------------------------------------ the description
def test_openapi_is_valid_and_describes_exactly_the_routes(served):
    with api(served) as c:
        doc = c.get("/v1/openapi.json").json()
    validate(doc)  # OpenAPI 3.1, by openapi-spec-validator
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    app = make_app(served)
    routed = {(r.method, r.resource.canonical) for r in app.router.routes() if r.method != "HEAD"}
    assert described == routed == {(r.method, r.path) for r in ROUTES}
    submit = doc["paths"]["/v1/requests"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][submit.rsplit("/", 1)[1]]
    assert schema["additionalProperties"] is False and {"target", "role", "duration", "reason"} <= set(schema["required"])


# ------------------------------------------------------------------ bad input writes nothing
@pytest.mark.parametrize("body,status,field", [
    ("{not json", 400, "body"),
    ("[1, 2]", 400, "body"),
    (json.dumps({"target": "web-dev-01", "role": "service-admin", "duration": 600, "reason": REASON}), 422, "duration"),
    (json.dumps({"target": "web-dev-01", "role": "service-admin", "duration": "10m", "reason": REASON,
                 "requester": "bob"}), 422, "requester"),
    (json.dumps({"target": ["web-dev-01"], "role": "service-admin", "duration": "10m", "reason": REASON}), 422, "target"),
    (json.dumps({"target": "web-dev-01", "role": "service-admin", "duration": "10m"}), 422, "reason"),
    (json.dumps({"target": "web-dev-01", "role": "service-admin", "duration": "10m", "reason": "x" * 70_000}), 413, "body"),
    (json.dumps({"target": "web dev", "role": "service-admin", "duration": "10m", "reason": REASON}), 422, "target"),
], ids=["not-json", "not-an-object", "wrong-type", "unknown-field", "list-for-text", "missing", "too-large", "bad-name"])
def test_a_bad_body_is_refused_naming_the_field_and_writes_nothing(served, body, status, field):
    before = written(served)
    with api(served) as c:
        answer = c.post("/v1/requests", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["field"] == field and error["message"], error
    assert written(served) == before


def test_unknown_query_parameters_and_routes_answer_in_the_one_error_shape(served):
    with api(served) as c:
        bad = c.get("/v1/requests", params={"sate": "pending"})
        missing = c.get("/v1/nothing-here")
        wrong_method = c.delete("/v1/requests")
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "sate"
    assert missing.status_code == 404 and set(missing.json()["error"]) == {"rule", "message", "field"}
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_the_body_never_names_the_actor(served):
    with api(served, user="alice") as c:
        answer = c.post("/v1/requests", json={"target": "web-dev-01", "role": "service-admin", "duration": "10m",
                                              "reason": REASON})
    assert answer.status_code == 201 and answer.json()["request"]["requester"] == "alice"


# ------------------------------------------------------------------ rate limit
def test_past_the_rate_limit_a_principal_gets_429_with_retry_after(tmp_path):
    from app.server.limits import RateLimit
    now = [0.0]
    limit = RateLimit(rate=1.0, burst=2, clock=lambda: now[0])
    assert [limit.take("alice"), limit.take("alice"), limit.take("alice")] == [0, 0, 1]
    assert limit.take("bob") == 0  # per principal
    now[0] += 1.0
    assert limit.take("alice") == 0
    config = write_sandbox(tmp_path / "sb", servicenow_url=None)
    config.write_text(config.read_text().replace('socket = "jit.sock"', 'socket = "jit.sock"\nrate_limit = 1\nrate_burst = 3'))
    with dev_server(config) as sv:
        with api(sv, "carol") as c:
            codes = [c.get("/v1/whoami") for _ in range(5)]
        assert [r.status_code for r in codes][:3] == [200, 200, 200] and codes[-1].status_code == 429
        assert int(codes[-1].headers["Retry-After"]) >= 1 and codes[-1].json()["error"]["rule"] == "rate"
        with api(sv, "dave") as c:
            assert c.get("/v1/whoami").status_code == 200  # someone else is not slowed


# ------------------------------------------------------------------ events
def stream(sv, after: int, into: queue.Queue, stop: threading.Event, headers: dict | None = None) -> threading.Thread:
    def read() -> None:
        with api(sv, "erin") as c, c.stream("GET", "/v1/events", params={"after": after}, headers=headers or {},
                                            timeout=httpx.Timeout(10, read=30)) as r:
            seq = None
            for line in r.iter_lines():
                if stop.is_set():
                    return
                if line.startswith("id: "):
                    seq = int(line[4:])
                elif line.startswith("data: "):
                    into.put((seq, json.loads(line[6:]), time.monotonic()))
    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def head(sv) -> int:
    with sv.store.engine.connect() as conn:
        return conn.exec_driver_sql("SELECT coalesce(max(seq), 0) FROM audit_event").scalar_one()


def test_events_stream_each_new_audit_event_and_resume_after_a_sequence_number(served):
    got: queue.Queue = queue.Queue()
    stop = threading.Event()
    start = head(served)
    stream(served, start, got, stop)
    time.sleep(0.2)  # let the stream connect before the change (the stream itself would still catch up)
    t0 = time.monotonic()
    rid = served.lifecycle.submit("alice", "web-dev-01", "service-admin", timedelta(minutes=10), REASON).request.id
    seq, event, at = got.get(timeout=5)
    assert event["request_id"] == rid and event["action"] == "request.submitted" and seq == start + 1
    assert at - t0 < 0.5, f"the event took {at - t0:.3f} s"
    later = []
    while not got.empty() or len(later) < 1:
        later.append(got.get(timeout=5))
    stop.set()
    resumed: queue.Queue = queue.Queue()
    stream(served, 0, resumed, threading.Event(), headers={"Last-Event-ID": str(seq)})
    assert resumed.get(timeout=5)[0] == seq + 1  # after what it had, not from the start


@pytest.mark.postgres
def test_events_committed_by_another_server_on_postgresql_arrive(tmp_path, pg_url):
    config = write_sandbox(tmp_path / "sb", servicenow_url=None)
    config.write_text(config.read_text().replace('url = ""', f'url = "{pg_url}"', 1))
    other = build(load_config(config))  # another server's services on the same database
    try:
        with dev_server(config) as sv:
            got: queue.Queue = queue.Queue()
            stop = threading.Event()
            stream(sv, head(sv), got, stop)
            time.sleep(0.2)
            t0 = time.monotonic()
            rid = other.lifecycle.submit("alice", "web-dev-01", "service-admin", timedelta(minutes=10),
                                         REASON).request.id
            seq, event, at = got.get(timeout=5)
            stop.set()
            assert event["request_id"] == rid and at - t0 < 0.5, at - t0
    finally:
        other.close()
