"""The ``agent`` backend over the host reports, on the real store: a grant counts as applied only
once every host its rule names reports it with the grant's end, as revoked once none does; a
host's refusal fails it at once with the host's reason; silence fails it after ``wait``."""
from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from tests.conftest import T0

from app.fleet.backend import AgentBackend
from app.fleet.reports import Held, HostReports
from app.fleet.sessions import _program
from integrations.base import BackendError, GrantSpec, InvalidGrant

PARAMS = {"commands": ["/usr/bin/systemctl restart nginx"]}


def spec(gid: int = 7, hosts: list[str] | None = None, ends: timedelta = timedelta(hours=1)) -> GrantSpec:
    params = {**PARAMS, **({"hosts": hosts} if hosts else {})}
    return GrantSpec(gid, gid, "alice", "web-prod-01", "service-admin", T0, T0 + ends, params)


def held(g: GrantSpec, **kw) -> Held:
    return Held(g.grant_id, g.person, g.starts_at, kw.get("not_after", g.expires_at),
                f"/etc/sudoers.d/jit_g{g.grant_id}")


@pytest.fixture
def backend(store, clock):
    b = AgentBackend(wait=1.0)
    b.attach(HostReports(store, clock))
    return b


def later(seconds: float, action) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(seconds), action()))
    t.start()
    return t


def test_apply_waits_for_the_hosts_report_of_the_grant(backend) -> None:
    g = spec()
    t = later(0.2, lambda: backend.reports.record("web-prod-01", [held(g)], {}))
    start = time.monotonic()
    assert backend.apply(g) == "agent:web-prod-01:jit_g7"
    assert 0.15 <= time.monotonic() - start < 0.9
    t.join()
    a = backend.inspect(g)
    assert a is not None and a.grant_id == 7 and a.not_after == g.expires_at and a.details["hosts"] == ["web-prod-01"]


def test_a_report_with_another_end_is_not_the_grant(backend) -> None:
    g = spec()
    backend.reports.record("web-prod-01", [held(g, not_after=g.expires_at - timedelta(minutes=5))], {})
    with pytest.raises(BackendError, match="web-prod-01 .last report .* has not written grant 7 within 1 s"):
        backend.apply(g)


def test_silence_fails_the_apply_naming_the_host(backend) -> None:
    with pytest.raises(BackendError, match=r"host web-prod-01 \(never reported\) has not written grant 7") as e:
        backend.apply(spec())
    assert not e.value.transient


def test_a_hosts_refusal_fails_the_apply_at_once_with_its_reason(backend) -> None:
    backend.reports.record("web-prod-01", [], {7: "commands[0]: /opt/app/run is under a directory users can write"})
    start = time.monotonic()
    with pytest.raises(BackendError, match="host web-prod-01 refused grant 7: commands.0.: /opt/app/run"):
        backend.apply(spec())
    assert time.monotonic() - start < 0.5


def test_a_group_of_hosts_counts_only_when_every_host_holds_it(backend) -> None:
    g = spec(hosts=["web-01", "web-02"])
    backend.reports.record("web-01", [held(g)], {})
    with pytest.raises(BackendError, match="web-02"):
        backend.apply(g)
    assert backend.inspect(g) is None  # half there is missing
    backend.reports.record("web-02", [held(g)], {})
    assert backend.apply(g) == "agent:web-01,web-02:jit_g7"


def test_revoke_waits_until_no_host_reports_it(backend) -> None:
    g = spec()
    backend.reports.record("web-prod-01", [held(g)], {})
    t = later(0.2, lambda: backend.reports.record("web-prod-01", [], {}))
    backend.revoke(g)
    t.join()
    assert backend.inspect(g) is None
    backend.reports.record("web-prod-01", [held(g)], {})
    with pytest.raises(BackendError, match="still holds grant 7 after 1 s"):
        backend.revoke(g)


def test_list_managed_is_what_every_host_reports(backend) -> None:
    a, b = spec(1), spec(2)
    backend.reports.record("web-prod-01", [held(a)], {})
    backend.reports.record("web-dev-01", [held(b), held(a)], {})
    found = [(x.ref, x.grant_id) for x in backend.list_managed()]
    assert found == [("agent:web-dev-01:/etc/sudoers.d/jit_g1", 1), ("agent:web-prod-01:/etc/sudoers.d/jit_g1", 1),
                     ("agent:web-dev-01:/etc/sudoers.d/jit_g2", 2)]


