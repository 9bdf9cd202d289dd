"""The CLI against a real sandbox (SQLite, sudoers.d, visudo): help, input validation, lint, explain, JSON."""
from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.cli.main import main
from app.dev.sandbox import write_sandbox
from tests.serving import dev_server

pytestmark = pytest.mark.skipif(shutil.which("visudo", path=os.environ["PATH"] + ":/usr/sbin") is None,
                                reason="sudo's visudo is not installed")

REPO = Path(__file__).resolve().parents[2]
REASON = ["--reason", "check nginx config"]


@dataclass
class Result:
    rc: int
    out: str
    err: str


@pytest.fixture
def sb(tmp_path: Path) -> Path:
    config = write_sandbox(tmp_path / "sb")
    with dev_server(config):
        yield config.parent


@pytest.fixture
def jit(sb: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    env = {"JIT_CONFIG": str(sb / "jit.toml"), "JIT_USER": "alice", "HOME": str(tmp_path),
           "PATH": os.environ["PATH"]}

    def run(*argv: str, user: str = "alice") -> Result:
        out, err = io.StringIO(), io.StringIO()
        rc = main(list(argv), {**env, "JIT_USER": user}, out, err)
        cap = capsys.readouterr()  # argparse writes usage and errors to sys.stdout/sys.stderr
        return Result(rc, out.getvalue() + cap.out, err.getvalue() + cap.err)
    return run


def rows(jit) -> list[dict]:
    r = jit("list", "--json")
    assert r.rc == 0, r.err
    return json.loads(r.out)


# -------------------------------------------------------------------- help
COMMANDS = ["init", "demo", "whoami", "policy", "request", "approve", "deny", "cancel", "release", "revoke",
            "extend", "bypass", "review", "list", "show", "audit", "engine",
            "policy lint", "policy explain", "audit verify", "audit export"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help(jit, command: str) -> None:
    r = jit(*command.split(), "--help")
    assert r.rc == 0
    assert r.out.startswith(f"usage: jit {command}"), r.out


def test_argparse_output_goes_to_given_streams(sb: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    env = {"JIT_CONFIG": str(sb / "jit.toml"), "JIT_USER": "alice"}
    assert main(["list", "--help"], env, out, err) == 0
    assert main(["show", "abc"], env, out, err) == 2
    assert "usage: jit list" in out.getvalue() and "'abc' is not a request id" in err.getvalue()


# ---------------------------------------------------------------- bad input
def request(target: str = "web-dev-01", role: str = "service-admin", *extra: str, duration: str = "10m",
            reason: list[str] = REASON) -> list[str]:
    return ["request", target, role, f"--duration={duration}", *reason, *extra]


BAD_INPUT = [
    *[pytest.param(request(duration=d), "--duration", id=f"duration {d}") for d in ("0m", "2x", "-5m", "999d")],
    *[pytest.param([cmd, rid], "id", id=f"{cmd} {rid}") for cmd in ("approve", "show")
      for rid in ("abc", "REQ-", "-1")],
    pytest.param(request("web-dev-01", "service-admin", "--start", "2026-11-24T09:00:00"), "--start",
                 id="start without offset"),
    pytest.param(request("web-dev-01", "service-admin", "--start", "2020-01-01T09:00:00Z"), "start",
                 id="start in the past"),
    *[pytest.param(request(t), "target", id=f"target {t!r}") for t in ("web-prod-01,ALL", "web prod", "../etc")],
    *[pytest.param(request("web-dev-01", r), "role", id=f"role {r!r}")
      for r in ("ALL", "service-admin\nalice ALL=(ALL) ALL", "Service-Admin")],
    pytest.param(request(reason=["--reason", "check nginx\nconfig"]), "reason", id="reason newline"),
    pytest.param(request(reason=["--reason", ""]), "reason", id="reason empty"),
    pytest.param(request(reason=["--reason", "x" * 3000]), "reason", id="reason too long"),
    pytest.param(request("web-prod-01", "service-admin", "--ticket", "CHG1"), "ticket", id="ticket CHG1"),
]


@pytest.mark.parametrize("argv, field", BAD_INPUT)
def test_bad_input_refused_and_nothing_written(jit, sb: Path, argv: list[str], field: str) -> None:
    r = jit(*argv)
    assert r.rc != 0
    assert field in r.err, r.err
    assert "Traceback" not in r.err
    assert rows(jit) == []
    assert list((sb / "sudoers.d").iterdir()) == []


@pytest.mark.parametrize("command", ["request", "policy explain"])
def test_start_near_end_of_time_refused(jit, command: str) -> None:
    r = jit(*command.split(), "web-dev-01", "service-admin", "--duration=1d", "--start", "9999-12-31T23:00:00Z",
            *REASON)
    assert r.rc in (1, 2) and "start" in r.err


@pytest.mark.parametrize("argv", [["show", "999"], ["approve", "999"]])
def test_unknown_request_exits_3(jit, argv: list[str]) -> None:
    r = jit(*argv)
    assert r.rc == 3
    assert "REQ-999" in r.err


# -------------------------------------------------------------------- lint
POLICY = """\
version = 1
[environments.dev]
max_duration = "8h"
[tiers.low]
approval = "self-service"
approver_groups = ["managers"]
[targets.box1]
environment = "dev"
tier = "low"
[targets.box1.roles.shell]
eligible_groups = ["engineers"]
commands = [{commands}]
"""


def test_lint_shipped_policy_ok(jit) -> None:
    path = str(REPO / "policies" / "default.toml")
    r = jit("policy", "lint", path)
    assert r.rc == 0, r.err
    assert r.out == f"{path}: ok\n"


@pytest.mark.parametrize("commands", ['"ALL"', '"/bin/sh, /bin/bash"'])
def test_lint_refuses_unsafe_sudo_command(jit, tmp_path: Path, commands: str) -> None:
    path = tmp_path / "p.toml"
    path.write_text(POLICY.format(commands=commands))
    r = jit("policy", "lint", str(path))
    assert r.rc == 2
    assert "targets.box1.roles.shell.commands[0]:" in r.err, r.err
    assert ": ok" not in r.out


def test_lint_safe_policy_ok_and_broken_toml_fails(jit, tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(POLICY.format(commands='"/usr/bin/systemctl status nginx"'))
    assert jit("policy", "lint", str(good)).rc == 0
    broken = tmp_path / "broken.toml"
    broken.write_text("version = 1\n[targets\n")
    r = jit("policy", "lint", str(broken))
    assert r.rc == 2
    assert "not valid TOML" in r.err


# ----------------------------------------------------------------- explain
def test_several_failed_checks_print_one_per_line(jit) -> None:
    r = jit("request", "web-prod-01", "service-admn", "--duration", "10m", "--reason", "check nginx config")
    assert r.rc == 1
    lines = r.err.splitlines()
    assert lines[0] == "refused: policy:"
    assert lines[1].startswith("  business_need: ") and not lines[1].endswith(".")
    assert lines[2] == ("  privilege_appropriate: target web-prod-01 has no role 'service-admn' "
                        "(roles: log-auditor, service-admin).")
    assert ".; " not in r.err


def test_a_target_typo_gets_a_suggestion(jit) -> None:
    r = jit("request", "web-prd-01", "service-admin", "--duration", "10m", "--reason", "check nginx config")
    assert r.rc == 1 and "target 'web-prd-01' is not managed by this policy. Did you mean web-prod-01 or web-dev-01?" in r.err
    far = jit("request", "mail-server-9", "service-admin", "--duration", "10m", "--reason", "check nginx config")
    assert far.rc == 1 and "Did you mean" not in far.err


def test_explain_refusal_submits_nothing(jit, sb: Path) -> None:
    r = jit("policy", "explain", "web-prod-01", "service-admin", "--duration", "9h")
    assert r.rc == 1
    assert "[FAIL] duration_reasonable" in r.out
    assert "(nothing was submitted)" in r.out
    assert rows(jit) == []
    assert list((sb / "sudoers.d").iterdir()) == []


# -------------------------------------------------------------------- JSON
KEYS = {"id", "state", "requester", "target", "role", "starts_at", "expires_at"}


def test_list_and_show_json(jit, sb: Path) -> None:
    r = jit("request", "web-dev-01", "service-admin", "--duration", "10m", "--reason", "check nginx config")
    assert r.rc == 0, r.err
    listed = rows(jit)
    assert len(listed) == 1 and KEYS <= listed[0].keys()
    item = listed[0]
    assert (item["state"], item["requester"], item["target"], item["role"]) == \
        ("active", "alice", "web-dev-01", "service-admin")
    assert item["starts_at"] < item["expires_at"]
    assert len(list((sb / "sudoers.d").iterdir())) == 1
    s = jit("show", str(item["id"]), "--json")
    assert s.rc == 0
    shown = json.loads(s.out)
    assert {k: shown[k] for k in KEYS} == {k: item[k] for k in KEYS}



@pytest.fixture
def offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """``jit`` against a sandbox with ServiceNow off (``jit init --servicenow-url off``)."""
    config = write_sandbox(tmp_path / "off", servicenow_url=None)
    env = {"JIT_CONFIG": str(config), "HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    with dev_server(config):
        def run(*argv: str, user: str = "alice") -> Result:
            out, err = io.StringIO(), io.StringIO()
            rc = main(list(argv), {**env, "JIT_USER": user}, out, err)
            cap = capsys.readouterr()
            return Result(rc, out.getvalue() + cap.out, err.getvalue() + cap.err)
        yield run


def test_every_command_that_prints_answers_json(offline) -> None:
    """--json prints the API's answer (its OpenAPI shape), errors included, so a script reads the id
    ``jit request`` made and the outcome of each action without parsing text."""
    def js(*argv: str, user: str = "alice", rc: int = 0) -> dict:
        r = offline(*argv, "--json", user=user)
        assert r.rc == rc, (argv, r.out, r.err)
        return json.loads(r.out)

    assert js("whoami")["person"] == "alice"
    explained = js("policy", "explain", "web-prod-01", "service-admin", "--duration", "9h", rc=1)
    assert explained["allowed"] is False and any(c["name"] == "duration_reasonable" for c in explained["checks"])
    made = js("request", "web-prod-01", "service-admin", "--duration", "1h", "--ticket", "CHG0000001", *REASON)
    rid = made["request"]["id"]
    assert made["request"]["state"] == "pending" and made["message"].startswith(f"REQ-{rid} submitted")
    assert js("approve", str(rid), user="bob")["request"]["approvals"][0]["approver"] == "bob"
    assert js("approve", str(rid), user="carol")["request"]["state"] == "active"
    dev = js("request", "web-dev-01", "service-admin", "--duration", "10m", *REASON)["request"]
    assert dev["state"] == "active"
    longer = js("extend", str(dev["id"]), "--by", "5m", "--reason", "a little longer")["request"]
    assert longer["expires_at"] > dev["expires_at"]
    assert js("release", str(rid))["request"]["state"] == "released"
    other = js("request", "web-prod-01", "service-admin", "--duration", "1h", "--ticket", "CHG0000001",
               *REASON)["request"]["id"]
    assert js("deny", str(other), "--reason", "not today", user="bob")["request"]["state"] == "denied"
    third = js("request", "web-prod-01", "service-admin", "--duration", "1h", "--ticket", "CHG0000001",
               *REASON)["request"]["id"]
    assert js("cancel", str(third))["request"]["state"] == "cancelled"
    bypassed = js("bypass", "web-prod-01", "service-admin", "--duration", "1h", "--incident", "INC0000042",
                  "--reason", "nginx down for everyone", user="dave")["request"]
    assert js("revoke", str(bypassed["id"]), "--reason", "over", user="erin")["request"]["state"] == "revoked"
    assert js("review", str(bypassed["id"]), "--outcome", "justified", "--comment", "real outage",
              user="erin")["request"]["review"]["state"] == "justified"
    verified = js("audit", "verify")
    assert verified["ok"] is True and verified["events"] > 10
    assert js("list", user="erin")[0]["id"] == bypassed["id"] and js("show", str(rid))["state"] == "released"
    refused = js("approve", str(other), user="bob", rc=4)  # it was denied: a conflict, exit 4
    assert refused == {"error": {"rule": "state", "message": refused["error"]["message"], "field": None}}
    assert "REQ-999" in js("show", "999", rc=3)["error"]["message"]
    bad = js("request", "web prod", "service-admin", "--duration", "1h", *REASON, rc=1)
    assert bad["error"]["field"] == "target"
    assert js("sync", "status", rc=2)["error"]["message"].startswith("ServiceNow is not enabled")


def test_a_closed_pipe_ends_the_export_quietly(tmp_path: Path) -> None:
    """`jit audit export | head -c 100`: the reader stops early; jit ends without a traceback."""
    import subprocess
    import sys
    from datetime import timedelta
    config = write_sandbox(tmp_path / "sb", servicenow_url=None)
    env = {**os.environ, "JIT_CONFIG": str(config), "JIT_USER": "alice", "HOME": str(tmp_path)}
    with dev_server(config) as sv:
        for _ in range(40):  # an export past a pipe's 64 KiB buffer (~140 KiB)
            sv.lifecycle.submit("alice", "web-dev-01", "service-admin",
                                timedelta(minutes=10), "check nginx config", None)
            sv.lifecycle.release("alice", sv.lifecycle.list()[0].id)
        proc = subprocess.run(f"{sys.executable} -m app audit export | head -c 100 >/dev/null; "
                              "echo \"${PIPESTATUS[0]}\" >&2", shell=True, executable="/bin/bash", env=env,
                              capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "141"
