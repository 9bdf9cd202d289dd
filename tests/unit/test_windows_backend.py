"""The Windows backend (local group membership and JEA roles) against RecordingRunner,
PsrpRunner's pypsrp plumbing against fakes, and the real pypsrp path up to a refused
connection. No Windows host is involved anywhere in this file.

One module over 600 lines: every case of one backend against one recording runner."""
from __future__ import annotations

import json
import re
import socket
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import requests
from pypsrp.complex_objects import ErrorRecord, PSInvocationState
from pypsrp.exceptions import AuthenticationError, WinRMError, WinRMTransportError, WSManFaultError

from integrations.base import Artifact, Backend, BackendError, GrantSpec, InvalidGrant
from integrations.windows import (JEA_MANIFEST, JEA_ROLE_DIR, JEA_TRANSCRIPT_DIR, Command, PowerShellError, PsrpRunner,
                                  RecordingRunner, Runner, WindowsBackend, map_winrm_error, powershell_error)

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
ADMINS = {"local_group": "Administrators"}
OPS = {"jea_role": "ServiceOps", "jea_commands": ["Restart-Service", "Get-Service"]}
STOP = ("ErrorAction", "Stop")
PSSC = "C:\\Program Files\\WindowsPowerShell\\Modules\\JIT\\JIT.pssc"
PSRC = "C:\\Program Files\\WindowsPowerShell\\Modules\\JIT\\RoleCapabilities\\ServiceOps.psrc"


def grant(person: str = "alice", target: str = "web01", params: Any = None, gid: int = 1) -> GrantSpec:
    return GrantSpec(gid, 10, person, target, "win-admin", T0, T0 + timedelta(hours=1),
                     ADMINS if params is None else params)


def list_cmds(group: str = "Administrators") -> tuple[Command, ...]:
    return (
        Command("Get-LocalGroupMember", (("Group", group), STOP), pipe=True),
        Command("Select-Object", (("ExpandProperty", "Name"),)),
    )


def ps_error(*ids: str) -> PowerShellError:
    return PowerShellError("web01: PowerShell error: simulated", error_ids=ids)


# -- role validation -----------------------------------------------------------------


def test_validate_role_accepts_both_modes() -> None:
    backend = WindowsBackend(RecordingRunner())
    assert isinstance(backend, Backend)
    assert backend.validate_role(ADMINS) == []
    assert backend.validate_role({"local_group": "Remote Desktop Users"}) == []
    assert backend.validate_role(OPS) == []


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, ["local_group: required (or jea_role with jea_commands)"]),
        ("Administrators", ["params: must be a mapping"]),
        ({"local_group": "Administrators", "jea_role": "x", "jea_commands": ["Get-Service"]},
         ["local_group: set either local_group or jea_role, not both"]),
        ({"local_group": "Admins'; net user x /add"},
         ["local_group: must be a local group name (letters, digits, spaces and ._-, at most 64)"]),
        ({"local_group": ' Administrators'},
         ["local_group: must not start or end with a space, repeat spaces, or be only dots"]),
        ({"local_group": "Administrators", "jea_commands": ["Get-Service"]},
         ["jea_commands: only valid with jea_role"]),
        ({"local_group": "Administrators", "expiry": "1h"}, ["expiry: unknown setting"]),
        ({"jea_role": "ServiceOps"}, ["jea_commands: required (a non-empty list of cmdlet names)"]),
        ({"jea_role": "ServiceOps", "jea_commands": "Get-Service"},
         ["jea_commands: required (a non-empty list of cmdlet names)"]),
        ({"jea_role": "ServiceOps", "jea_commands": []}, ["jea_commands: must not be empty"]),
        ({"jea_role": "1ops", "jea_commands": ["Get-Service"]},
         ["jea_role: must match [A-Za-z][A-Za-z0-9_-]{0,63}"]),
    ],
)
def test_validate_role_messages(params: Any, expected: list[str]) -> None:
    assert WindowsBackend(RecordingRunner()).validate_role(params) == expected


def test_validate_role_refuses_dangerous_jea_commands() -> None:
    bad = ["Invoke-Expression", "iex", "Get-*", "{ script }", "Get-Service; Remove-Item", "& calc",
           "Get-Service & calc", "Start-Process", "Invoke-Command", "Microsoft.PowerShell.Management\\Get-Item",
           "Get-Service ", "Add-Type"]
    errors = WindowsBackend(RecordingRunner()).validate_role(
        {"jea_role": "ServiceOps", "jea_commands": ["Get-Service", *bad]})
    assert [e.split(":")[0] for e in errors] == [f"jea_commands[{i}]" for i in range(1, len(bad) + 1)]
    assert errors[0] == ("jea_commands[1]: Invoke-Expression is not allowed "
                         "(it can run arbitrary code or change the elevation itself)")
    assert errors[1].startswith("jea_commands[2]: must be a single Verb-Noun cmdlet name")


def test_constructor_validates_settings() -> None:
    runner = RecordingRunner()
    for kwargs in ({"domain": "CONTOSO\\x"}, {"domain": ""}, {"jea_endpoint": "Microsoft.PowerShell"},
                   {"jea_endpoint": "JIT;x"}, {"managed": [("web01;calc", "Administrators")]},
                   {"managed": [("web01", "Admins'")]}, {"jea_hosts": ["a b"]}, {"name": ""}):
        with pytest.raises(ValueError):
            WindowsBackend(runner, **kwargs)
    with pytest.raises(ValueError):
        WindowsBackend(object())  # type: ignore[arg-type]
    assert runner.calls == []


# -- local group mode -------------------------------------------------------------------


def test_apply_local_group_domain_member() -> None:
    runner = RecordingRunner({"Select-Object": ["WEB01\\Administrator", "CONTOSO\\Domain Admins"]})
    backend = WindowsBackend(runner, domain="CONTOSO")
    assert backend.apply(grant()) == "win:web01/administrators/contoso\\alice"
    assert runner.calls == [
        ("web01", list_cmds()),
        ("web01", (Command("Add-LocalGroupMember",
                           (("Group", "Administrators"), ("Member", "CONTOSO\\alice"), STOP)),)),
    ]


