"""The deployment config (``jit.toml``): found, parsed and validated before anything starts.

Search order: ``--config``, then ``$JIT_CONFIG``, then ``./jit.toml``, then the user config
directory (``$XDG_CONFIG_HOME/jit/jit.toml``, default ``~/.config/jit/jit.toml``).
Relative paths inside the file are relative to the file's own directory.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, field_validator

from policies.loader import PolicyError, build, parse_toml
from policies.model import Duration

PERSON = r"^[a-z_][a-z0-9_-]{0,31}$"


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` holds one ``key.path: reason`` each."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Database(_Strict):
    url: str = ""  # empty: SQLite file jit.db in data_dir

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if value and not value.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return value


class Paths(_Strict):
    data_dir: str = "~/.local/share/jit"
    policy: str = "policies/default.toml"


class Identity(_Strict):
    allow_impersonation: StrictBool = False  # honour JIT_USER; unsafe in production


class Person(_Strict):
    display_name: str = ""
    groups: tuple[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$")], ...] = ()


class Directory(_Strict):
    kind: Literal["static"] = "static"
    people: dict[Annotated[str, Field(pattern=PERSON)], Person] = {}


class SudoSettings(_Strict):
    sudoers_dir: str = "/etc/sudoers.d"
    visudo: str = "visudo"
    cvtsudoers: str = "cvtsudoers"
    timestamp_dir: str = ""  # sudo's credential cache (/run/sudo/ts); emptied per user at revoke
    runas: str = "root"


class Backends(_Strict):
    sudo: SudoSettings = SudoSettings()


class EngineSettings(_Strict):
    poll_interval: Duration = timedelta(seconds=5)
    sweep_interval: Duration = timedelta(seconds=30)
    lease: Duration = timedelta(seconds=60)
    apply_attempts: StrictInt = Field(default=3, ge=1, le=20)
    retry_backoff: Duration = timedelta(seconds=1)


class Logging(_Strict):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Settings(_Strict):
    database: Database = Database()
    paths: Paths = Paths()
    identity: Identity = Identity()
    directory: Directory = Directory()
    backends: Backends = Backends()
    engine: EngineSettings = EngineSettings()
    logging: Logging = Logging()


class Config:
    """Validated settings plus the file they came from, with paths resolved."""

    def __init__(self, settings: Settings, source: Path) -> None:
        self.settings = settings
        self.source = source
        self.base = source.parent

    def path(self, value: str) -> Path:
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else (self.base / p).resolve()

    @property
    def data_dir(self) -> Path:
        return self.path(self.settings.paths.data_dir)

    @property
    def policy_path(self) -> Path:
        return self.path(self.settings.paths.policy)

    @property
    def database_url(self) -> str:
        url = self.settings.database.url
        return url or f"sqlite:///{self.data_dir / 'jit.db'}"


def find_config(explicit: str | None, environ: Mapping[str, str], cwd: Path) -> Path:
    """Return the config path by the documented search order, or raise ``ConfigError``."""
    if explicit:
        return Path(explicit)
    if environ.get("JIT_CONFIG"):
        return Path(environ["JIT_CONFIG"])
    local = cwd / "jit.toml"
    if local.is_file():
        return local
    base = Path(environ.get("XDG_CONFIG_HOME") or Path(environ.get("HOME", "~")) / ".config")
    user = Path(os.path.expanduser(str(base))) / "jit" / "jit.toml"
    if user.is_file():
        return user
    raise ConfigError("configuration", [
        f"no config found (looked at --config, $JIT_CONFIG, {local}, {user}); "
        "create one with 'jit init --sandbox DIR' or copy config.example.toml"])


def load_config(path: Path) -> Config:
    try:
        settings = build(Settings, parse_toml(path), str(path))
    except PolicyError as exc:
        raise ConfigError(exc.source, exc.problems) from None
    return Config(settings, path.resolve())
