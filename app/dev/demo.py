"""``jit demo``: a narrated walk-through of every core flow on a fresh sandbox.

Each step prints the command a person would type, then runs it through the real CLI.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable, TextIO

from app.dev.demo_sandbox import ON_CALL, DemoSandbox
from app.dev.sandbox import LdapSandbox, write_sandbox
from app.dev.servers import moto, slapd
from integrations.servicenow.simulator import Simulator, SimulatorOptions


def seed_console(lifecycle) -> None:
    """A live queue where every persona has something to do: REQ-1 waits for bob and then carol
    (dual), REQ-2 and REQ-3 for a manager, REQ-4 is alice's active grant, and frank's bypass waits
    for erin's review (frank is the demo's second on-call engineer: dave may bypass himself)."""
    from datetime import timedelta
    h, m = timedelta(hours=1), timedelta(minutes=1)
    lifecycle.submit("alice", "web-prod-01", "service-admin", 2 * h, "restart nginx after the TLS renewal",
                     "CHG0000001")  # dual: a manager and a system owner
    lifecycle.submit("alice", "web-dev-01", "service-admin", 2 * h, "load-test the new nginx config")  # single
    lifecycle.submit("dave", "web-dev-01", "service-admin", 3 * h, "profile the staging cache")  # single
    lifecycle.submit("alice", "web-dev-01", "service-admin", 10 * m, "check the nginx config on dev")  # active now
    lifecycle.bypass(ON_CALL, "web-prod-01", "service-admin", h, "INC0000042", "nginx down, customers affected")


@contextlib.contextmanager
def _outside_world(directory: Path, out: TextIO):
    """The ServiceNow simulator, and a slapd and a moto server when installed (one line says what is skipped)."""
    with contextlib.ExitStack() as stack:
        sim = Simulator(SimulatorOptions(seed="demo")).start()
        stack.callback(sim.stop)
        ldap = aws = None
        skipped = []
        if slapd.have_slapd():
            server = slapd.start_slapd(directory / "ldap")
            stack.callback(server.stop)
            ldap = (server, LdapSandbox(server.uri, server.admin_dn, server.admin_password))
        else:
            skipped.append("the LDAP target (slapd is not installed: apt-get install slapd ldap-utils)")
        if moto.have_moto():
            aws = moto.start_moto()
            stack.callback(aws.stop)
            _aws_world(aws)
        else:
            skipped.append("the AWS target (moto's server extra is not installed)")
        if skipped:
            out.write(f"skipped: {'; '.join(skipped)}\n")
        write_sandbox(directory, force=True, servicenow_url=sim.base_url, ldap=ldap[1] if ldap else None,
                      aws_endpoint=aws.endpoint_url if aws else None)
        yield sim, ldap, aws


def _seed(config_file: Path) -> None:
    from app.bootstrap import build
    from app.config import load_config
    services = build(load_config(config_file), environ={**os.environ, "JIT_CONFIG": str(config_file)})
    try:
        seed_console(services.lifecycle)
    finally:
        services.close()


def run_console_demo(out: TextIO, environ, directory: Path) -> int:
    """``jit demo``: the demo's sandbox in ``directory`` (made and seeded the first time; its simulator
    and ``jit server --dev`` started when they are not running, and left running after), then the
    console as its client, as $JIT_USER (default bob the manager)."""
    from app.client.connection import Client, client_settings
    from app.client.console import RemoteConsoleData
    from app.config import load_config
    from app.tui.launch import run_console
    sandbox = DemoSandbox(directory)
    fresh = sandbox.up(out, _seed)
    config = load_config(sandbox.config)
    person = environ.get("JIT_USER") or "bob"
    out.write(f"{'new' if fresh else 'the'} demo sandbox {sandbox.dir}; opening the console as {person}.\n"
              f"  Another persona on the same sandbox, in another terminal (carol finishes REQ-1 after bob,\n"
              f"  erin reviews frank's bypass, dave may bypass):\n"
              f"    JIT_USER=carol .venv/bin/jit console --config {sandbox.config}\n"
              f"  Everything keeps running after the console closes; stop and delete it: make demo-clean\n")
    out.flush()
    settings = client_settings(f"unix://{config.path(config.settings.server.socket)}", None, {"JIT_USER": person})
    data = RemoteConsoleData(Client(settings))
    try:
        return run_console(data, data.keymap())
    finally:
        data.close()


def stop_demo(out: TextIO, directory: Path) -> int:
    """``jit demo --stop``: the demo sandbox's processes stopped, its directory deleted."""
    DemoSandbox(directory).stop(out)
    return 0


