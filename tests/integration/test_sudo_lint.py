"""Issue 15: ``jit policy lint`` refuses each reproduced role (exit 2, naming the role key and the
reason) with the same check the sudo backend runs before every apply."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from app.bootstrap import lint_backends, policy_problems, policy_warnings
from app.cli.main import main
from integrations.sudo import command_error
from policies.loader import load_policy

REPO = Path(__file__).resolve().parents[2]
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
[targets.box1.roles.ops]
eligible_groups = ["engineers"]
{settings}
"""

REPRODUCED = ["/usr/bin/env", "/usr/bin/python3", "/usr/bin/find", "/usr/bin/vim", "/usr/bin/less", "/usr/bin/tee",
              "/bin/cp", "/usr/bin/dd", "/usr/bin/awk", "/usr/bin/docker run", "/usr/bin/systemctl", "/bin/bash",
              "/tmp/fix.sh", "/home/alice/fix.sh", "/usr/bin/tee /etc/sudoers.d/x", "/usr/bin/id",
              "/usr/bin/sudoedit /etc/nginx/nginx.conf"]


def lint(tmp_path: Path, settings: str) -> tuple[int, str, str]:
    path = tmp_path / "p.toml"
    path.write_text(POLICY.format(settings=settings))
    out, err = io.StringIO(), io.StringIO()
    rc = main(["policy", "lint", str(path)], {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin:/usr/sbin"}, out, err)
    return rc, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("command", REPRODUCED)
def test_lint_refuses_each_reproduced_command(tmp_path: Path, command: str) -> None:
    rc, out, err = lint(tmp_path, f"commands = [{json.dumps(command)}]")
    assert rc == 2 and ": ok" not in out
    reason = command_error(command)
    assert reason is not None
    assert f"  targets.box1.roles.ops.commands[0]: {reason}\n" in err, err


@pytest.mark.parametrize("settings, key", [
    ('edit = ["/etc/sudoers.d/x"]', "edit[0]"),
    ('edit = ["/tmp/x.conf"]', "edit[0]"),
    ('commands = ["/usr/bin/systemctl restart nginx"]\nallow_exec = true', "allow_exec_reason"),
])
def test_lint_refuses_bad_edit_and_exec_settings(tmp_path: Path, settings: str, key: str) -> None:
    rc, _, err = lint(tmp_path, settings)
    assert rc == 2 and f"  targets.box1.roles.ops.{key}: " in err, err


@pytest.mark.parametrize("settings", [
    'commands = ["/usr/bin/systemctl restart nginx", "/usr/bin/id \\"\\""]',
    'edit = ["/etc/nginx/nginx.conf"]',
    'commands = ["/usr/bin/id"]\nallow_any_arguments = true',
    'commands = ["/usr/bin/systemctl restart nginx"]\nallow_exec = true\nallow_exec_reason = "the unit runs hooks"',
])
def test_lint_accepts_the_safe_forms(tmp_path: Path, settings: str) -> None:
    rc, out, err = lint(tmp_path, settings)
    assert rc == 0 and ": ok\n" in out, err
    assert ("  warning: " in out) == ("allow_" in settings), out  # an opt-out is said, and passes


def test_lint_reports_the_opt_outs_as_warnings(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(POLICY.format(settings='commands = ["/usr/bin/id"]\nallow_any_arguments = true\nallow_exec = true\n'
                                           'allow_exec_reason = "the unit runs hooks"'))
    policy = load_policy(path)
    backends = lint_backends(None, policy, {})
    assert policy_problems(policy, backends) == []
    assert policy_warnings(policy, backends) == [
        "targets.box1.roles.ops.allow_any_arguments: commands without arguments take any arguments",
        "targets.box1.roles.ops.allow_exec: no NOEXEC, its commands may run other programs as root "
        "(the unit runs hooks)"]


def test_shipped_policy_has_no_problems_and_no_warnings() -> None:
    policy = load_policy(REPO / "policies" / "default.toml")
    backends = lint_backends(None, policy, {})
    assert policy_problems(policy, backends) == [] and policy_warnings(policy, backends) == []
