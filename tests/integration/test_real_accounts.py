"""The trust boundary with real local accounts: alice, bob, carol, dave and erin (``useradd``, so
root only) run ``jit`` as themselves (``setpriv``: no PAM, exactly the environment given) against
a production ``jit server`` (no dev mode) whose files are root's. Root's own interpreter lives in
root's 0700 home on these machines, so the accounts run a venv built on ``/usr/bin/python3`` over
a world-readable copy of this checkout's code (``accounts.py``).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from accounts import SKIP, code_copy, local_accounts, run_as, shared_dir, system_venv  # noqa: F401
from app.dev.sandbox import write_sandbox

pytestmark = SKIP
PEOPLE = ("alice", "bob", "carol", "dave", "erin")
REASON = "restart nginx after the TLS renewal"


@pytest.fixture(scope="module")
def people():
    with local_accounts(*PEOPLE) as made:
        yield made


def production_config(where: Path) -> Path:
    """The sandbox's files made a production install: root's, nobody else may write them, the
    database and secrets readable by root only, programs by absolute path, no dev mode."""
    config = write_sandbox(where / "etc", servicenow_url=None)
    text = config.read_text().replace('visudo = "visudo"', 'visudo = "/usr/sbin/visudo"')
    text = text.replace('cvtsudoers = "cvtsudoers"', 'cvtsudoers = "/usr/bin/cvtsudoers"')
    text = text.replace('socket = "jit.sock"', f'socket = "{where / "run" / "jit.sock"}"')
    config.write_text(text)
    for path in (config, config.parent / "policy.toml"):
        path.chmod(0o600)
    (config.parent / "data").chmod(0o700)
    config.parent.chmod(0o755)
    where.chmod(0o755)
    return config


@pytest.fixture(scope="module")
def server(people, shared_dir):
    where = Path(tempfile.mkdtemp(dir=shared_dir))
    config = production_config(where)
    sock = where / "run" / "jit.sock"
    proc = subprocess.Popen([sys.executable, "-m", "app", "server", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line == f"serving on unix:{sock}", (line, proc.stderr.read() if proc.poll() is not None else "")
    yield type("Server", (), {"config": config, "sock": sock, "dir": config.parent, "proc": proc})
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def jit(person, people, venv, code, server, *argv, env=None):
    source = "import sys; from app.cli.main import main; sys.exit(main(sys.argv[1:]))"
    entry = people[person]
    cmd = ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
           str(venv / "bin" / "python"), "-c", source, "--server", f"unix://{server.sock}", *argv]
    return subprocess.run(cmd, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(code), **(env or {})},
                          cwd="/", capture_output=True, text=True, timeout=120)


def events(server) -> list[dict]:
    with sqlite3.connect(server.dir / "data" / "jit.db") as db:
        return [{"actor": a, "action": act, "request_id": r, "details": json.loads(d)}
                for a, act, r, d in db.execute("SELECT actor, action, request_id, details FROM audit_event ORDER BY seq")]


def state(server, rid: int) -> tuple:
    with sqlite3.connect(server.dir / "data" / "jit.db") as db:
        return db.execute("SELECT state, version FROM access_request WHERE id = ?", (rid,)).fetchone()


FORGED_HEADER = """
import json, os, socket, http.client
class U(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect(os.environ["SOCK"])
c = U("jit")
c.request("POST", "/v1/requests/" + os.environ["RID"] + "/approve", body="{}",
          headers={"Content-Type": "application/json", "X-Jit-User": "bob", "X-Remote-User": "bob"})
r = c.getresponse()
print(json.dumps({"status": r.status, **json.loads(r.read())}))
"""

OPEN_PROBE = """
import errno, json, sys
out = {}
for path, mode in json.loads(sys.argv[1]):
    try:
        open(path, mode).close()
        out[path] = "opened"
    except OSError as exc:
        out[path] = errno.errorcode[exc.errno]
print(json.dumps(out))
"""


def test_the_trust_boundary_holds_for_real_accounts(server, people, system_venv, code_copy):
    run = lambda person, *argv, env=None: jit(person, people, system_venv, code_copy, server, *argv, env=env)  # noqa: E731
    forged = {"LOGNAME": "bob", "USER": "bob", "JIT_USER": "bob"}

    done = run("alice", "whoami", env=forged)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("alice  groups: engineers") and f"peer-uid:{people['alice'].pw_uid}" in done.stdout

    done = run("alice", "request", "web-prod-01", "service-admin", "--duration", "2h", "--reason", REASON,
               "--ticket", "CHG0000001")
    assert done.returncode == 0 and "needs dual approval" in done.stdout, (done.stdout, done.stderr)
    rid = int(done.stdout.split()[0].removeprefix("REQ-"))
    before = state(server, rid)
    assert before[0] == "pending"

    done = run("alice", "approve", str(rid), env=forged)  # still alice, whatever the environment says
    assert done.returncode == 1 and "never approve their own request" in done.stderr, done.stderr
    done = run_as(people["alice"], system_venv, code_copy, FORGED_HEADER, {"SOCK": str(server.sock), "RID": str(rid)})
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["status"] == 403 and "never approve their own request" in answer["error"]["message"], answer
    assert state(server, rid) == before

    probe = [[str(server.dir / "data" / "jit.db"), "rb"], [str(server.dir / "data" / "jit.db"), "r+b"],
             [str(server.dir / "policy.toml"), "a"], [str(server.dir / "jit.toml"), "rb"],
             [str(server.dir / "snow-password"), "rb"]]
    done = subprocess.run(["setpriv", f"--reuid={people['alice'].pw_uid}", f"--regid={people['alice'].pw_gid}",
                           "--clear-groups", str(system_venv / "bin" / "python"), "-c", OPEN_PROBE, json.dumps(probe)],
                          env={"PATH": "/usr/bin:/bin"}, cwd="/", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert set(json.loads(done.stdout).values()) == {"EACCES"}, done.stdout

    for approver in ("bob", "carol"):
        done = run(approver, "approve", str(rid), "--comment", "ok")
        assert done.returncode == 0, done.stderr
    assert state(server, rid)[0] == "active"
    drop_ins = list((server.dir / "sudoers.d").glob("jit_g*"))
    assert len(drop_ins) == 1 and "alice" in drop_ins[0].read_text()
    approvals = {e["actor"]: e["details"].get("authenticated") for e in events(server)
                 if e["request_id"] == rid and e["actor"] in ("bob", "carol")}
    assert approvals == {p: f"peer-uid:{people[p].pw_uid}" for p in ("bob", "carol")}, approvals
    submitted = next(e for e in events(server) if e["request_id"] == rid and e["action"] == "request.submitted")
    assert submitted["details"]["authenticated"] == f"peer-uid:{people['alice'].pw_uid}"

    done = run("dave", "bypass", "web-prod-01", "service-admin", "--duration", "1h", "--incident", "INC0000042",
               "--reason", "nginx down, customers affected")
    assert done.returncode == 0, done.stderr
    bypass = int(done.stdout.split()[0].removeprefix("REQ-").rstrip(":"))
    assert run("dave", "review", str(bypass), "--outcome", "justified", "--comment", "mine").returncode == 1
    done = run("erin", "review", str(bypass), "--outcome", "justified", "--comment", "INC0000042 confirmed")
    assert done.returncode == 0, done.stderr
    assert run("alice", "release", str(rid)).returncode == 0
    assert list((server.dir / "sudoers.d").glob("jit_g*"))[0].name != drop_ins[0].name  # only dave's is left


@pytest.mark.parametrize("victim,how", [("jit.toml", "chmod"), ("policy.toml", "chmod"), ("data/jit.db", "chmod"),
                                        ("snow-password", "chown"), ("policy.toml", "chown")])
def test_the_server_refuses_files_others_could_change(people, shared_dir, victim, how):
    where = Path(tempfile.mkdtemp(dir=shared_dir))
    config = production_config(where)
    target = config.parent / victim
    target.touch()
    if how == "chmod":
        target.chmod(0o666)
    else:
        os.chown(target, people["alice"].pw_uid, people["alice"].pw_gid)
    done = subprocess.run([sys.executable, "-m", "app", "server", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert str(target) in done.stderr or (victim == "jit.toml" and str(config) in done.stderr)
    reason = "writable by group or others" if how == "chmod" else f"owned by uid {people['alice'].pw_uid}"
    assert reason in done.stderr, done.stderr
    assert not (where / "run" / "jit.sock").exists()


def test_the_server_runs_only_absolute_root_owned_programs(people, shared_dir):
    where = Path(tempfile.mkdtemp(dir=shared_dir))
    config = production_config(where)
    fake = where / "visudo"
    shutil.copy("/bin/true", fake)
    os.chown(fake, people["alice"].pw_uid, people["alice"].pw_gid)
    for value, reason in (("visudo", "is not an absolute path"), (str(fake), f"owned by uid {people['alice'].pw_uid}")):
        config.write_text(config.read_text().replace('visudo = "/usr/sbin/visudo"', f'visudo = "{value}"'))
        done = subprocess.run([sys.executable, "-m", "app", "server", "--config", str(config)],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "backends.sudo.visudo" in done.stderr and reason in done.stderr, done.stderr
        config.write_text(config.read_text().replace(f'visudo = "{value}"', 'visudo = "/usr/sbin/visudo"'))


def test_root_never_obeys_a_config_another_account_left_in_the_current_directory(people, shared_dir):
    """The attack of issue 14: a jit.toml in a shared directory naming the owner's own 'visudo'."""
    planted = Path(tempfile.mkdtemp(dir=shared_dir))
    (planted / "jit.toml").write_text(f'[backends.sudo]\nvisudo = "{planted}/visudo"\n')
    os.chown(planted / "jit.toml", people["alice"].pw_uid, people["alice"].pw_gid)
    done = subprocess.run([sys.executable, "-m", "app", "engine", "--once"], cwd=planted, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "JIT_CONFIG": str(planted / "jit.toml")})
    assert done.returncode == 2 and "/etc/jit/jit.toml" in done.stderr and str(planted) not in done.stderr
    done = subprocess.run([sys.executable, "-m", "app", "engine", "--once", "--config", str(planted / "jit.toml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and f"owned by uid {people['alice'].pw_uid}, not by root" in done.stderr