def run_demo(out: TextIO, directory: Path | None = None, *, cli: Callable[..., int]) -> int:
    """``jit demo --narrate``: ``jit server --dev`` in the background, and every persona's commands
    typed through ``cli`` (the CLI's ``main``, handed in so the sandbox never imports the front end
    it drives), each one a client of that server as in production."""
    if directory is None:  # nothing left behind in /tmp
        with tempfile.TemporaryDirectory(prefix="jit-demo-") as tmp:
            return run_demo(out, Path(tmp), cli=cli)
    with _outside_world(directory, out) as (sim, ldap, aws), dev_server_process(directory, out):
        return _walk_through(out, directory, sim, ldap, aws, cli)


@contextlib.contextmanager
def dev_server_process(directory: Path, out: TextIO):
    """``jit server --dev DIR`` as its own process, until the block ends (SIGTERM)."""
    out.write(f"$ jit server --dev {directory} &\n")
    proc = subprocess.Popen([sys.executable, "-m", "app", "server", "--dev", str(directory)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline().strip()
        if not line.startswith("serving on"):
            raise RuntimeError(f"jit server --dev did not start (exit {proc.wait(10)})")
        out.write(f"  {line} (dev mode: JIT_USER picks the person; every event records it)\n")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _aws_world(server: "moto.MotoServer") -> None:
    """The AWS side of the sandbox in moto: the people as IAM users and the role they may assume."""
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"})  # moto's; this process only
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(var, None)
    iam = server.client("iam")
    for person in ("alice", "dave"):
        iam.create_user(UserName=person)
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {
        "AWS": "arn:aws:iam::123456789012:root"}, "Action": ["sts:AssumeRole", "sts:SetSourceIdentity",
                                                          "sts:TagSession"]}]}
    iam.create_role(RoleName="jit-admin", AssumeRolePolicyDocument=json.dumps(trust))


def _request_id(text: str) -> int:
    match = re.search(r"REQ-(\d+)", text)
    if not match:
        raise RuntimeError(f"no request id in: {text!r}")
    return int(match.group(1))