def test_a_report_recorded_by_another_process_is_read_from_the_database(store, clock) -> None:
    ours, theirs = HostReports(store, clock), HostReports(store, clock)
    backend = AgentBackend(wait=2.0)
    backend.attach(ours)
    g = spec()
    assert ours.of("web-prod-01") is None  # read (and cached) before the other server writes
    t = later(0.1, lambda: theirs.record("web-prod-01", [held(g)], {}))
    assert backend.apply(g).endswith("jit_g7")  # within REFRESH of the other's write
    t.join()


def test_an_unsafe_rule_is_refused_before_any_host_is_asked(backend) -> None:
    with pytest.raises(InvalidGrant, match="commands"):
        backend.apply(GrantSpec(7, 7, "alice", "web-prod-01", "x", T0, T0 + timedelta(hours=1),
                                {"commands": ["/bin/bash"]}))


@pytest.mark.parametrize(("argv", "program"), [
    (("sudo", "-u", "root", "/usr/bin/sleep", "600"), "/usr/bin/sleep"),
    (("sudo", "-n", "--", "/usr/bin/systemctl", "restart", "nginx"), "/usr/bin/systemctl"),
    (("sudo", "-g", "adm", "-u", "root", "-n", "/usr/bin/journalctl"), "/usr/bin/journalctl"),
    (("sudo", "-l"), None),
])
def test_the_program_a_sudo_command_line_runs(argv, program) -> None:
    assert _program(argv) == program


# ------------------------------------------------------------------ what each host should hold
def _grant(s, gid: int, *, target: str = "web-01", hosts: list[str] | None = None, backend: str = "agent",
           status: str = "applying") -> None:
    from app.store import GrantRow, RequestRow
    s.add(RequestRow(id=gid, requester="alice", target=target, role="service-admin", reason="r" * 12,
                     state="approved", approval_model="self-service", duration_s=3600, starts_at=T0,
                     expires_at=T0 + timedelta(hours=1), created_at=T0, updated_at=T0, backend=backend))
    s.flush()
    s.add(GrantRow(id=gid, request_id=gid, backend=backend, person="alice", target=target, role="service-admin",
                   params={**PARAMS, **({"hosts": hosts} if hosts else {})}, starts_at=T0,
                   expires_at=T0 + timedelta(hours=1), status=status, updated_at=T0))


def _event(s, request_id: int) -> None:
    from app.store import audit
    audit.append(s, at=T0, actor="engine", action="grant.test", request_id=request_id)


def test_what_each_host_should_hold_follows_the_audit_chain(store) -> None:
    from app.fleet.desired import Desired, by_host
    from app.store import GrantRow
    d = Desired()

    def ids(host: str) -> list[int]:
        d.refresh(store)
        mine = [g["grant_id"] for g in d.of(host)[1]]
        assert mine == [g["grant_id"] for g in by_host(store).get(host, [])]  # as a full read says
        return mine
    assert ids("web-01") == []
    with store.transaction() as s:
        _grant(s, 1)
        _grant(s, 2, target="web-tier", hosts=["web-01", "WEB-02"])
        _grant(s, 3, target="web-01", backend="sudo")  # another backend: no agent is told
        _event(s, 1), _event(s, 2), _event(s, 3)
    assert ids("web-01") == [1, 2] and ids("web-02") == [2] and ids("web-tier") == []
    before = d.of("web-01")[0]
    with store.transaction() as s:
        s.get(GrantRow, 1).expires_at = T0 + timedelta(hours=2)  # extended: the host must rewrite it
        _event(s, 1)
    assert ids("web-01") == [1, 2] and d.of("web-01")[0] != before
    assert d.of("web-01")[1][0]["expires_at"] == (T0 + timedelta(hours=2)).isoformat()
    with store.transaction() as s:
        s.get(GrantRow, 2).status = "revoking"
        _event(s, 2)
    assert ids("web-01") == [1] and ids("web-02") == []
    with store.transaction() as s:  # a change without an event is found by the periodic full read only
        s.get(GrantRow, 1).status = "revoked"
    d.refresh(store)
    assert [g["grant_id"] for g in d.of("web-01")[1]] == [1]
    d._full_at = float("-inf")
    assert ids("web-01") == []
