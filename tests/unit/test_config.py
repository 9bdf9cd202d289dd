"""Finding the server, parsing and validating jit.toml, the person named by the kernel, bad config through the CLI."""
from __future__ import annotations

import os
import pwd
import io
from pathlib import Path

import pytest

from app.cli.main import main
from app.config import load_config
from app.dev.sandbox import write_sandbox
from app.domain.errors import ConfigError


def _write(path: Path, text: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ------------------------------------------------------------ search order
def test_a_client_finds_the_server_by_flag_then_environment_then_client_table(tmp_path: Path) -> None:
    from app.client.connection import DEFAULT_SERVER, client_settings
    explicit = _write(tmp_path / "explicit.toml", '[client]\nserver = "unix:///explicit.sock"\n')
    env_file = _write(tmp_path / "env.toml", '[client]\nserver = "unix:///env.sock"\n')
    _write(tmp_path / "xdg" / "jit" / "jit.toml", '[client]\nserver = "unix:///xdg.sock"\n')
    env = {"JIT_SERVER": "unix:///var.sock", "JIT_CONFIG": str(env_file), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert client_settings("https://flag:8443", None, env).server == "https://flag:8443"
    assert client_settings(None, str(explicit), env).server == "unix:///var.sock"
    del env["JIT_SERVER"]
    assert client_settings(None, str(explicit), env).server == "unix:///explicit.sock"
    assert client_settings(None, None, env).server == "unix:///env.sock"
    del env["JIT_CONFIG"]
    assert client_settings(None, None, env).server == "unix:///xdg.sock"
    assert client_settings(None, None, {"HOME": str(tmp_path / "nohome")}).server == DEFAULT_SERVER


def test_a_clients_table_with_unknown_keys_is_refused_by_name(tmp_path: Path) -> None:
    from app.client.connection import client_settings
    bad = _write(tmp_path / "c.toml", '[client]\nserver = "unix:///x.sock"\nsevrer = "typo"\n')
    with pytest.raises(ConfigError, match="client.sevrer: unknown key"):
        client_settings(None, str(bad), {})


def test_the_server_and_engine_never_read_a_config_from_the_current_directory(tmp_path: Path,
                                                                               monkeypatch) -> None:
    planted = _write(tmp_path / "shared" / "jit.toml", '[backends.sudo]\nvisudo = "./evil"\n')
    monkeypatch.chdir(planted.parent)
    out, err = io.StringIO(), io.StringIO()
    env = {"HOME": str(tmp_path), "JIT_CONFIG": str(planted)}
    assert main(["engine", "--once"], env, out, err) == 2
    assert "/etc/jit/jit.toml" in err.getvalue() and str(planted) not in err.getvalue()


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


def test_allow_impersonation_is_refused_with_the_rest(tmp_path: Path) -> None:
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
    rc = main(["--config", str(bad), "engine", "--once"], {"HOME": str(tmp_path)}, out, err)
    assert rc == 2
    for key in ("database.ulr", "database.url", "engine.poll_interval", "directory.people.Bad Name"):
        assert key in err.getvalue()
    assert out.getvalue() == ""
    assert not (tmp_path / "data").exists()
    assert not list(tmp_path.rglob("*.db"))


def test_allow_impersonation_is_gone_with_a_sentence_saying_where(tmp_path: Path) -> None:
    for value in ("true", "false"):
        problems = _problems(_write(tmp_path / value / "jit.toml", f"[identity]\nallow_impersonation = {value}\n"))
        assert len(problems) == 1 and problems[0].startswith("identity.allow_impersonation: no longer exists")
        assert "jit server --dev" in problems[0]


def test_no_server_is_one_line_naming_the_url_exit_5(tmp_path: Path) -> None:
    out, err = io.StringIO(), io.StringIO()
    url = f"unix://{tmp_path}/absent.sock"
    assert main(["--server", url, "list"], {"HOME": str(tmp_path)}, out, err) == 5
    assert err.getvalue() == f"error: no jit server answers at {url} (No such file or directory)\n"
    assert out.getvalue() == ""


# ---------------------------------------------------------------- identity
def _served(tmp_path: Path, *, impersonation: bool):
    from tests.serving import dev_server
    return dev_server(write_sandbox(tmp_path / "sb"), impersonation=impersonation)


@pytest.mark.parametrize("name", ["Bob; rm", "../root", "Alice", "a" * 40])
def test_invalid_jit_user_refused_by_the_dev_server(tmp_path: Path, name: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    with _served(tmp_path, impersonation=True):
        rc = main(["whoami"], {"JIT_CONFIG": str(tmp_path / "sb" / "jit.toml"), "JIT_USER": name}, out, err)
    assert rc == 2
    assert "not a valid account name" in err.getvalue()
    assert out.getvalue() == ""


def test_the_person_is_the_kernels_not_the_environments(tmp_path: Path) -> None:
    """Without dev mode, JIT_USER, LOGNAME and USER change nothing: the peer uid decides."""
    real = pwd.getpwuid(os.getuid()).pw_name
    other = "bob" if real != "bob" else "alice"
    env = {"JIT_CONFIG": str(tmp_path / "sb" / "jit.toml"), "JIT_USER": other, "LOGNAME": other, "USER": other}
    out, err = io.StringIO(), io.StringIO()
    with _served(tmp_path, impersonation=False):
        assert main(["whoami"], env, out, err) == 0, err.getvalue()
    assert out.getvalue().startswith(f"{real}  groups:")
    assert f"(authenticated by peer-uid:{os.getuid()})" in out.getvalue()


def test_a_config_or_policy_others_can_write_is_refused(tmp_path: Path) -> None:
    config = _write(tmp_path / "jit.toml", "[logging]\nlevel = \"INFO\"\n")
    config.chmod(0o666)
    with pytest.raises(ConfigError, match=r"config: writable by group or others") as exc:
        load_config(config)
    assert exc.value.source == str(config)
    config.chmod(0o644)
    assert load_config(config).source == config.resolve()


def test_a_typo_in_console_keys_is_refused_naming_it(tmp_path):
    import pytest
    from app.config import Console
    with pytest.raises(ValueError, match="'aprove' is not a binding of the console \\(did you mean 'approve'\\?\\)"):
        Console(keys={"aprove": "y"})
    with pytest.raises(ValueError, match="approve: ' ' names no key"):
        Console(keys={"approve": " "})
    assert Console(keys={"approve": "y", "view-grants": "g,G"}).keys["view-grants"] == "g,G"
