"""Finding, parsing and validating jit.toml; the acting identity; bad config through the CLI."""
from __future__ import annotations

import os
import pwd
import io
from pathlib import Path

import pytest

from app.cli.main import main
from app.config import find_config, load_config
from app.dev.sandbox import write_sandbox
from app.domain.errors import ConfigError, IdentityError
from app.identity import acting_user


def _write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------ search order
@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    return {
        "explicit": _write(tmp_path / "explicit.toml"),
        "env": _write(tmp_path / "env.toml"),
        "cwd": _write(tmp_path / "cwd" / "jit.toml").parent,
        "xdg": _write(tmp_path / "xdg" / "jit" / "jit.toml"),
        "home": _write(tmp_path / "home" / ".config" / "jit" / "jit.toml"),
    }


def test_search_order(layout: dict[str, Path], tmp_path: Path) -> None:
    env = {"JIT_CONFIG": str(layout["env"]), "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
           "HOME": str(tmp_path / "home")}
    cwd = layout["cwd"]
    assert find_config(str(layout["explicit"]), env, cwd) == layout["explicit"]
    assert find_config(None, env, cwd) == layout["env"]
    del env["JIT_CONFIG"]
    assert find_config(None, env, cwd) == cwd / "jit.toml"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert find_config(None, env, empty) == layout["xdg"]
    del env["XDG_CONFIG_HOME"]
    assert find_config(None, env, empty) == layout["home"]


def test_no_config_found_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        find_config(None, {"HOME": str(tmp_path / "nohome")}, tmp_path)
    assert len(info.value.problems) == 1
    assert "jit init --sandbox" in info.value.problems[0]
    assert str(tmp_path / "jit.toml") in info.value.problems[0]  # says where it looked


# -------------------------------------------------------------- validation
BAD = """\
[database]
ulr = "sqlite:///x.db"
url = "mysql://x"

[engine]
poll_interval = "5 seconds"

[identity]
allow_impersonation = "yes"

[directory.people."Bad Name"]
groups = ["engineers"]
"""


def _problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    return info.value.problems


def test_every_problem_is_reported_with_its_key_path(tmp_path: Path) -> None:
    problems = _problems(_write(tmp_path / "jit.toml", BAD.replace('allow_impersonation = "yes"', "")))
    assert len(problems) == 4, problems
    for key in ("database.ulr: unknown key", "database.url:", "engine.poll_interval:", "directory.people.Bad Name"):
        assert sum(p.startswith(key) for p in problems) == 1, (key, problems)


def test_allow_impersonation_must_be_a_real_boolean(tmp_path: Path) -> None:
    problems = _problems(_write(tmp_path / "jit.toml", BAD))
    assert len(problems) == 5, problems
    assert any(p.startswith("identity.allow_impersonation:") for p in problems)


def test_not_toml_is_a_clear_error(tmp_path: Path) -> None:
    problems = _problems(_write(tmp_path / "jit.toml", "[database\nurl = \n"))
    assert len(problems) == 1 and problems[0].startswith("not valid TOML"), problems


def test_missing_explicit_file(tmp_path: Path) -> None:
    assert _problems(tmp_path / "absent.toml") == ["file not found"]