def test_apply_is_idempotent_when_already_member() -> None:
    runner = RecordingRunner({"Select-Object": ["contoso\\ALICE"]})
    backend = WindowsBackend(runner, domain="CONTOSO")
    assert backend.apply(grant()) == "win:web01/administrators/contoso\\alice"
    assert runner.cmdlets == [["Get-LocalGroupMember", "Select-Object"]]
    assert "Add-LocalGroupMember" not in [c.cmdlet for c in runner.commands]


def test_apply_local_account_without_domain() -> None:
    runner = RecordingRunner({"Select-Object": ["WEB01\\alice"]})
    backend = WindowsBackend(runner)
    backend.apply(grant(target="web01.corp.example"))
    assert runner.cmdlets == [["Get-LocalGroupMember", "Select-Object"]]  # WEB01\alice is our alice
    runner = RecordingRunner({"Select-Object": ["CONTOSO\\alice"]})  # another alice: not ours
    WindowsBackend(runner).apply(grant())
    assert runner.calls[-1] == ("web01", (Command(
        "Add-LocalGroupMember", (("Group", "Administrators"), ("Member", "alice"), STOP)),))


def test_apply_accepts_member_exists_and_reports_other_errors() -> None:
    runner = RecordingRunner({"Add-LocalGroupMember": ps_error(
        "MemberExists,Microsoft.PowerShell.Commands.AddLocalGroupMemberCommand")})
    WindowsBackend(runner, domain="CONTOSO").apply(grant())  # a race: someone added it meanwhile
    runner = RecordingRunner({"Add-LocalGroupMember": ps_error(
        "PrincipalNotFound,Microsoft.PowerShell.Commands.AddLocalGroupMemberCommand")})
    with pytest.raises(PowerShellError) as info:
        WindowsBackend(runner, domain="CONTOSO").apply(grant())
    assert not info.value.transient


def test_apply_still_adds_when_the_group_cannot_be_listed() -> None:
    runner = RecordingRunner({"Get-LocalGroupMember": ps_error("InternalError,GetLocalGroupMemberCommand")})
    WindowsBackend(runner, domain="CONTOSO").apply(grant())
    assert runner.cmdlets == [["Get-LocalGroupMember", "Select-Object"], ["Add-LocalGroupMember"]]


def test_revoke_local_group_always_removes_and_accepts_absent() -> None:
    remove = ("web01", (Command("Remove-LocalGroupMember",
                                (("Group", "Administrators"), ("Member", "CONTOSO\\alice"), STOP)),))
    runner = RecordingRunner()
    backend = WindowsBackend(runner, domain="CONTOSO")
    backend.revoke(grant())
    assert runner.calls == [remove]
    for error_id in ("MemberNotFound,Microsoft.PowerShell.Commands.RemoveLocalGroupMemberCommand",
                     "PrincipalNotFound,Microsoft.PowerShell.Commands.RemoveLocalGroupMemberCommand"):
        runner = RecordingRunner({"Remove-LocalGroupMember": ps_error(error_id)})
        WindowsBackend(runner, domain="CONTOSO").revoke(grant())  # absent is fine
        assert runner.calls == [remove]
    runner = RecordingRunner({"Remove-LocalGroupMember": ps_error("AccessDenied,RemoveLocalGroupMemberCommand")})
    with pytest.raises(PowerShellError, match="simulated"):
        WindowsBackend(runner, domain="CONTOSO").revoke(grant())


def test_inspect_local_group() -> None:
    runner = RecordingRunner({"Select-Object": ["WEB01\\Administrator", "CONTOSO\\alice"]})
    backend = WindowsBackend(runner, domain="CONTOSO")
    art = backend.inspect(grant())
    assert art == Artifact(
        ref="win:web01/administrators/contoso\\alice", grant_id=None, person="alice", target="web01",
        role="win-admin", details={"local_group": "Administrators", "member": "CONTOSO\\alice"},
    )
    assert art.not_after is None  # Windows keeps no expiry
    assert runner.calls == [("web01", list_cmds())]
    assert backend.inspect(grant(person="bob")) is None


def test_list_managed_reports_every_unprotected_member_of_managed_groups() -> None:
    runner = RecordingRunner({"Select-Object": ["WEB01\\Administrator", "contoso\\ALICE", "OTHER\\bob",
                                                "CONTOSO\\svc-backup", "CONTOSO\\Domain Admins"]})
    backend = WindowsBackend(runner, domain="CONTOSO", managed=[("web01", "Administrators")],
                             protected_members=["Administrator", "CONTOSO\\svc-backup"])
    arts = backend.list_managed()
    assert [(a.ref, a.person, a.grant_id, a.target) for a in arts] == [
        ("win:web01/administrators/contoso\\alice", "ALICE", None, "web01"),  # Windows' spelling
        ("win:web01/administrators/other\\bob", "OTHER\\bob", None, "web01"),
        ("win:web01/administrators/contoso\\domain admins", "Domain Admins", None, "web01"),
    ]
    assert arts[0].details == {"local_group": "Administrators", "member": "contoso\\ALICE"}
    assert runner.calls == [("web01", list_cmds())]
    assert WindowsBackend(RecordingRunner()).list_managed() == []


def test_list_managed_refs_match_apply_refs() -> None:
    """The reconciler pairs artifacts with grants by ref, whatever case Windows reports."""
    runner = RecordingRunner({"Select-Object": ["WEB01\\Alice"]})
    backend = WindowsBackend(runner, managed=[("web01", "administrators")])
    assert [a.ref for a in backend.list_managed()] == [backend.apply(grant())]
    runner = RecordingRunner({"Select-Object": ["CONTOSO\\ALICE"]})
    backend = WindowsBackend(runner, domain="contoso", managed=[("web01", "Administrators")])
    assert [a.ref for a in backend.list_managed()] == [backend.apply(grant(person="alice"))]


