"""What ``jit server`` checks before it starts, naming the file and the reason: every file that
decides what it does (the config, the policy, the SQLite database and its directory, each secret
file) is owned by root or the server's account and writable by nobody else (sudo's rule for
sudoers); every program it runs is an absolute path owned by root and writable by nobody else.
The config and the policy are checked as they are read (``check_trusted``); the rest here."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from app.config import Config, check_trusted
from app.domain.errors import ConfigError


def check_deployment(config: Config, *, dev: bool) -> None:
    s = config.settings
    problems: list[str] = []

    def trusted(path: Path, what: str) -> None:
        try:
            check_trusted(path, what)
        except ConfigError as exc:
            problems.extend(f"{exc.source}: {p}" for p in exc.problems)

    if s.database.url.startswith("sqlite") or not s.database.url:
        trusted(config.data_dir, "paths.data_dir")
        trusted(config.data_dir / "jit.db", "the SQLite database")
    b, sn, n = s.backends, s.servicenow, s.notify
    for key, value in (("backends.ldap.bind_password_file", b.ldap.bind_password_file),
                       ("backends.windows.password_file", b.windows.password_file),
                       ("servicenow.password_file", sn.password_file),
                       ("servicenow.client_secret_file", sn.client_secret_file),
                       ("notify.webhook_url_file", n.webhook_url_file)):
        if value:
            trusted(config.path(value), key)
    if not dev:
        for key, value in (("backends.sudo.visudo", b.sudo.visudo), ("backends.sudo.cvtsudoers", b.sudo.cvtsudoers)):
            problems += _program(key, value)
    if problems:
        raise ConfigError(str(config.source), problems)


def _program(key: str, value: str) -> list[str]:
    if not os.path.isabs(value):
        return [f"{key}: {value!r} is not an absolute path; the server runs only programs named by their full "
                "path (e.g. /usr/sbin/visudo), never one found on $PATH"]
    try:
        st = os.stat(value)
    except OSError as exc:
        return [f"{key}: {value}: {exc.strerror}"]
    if not stat.S_ISREG(st.st_mode):
        return [f"{key}: {value} is not a regular file"]
    if st.st_uid != 0:
        return [f"{key}: {value} is owned by uid {st.st_uid}, not root"]
    if st.st_mode & 0o022:
        return [f"{key}: {value} is writable by group or others"]
    return []
