"""SudoBackend against the real visudo and cvtsudoers binaries (no mocks)."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from integrations.base import Backend, BackendError, BatchApply, GrantSpec, InvalidGrant
from integrations.sudo import SudoBackend


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


VISUDO = _which("visudo")
CVTSUDOERS = _which("cvtsudoers")

pytestmark = pytest.mark.skipif(
    VISUDO is None or CVTSUDOERS is None,
    reason="sudo's visudo and cvtsudoers are not installed (apt-get install sudo)",
)

PLUS2 = timezone(timedelta(hours=2))
COMMANDS = ["/usr/bin/systemctl restart nginx", "/usr/bin/journalctl -u nginx"]


def make_grant(**changes: object) -> GrantSpec:
    grant = GrantSpec(
        grant_id=42,
        request_id=7,
        person="alice",
        target="web1.example.com",
        role="nginx-operator",
        starts_at=datetime(2026, 11, 24, 6, 0, tzinfo=PLUS2),  # 04:00Z
        expires_at=datetime(2026, 11, 24, 8, 0, tzinfo=PLUS2),  # 06:00Z
        params={"commands": list(COMMANDS)},
    )
    return replace(grant, **changes)


@pytest.fixture
def sudoers_dir(tmp_path: Path) -> Path:
    d = tmp_path / "sudoers.d"
    d.mkdir()
    return d


@pytest.fixture
def ts_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ts"
    d.mkdir()
    return d


@pytest.fixture
def backend(sudoers_dir: Path, ts_dir: Path) -> SudoBackend:
    return SudoBackend(sudoers_dir, visudo=VISUDO, cvtsudoers=CVTSUDOERS, timestamp_dir=ts_dir)


def cvt_json(path: str | Path) -> dict:
    out = subprocess.run([CVTSUDOERS, "-f", "json", str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def options(doc: dict) -> dict:
    merged: dict = {}
    for spec in doc["User_Specs"]:
        for cs in spec["Cmnd_Specs"]:
            for opt in cs.get("Options", []):
                merged.update(opt)
    return merged


def test_is_a_backend(backend: SudoBackend) -> None:
    assert isinstance(backend, Backend) and isinstance(backend, BatchApply)
    assert backend.name == "sudo"


def test_apply_writes_checked_file_with_utc_times(backend: SudoBackend, sudoers_dir: Path) -> None:
    ref = backend.apply(make_grant())
    path = sudoers_dir / "jit_g42"
    assert ref == str(path)
    assert os.listdir(sudoers_dir) == ["jit_g42"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o440
    check = subprocess.run([VISUDO, "-cf", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    doc = cvt_json(path)
    opts = options(doc)
    assert opts["notbefore"] == "20261124040000Z"
    assert opts["notafter"] == "20261124060000Z"
    assert opts["log_input"] is True and opts["log_output"] is True
    spec = doc["User_Specs"][0]
    assert spec["User_List"] == [{"username": "alice"}]
    assert [c["command"] for cs in spec["Cmnd_Specs"] for c in cs["Commands"]] == COMMANDS
    body = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    assert len(body) == 1 and "LOG_INPUT: LOG_OUTPUT: NOEXEC:" in body[0]
    assert opts["noexec"] is True


def test_inspect_reads_back_the_grant(backend: SudoBackend) -> None:
    grant = make_grant()
    backend.apply(grant)
    art = backend.inspect(grant)
    assert art is not None
    assert art.grant_id == 42 and art.person == "alice"
    assert art.target == "web1.example.com" and art.role == "nginx-operator"
    assert art.not_before == grant.starts_at and art.not_after == grant.expires_at
    assert art.not_after.tzinfo == timezone.utc
    assert art.details == {"hosts": ["web1.example.com"], "commands": COMMANDS, "runas": "root", "log_input": True, "log_output": True,
                           "noexec": True}


def test_arguments_with_colon_and_equals_round_trip(backend: SudoBackend) -> None:
    cmds = ["/usr/bin/foo --opt=1 host:80 u@h", "/usr/bin/g++ -v"]
    grant = make_grant(params={"commands": cmds})
    backend.apply(grant)
    assert backend.inspect(grant).details["commands"] == cmds


def test_apply_is_idempotent_and_updates_expiry(backend: SudoBackend, sudoers_dir: Path) -> None:
    grant = make_grant()
    backend.apply(grant)
    backend.apply(grant)
    assert os.listdir(sudoers_dir) == ["jit_g42"]
    extended = replace(grant, expires_at=datetime(2026, 11, 24, 9, 30, tzinfo=PLUS2))
    backend.apply(extended)
    assert os.listdir(sudoers_dir) == ["jit_g42"]
    assert options(cvt_json(sudoers_dir / "jit_g42"))["notafter"] == "20261124073000Z"
    assert backend.inspect(extended).not_after == extended.expires_at


def test_revoke_removes_file_and_is_idempotent(backend: SudoBackend, sudoers_dir: Path) -> None:
    grant = make_grant()
    backend.apply(grant)
    backend.revoke(grant)
    assert os.listdir(sudoers_dir) == []
    backend.revoke(grant)
    assert backend.inspect(grant) is None


def test_revoke_removes_cached_credentials(backend: SudoBackend, ts_dir: Path) -> None:
    (ts_dir / "alice").write_bytes(b"\0" * 16)
    (ts_dir / "bob").write_bytes(b"\0" * 16)
    grant = make_grant()
    backend.apply(grant)
    backend.revoke(grant)
    assert sorted(os.listdir(ts_dir)) == ["bob"]


def test_inspect_absent_is_none(backend: SudoBackend) -> None:
    assert backend.inspect(make_grant()) is None


def test_list_managed_finds_only_grant_files(backend: SudoBackend, sudoers_dir: Path) -> None:
    backend.apply(make_grant(grant_id=1))
    backend.apply(make_grant(grant_id=2, person="bob"))
    for name in ("README", ".jit_g1.tmp-x", "other_file", "jit_g3~", "jit_g4.bak"):
        (sudoers_dir / name).write_text("garbage !!\n")
    arts = backend.list_managed()
    assert [(a.grant_id, a.person) for a in arts] == [(1, "alice"), (2, "bob")]
    assert all(a.ref == str(sudoers_dir / f"jit_g{a.grant_id}") for a in arts)


def test_list_managed_missing_dir_is_empty(tmp_path: Path) -> None:
    b = SudoBackend(tmp_path / "absent", visudo=VISUDO, cvtsudoers=CVTSUDOERS)
    assert b.list_managed() == []


def test_unparseable_file_raises(backend: SudoBackend, sudoers_dir: Path) -> None:
    (sudoers_dir / "jit_g42").write_text("alice ALL = garbage !!\n")
    with pytest.raises(BackendError, match="cvtsudoers"):
        backend.inspect(make_grant())


BAD_PERSONS = ["alice\nroot ALL=(ALL) ALL", "alice,bob", "ALL", "%admin", "ADMINS", "al ice", "", "alice\n"]
BAD_COMMANDS = [
    "ALL",
    "/bin/sh, /bin/bash",
    "sh",
    "/bin/ls *",
    "/usr/bin/vi\n/bin/sh",
    "/bin/a\\b",
    "!/bin/su",
    "/bin/../bin/sh",
    "/usr/bin/systemctl restart all",
    "/usr/bin/less /var/log/../../etc/shadow",
    "/usr/bin/id ",
    "/usr/bin/id  -u",
    "/usr/bin/",
    '/usr/bin/echo "x"',
    "/usr/bin/sudoedit /etc/%h",
    "/usr/bin/ls [a]",
    "/usr/bin/ls #1",
]


def _assert_refused(backend: SudoBackend, sudoers_dir: Path, grant: GrantSpec, field: str) -> None:
    with pytest.raises(InvalidGrant) as info:
        backend.apply(grant)
    assert info.value.field == field
    assert info.value.transient is False
    assert os.listdir(sudoers_dir) == []


@pytest.mark.parametrize("person", BAD_PERSONS)
def test_bad_person_is_refused(backend: SudoBackend, sudoers_dir: Path, person: str) -> None:
    _assert_refused(backend, sudoers_dir, make_grant(person=person), "person")


@pytest.mark.parametrize("command", BAD_COMMANDS)
def test_bad_command_is_refused(backend: SudoBackend, sudoers_dir: Path, command: str) -> None:
    grant = make_grant(params={"commands": ['/usr/bin/id ""', command]})
    _assert_refused(backend, sudoers_dir, grant, "commands[1]")
    assert backend.validate_role(grant.params)[0].startswith("commands[1]: ")


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"params": {"commands": []}}, "commands"),
        ({"params": {}}, "commands"),
        ({"params": {"commands": "/usr/bin/id"}}, "commands"),
        ({"role": "Bad Role"}, "role"),
        ({"target": "web1;rm"}, "target"),
        ({"target": "-web1"}, "target"),
        ({"starts_at": datetime(2026, 11, 24, 6, 0)}, "starts_at"),
        ({"expires_at": datetime(2026, 11, 24, 5, 0, tzinfo=PLUS2)}, "expires_at"),
        ({"expires_at": datetime(2026, 11, 24, 6, 0, tzinfo=PLUS2)}, "expires_at"),
    ],
)
def test_other_bad_fields_are_refused(
    backend: SudoBackend, sudoers_dir: Path, changes: dict, field: str
) -> None:
    _assert_refused(backend, sudoers_dir, make_grant(**changes), field)


def test_validate_role(backend: SudoBackend) -> None:
    assert backend.validate_role({"commands": COMMANDS}) == []
    assert backend.validate_role({}) != []
    assert backend.validate_role({"commands": [1]}) == ["commands: must be a list of strings"]
    msgs = backend.validate_role({"commands": ['/usr/bin/id ""', "sh", "ALL"]})
    assert len(msgs) == 2
    assert msgs[0].startswith("commands[1]: must be an absolute path")
    assert msgs[1].startswith("commands[2]: ")


def test_revoke_refuses_bad_person_before_touching_paths(backend: SudoBackend, ts_dir: Path) -> None:
    (ts_dir / "x").write_text("")
    with pytest.raises(InvalidGrant):
        backend.revoke(make_grant(person="../ts"))
    assert os.listdir(ts_dir) == ["x"]


def test_visudo_rejection_leaves_nothing(tmp_path: Path, sudoers_dir: Path) -> None:
    fake = tmp_path / "fake-visudo"
    fake.write_text("#!/bin/sh\necho \"$2:1:1: syntax error\" >&2\nexit 1\n")
    fake.chmod(0o755)
    b = SudoBackend(sudoers_dir, visudo=str(fake), cvtsudoers=CVTSUDOERS)
    with pytest.raises(BackendError, match="syntax error") as info:
        b.apply(make_grant())
    assert info.value.transient is False
    assert os.listdir(sudoers_dir) == []


def test_missing_visudo_raises(tmp_path: Path, sudoers_dir: Path) -> None:
    b = SudoBackend(sudoers_dir, visudo=str(tmp_path / "no-such-visudo"), cvtsudoers=CVTSUDOERS)
    with pytest.raises(BackendError, match="not found"):
        b.apply(make_grant())
    assert os.listdir(sudoers_dir) == []


def test_missing_dir_is_transient(tmp_path: Path) -> None:
    b = SudoBackend(tmp_path / "absent", visudo=VISUDO, cvtsudoers=CVTSUDOERS)
    with pytest.raises(BackendError) as info:
        b.apply(make_grant())
    assert info.value.transient is True


def test_init_rejects_bad_runas(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        SudoBackend(tmp_path, runas="ALL")


# -- apply_many: a batch of drop-ins checked by one visudo run ------------------------------------

def logging_visudo(tmp_path: Path, refuse: str = "") -> tuple[Path, Path]:
    """A visudo that logs each file it is asked to check and then runs the real one; a file whose
    text holds ``refuse`` (or a listing including such a file) is refused with a message naming it."""
    log, script = tmp_path / "visudo.log", tmp_path / "visudo"
    refusal = (f'for f in "$2" $(sed -n "s/^#include //p" "$2"); do\n'
               f'  if grep -q "{refuse}" "$f"; then echo "$f:2:1: syntax error" >&2; exit 1; fi\n'
               f'done\n') if refuse else ""
    script.write_text(f'#!/bin/sh\necho "$2" >> "{log}"\n{refusal}exec "{VISUDO}" "$@"\n')
    script.chmod(0o755)
    return script, log


def batch(n: int) -> list[GrantSpec]:
    return [make_grant(grant_id=i, request_id=100 + i, person=f"user{i}") for i in range(1, n + 1)]


def test_apply_many_writes_what_apply_writes_with_one_visudo_run(tmp_path: Path, sudoers_dir: Path) -> None:
    visudo, log = logging_visudo(tmp_path)
    b = SudoBackend(sudoers_dir, visudo=str(visudo), cvtsudoers=CVTSUDOERS)
    grants = batch(5)
    assert b.apply_many(grants) == [str(sudoers_dir / f"jit_g{g.grant_id}") for g in grants]
    assert len(log.read_text().splitlines()) == 1  # one check for the five (a listing that includes each)
    one_by_one = tmp_path / "one-by-one"
    one_by_one.mkdir()
    single = SudoBackend(one_by_one, visudo=VISUDO, cvtsudoers=CVTSUDOERS)
    for g in grants:
        single.apply(g)
    assert sorted(os.listdir(sudoers_dir)) == sorted(os.listdir(one_by_one))  # no temporary file is left
    for g in grants:
        path = sudoers_dir / f"jit_g{g.grant_id}"
        assert path.read_text() == (one_by_one / path.name).read_text()
        assert stat.S_IMODE(path.stat().st_mode) == 0o440
        assert subprocess.run([VISUDO, "-cf", str(path)], capture_output=True).returncode == 0
        assert b.inspect(g).person == g.person


def test_apply_many_fails_only_the_bad_grants(tmp_path: Path, sudoers_dir: Path) -> None:
    visudo, log = logging_visudo(tmp_path, refuse="person=user3 ")
    b = SudoBackend(sudoers_dir, visudo=str(visudo), cvtsudoers=CVTSUDOERS)
    grants = batch(4)
    grants[1] = replace(grants[1], person="Not A User")
    results = b.apply_many(grants)
    assert results[0] == str(sudoers_dir / "jit_g1") and results[3] == str(sudoers_dir / "jit_g4")
    assert isinstance(results[1], InvalidGrant) and results[1].field == "person"  # never written
    assert isinstance(results[2], BackendError) and not results[2].transient
    assert str(results[2]).startswith("visudo rejected the sudoers file for grant 3: ")
    assert "syntax error" in str(results[2])
    assert sorted(os.listdir(sudoers_dir)) == ["jit_g1", "jit_g4"]
    assert len(log.read_text().splitlines()) == 1 + 3  # the listing refused: each written file checked alone


def test_apply_many_without_visudo_fails_each_and_leaves_nothing(tmp_path: Path, sudoers_dir: Path) -> None:
    b = SudoBackend(sudoers_dir, visudo=str(tmp_path / "no-such-visudo"), cvtsudoers=CVTSUDOERS)
    results = b.apply_many(batch(3))
    assert [type(r) for r in results] == [BackendError] * 3 and all("not found" in str(r) for r in results)
    assert os.listdir(sudoers_dir) == []


def test_apply_many_into_a_missing_dir_is_transient_for_each(tmp_path: Path) -> None:
    b = SudoBackend(tmp_path / "absent", visudo=VISUDO, cvtsudoers=CVTSUDOERS)
    results = b.apply_many(batch(2))
    assert all(isinstance(r, BackendError) and r.transient for r in results)


# ------------------------------------------------------------------ issue 15: commands that are what they say
def _rule(path: Path) -> str:
    return next(line for line in path.read_text().splitlines() if not line.startswith("#"))


def _visudo_ok(path: Path) -> None:
    check = subprocess.run([VISUDO, "-cf", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_every_rule_is_noexec_unless_the_role_allows_exec(backend: SudoBackend, sudoers_dir: Path) -> None:
    backend.apply(make_grant())
    path = sudoers_dir / "jit_g42"
    _visudo_ok(path)
    assert " NOEXEC: " in _rule(path) and options(cvt_json(path))["noexec"] is True
    allowed = make_grant(params={"commands": list(COMMANDS), "allow_exec": True,
                                 "allow_exec_reason": "the restart hook runs helper programs"})
    backend.apply(allowed)
    _visudo_ok(path)
    assert " EXEC: " in _rule(path) and "NOEXEC" not in _rule(path)
    assert backend.inspect(allowed).details["noexec"] is False


def test_allow_exec_needs_a_reason(backend: SudoBackend, sudoers_dir: Path) -> None:
    _assert_refused(backend, sudoers_dir, make_grant(params={"commands": COMMANDS, "allow_exec": True}),
                    "allow_exec_reason")


def test_no_arguments_is_written_as_empty_string_and_visudo_accepts_it(backend: SudoBackend,
                                                                       sudoers_dir: Path) -> None:
    grant = make_grant(params={"commands": ['/usr/bin/id ""', "/usr/bin/systemctl restart nginx"]})
    backend.apply(grant)
    path = sudoers_dir / "jit_g42"
    _visudo_ok(path)
    assert _rule(path).endswith('NOEXEC: /usr/bin/id "", /usr/bin/systemctl restart nginx')
    assert backend.inspect(grant).details["commands"] == ['/usr/bin/id ""', "/usr/bin/systemctl restart nginx"]


def test_a_command_without_arguments_is_refused_unless_any_arguments_is_allowed(
        backend: SudoBackend, sudoers_dir: Path) -> None:
    _assert_refused(backend, sudoers_dir, make_grant(params={"commands": ["/usr/bin/id"]}), "commands[0]")
    backend.apply(make_grant(params={"commands": ["/usr/bin/id"], "allow_any_arguments": True}))
    _visudo_ok(sudoers_dir / "jit_g42")


def test_sudoedit_entries_render_and_visudo_accepts_them(backend: SudoBackend, sudoers_dir: Path) -> None:
    grant = make_grant(params={"edit": ["/etc/nginx/nginx.conf", "/etc/hosts"]})
    backend.apply(grant)
    path = sudoers_dir / "jit_g42"
    _visudo_ok(path)
    assert _rule(path).endswith("NOEXEC: sudoedit /etc/nginx/nginx.conf, sudoedit /etc/hosts")
    assert backend.inspect(grant).details["commands"] == ["sudoedit /etc/nginx/nginx.conf", "sudoedit /etc/hosts"]
    both = make_grant(params={"commands": ["/usr/bin/systemctl reload nginx"], "edit": ["/etc/nginx/nginx.conf"]})
    backend.apply(both)
    _visudo_ok(path)
    assert backend.describe(both) == {"commands": ["/usr/bin/systemctl reload nginx"],
                                      "edit": ["/etc/nginx/nginx.conf"], "noexec": True}
    assert backend.describe(make_grant(params={"commands": ["/bin/sh"]}))["invalid"].startswith("commands[0]: sh ")


@pytest.mark.parametrize("file", ["/tmp/x.conf", "/home/alice/.bashrc", "/etc/sudoers", "/etc/sudoers.d/x",
                                  "/etc/shadow", "etc/nginx.conf", "/etc/nginx/../shadow", "/etc/*.conf", "/etc/a b"])
def test_sudoedit_refuses_user_writable_and_root_deciding_files(backend: SudoBackend, sudoers_dir: Path,
                                                                file: str) -> None:
    _assert_refused(backend, sudoers_dir, make_grant(params={"edit": [file]}), "edit[0]")


def test_a_refused_command_class_is_refused_by_apply_too(backend: SudoBackend, sudoers_dir: Path) -> None:
    _assert_refused(backend, sudoers_dir, make_grant(params={"commands": ["/usr/bin/tee /etc/sudoers.d/x"]}),
                    "commands[0]")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: a root-owned directory outside /tmp to test modes in")
def test_a_program_under_a_user_writable_directory_is_refused(backend: SudoBackend, sudoers_dir: Path) -> None:
    import tempfile
    where = Path(tempfile.mkdtemp(prefix="jit-test-", dir="/var/lib"))  # /tmp is refused by rule already
    try:
        tool = where / "tool"
        tool.write_text("#!/bin/sh\n")
        ok = make_grant(params={"commands": [f"{tool} --run"]})
        assert backend.validate_role(ok.params) == []
        where.chmod(0o777)  # world-writable: anyone may swap the tool
        _assert_refused(backend, sudoers_dir, ok, "commands[0]")
        assert f"{where} is not root-owned or others can write it" in backend.validate_role(ok.params)[0]
        where.chmod(0o755)
        os.chown(tool, 65534, 65534)  # the tool itself belongs to nobody
        assert f"{tool} is not root-owned" in backend.validate_role(ok.params)[0]
    finally:
        shutil.rmtree(where)


def test_a_symlink_named_like_a_drop_in_is_drift_never_followed(backend: SudoBackend, sudoers_dir: Path,
                                                                 tmp_path: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret-hash:19000:0:99999:7:::\n")
    (sudoers_dir / "jit_g7").symlink_to(secret)
    (sudoers_dir / "jit_g8").mkdir()
    arts = backend.list_managed()
    assert [(a.grant_id, a.person) for a in arts] == [(None, ""), (None, "")]
    assert all("not followed" in a.ref for a in arts)
    assert "secret-hash" not in repr(arts)
    with pytest.raises(BackendError, match="symbolic link") as info:
        backend.inspect(make_grant(grant_id=7))
    assert "secret-hash" not in str(info.value)
    with pytest.raises(InvalidGrant):  # reconcile --fix cannot remove what the link points at
        backend.revoke(GrantSpec(0, 0, "", "", "", datetime.now(timezone.utc), datetime.now(timezone.utc)))
    assert secret.exists()


def test_the_shipped_policy_lints_clean_through_the_backend(backend: SudoBackend) -> None:
    from policies.loader import load_policy
    policy = load_policy(Path(__file__).resolve().parents[2] / "policies" / "default.toml")
    for target in policy.targets.values():
        for role in target.roles.values():
            assert backend.validate_role(role.params) == []