def _reconciler_spec(a: Artifact) -> GrantSpec:
    """What app.jobs.reconcile builds to remove an artifact no grant backs."""
    return GrantSpec(grant_id=a.grant_id or 0, request_id=0, person=a.person, target=a.target or "",
                     role=a.role or "", starts_at=T0, expires_at=T0, params=dict(a.details))


def test_reconciler_can_revoke_what_list_managed_reports() -> None:
    runner = RecordingRunner({"Select-Object": ["CONTOSO\\bob", "OTHER\\eve"]})
    backend = WindowsBackend(runner, domain="CONTOSO", managed=[("web01", "Administrators")])
    bob, eve = backend.list_managed()
    backend.revoke(_reconciler_spec(bob))
    assert runner.calls[-1] == ("web01", (Command(
        "Remove-LocalGroupMember", (("Group", "Administrators"), ("Member", "CONTOSO\\bob"), STOP)),))
    with pytest.raises(InvalidGrant):  # outside our domain: refused, never removed
        backend.revoke(_reconciler_spec(eve))
    jea_host = FakeJeaHost({"CONTOSO\\bob": ["ServiceOps"], "CONTOSO\\carol": ["DnsOps"]})
    backend = WindowsBackend(RecordingRunner(jea_host), domain="CONTOSO", jea_hosts=["web01"])
    bob_jea = backend.list_managed()[0]
    assert bob_jea.details == {"jea_role": "ServiceOps", "endpoint": "JIT", "member": "CONTOSO\\bob"}
    backend.revoke(_reconciler_spec(bob_jea))
    assert jea_host.definitions == {"CONTOSO\\carol": ["DnsOps"]}


def test_protected_members_are_never_granted_or_removed() -> None:
    runner = RecordingRunner(FakeJeaHost())
    backend = WindowsBackend(runner, domain="CONTOSO", protected_members=["Administrator", "CONTOSO\\breakglass"])
    for person in ("Administrator", "administrator", "BreakGlass"):
        for params in (ADMINS, OPS):
            for operation in ("apply", "revoke"):
                with pytest.raises(InvalidGrant, match="protected account"):
                    getattr(backend, operation)(grant(person=person, params=params))
    assert runner.calls == []
    unprotected = WindowsBackend(RecordingRunner(), domain="CONTOSO", protected_members=())
    unprotected.revoke(grant(person="Administrator"))
    for bad in (["a;b"], ["x\\y\\z"], [""]):
        with pytest.raises(ValueError):
            WindowsBackend(RecordingRunner(), protected_members=bad)


def test_revoke_and_inspect_do_not_need_jea_commands() -> None:
    host = FakeJeaHost({"CONTOSO\\alice": ["ServiceOps"]})
    backend = WindowsBackend(RecordingRunner(host), domain="CONTOSO")
    assert backend.inspect(grant(params={"jea_role": "ServiceOps"})) is not None
    backend.revoke(grant(params={"jea_role": "ServiceOps", "endpoint": "JIT"}))
    assert host.definitions is None
    with pytest.raises(InvalidGrant, match="jea_commands"):
        backend.apply(grant(params={"jea_role": "ServiceOps"}))


def test_list_output_as_objects_is_understood() -> None:
    class Principal:  # a deserialized LocalPrincipal, should Select-Object be bypassed
        adapted_properties = {"Name": "CONTOSO\\alice", "ObjectClass": "User"}

    runner = RecordingRunner({"Select-Object": [Principal(), {"Name": "WEB01\\x"}]})
    assert WindowsBackend(runner, domain="CONTOSO").inspect(grant()) is not None
    with pytest.raises(BackendError, match="unexpected Get-LocalGroupMember output"):
        WindowsBackend(RecordingRunner({"Select-Object": [42]})).inspect(grant())


def test_shared_key() -> None:
    backend = WindowsBackend(RecordingRunner(), domain="CONTOSO")
    assert backend.shared_key(grant()) == "windows:web01|administrators|alice"
    assert backend.shared_key(grant(person="Alice", target="WEB01")) == backend.shared_key(grant())
    assert backend.shared_key(grant(params=OPS)) == "windows:web01|serviceops|alice"
    with pytest.raises(InvalidGrant):
        backend.shared_key(grant(person="alice;x"))


# -- JEA mode -----------------------------------------------------------------------------


class FakeJeaHost:
    """Simulates one host's JIT endpoint for a RecordingRunner."""

    def __init__(self, definitions: dict[str, list[str]] | None = None, *, raw: Any = "unset",
                 drop_on_register: bool = False, lose_arrays: bool = False) -> None:
        self.definitions = definitions  # None: no endpoint
        self.raw = raw  # a RoleDefinitions value to return verbatim
        self.drop_on_register = drop_on_register
        self.lose_arrays = lose_arrays
        self.files: dict[str, Any] = {}
        self.registrations = 0
        self._pending: dict[str, Any] = {}

    def __call__(self, host: str, commands: tuple[Command, ...]) -> list[Any]:
        if commands[0].cmdlet == "Get-PSSessionConfiguration":
            if self.raw != "unset":
                return [json.dumps({"Name": "JIT", "RoleDefinitions": self.raw})]
            if self.definitions is None:
                return []
            rd = {m: {"RoleCapabilities": r[0] if len(r) == 1 else r} for m, r in self.definitions.items()}
            return [json.dumps({"Name": "JIT", "RoleDefinitions": rd})]
        for c in commands:
            if c.cmdlet == "New-PSRoleCapabilityFile":
                self.files[c.param("Path")] = c.param("VisibleCmdlets")
            elif c.cmdlet == "New-PSSessionConfigurationFile":
                self._pending = c.param("RoleDefinitions")
            elif c.cmdlet == "Register-PSSessionConfiguration":
                self.registrations += 1
                self.definitions = {}
                for member, value in self._pending.items():
                    caps = value["RoleCapabilities"]
                    if isinstance(caps, str):
                        self.definitions[member] = [caps]
                    elif self.lose_arrays:  # what ToString() of an ArrayList would write
                        self.definitions[member] = ["System.Collections.ArrayList"]
                    else:
                        self.definitions[member] = list(caps)
                if self.drop_on_register:
                    raise BackendError(f"{host}: cannot reach WinRM: connection reset", transient=True)
            elif c.cmdlet == "Unregister-PSSessionConfiguration":
                self.definitions = None
        return []


