"""The sudo_ldap backend against the real slapd of the tests, with sudo's own schema loaded:
the sudoRole entries it writes, read back by ``ldapsearch`` and converted by the real
``cvtsudoers -i ldif``, say exactly the user, hosts, commands, runas, time bounds and options
intended, and match no other host (issue 16)."""
from __future__ import annotations

import json
import shutil
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
from slapd import PEOPLE_DN, SUDOERS_DN, Slapd, slapd_server  # noqa: F401 - slapd_server is a fixture

from integrations.base import GrantSpec, InvalidGrant
from integrations.ldap import LdapBackend
from integrations.ldap.sudoers import SudoLdapBackend

T0 = datetime(2026, 12, 4, 10, 0, tzinfo=timezone.utc)
COMMANDS = ["/usr/bin/systemctl restart nginx", "/usr/bin/journalctl -u nginx --no-pager"]
TOOLS = ("ldapsearch", "cvtsudoers")
pytestmark = pytest.mark.skipif(any(shutil.which(t, path="/usr/bin:/usr/sbin:/bin") is None for t in TOOLS),
                                reason="needs ldapsearch (ldap-utils) and cvtsudoers (sudo): .ci/run installs both")


def grant(grant_id: int = 7, target: str = "web-dev-01", **params) -> GrantSpec:
    return GrantSpec(grant_id, 70 + grant_id, "alice", target, "service-admin", T0, T0 + timedelta(hours=2),
                     {"commands": COMMANDS, **params})


@pytest.fixture
def backend(slapd_server: Slapd) -> SudoLdapBackend:
    ldap = LdapBackend(slapd_server.uri, slapd_server.admin_dn, slapd_server.admin_password, user_base=PEOPLE_DN)
    b = SudoLdapBackend(ldap, sudoers_base=SUDOERS_DN)
    yield b
    b.close()


def ldif(server: Slapd) -> str:
    """The entries under ou=SUDOers as the real ldapsearch prints them."""
    out = subprocess.run([shutil.which("ldapsearch"), "-x", "-LLL", "-o", "ldif-wrap=no", "-H", server.uri,
                          "-D", server.admin_dn, "-w", server.admin_password, "-b", SUDOERS_DN,
                          "(objectClass=sudoRole)"], capture_output=True, text=True, timeout=30, check=True)
    return out.stdout


def cvtsudoers(text: str, *args: str) -> dict:
    out = subprocess.run([shutil.which("cvtsudoers"), "-i", "ldif", "-f", "json", *args], input=text,
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout or "{}")


def test_a_grant_is_a_sudo_role_entry_that_sudo_reads_as_intended(backend, slapd_server):
    dn = backend.apply(grant())
    assert dn == f"cn=jit_g7,{SUDOERS_DN}"
    [spec] = cvtsudoers(ldif(slapd_server))["User_Specs"]
    assert spec["User_List"] == [{"username": "alice"}]
    assert spec["Host_List"] == [{"hostname": "web-dev-01"}]
    [cmnd] = spec["Cmnd_Specs"]
    assert cmnd["runasusers"] == [{"username": "root"}]
    assert [c["command"] for c in cmnd["Commands"]] == COMMANDS
    options = {k: v for o in cmnd["Options"] for k, v in o.items()}
    assert options == {"notbefore": "20261204100000Z", "notafter": "20261204120000Z", "log_input": True,
                       "log_output": True, "noexec": True}
    assert cvtsudoers(ldif(slapd_server), "-m", "host=web-prod-01").get("User_Specs", []) == []  # no other host
    assert len(cvtsudoers(ldif(slapd_server), "-m", "host=web-dev-01")["User_Specs"]) == 1


def test_apply_is_idempotent_inspect_and_list_read_it_back_and_revoke_removes_it(backend, slapd_server):
    backend.apply(grant())
    later = GrantSpec(7, 77, "alice", "web-dev-01", "service-admin", T0, T0 + timedelta(hours=3),
                      {"commands": COMMANDS, "hosts": ["web-prod-01", "web-prod-02"], "edit": ["/etc/nginx/nginx.conf"],
                       "allow_exec": True, "allow_exec_reason": "the reload runs the config test"})
    backend.apply(later)  # re-applied: the entry now says exactly this
    art = backend.inspect(later)
    assert (art.grant_id, art.person, art.target, art.role) == (7, "alice", "web-dev-01", "service-admin")
    assert (art.not_before, art.not_after) == (T0, T0 + timedelta(hours=3))
    assert art.details == {"hosts": ["web-prod-01", "web-prod-02"],
                           "commands": [*COMMANDS, "sudoedit /etc/nginx/nginx.conf"], "runas": "root",
                           "log_input": True, "log_output": True, "noexec": False}
    backend.apply(grant(8, target="web-prod-01"))
    assert [a.grant_id for a in backend.list_managed()] == [7, 8]
    [spec7, spec8] = sorted(cvtsudoers(ldif(slapd_server))["User_Specs"], key=lambda s: len(s["Host_List"]))[::-1]
    assert spec7["Host_List"] == [{"hostname": "web-prod-01"}, {"hostname": "web-prod-02"}]
    backend.revoke(later)
    backend.revoke(later)  # already gone: fine
    assert backend.inspect(later) is None and [a.grant_id for a in backend.list_managed()] == [8]