def _walk_through(out: TextIO, directory: Path, sim: Simulator, ldap, aws, main: Callable[..., int]) -> int:
    config = directory / "jit.toml"
    env = {**os.environ, "JIT_CONFIG": str(config)}
    env.pop("JIT_USER", None)
    failures = 0

    def say(text: str) -> None:
        out.write(f"\n# {text}\n")

    def run(user: str | None, line: str, expect: int = 0, quiet: bool = False) -> str:
        nonlocal failures
        out.write(f"$ {'JIT_USER=' + user + ' ' if user else ''}jit {line}\n")
        buf, ebuf = io.StringIO(), io.StringIO()
        code = main(shlex.split(line), {**env, **({"JIT_USER": user} if user else {})}, buf, ebuf)
        text = buf.getvalue() + ebuf.getvalue()
        if not quiet:
            out.write("".join(f"  {l}\n" for l in text.rstrip().splitlines()))
        if code != expect:
            failures += 1
            out.write(f"  !! expected exit {expect}, got {code}\n")
        return text

    def dual_approved(user: str, line: str) -> int:
        """Submit as ``user``; bob (manager) and carol (system owner) approve."""
        rid = _request_id(run(user, line))
        run("bob", f"approve {rid}")
        run("carol", f"approve {rid}")
        return rid

    def sudoers() -> list[Path]:
        return sorted((directory / "sudoers.d").glob("jit_g*"))

    say(f"A ServiceNow simulator with demo tickets is listening on {sim.base_url} (as `jit snow-sim --seed demo`).")
    say("A fresh sandbox: config, policy, SQLite, a sudoers.d directory, five people, ServiceNow.")
    out.write(f"$ jit init --sandbox {directory} --servicenow-url {sim.base_url}"
              f"{'  (+ LDAP at ' + ldap[1].uri + ')' if ldap else ''}{'  (+ AWS at ' + aws.endpoint_url + ')' if aws else ''}\n")
    say("alice (engineer) asks what production access would need, without submitting anything.")
    run("alice", "policy explain web-prod-01 service-admin --duration 2h --ticket CHG0000001 "
                 "--reason 'restart nginx after the TLS renewal'")
    say("alice requests it: production is high risk, so it needs a manager AND a system owner.")
    first = _request_id(run("alice", "request web-prod-01 service-admin --duration 2h --ticket CHG0000001 "
                                     "--reason 'restart nginx after the TLS renewal'"))
    say("bob (manager) approves: one of two approvals, still pending.")
    run("bob", f"approve {first} --comment 'ok for the renewal'")
    say("alice tries to approve her own request: refused.")
    run("alice", f"approve {first}", expect=1)
    say("carol (system owner) approves: dual approval complete, the grant is applied at once.")
    run("carol", f"approve {first} --comment 'go ahead'")
    for f in sudoers():
        out.write(f"\n# The sudoers drop-in {f.name}, time-boxed by sudo itself (NOTAFTER in UTC):\n")
        out.write("".join(f"    {l}\n" for l in f.read_text().splitlines()))
        check = subprocess.run(["visudo", "-cf", str(f)], capture_output=True, text=True)
        out.write(f"  visudo -cf: {(check.stdout + check.stderr).strip()}\n")
    say("alice is done early and releases: the file is removed.")
    run("alice", f"release {first}")
    out.write(f"  sudoers.d now holds {len(sudoers())} jit file(s)\n")
    say("alice asks for 10 minutes on the dev server: low risk, approved at once.")
    run("alice", "request web-dev-01 service-admin --duration 10m --reason 'check the nginx config on dev'")
    say("03:00, production is down. dave (on-call) uses the emergency bypass: active at once.")
    bypass = _request_id(run("dave", "bypass web-prod-01 service-admin --duration 1h --incident INC0000042 "
                                     "--reason 'nginx down, customers affected'"))
    say("A second bypass is refused until the first one is reviewed.")
    run("dave", "bypass web-prod-01 service-admin --duration 1h --incident INC0000043 "
                "--reason 'nginx down again after restart'", expect=1)
    say("dave cannot review his own bypass.")
    run("dave", f"review {bypass} --outcome justified --comment 'it was needed'", expect=1)
    say("erin (security operator) reviews it.")
    run("erin", f"review {bypass} --outcome justified --comment 'outage INC0000042 confirmed'")
    say("Now dave may bypass again.")
    run("dave", "bypass web-prod-01 service-admin --duration 30m --incident INC0000043 "
                "--reason 'nginx down again after restart'")
    say("ServiceNow validates tickets: CHG0000002 is approved but its window is tomorrow, so this is refused.")
    run("alice", "request web-prod-01 service-admin --duration 1h --ticket CHG0000002 "
                 "--reason 'start the TLS renewal early'", expect=1)
    say("The engine's pass: expiry, escalation, lapse, crash recovery, and the ServiceNow sync. The approved\n"
        "# change CHG0000001 carries u_jit_target/u_jit_role, so it becomes alice's grant for its window,\n"
        "# and every step so far is written back to its ticket as a work note.")
    run(None, f"engine --once --config {config}")
    run("erin", "list")
    change = next(r for r in sim.records("change_request") if r["number"] == "CHG0000001")
    out.write("\n# Work notes on CHG0000001 in ServiceNow:\n")
    for note in sim.journal(change["sys_id"]):
        out.write(f"    - {note['value'].splitlines()[0]}\n")
    run(None, "sync status")
    if ldap:
        say("LDAP: alice asks to join the web-admins group in the corporate directory (production: dual).")
        rid = dual_approved("alice", "request corp-directory web-admins --duration 1h --ticket CHG0000001 "
                                     "--reason 'rotate the web server certificates'")
        conn = ldap[0].connection()
        conn.search("cn=web-admins,ou=groups,dc=example,dc=org", "(objectClass=*)", attributes=["member"])
        out.write("  web-admins members now: " + ", ".join(str(m) for m in conn.entries[0].member.values) + "\n")
        conn.unbind()
    if aws:
        say("AWS: dave asks for the jit-admin role in production; the IAM policy carries the expiry itself.")
        rid = dual_approved("dave", "request aws-prod admin --duration 1h --ticket CHG0000001 "
                                    "--reason 'inspect the load balancer logs'")
        iam = aws.client("iam")
        for name in iam.list_user_policies(UserName="dave")["PolicyNames"]:
            doc = iam.get_user_policy(UserName="dave", PolicyName=name)["PolicyDocument"]
            doc = json.loads(doc) if isinstance(doc, str) else doc
            out.write(f"  IAM policy {name}: condition {json.dumps(doc['Statement'][0].get('Condition'))}\n")
        say("dave takes STS credentials no longer than his grant (credential_process format; secrets hidden here).")
        creds = run("dave", f"aws credentials {rid}", quiet=True)
        out.write(f"  credentials issued, Expiration {json.loads(creds)['Expiration']}\n")
    say("Drift: every artifact on every backend is backed by a live grant, and exposure now.")
    run("erin", "reconcile")
    run(None, "stats")
    say("The audit log is a hash chain: any edit, deletion or reordering is detected.")
    run(None, "audit verify")
    out.write(f"\nSandbox left at {directory}; try:\n  .venv/bin/jit server --dev {directory} &\n"
              f"  export JIT_CONFIG={config} JIT_USER=alice\n  .venv/bin/jit list\n")
    out.write("\ndemo finished: all steps behaved as expected\n" if not failures
              else f"\ndemo finished with {failures} unexpected result(s)\n")
    return 1 if failures else 0