READ = (
    Command("Get-PSSessionConfiguration", (STOP,), pipe=True),
    Command("Where-Object", (("Property", "Name"), ("EQ", True), ("Value", "JIT")), pipe=True),
    Command("Select-Object", (("Property", ("Name", "RoleDefinitions")),), pipe=True),
    Command("ConvertTo-Json", (("Depth", 6), ("Compress", True))),
)
ROLE_FILES = (
    Command("New-Item", (("ItemType", "Directory"), ("Path", JEA_ROLE_DIR), ("Force", True), STOP)),
    Command("New-Item", (("ItemType", "Directory"), ("Path", JEA_TRANSCRIPT_DIR), ("Force", True), STOP)),
    Command("New-ModuleManifest", (("Path", JEA_MANIFEST), STOP)),
    Command("New-PSRoleCapabilityFile", (("Path", PSRC), ("VisibleCmdlets", ("Get-Service", "Restart-Service")),
                                         STOP)),
)


def session_cmds(role_definitions: dict[str, Any]) -> tuple[Command, ...]:
    return (
        Command("New-PSSessionConfigurationFile", (
            ("Path", PSSC), ("SessionType", "RestrictedRemoteServer"), ("RunAsVirtualAccount", True),
            ("TranscriptDirectory", JEA_TRANSCRIPT_DIR), ("RoleDefinitions", role_definitions), STOP)),
        Command("Register-PSSessionConfiguration", (("Name", "JIT"), ("Path", PSSC), ("Force", True), STOP)),
    )


def test_apply_jea_on_a_fresh_host() -> None:
    host = FakeJeaHost()
    runner = RecordingRunner(host)
    backend = WindowsBackend(runner, domain="CONTOSO")
    assert backend.apply(grant(params=OPS)) == "jea:web01/jit/serviceops/contoso\\alice"
    assert runner.calls == [
        ("web01", READ),
        ("web01", ROLE_FILES + session_cmds({"CONTOSO\\alice": {"RoleCapabilities": "ServiceOps"}})),
        ("web01", READ),  # the read-back
    ]
    assert host.definitions == {"CONTOSO\\alice": ["ServiceOps"]}
    assert host.files == {PSRC: ("Get-Service", "Restart-Service")}


def test_apply_jea_is_idempotent_and_keeps_other_grants() -> None:
    host = FakeJeaHost({"CONTOSO\\bob": ["DnsOps"], "contoso\\ALICE": ["ServiceOps"]})
    runner = RecordingRunner(host)
    backend = WindowsBackend(runner, domain="CONTOSO")
    backend.apply(grant(params=OPS))
    assert runner.calls == [("web01", READ), ("web01", ROLE_FILES)]  # no re-registration
    assert host.registrations == 0
    backend.apply(grant(person="carol", params=OPS))
    assert runner.calls[3] == ("web01", ROLE_FILES + session_cmds({
        "CONTOSO\\bob": {"RoleCapabilities": "DnsOps"},
        "CONTOSO\\carol": {"RoleCapabilities": "ServiceOps"},
        "contoso\\ALICE": {"RoleCapabilities": "ServiceOps"},
    }))
    assert host.definitions == {"CONTOSO\\bob": ["DnsOps"], "CONTOSO\\carol": ["ServiceOps"],
                                "contoso\\ALICE": ["ServiceOps"]}


def test_jea_commands_are_sorted_and_deduplicated() -> None:
    runner = RecordingRunner(FakeJeaHost())
    params = {"jea_role": "ServiceOps", "jea_commands": ["Restart-Service", "get-service", "Get-Service"]}
    WindowsBackend(runner).apply(grant(params=params))
    psrc = runner.calls[1][1][3]
    assert psrc.cmdlet == "New-PSRoleCapabilityFile"
    assert psrc.param("VisibleCmdlets") == ("Get-Service", "Restart-Service")


def test_apply_jea_second_role_sends_a_list() -> None:
    host = FakeJeaHost({"CONTOSO\\alice": ["DnsOps"]})
    runner = RecordingRunner(host)
    WindowsBackend(runner, domain="CONTOSO").apply(grant(params=OPS))
    sent = runner.calls[1][1][-2].param("RoleDefinitions")
    assert sent == {"CONTOSO\\alice": {"RoleCapabilities": ("DnsOps", "ServiceOps")}}
    assert host.definitions == {"CONTOSO\\alice": ["DnsOps", "ServiceOps"]}


def test_apply_jea_fails_loudly_when_the_read_back_differs() -> None:
    host = FakeJeaHost({"CONTOSO\\alice": ["DnsOps"]}, lose_arrays=True)
    with pytest.raises(BackendError, match="reads back") as info:
        WindowsBackend(RecordingRunner(host), domain="CONTOSO").apply(grant(params=OPS))
    assert not info.value.transient


def test_apply_jea_survives_the_winrm_restart_cutting_the_connection() -> None:
    host = FakeJeaHost(drop_on_register=True)
    runner = RecordingRunner(host)
    WindowsBackend(runner, domain="CONTOSO").apply(grant(params=OPS))
    assert runner.cmdlets[-1] == [c.cmdlet for c in READ]
    assert host.definitions == {"CONTOSO\\alice": ["ServiceOps"]}


