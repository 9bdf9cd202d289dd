"""``jit init --sandbox DIR``: a runnable, self-contained installation for trying the product."""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from app.domain.errors import ConfigError

PEOPLE = {
    "alice": ("Alice (engineer)", ["engineers"]),
    "bob": ("Bob (manager)", ["managers"]),
    "carol": ("Carol (system owner, production)", ["system-owners"]),
    "dave": ("Dave (on-call)", ["oncall", "engineers"]),
    "erin": ("Erin (security operator)", ["security"]),
}

CONFIG = '''# Sandbox configuration written by `jit init --sandbox`. Paths are relative to this file.
[database]
url = ""                       # empty: SQLite at data/jit.db

[paths]
data_dir = "data"
policy = "policy.toml"

[server]
socket = "jit.sock"            # production: /run/jit/jit.sock

[client]
# Where `jit` and `jit console` find the server when JIT_CONFIG names this file. Only
# `jit server --dev` (the sandbox's server) lets a client play someone else with JIT_USER.
server = "unix://SOCKET"

[backends.sudo]
sudoers_dir = "sudoers.d"      # production: /etc/sudoers.d
timestamp_dir = "sudo-ts"      # production: /run/sudo/ts
visudo = "visudo"
cvtsudoers = "cvtsudoers"

[engine]
poll_interval = "5s"
sweep_interval = "30s"
lease = "60s"
apply_attempts = 3
retry_backoff = "1s"

[servicenow]
# The sandbox talks to `jit snow-sim --seed demo` (default http://127.0.0.1:8080, admin/admin).
enabled = SN_ENABLED
url = "SN_URL"
user = "admin"
password_file = "snow-password"   # chmod 600; production: password_env or a secrets file
retries = 2
breaker_threshold = 3
breaker_cooldown = "10s"
sync_interval = "10s"
create_missing_change = false
write_back = true

[directory]
kind = "static"
'''


LDAP_TARGET = '''
[targets.corp-directory]
description = "Web administrators group in the corporate directory (LDAP)"
environment = "production"
tier = "high"
backend = "ldap"

[targets.corp-directory.roles.web-admins]
eligible_groups = ["engineers", "oncall"]
group_dn = "cn=web-admins,ou=groups,dc=example,dc=org"
'''

AWS_TARGET = '''
[targets.aws-prod]
description = "Production AWS account: assume the jit-admin role"
environment = "production"
tier = "high"
backend = "aws"

[targets.aws-prod.roles.admin]
eligible_groups = ["engineers", "oncall"]
role_arn = "arn:aws:iam::123456789012:role/jit-admin"
'''


@dataclass(frozen=True)
class LdapSandbox:
    uri: str
    bind_dn: str
    password: str
    base_dn: str = "dc=example,dc=org"


def write_sandbox(directory: Path, *, force: bool = False, servicenow_url: str | None = "http://127.0.0.1:8080",
                  ldap: LdapSandbox | None = None, aws_endpoint: str | None = None) -> Path:
    """Write DIR/jit.toml, DIR/policy.toml, DIR/sudoers.d, DIR/data; return the config path.

    ``servicenow_url`` None leaves ServiceNow off; ``ldap`` and ``aws_endpoint`` add an LDAP
    group target and an AWS role target backed by those servers (a local slapd, moto)."""
    directory = directory.resolve()
    config = directory / "jit.toml"
    if config.exists() and not force:
        raise ConfigError(str(config), ["a sandbox already exists here; pass --force to overwrite it"])
    for sub in ("sudoers.d", "sudo-ts", "data"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (directory / "sudoers.d").chmod(0o750)
    db = directory / "data" / "jit.db"
    for stale in (db, db.with_suffix(".db-wal"), db.with_suffix(".db-shm")):
        stale.unlink(missing_ok=True)
    for old in (directory / "sudoers.d").glob("jit_g*"):
        old.unlink()
    policy = resources.files("policies").joinpath("default.toml").read_text()
    (directory / "policy.toml").write_text(policy + (LDAP_TARGET if ldap else "") + (AWS_TARGET if aws_endpoint else ""))
    people = "".join(f'\n[directory.people.{name}]\ndisplay_name = "{label}"\ngroups = {groups!r}\n'
                     .replace("'", '"') for name, (label, groups) in PEOPLE.items())
    secret = directory / "snow-password"
    secret.touch(mode=0o600)
    secret.chmod(0o600)
    secret.write_text("admin\n")
    text = CONFIG.replace("SN_ENABLED", "true" if servicenow_url else "false")
    text = text.replace("SN_URL", servicenow_url or "http://127.0.0.1:8080").replace("SOCKET", str(directory / "jit.sock"))
    if ldap:
        (directory / "ldap-password").touch(mode=0o600)
        (directory / "ldap-password").write_text(ldap.password + "\n")
        text += (f'\n[backends.ldap]\nenabled = true\nuri = "{ldap.uri}"\nbind_dn = "{ldap.bind_dn}"\n'
                 f'bind_password_file = "ldap-password"\nuser_base = "ou=people,{ldap.base_dn}"\n'
                 f'group_base = "ou=groups,{ldap.base_dn}"\ntls = "none"   # production: ldaps or starttls\n')
    if aws_endpoint:
        text += (f'\n[backends.aws]\nenabled = true\nmode = "role"\nendpoint_url = "{aws_endpoint}"   '
                 f'# a local moto server\n')
    config.write_text(text + people)
    return config