# ------------------------------------------------------------------- paths
def test_relative_paths_resolve_against_the_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _write(tmp_path / "etc" / "jit.toml", '[paths]\ndata_dir = "../var/data"\npolicy = "pol/p.toml"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(cfg)
    base = (tmp_path / "etc").resolve()
    assert config.path("x/y") == base / "x" / "y"
    assert config.path(str(tmp_path / "abs")) == tmp_path / "abs"
    assert config.data_dir == (tmp_path / "var" / "data").resolve()
    assert config.policy_path == base / "pol" / "p.toml"
    assert config.database_url == f"sqlite:///{(tmp_path / 'var' / 'data' / 'jit.db').resolve()}"


def test_explicit_database_url_is_kept(tmp_path: Path) -> None:
    url = "postgresql+psycopg://jit@db/jit"
    assert load_config(_write(tmp_path / "jit.toml", f'[database]\nurl = "{url}"\n')).database_url == url


# ---------------------------------------------------------- through the CLI
def test_cli_bad_config_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    bad = _write(tmp_path / "jit.toml", BAD + '\n[paths]\ndata_dir = "data"\npolicy = "policy.toml"\n')
    out, err = io.StringIO(), io.StringIO()
    rc = main(["--config", str(bad), "list"], {"HOME": str(tmp_path)}, out, err)
    assert rc == 2
    for key in ("database.ulr", "database.url", "engine.poll_interval", "directory.people.Bad Name"):
        assert key in err.getvalue()
    assert out.getvalue() == ""
    assert not (tmp_path / "data").exists()
    assert not list(tmp_path.rglob("*.db"))


# ---------------------------------------------------------------- identity
def _identity_config(tmp_path: Path, allow: bool):
    return load_config(_write(tmp_path / "jit.toml", f"[identity]\nallow_impersonation = {str(allow).lower()}\n"))


def test_jit_user_honoured_only_with_impersonation(tmp_path: Path) -> None:
    allowed = _identity_config(tmp_path / "a", True)
    assert acting_user(allowed, {"JIT_USER": "bob"}) == "bob"
    assert acting_user(allowed, {}) == pwd.getpwuid(os.getuid()).pw_name
    denied = _identity_config(tmp_path / "d", False)
    assert acting_user(denied, {}) == pwd.getpwuid(os.getuid()).pw_name
    with pytest.raises(IdentityError, match="allow_impersonation"):
        acting_user(denied, {"JIT_USER": "bob"})


@pytest.mark.parametrize("name", ["Bob; rm", "bob\n", "../root", "Alice", "a" * 40])
def test_invalid_jit_user_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(IdentityError, match="not a valid account name"):
        acting_user(_identity_config(tmp_path, True), {"JIT_USER": name})


def test_cli_impersonation_refused_when_disabled(tmp_path: Path) -> None:
    cfg = write_sandbox(tmp_path / "sb")
    cfg.write_text(cfg.read_text().replace("allow_impersonation = true", "allow_impersonation = false"))
    out, err = io.StringIO(), io.StringIO()
    rc = main(["whoami"], {"JIT_CONFIG": str(cfg), "JIT_USER": "alice", "HOME": str(tmp_path)}, out, err)
    assert rc == 2
    assert "allow_impersonation" in err.getvalue()
    assert "alice" not in out.getvalue()


def test_cli_invalid_jit_user_refused(tmp_path: Path) -> None:
    cfg = write_sandbox(tmp_path / "sb")
    out, err = io.StringIO(), io.StringIO()
    rc = main(["whoami"], {"JIT_CONFIG": str(cfg), "JIT_USER": "Bob; rm", "HOME": str(tmp_path)}, out, err)
    assert rc == 2
    assert "not a valid account name" in err.getvalue()
    assert out.getvalue() == ""


def test_the_acting_user_is_the_kernels_not_the_environments(tmp_path: Path, monkeypatch) -> None:
    real = pwd.getpwuid(os.getuid()).pw_name
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):  # what getpass.getuser() reads first
        monkeypatch.setenv(name, "bob" if real != "bob" else "alice")
    assert acting_user(_identity_config(tmp_path, False), dict(os.environ)) == real


def test_a_config_or_policy_others_can_write_is_refused(tmp_path: Path) -> None:
    config = _write(tmp_path / "jit.toml", "[identity]\nallow_impersonation = false\n")
    config.chmod(0o666)
    with pytest.raises(ConfigError, match=r"config: writable by group or others") as exc:
        load_config(config)
    assert exc.value.source == str(config)
    config.chmod(0o644)
    assert load_config(config).source == config.resolve()