@pytest.mark.parametrize("change,field", [
    ({"person": "alice)(sudoUser=*"}, "person"),
    ({"target": "ALL,web-prod-01"}, "target"),
    ({"params": {"commands": ["/bin/bash"]}}, "commands[0]"),
    ({"params": {"commands": COMMANDS, "hosts": ["web prod"]}}, "hosts"),
    ({"grant_id": -1}, "grant_id"),
])
def test_bad_input_is_refused_before_anything_is_written(backend, slapd_server, change, field):
    values = {**grant().__dict__, **change}
    with pytest.raises(InvalidGrant) as info:
        backend.apply(GrantSpec(**values))
    assert info.value.field == field
    assert "sudoRole" not in ldif(slapd_server)


def test_settings_are_checked(slapd_server):
    ldap = LdapBackend(slapd_server.uri, slapd_server.admin_dn, slapd_server.admin_password, user_base=PEOPLE_DN)
    with pytest.raises(ValueError, match="sudoers_base"):
        SudoLdapBackend(ldap, sudoers_base="not a dn")
    with pytest.raises(ValueError, match="runas"):
        SudoLdapBackend(ldap, sudoers_base=SUDOERS_DN, runas="root user")


def test_a_grant_on_a_sudo_ldap_target_lives_and_ends_as_an_entry(slapd_server, store, backend, tmp_path):
    """Through the lifecycle: a self-service request on a sudo_ldap group of hosts becomes an entry
    for exactly those hosts with the grant's bounds, and its release deletes it."""
    from app.clock import FrozenClock
    from app.config import EngineSettings
    from app.dev.sandbox import PEOPLE
    from app.identity import StaticDirectory
    from app.lifecycle import Lifecycle
    from policies.loader import load_policy
    from tests.unit.test_policy_loader import edit
    path = tmp_path / "policy.toml"
    path.write_text(edit(('environment = "non-production"\ntier = "low"\nbackend = "sudo"',
                          'environment = "non-production"\ntier = "low"\nbackend = "sudo_ldap"\n'
                          'hosts = ["web-dev-01", "web-dev-02"]')))
    clock = FrozenClock(T0)
    directory = StaticDirectory({name: frozenset(groups) for name, (_, groups) in PEOPLE.items()})
    lc = Lifecycle(store, load_policy(path), directory, {"sudo_ldap": backend}, clock,
                   EngineSettings(retry_backoff=timedelta(0)))
    view = lc.submit("alice", "web-dev-01", "service-admin", timedelta(minutes=10), "check the nginx config").request
    assert view.state == "active"
    [spec] = cvtsudoers(ldif(slapd_server), "-m", "host=web-dev-02")["User_Specs"]
    assert spec["Host_List"] == [{"hostname": "web-dev-01"}, {"hostname": "web-dev-02"}]
    assert cvtsudoers(ldif(slapd_server), "-m", "host=web-prod-01").get("User_Specs", []) == []
    art = backend.inspect(GrantSpec(view.grant.id, view.id, "alice", "web-dev-01", "service-admin", T0, T0))
    assert (art.not_before, art.not_after) == (view.starts_at, view.expires_at)
    lc.release("alice", view.id)
    assert backend.list_managed() == []


def test_the_config_wires_it_on_the_ldap_connection(slapd_server, tmp_path):
    from app.bootstrap import build_backends
    from app.config import load_config
    from app.dev.sandbox import LdapSandbox, write_sandbox
    from app.domain.errors import ConfigError
    from policies.loader import load_policy
    config_path = write_sandbox(tmp_path, servicenow_url=None, ldap=LdapSandbox(
        slapd_server.uri, slapd_server.admin_dn, slapd_server.admin_password))
    text = config_path.read_text()
    config_path.write_text(text + f'\n[backends.sudo_ldap]\nenabled = true\nsudoers_base = "{SUDOERS_DN}"\n')
    config = load_config(config_path)
    policy = load_policy(tmp_path / "policy.toml")
    built = build_backends(config, policy, {})
    assert isinstance(built["sudo_ldap"], SudoLdapBackend) and built["sudo_ldap"].ldap is built["ldap"]
    assert built["sudo_ldap"].list_managed() == []  # it reaches slapd on [backends.ldap]'s settings
    built["sudo_ldap"].close()
    config_path.write_text(text.replace("[backends.ldap]\nenabled = true", "[backends.ldap]\nenabled = false")
                           + f'\n[backends.sudo_ldap]\nenabled = true\nsudoers_base = "{SUDOERS_DN}"\n')
    with pytest.raises(ConfigError, match=r"backends.sudo_ldap: needs \[backends.ldap\] enabled = true"):
        build_backends(load_config(config_path), policy, {})


def test_the_bind_secret_never_reaches_an_error_or_a_log_line(slapd_server, caplog):
    import logging

    from integrations.base import BackendError
    caplog.set_level(logging.DEBUG)
    wrong = "wrong-5e1b-never-logged"
    bad = SudoLdapBackend(LdapBackend(slapd_server.uri, slapd_server.admin_dn, wrong, user_base=PEOPLE_DN),
                          sudoers_base=SUDOERS_DN)
    with pytest.raises(BackendError) as info:
        bad.apply(grant())
    assert "cannot bind" in str(info.value) and wrong not in str(info.value)
    good = SudoLdapBackend(LdapBackend(slapd_server.uri, slapd_server.admin_dn, slapd_server.admin_password,
                                       user_base=PEOPLE_DN), sudoers_base=SUDOERS_DN)
    good.apply(grant())
    good.revoke(grant())
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert wrong not in logged and slapd_server.admin_password not in logged
    good.close()