def test_apply_jea_transient_when_the_write_did_not_land() -> None:
    def host(h: str, commands: tuple[Command, ...]) -> list[Any]:
        if commands[0].cmdlet == "Get-PSSessionConfiguration":
            return []
        raise BackendError(f"{h}: cannot reach WinRM", transient=True)

    with pytest.raises(BackendError) as info:
        WindowsBackend(RecordingRunner(host), domain="CONTOSO").apply(grant(params=OPS))
    assert info.value.transient


def test_jea_refuses_an_endpoint_it_did_not_write() -> None:
    for raw in (None, {"CONTOSO\\alice": {"RoleCapabilities": "x", "RoleCapabilityFiles": "y"}},
                {"CONTOSO\\alice": "ServiceOps"}):
        runner = RecordingRunner(FakeJeaHost(raw=raw))
        backend = WindowsBackend(runner, domain="CONTOSO")
        with pytest.raises(BackendError) as info:
            backend.apply(grant(params=OPS))
        assert not info.value.transient
        assert runner.calls == [("web01", READ)]  # nothing written
        with pytest.raises(BackendError):
            backend.revoke(grant(params=OPS))
        assert runner.cmdlets[-1][0] == "Get-PSSessionConfiguration"


def test_revoke_jea() -> None:
    host = FakeJeaHost({"CONTOSO\\alice": ["ServiceOps"], "CONTOSO\\bob": ["ServiceOps"]})
    runner = RecordingRunner(host)
    backend = WindowsBackend(runner, domain="CONTOSO")
    backend.revoke(grant(params=OPS))
    assert runner.calls == [
        ("web01", READ),
        ("web01", session_cmds({"CONTOSO\\bob": {"RoleCapabilities": "ServiceOps"}})),
        ("web01", READ),
    ]
    assert host.definitions == {"CONTOSO\\bob": ["ServiceOps"]}
    backend.revoke(grant(params=OPS))  # already gone: a read, nothing else
    assert runner.calls[3:] == [("web01", READ)]
    backend.revoke(grant(person="bob", params=OPS))  # the last one: the endpoint goes
    assert runner.calls[5] == ("web01", (Command("Unregister-PSSessionConfiguration",
                                                 (("Name", "JIT"), ("Force", True), STOP)),))
    assert host.definitions is None
    backend.revoke(grant(person="bob", params=OPS))
    assert runner.calls[7:] == [("web01", READ)]


def test_revoke_jea_keeps_the_persons_other_roles() -> None:
    host = FakeJeaHost({"CONTOSO\\alice": ["DnsOps", "ServiceOps"]})
    runner = RecordingRunner(host)
    WindowsBackend(runner, domain="CONTOSO").revoke(grant(params=OPS))
    assert runner.calls[1] == ("web01", session_cmds({"CONTOSO\\alice": {"RoleCapabilities": "DnsOps"}}))
    assert host.definitions == {"CONTOSO\\alice": ["DnsOps"]}


def test_inspect_and_list_managed_jea() -> None:
    host = FakeJeaHost({"CONTOSO\\alice": ["DnsOps", "ServiceOps"]})
    runner = RecordingRunner(host)
    backend = WindowsBackend(runner, domain="CONTOSO", jea_hosts=["web01"])
    art = backend.inspect(grant(params=OPS))
    assert art is not None and art.ref == "jea:web01/jit/serviceops/contoso\\alice"
    assert art.grant_id is None and art.person == "alice" and art.details["roles"] == ["DnsOps", "ServiceOps"]
    assert runner.calls == [("web01", READ)]
    assert backend.inspect(grant(person="bob", params=OPS)) is None
    assert [a.ref for a in backend.list_managed()] == [
        "jea:web01/jit/dnsops/contoso\\alice", "jea:web01/jit/serviceops/contoso\\alice"]
    assert WindowsBackend(RecordingRunner(FakeJeaHost()), jea_hosts=["web01"]).list_managed() == []


def test_custom_endpoint_name() -> None:
    runner = RecordingRunner(FakeJeaHost())
    WindowsBackend(runner, jea_endpoint="JIT.Ops").apply(grant(params=OPS))
    write = runner.calls[1][1]
    assert write[-1].param("Name") == "JIT.Ops"
    assert write[-1].param("Path") == "C:\\Program Files\\WindowsPowerShell\\Modules\\JIT\\JIT.Ops.pssc"
    assert runner.calls[0][1][1].param("Value") == "JIT.Ops"


# -- hostile input is refused before anything is sent ------------------------------------

BAD_PERSONS = ["alice; Remove-Item C:\\ -Recurse", "alice$(whoami)", "alice`n", "alice\nbob", "alice'",
               'alice"', "CONTOSO\\alice", "", "..", "a" * 65, "alice bob", None]
BAD_HOSTS = ["web01;calc", "web01 ", "-web01", "web01/x", "web01$(x)", "", "a" * 254]


@pytest.mark.parametrize("params", [ADMINS, OPS])
@pytest.mark.parametrize("operation", ["apply", "revoke", "inspect", "shared_key"])
def test_bad_person_or_host_refused_before_any_command(params: Any, operation: str) -> None:
    runner = RecordingRunner(FakeJeaHost())
    backend = WindowsBackend(runner, domain="CONTOSO")
    for person in BAD_PERSONS:
        with pytest.raises(InvalidGrant) as info:
            getattr(backend, operation)(grant(person=person, params=params))  # type: ignore[arg-type]
        assert info.value.field == "person" and not info.value.transient
    for target in BAD_HOSTS:
        with pytest.raises(InvalidGrant) as info:
            getattr(backend, operation)(grant(target=target, params=params))
        assert info.value.field == "target"
    assert runner.calls == []


@pytest.mark.parametrize(
    ("params", "field_name"),
    [
        ({"local_group": "Administrators'"}, "local_group"),
        ({"local_group": 'Admins"; Remove-Item x'}, "local_group"),
        ({"local_group": "Admin*"}, "local_group"),
        ({"local_group": "Administrators\n"}, "local_group"),
        ({"jea_role": "ServiceOps", "jea_commands": ["Invoke-Expression"]}, "jea_commands[0]"),
        ({"jea_role": "ServiceOps", "jea_commands": ["iex"]}, "jea_commands[0]"),
        ({"jea_role": "ServiceOps", "jea_commands": ["Get-*"]}, "jea_commands[0]"),
        ({"jea_role": "ServiceOps", "jea_commands": ["Get-Service", "{ script }"]}, "jea_commands[1]"),
        ({"jea_role": "ServiceOps", "jea_commands": ["Get-Service;Stop-Computer"]}, "jea_commands[0]"),
        ({"jea_role": "Ops\\..\\x", "jea_commands": ["Get-Service"]}, "jea_role"),
        ({}, "local_group"),
    ],
)
def test_bad_role_params_refused_before_any_command(params: Any, field_name: str) -> None:
    runner = RecordingRunner(FakeJeaHost())
    backend = WindowsBackend(runner)
    for operation in ("apply", "revoke", "inspect"):
        with pytest.raises(InvalidGrant) as info:
            getattr(backend, operation)(grant(params=params))
        assert info.value.field == field_name
    assert runner.calls == []


# -- every value sent is data built from validated names ----------------------------------

SAFE_VALUE = re.compile(r"[A-Za-z0-9 ._:\\-]+")
EXPECTED_CMDLETS = {
    "Get-LocalGroupMember", "Select-Object", "Add-LocalGroupMember", "Remove-LocalGroupMember",
    "Get-PSSessionConfiguration", "Where-Object", "ConvertTo-Json", "New-Item", "New-ModuleManifest",
    "New-PSRoleCapabilityFile", "New-PSSessionConfigurationFile", "Register-PSSessionConfiguration",
    "Unregister-PSSessionConfiguration",
}


def _walk(value: Any) -> list[Any]:
    if isinstance(value, tuple):
        return [x for v in value for x in _walk(v)]
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in [k, *_walk(v)]]
    return [value]


def test_no_command_carries_script_syntax() -> None:
    runners = []
    for domain in (None, "CONTOSO"):
        group_runner = RecordingRunner({"Select-Object": []})
        backend = WindowsBackend(group_runner, domain=domain, managed=[("web01", "Remote Desktop Users")])
        for person in ("alice", "a.b-c_d"):
            g = grant(person=person, target="web01.corp.example", params={"local_group": "Remote Desktop Users"})
            backend.apply(g)
            backend.inspect(g)
            backend.revoke(g)
        backend.list_managed()
        jea_runner = RecordingRunner(FakeJeaHost())
        backend = WindowsBackend(jea_runner, domain=domain, jea_hosts=["web01"])
        for person in ("alice", "bob"):
            backend.apply(grant(person=person, params=OPS))
            backend.apply(grant(person=person, params={"jea_role": "DnsOps", "jea_commands": ["Get-DnsServerZone"]}))
        backend.inspect(grant(params=OPS))
        backend.list_managed()
        for person in ("alice", "bob"):
            backend.revoke(grant(person=person, params=OPS))
            backend.revoke(grant(person=person, params={"jea_role": "DnsOps", "jea_commands": ["Get-Service"]}))
        runners += [group_runner, jea_runner]
    commands = [c for r in runners for c in r.commands]
    assert {c.cmdlet for c in commands} == EXPECTED_CMDLETS
    for command in commands:
        for _, value in command.parameters:
            for leaf in _walk(value):
                assert isinstance(leaf, bool | int) or (isinstance(leaf, str) and SAFE_VALUE.fullmatch(leaf)), (
                    command, leaf)


def test_command_refuses_anything_but_names_and_data() -> None:
    for cmdlet in ("iex", "Get-Item; calc", "Get-Item ", "& Get-Item", "Get-Item|Out-Null", ""):
        with pytest.raises(ValueError):
            Command(cmdlet)
    for params in ((("Path;x", "a"),), (("-Path", "a"),), (("Path", "a\nb"),), (("Path", object()),),
                   (("Path", {"k": {"k": {"k": {"k": {"k": "deep"}}}}}),), (("Path", {1: "a"}),),
                   (("Path", 2**40),), (("Path", "x" * 2000),)):
        with pytest.raises(ValueError):
            Command("Get-Item", params)
    frozen = Command("New-Item", (("Path", ["a", "b"]), ("Force", True)))
    assert frozen.param("Path") == ("a", "b")
    with pytest.raises(KeyError):
        frozen.param("Nope")


# -- failures ----------------------------------------------------------------------------------


def test_transient_runner_failure_is_a_transient_backend_error() -> None:
    runner = RecordingRunner({"Select-Object": []}, fail_transient=2)
    backend = WindowsBackend(runner, domain="CONTOSO")
    for _ in range(2):
        with pytest.raises(BackendError) as info:
            backend.apply(grant())
        assert info.value.transient
    assert backend.apply(grant()) == "win:web01/administrators/contoso\\alice"
    assert len(runner.calls) == 4  # two failed listings, then list + add
    jea = RecordingRunner(FakeJeaHost(), fail_transient=1)
    with pytest.raises(BackendError) as info:
        WindowsBackend(jea).revoke(grant(params=OPS))
    assert info.value.transient


def test_vendor_exceptions_from_a_runner_are_mapped() -> None:
    class Raising:
        def __init__(self, exc: Exception) -> None:
            self.exc = exc

        def run(self, host: str, commands: Any) -> list[Any]:
            raise self.exc

    assert isinstance(Raising(ValueError()), Runner)
    for exc, transient in ((requests.ConnectionError("refused"), True), (WinRMTransportError("http", 503, ""), True),
                           (AuthenticationError("nope"), False), (KeyError("x"), False)):
        with pytest.raises(BackendError) as info:
            WindowsBackend(Raising(exc)).apply(grant())
        assert type(info.value) is BackendError and info.value.transient is transient


@pytest.mark.parametrize(
    ("exc", "transient", "fragment"),
    [
        (requests.ConnectionError("Connection refused"), True, "cannot reach WinRM"),
        (requests.ConnectTimeout("connect timed out"), True, "timed out"),
        (requests.ReadTimeout("read timed out"), True, "timed out"),
        (requests.exceptions.SSLError("CERTIFICATE_VERIFY_FAILED"), False, "TLS error"),
        (requests.exceptions.InvalidURL("bad"), False, "request failed"),
        (WinRMTransportError("http", 500, "boom"), True, "Code: 500"),
        (WinRMTransportError("http", 503, "busy"), True, "Code: 503"),
        (WinRMTransportError("http", 400, "bad"), False, "Code: 400"),
        (WSManFaultError(2150858793, "web01", "timed out", None, None, None), True, "WSMan fault"),
        (WSManFaultError(5, "web01", "Access is denied.", None, None, None), False, "Access is denied"),
        (AuthenticationError("Failed to authenticate the user svc with ntlm"), False, "authentication failed"),
        (WinRMError("pool broken"), False, "WinRM/PSRP error"),
        (ConnectionResetError("reset"), True, "network error"),
        (TimeoutError("slow"), True, "network error"),
        (ValueError("odd"), False, "unexpected error"),
    ],
)
def test_map_winrm_error(exc: BaseException, transient: bool, fragment: str) -> None:
    err = map_winrm_error(exc, "web01")
    assert type(err) is BackendError
    assert err.transient is transient
    assert fragment in str(err) and str(err).startswith("web01: ")


def test_map_winrm_error_spnego_and_secret_scrubbing() -> None:
    from spnego.exceptions import NoCredentialError

    err = map_winrm_error(NoCredentialError(context_msg="no credentials"), "web01")
    assert "authentication failed" in str(err) and not err.transient
    err = map_winrm_error(requests.ConnectionError("refused for Sup3r-Secret"), "web01", secret="Sup3r-Secret")
    assert "Sup3r-Secret" not in str(err) and "***" in str(err)
    original = BackendError("x", transient=True)
    assert map_winrm_error(original, "web01") is original


def test_powershell_error_from_pypsrp_error_records() -> None:
    record = ErrorRecord()
    record.fq_error = "MemberNotFound,Microsoft.PowerShell.Commands.RemoveLocalGroupMemberCommand"
    record._to_string = "alice is not a member of Administrators. (password: hunter2)"
    err = powershell_error("web01", [record], secret="hunter2")
    assert err.error_ids == ("MemberNotFound,Microsoft.PowerShell.Commands.RemoveLocalGroupMemberCommand",)
    assert err.has_error(frozenset({"MemberNotFound"})) and not err.has_error(frozenset({"MemberExists"}))
    assert "alice is not a member" in str(err) and "hunter2" not in str(err)
    assert not err.transient
    assert "failed without an error record" in str(powershell_error("web01", []))


# -- PsrpRunner -----------------------------------------------------------------------------------


def test_psrp_runner_construction_does_no_io(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("network I/O during construction")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    runner = PsrpRunner("CONTOSO\\svc-jit", "hunter2", port=5986, timeout=5)
    assert isinstance(runner, Runner)
    assert "hunter2" not in repr(runner) and "hunter2" not in str(vars(runner).get("username"))
    WindowsBackend(runner, domain="CONTOSO")
    for kwargs in ({"port": 0}, {"port": 70000}, {"auth": "digest"}, {"timeout": 0}, {"command_timeout": -1},
                   {"configuration_name": "x;y"}):
        with pytest.raises(ValueError):
            PsrpRunner("svc", "pw", **kwargs)
    with pytest.raises(ValueError):
        PsrpRunner("", "pw")


class _Streams:
    def __init__(self) -> None:
        self.error: list[Any] = []


class FakePowerShell:
    """Stands in for pypsrp.powershell.PowerShell; records the calls made to it."""

    script: list[tuple[Any, ...]] = []
    outcome: dict[str, Any] = {}

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.state = PSInvocationState.NOT_STARTED
        self.output: list[Any] = []
        self.streams = _Streams()
        self.had_errors = False

    def add_cmdlet(self, name: str) -> FakePowerShell:
        self.script.append(("cmdlet", name))
        return self

    def add_parameter(self, name: str, value: Any) -> FakePowerShell:
        self.script.append(("param", name, value))
        return self

    def add_statement(self) -> FakePowerShell:
        self.script.append(("statement",))
        return self

    def begin_invoke(self) -> None:
        self.state = PSInvocationState.RUNNING

    def poll_invoke(self, timeout: int | None = None) -> None:
        if self.outcome.get("hang"):
            time.sleep(0.05)
            return
        self.output = list(self.outcome.get("output", []))
        self.streams.error = list(self.outcome.get("errors", []))
        self.had_errors = bool(self.streams.error)
        self.state = PSInvocationState.FAILED if self.had_errors else PSInvocationState.COMPLETED

    def stop(self) -> None:
        self.state = PSInvocationState.STOPPED


class FakePool:
    instances: list[FakePool] = []
    open_error: Exception | None = None

    def __init__(self, wsman: Any, configuration_name: str = "Microsoft.PowerShell") -> None:
        self.wsman, self.configuration_name, self.closed = wsman, configuration_name, False
        self.instances.append(self)

    def open(self) -> None:
        if self.open_error is not None:
            raise self.open_error

    def close(self) -> None:
        self.closed = True
        raise WinRMError("closing a dead pool fails too")  # must not mask the result


@pytest.fixture
def fake_pypsrp(monkeypatch: pytest.MonkeyPatch) -> type[FakePowerShell]:
    import pypsrp.powershell
    import pypsrp.wsman

    FakePowerShell.script = []
    FakePowerShell.outcome = {}
    FakePool.instances = []
    FakePool.open_error = None
    wsman_args: list[dict[str, Any]] = []

    class FakeWSMan:
        def __init__(self, server: str, **kwargs: Any) -> None:
            wsman_args.append({"server": server, **kwargs})

        def close(self) -> None:
            pass

    monkeypatch.setattr(pypsrp.powershell, "PowerShell", FakePowerShell)
    monkeypatch.setattr(pypsrp.powershell, "RunspacePool", FakePool)
    monkeypatch.setattr(pypsrp.wsman, "WSMan", FakeWSMan)
    FakePowerShell.wsman_args = wsman_args  # type: ignore[attr-defined]
    return FakePowerShell


def test_psrp_runner_builds_cmdlets_and_parameters(fake_pypsrp: type[FakePowerShell]) -> None:
    fake_pypsrp.outcome = {"output": ["CONTOSO\\alice"]}
    runner = PsrpRunner("svc", "hunter2", port=5985, ssl=False, auth="ntlm", timeout=7)
    out = runner.run("web01", [
        Command("Get-LocalGroupMember", (("Group", "Administrators"), STOP), pipe=True),
        Command("Select-Object", (("ExpandProperty", "Name"),)),
        Command("New-PSRoleCapabilityFile", (("VisibleCmdlets", ("Get-Service",)),
                                             ("Defs", {"A\\b": {"RoleCapabilities": ("x", "y")}}))),
    ])
    assert out == ["CONTOSO\\alice"]
    assert fake_pypsrp.script == [
        ("cmdlet", "Get-LocalGroupMember"), ("param", "Group", "Administrators"), ("param", "ErrorAction", "Stop"),
        ("cmdlet", "Select-Object"), ("param", "ExpandProperty", "Name"), ("statement",),
        ("cmdlet", "New-PSRoleCapabilityFile"), ("param", "VisibleCmdlets", ["Get-Service"]),
        ("param", "Defs", {"A\\b": {"RoleCapabilities": ["x", "y"]}}), ("statement",),
    ]
    args = fake_pypsrp.wsman_args[0]  # type: ignore[attr-defined]
    assert (args["server"], args["port"], args["ssl"], args["auth"], args["password"]) == (
        "web01", 5985, False, "ntlm", "hunter2")
    assert args["connection_timeout"] == 7 and args["operation_timeout"] == 7 and args["read_timeout"] == 9
    assert FakePool.instances[0].closed


def test_psrp_runner_maps_error_streams(fake_pypsrp: type[FakePowerShell]) -> None:
    record = ErrorRecord()
    record.fq_error = "PrincipalNotFound,Microsoft.PowerShell.Commands.AddLocalGroupMemberCommand"
    record._to_string = "Principal alice was not found; the password was hunter2"
    fake_pypsrp.outcome = {"errors": [record]}
    with pytest.raises(PowerShellError) as info:
        PsrpRunner("svc", "hunter2").run("web01", [Command("Add-LocalGroupMember", (("Member", "alice"),))])
    assert info.value.error_ids == (record.fq_error,)
    assert "Principal alice was not found" in str(info.value) and "hunter2" not in str(info.value)
    assert FakePool.instances[0].closed


def test_psrp_runner_maps_connection_failures(fake_pypsrp: type[FakePowerShell]) -> None:
    FakePool.open_error = requests.ConnectionError("[Errno 111] Connection refused")
    with pytest.raises(BackendError) as info:
        PsrpRunner("svc", "pw").run("web01", [Command("Get-Service")])
    assert type(info.value) is BackendError and info.value.transient
    FakePool.open_error = AuthenticationError("Failed to authenticate the user svc with negotiate")
    with pytest.raises(BackendError) as info:
        PsrpRunner("svc", "pw").run("web01", [Command("Get-Service")])
    assert not info.value.transient


def test_psrp_runner_command_deadline(fake_pypsrp: type[FakePowerShell]) -> None:
    fake_pypsrp.outcome = {"hang": True}
    started = time.monotonic()
    with pytest.raises(BackendError, match="did not finish") as info:
        PsrpRunner("svc", "pw", timeout=1, command_timeout=0.2).run("web01", [Command("Get-Service")])
    assert info.value.transient and time.monotonic() - started < 5


def test_psrp_runner_refuses_bad_host_and_empty_commands(fake_pypsrp: type[FakePowerShell]) -> None:
    with pytest.raises(InvalidGrant):
        PsrpRunner("svc", "pw").run("web01;calc", [Command("Get-Service")])
    with pytest.raises(BackendError):
        PsrpRunner("svc", "pw").run("web01", [])
    assert fake_pypsrp.script == [] and FakePool.instances == []


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.mark.parametrize("ssl", [True, False])
def test_real_pypsrp_path_to_a_closed_port_is_transient_and_quick(ssl: bool) -> None:
    runner = PsrpRunner("CONTOSO\\svc-jit", "Sup3r-Secret", port=_closed_port(), ssl=ssl, timeout=2,
                        command_timeout=5, no_proxy=True)
    backend = WindowsBackend(runner, domain="CONTOSO")
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        backend.apply(grant(target="127.0.0.1"))
    assert time.monotonic() - started < 10
    assert type(info.value) is BackendError and info.value.transient
    assert "127.0.0.1: cannot reach WinRM" in str(info.value)
    assert "Sup3r-Secret" not in str(info.value)


@pytest.mark.parametrize("ssl", [True, False])
def test_real_pypsrp_path_to_a_silent_listener_times_out(ssl: bool) -> None:
    """A host that accepts TCP and never answers (a hung WinRM) must not hang a revoke."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        runner = PsrpRunner("svc", "pw", port=listener.getsockname()[1], ssl=ssl, timeout=1, no_proxy=True)
        started = time.monotonic()
        with pytest.raises(BackendError) as info:
            WindowsBackend(runner).revoke(grant(target="127.0.0.1"))
        assert time.monotonic() - started < 8
    assert info.value.transient and "timed out" in str(info.value)
