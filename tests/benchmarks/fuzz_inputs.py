"""Mutation fuzz run over every entry point that takes outside text; prints how many inputs were tried.

Each entry point gets ``--inputs`` inputs made by mutating a small corpus of valid and nearly valid
values (insert, delete, replace, duplicate, splice, or a fresh random string drawn from an alphabet
heavy in the characters that matter: separators, quotes, control characters, bidi overrides,
unpaired surrogates, non-ASCII digits). Every call ends in one of three ways:

* refused: the product's own error type (``ValueError`` from a duration, ``Refused``, ``PolicyError``,
  ``ConfigError``, ``InvalidGrant``, ``ServiceNowError``, ``NotifyError``, a 4xx answer, exit code 1-3...);
* accepted: the input was valid and the call returned normally;
* crash: any other exception (or a 500 from the simulator, or a traceback from the CLI). A crash is a bug.

    .venv/bin/python tests/benchmarks/fuzz_inputs.py [--inputs 10000] [--seed 1] [--only NAME]

Not part of `make test`; the property tests in tests/reliability/test_bad_input.py run in it instead.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import random
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from email.message import Message  # noqa: E402

from app.bootstrap import build, policy_problems  # noqa: E402
from app.cli.main import main  # noqa: E402
from app.clock import FrozenClock  # noqa: E402
from app.config import load_config  # noqa: E402
from app.dev.sandbox import write_sandbox  # noqa: E402
from app.domain.errors import (
    ConfigError,  # noqa: E402
    Refused,  # noqa: E402
)
from app.lifecycle.ticket_facts import TicketGateway  # noqa: E402
from integrations.base import BackendError, GrantSpec  # noqa: E402
from integrations.ldap import LdapBackend, dn_error  # noqa: E402
from integrations.notify import NotifyError, Webhook  # noqa: E402
from integrations.servicenow import query  # noqa: E402
from integrations.servicenow.client import (  # noqa: E402
    Credentials,
    ServiceNowClient,
    ServiceNowError,
)
from integrations.servicenow.simulator import Simulator, SimulatorOptions, _Request  # noqa: E402
from integrations.servicenow.tickets import Tickets  # noqa: E402
from integrations.sudo import SudoBackend, command_error  # noqa: E402
from policies.durations import parse_duration  # noqa: E402
from policies.loader import PolicyError, load_policy  # noqa: E402

T0 = __import__("datetime").datetime(2026, 11, 24, 10, 0, tzinfo=__import__("datetime").timezone.utc)

# Characters that matter to the parsers, weighted into every random string.
SPECIAL = list(",;:=!#%\"'`*?[]()\\/^@.-_ \t\n\r\x00\x1b\x7f\x85\u2028\u202e\u2066\ud800\udfff"
               "\u0663\uff10\u00e9ALLNQORDERBY<>{}$&|~+0123456789")


class Mutator:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def char(self) -> str:
        r = self.rng.random()
        if r < 0.5:
            return self.rng.choice(SPECIAL)
        if r < 0.85:
            return chr(self.rng.randrange(32, 127))
        return chr(self.rng.randrange(0x80, 0x2FFF))

    def random_text(self, n: int | None = None) -> str:
        n = self.rng.choice((0, 1, 3, 8, 20, 80, 300, 3000)) if n is None else n
        return "".join(self.char() for _ in range(n))

    def mutate(self, seeds: list[str]) -> str:
        rng = self.rng
        if rng.random() < 0.08:
            return self.random_text()
        text = rng.choice(seeds)
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(6)
            i = rng.randint(0, len(text))
            if op == 0:
                text = text[:i] + self.char() + text[i:]
            elif op == 1 and text:
                text = text[:i] + text[i + 1:]
            elif op == 2 and text:
                j = min(len(text) - 1, i)
                text = text[:j] + self.char() + text[j + 1:]
            elif op == 3 and text:
                j = rng.randint(i, len(text))
                text = text[:i] + text[i:j] * rng.randint(2, 5) + text[j:]
            elif op == 4:
                other = rng.choice(seeds)
                text = text[:i] + other[rng.randint(0, len(other)):]
            else:
                text = text[:i] + self.random_text(rng.randint(1, 6)) + text[i:]
        return text


class Refusal(Exception):
    """Raised by an entry point wrapper for a refusal that is not an exception (a 4xx, exit 1-3)."""


class Crash(Exception):
    """Raised by a wrapper for a failure that is not an exception here (a 500, a traceback on stderr)."""


# ------------------------------------------------------------------ the world the entry points run in
class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.config = write_sandbox(tmp / "sb", servicenow_url=None)
        self.sv = build(load_config(self.config), clock=FrozenClock(T0))
        logging.getLogger().setLevel(logging.WARNING)  # build() turns INFO on; one line per webhook is noise
        self.policy_text = (self.config.parent / "policy.toml").read_text()
        self.config_text = self.config.read_text()
        self.sim = Simulator(SimulatorOptions(seed="demo", clock=lambda: T0)).start()
        self.client = ServiceNowClient(self.sim.base_url, Credentials("admin", "admin"), retries=0, timeout=2)
        self.tickets = Tickets(self.client)
        self.gateway = TicketGateway(self.tickets)
        self.auth = Message()
        self.auth["Authorization"] = "Basic " + base64.b64encode(b"admin:admin").decode()
        self.ldap = LdapBackend("ldap://127.0.0.1:9", "cn=svc,dc=example,dc=org", "unused", tls="none",
                                user_base="ou=people,dc=example,dc=org", group_base="ou=groups,dc=example,dc=org")
        self.sudo = SudoBackend(tmp / "sudoers.d")
        (tmp / "sudoers.d").mkdir()
        self.received: list[Any] = []
        received = self.received

        class Hook(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.hook_server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
        threading.Thread(target=self.hook_server.serve_forever, daemon=True).start()
        self.webhook = Webhook(f"http://127.0.0.1:{self.hook_server.server_address[1]}/hook", timeout=2)
        self.env = {"JIT_CONFIG": str(self.config), "JIT_USER": "alice", "HOME": str(tmp),
                    "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
        from tests.serving import dev_server
        self.served = dev_server(self.config)  # the CLI's calls go to a dev server on this sandbox
        self.served.__enter__()

    def close(self) -> None:
        self.served.__exit__(None, None, None)
        self.webhook.close()
        self.hook_server.shutdown()
        self.client.close()
        self.sim.stop()
        self.sv.close()


# ------------------------------------------------------------------ entry points
def entry_points(w: World, m: Mutator) -> list[tuple[str, Callable[[], Any], tuple[type[BaseException], ...]]]:
    rng = m.rng
    lc = w.sv.lifecycle
    H = timedelta(hours=1)
    counter = iter(range(10**9))

    def duration() -> Any:
        return parse_duration(m.mutate(["15m", "2h", "1h30m", "90s", "1d", "366d", "0m", "1d2h3m4s"]))

    def sudo_command() -> Any:
        error = command_error(m.mutate(["/usr/bin/systemctl restart nginx", "/usr/bin/journalctl -u nginx",
                                        "/bin/ls -la /var/log", "/usr/sbin/service x=y a:b"]))
        if error is not None:
            raise Refusal(error)

    def sudo_grant() -> Any:
        person = m.mutate(["alice", "bob", "_svc", "a-b_c"])
        target = m.mutate(["web-prod-01", "db.example.org"])
        role = m.mutate(["service-admin", "log-auditor"])
        commands = [m.mutate(["/usr/bin/systemctl status nginx"])]
        spec = GrantSpec(next(counter), 1, person, target, role, T0, T0 + H, {"commands": commands})
        return w.sudo._render(spec)  # everything apply() checks before it writes

    def ldap_dn() -> Any:
        dn = m.mutate(["cn=admins,ou=groups,dc=example,dc=org", "cn=a\\,b,ou=groups,dc=example,dc=org",
                       "CN=Ops Team,OU=Groups,DC=corp,DC=example,DC=com", "uid=alice,ou=people,dc=example,dc=org"])
        problems = w.ldap.validate_role({"group_dn": dn})
        if dn_error(dn) is not None or problems:
            raise Refusal(problems)

    def ldap_person() -> Any:
        person = m.mutate(["alice", "j.doe", "svc_jit-01"])
        w.ldap.shared_key(GrantSpec(1, 1, person, "corp", "admins", T0, T0 + H,
                                    {"group_dn": "cn=admins,ou=groups,dc=example,dc=org"}))
        return w.ldap._person(GrantSpec(1, 1, person, "corp", "admins", T0, T0 + H, {}))

    record = {"number": "CHG0000001", "state": "-2", "u_jit_target": "web-prod-01", "start_date": "2026-11-24 09:00:00",
              "short_description": "Restart ^ nginx", "assigned_to.user_name": "alice", "priority": "3"}

    def encoded_query() -> Any:
        q = query.parse(m.mutate(["number=CHG0000001", "state=-2^ORstate=-1^NQnumberLIKECHG",
                                  "start_date<=javascript:gs.dateGenerate('2026-11-24','10:00:00')",
                                  "short_descriptionLIKErestart ^^ nginx^ORDERBYDESCnumber",
                                  "priorityBETWEEN1@3^u_jit_targetISNOTEMPTY^EQ", "numberINCHG1,CHG2"]))
        q.matches(record.get)
        return q.order([record, {}], lambda r, f: r.get(f))

    def ticket_number() -> Any:
        return w.tickets.find(m.mutate(["CHG0000001", "INC0000001", "RITM0000001", "CHG0001234"]))

    field_names = ["number", "sys_id", "state", "approval", "type", "start_date", "end_date", "assigned_to.user_name",
                   "assignment_group", "assignment_group.name", "cmdb_ci.name", "sys_updated_on",
                   "u_jit_target", "u_jit_role"]
    good = {"number": "CHG0000042", "sys_id": "0" * 31 + "1", "state": "-1", "approval": "approved",
            "type": "normal", "start_date": "2026-11-24 09:00:00", "end_date": "2026-11-24 12:00:00",
            "assigned_to.user_name": "alice", "assignment_group": "a" * 32, "assignment_group.name": "ops",
            "cmdb_ci.name": "web-prod-01", "sys_updated_on": "2026-11-24 09:30:00",
            "u_jit_target": "web-prod-01", "u_jit_role": "service-admin"}

    def odd_value(key: str) -> Any:
        r = rng.randrange(9)
        if r == 0:
            return None
        if r == 1:
            return rng.choice([0, -1, 3.5, float("nan"), True, 10**30])
        if r == 2:
            return [m.random_text(3)]
        if r == 3:
            return {"value": m.mutate([str(good[key])]), "link": "http://x"}
        if r == 4:
            return {"display_value": "x"}
        if r == 5:
            return m.random_text(5000)
        return m.mutate([str(good[key]) or "x"])

    def snow_record() -> Any:
        row: dict[str, Any] = dict(good, sys_id=f"{next(counter):032x}")
        for key in rng.sample(field_names, rng.randint(1, 4)):
            if rng.random() < 0.3:
                row.pop(key, None)
            else:
                row[key] = odd_value(key)
        ticket = w.tickets._ticket("change_request", row)  # what the client makes of the JSON record
        # then exactly what TicketSync.run_once does with it (a ServiceNowError here would stop the sync: a crash)
        facts = w.gateway.from_ticket(ticket, max(T0, ticket.start or T0), ticket.end or T0)
        [result] = lc.submit_from_tickets([(ticket, facts)])
        if isinstance(result, Refused):
            raise result
        return result

    def sim_json() -> Any:
        body = m.mutate(['{"short_description": "x", "u_jit_target": "web-prod-01"}', '{"state": 3}',
                         '{"assigned_to": "alice", "work_notes": "hi"}', '[1, 2]', '{"a": {"value": null}}',
                         "[" * 50 + "]" * 50, '{"a": ' * 20000, '{"sys_id": "' + "a" * 32 + '"}'])
        table = rng.choice(["change_request", "incident", "sys_journal_field", "nosuch"])
        response = w.sim._handle(_Request("POST", f"/api/now/table/{table}", "", w.auth,
                                          body.encode("utf-8", "surrogatepass")))
        if response.status >= 500:
            raise Crash(f"simulator answered {response.status}: {response.body}")
        if response.status >= 400:
            raise Refusal(response.status)

    def sim_query() -> Any:
        params = m.mutate(["sysparm_query=number%3DCHG0000001&sysparm_limit=5",
                           "sysparm_fields=number,assigned_to.user_name&sysparm_display_value=all",
                           "sysparm_offset=3&sysparm_limit=2&sysparm_query=ORDERBYDESCnumber",
                           "sysparm_query=start_date%3E%3Djavascript:gs.dateGenerate('2026-11-24','00:00:00')"])
        raw = params.encode("utf-8", "surrogatepass").decode("iso-8859-1")  # as http.server reads the request line
        response = w.sim._handle(_Request("GET", "/api/now/table/change_request", raw, w.auth, b""))
        if response.status >= 500:
            raise Crash(f"simulator answered {response.status}: {response.body}")
        if response.status >= 400:
            raise Refusal(response.status)

    def json_value(depth: int = 0) -> Any:
        r = rng.randrange(8 if depth < 3 else 5)
        if r == 0:
            return m.random_text()
        if r == 1:
            return rng.choice([0, -1, 2**70, 1.5, float("nan"), float("inf"), -0.0])
        if r == 2:
            return rng.choice([None, True, False])
        if r == 3:
            return m.mutate(["Access granted to alice on web-prod-01 (service-admin) until 12:00 UTC"])
        if r == 4:
            return rng.choice([b"bytes", {1, 2}, timedelta(1), object()])
        if r == 5:
            return [json_value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {m.random_text(rng.randint(0, 8)): json_value(depth + 1) for _ in range(rng.randint(0, 3))}

    def webhook() -> Any:
        payload = {"text": json_value()} if rng.random() < 0.5 else json_value()
        if not isinstance(payload, dict):
            payload = {"text": payload}
        before = len(w.received)
        w.webhook.send(payload)
        if len(w.received) != before + 1:
            raise Crash("the webhook reported success but nothing arrived")

    def policy_file() -> Any:
        lines = w.policy_text.splitlines()
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(lines))
            line = lines[i]
            if "=" in line and rng.random() < 0.6:
                key = line.split("=", 1)[0]
                line = key + "= " + rng.choice([m.mutate([line.split("=", 1)[1]]), str(rng.randint(-5, 10**20)),
                                                 "true", "[]", "{}", "1979-05-27T07:32:00Z", '"' + m.random_text(8)
                                                 .replace("\\", "").replace('"', "") + '"', "nan", "-inf",
                                                 '["x", 1]', "{a = 1}"])
            else:
                line = m.mutate([line])
            lines[i] = line
        path = w.tmp / "fuzz-policy.toml"
        path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
        policy = load_policy(path)
        problems = policy_problems(policy, {"sudo": w.sudo})
        if problems:
            raise Refusal(problems)

    def config_file() -> Any:
        lines = w.config_text.splitlines()
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(lines))
            line = lines[i]
            if "=" in line and rng.random() < 0.6:
                key = line.split("=", 1)[0]
                line = key + "= " + rng.choice([m.mutate([line.split("=", 1)[1]]), str(rng.randint(-5, 10**20)),
                                                 "true", "[]", "{}", "1979-05-27T07:32:00Z", "nan", '"-1s"',
                                                 '"' + m.mutate(["5s", "sqlite:///x.db", "ALICE", "x"])
                                                 .replace("\\", "").replace('"', "") + '"'])
            else:
                line = m.mutate([line])
            lines[i] = line
        path = w.tmp / "fuzz-jit.toml"
        path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
        return load_config(path)

    def lifecycle_submit() -> Any:
        fields = {"person": ["alice", "dave"], "target": ["web-dev-01", "web-prod-01"], "role": ["service-admin"],
                  "reason": ["restart nginx after the TLS renewal"], "ticket": ["CHG0000001", "INC0000001"]}
        values = {k: rng.choice(v) for k, v in fields.items()}
        for key in rng.sample(list(fields), rng.randint(1, 2)):
            values[key] = m.mutate(fields[key])
        duration = timedelta(seconds=rng.choice([-1, 0, 1, 600, 7200, 10**6, 10**10]))
        if rng.random() < 0.5:
            return lc.preview(values["person"], values["target"], values["role"], duration, values["reason"],
                              values["ticket"])
        return lc.submit(values["person"], values["target"], values["role"], duration, values["reason"],
                         values["ticket"])

    def cli_argv() -> Any:
        argvs = [["request", "web-dev-01", "service-admin", "--duration", "10m", "--reason", "check nginx config"],
                 ["request", "web-prod-01", "service-admin", "--duration", "2h", "--reason", "renew the TLS cert",
                  "--ticket", "CHG0000001", "--start", "2026-11-25T09:00:00Z"],
                 ["bypass", "web-prod-01", "service-admin", "--duration", "1h", "--incident", "INC0000001",
                  "--reason", "site down at 3am"],
                 ["approve", "REQ-1", "--comment", "ok"], ["deny", "1", "--reason", "not now"],
                 ["review", "1", "--outcome", "justified", "--comment", "fine"], ["extend", "1", "--by", "1h",
                                                                                  "--reason", "more work to do"],
                 ["policy", "explain", "web-prod-01", "service-admin", "--duration", "9h"], ["show", "1"]]
        argv = list(rng.choice(argvs))
        for _ in range(rng.randint(1, 2)):
            i = rng.randrange(len(argv))
            argv[i] = m.mutate([argv[i]])
        user = rng.choice(["alice", "bob", "dave", "erin"]) if rng.random() < 0.9 else m.mutate(["alice"])
        out, err = io.StringIO(), io.StringIO()
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err  # argparse writes to the real streams for some messages
        try:
            rc = main(argv, {**w.env, "JIT_USER": user}, out, err)
        finally:
            sys.stdout, sys.stderr = saved
        if "Traceback" in err.getvalue() or rc not in (0, 1, 2, 3, 4):
            raise Crash(f"rc {rc}: {err.getvalue()[-500:]}")
        if rc != 0:
            raise Refusal(rc)

    return [
        ("duration (policies.durations)", duration, (ValueError,)),
        ("sudo command (sudo.command_error)", sudo_command, (Refusal,)),
        ("sudo grant fields (SudoBackend)", sudo_grant, (BackendError,)),
        ("LDAP group DN (ldap.dn_error)", ldap_dn, (Refusal,)),
        ("LDAP person (LdapBackend)", ldap_person, (BackendError,)),
        ("encoded query (servicenow.query)", encoded_query, (query.UnsupportedQuery,)),
        ("ticket number (Tickets.find)", ticket_number, (ServiceNowError,)),
        ("ServiceNow change record (sync)", snow_record, (Refused,)),
        ("simulator inbound JSON (POST)", sim_json, (Refusal,)),
        ("simulator query string (GET)", sim_query, (Refusal,)),
        ("webhook payload (notify.Webhook)", webhook, (NotifyError,)),
        ("policy file (policies.loader)", policy_file, (PolicyError, Refusal)),
        ("config file (app.config)", config_file, (ConfigError,)),
        ("request fields (Lifecycle)", lifecycle_submit, (Refused,)),
        ("CLI argv (app.cli.main)", cli_argv, (Refusal,)),
    ]


def run(inputs: int, seed: int, only: str | None, show: int) -> int:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp))
        try:
            rows, examples = [], {}
            for name, call, refused_types in entry_points(world, Mutator(rng)):
                if only and only.lower() not in name.lower():
                    continue
                n = inputs // 10 if name.startswith("CLI") else inputs  # each CLI call opens the database
                counts: Counter[str] = Counter()
                started = time.perf_counter()
                for _ in range(n):
                    try:
                        call()
                        counts["accepted"] += 1
                    except refused_types:
                        counts["refused"] += 1
                    except Exception as exc:  # noqa: BLE001 - that is what a fuzzer counts
                        counts["crash"] += 1
                        key = f"{name}: {type(exc).__name__}"  # one example per kind of crash
                        examples.setdefault(key, f"{str(exc)[:300]!r}\n" + traceback.format_exc(limit=-14))
                rows.append((name, n, counts["refused"], counts["accepted"], counts["crash"],
                             time.perf_counter() - started))
        finally:
            world.close()
    width = max(len(r[0]) for r in rows)
    print(f"{'entry point':{width}}  {'inputs':>8}  {'refused':>8}  {'accepted':>8}  {'crashes':>7}  {'time':>7}")
    for name, n, refused, accepted, crashes, secs in rows:
        print(f"{name:{width}}  {n:8,}  {refused:8,}  {accepted:8,}  {crashes:7,}  {secs:6.1f}s")
    total = [sum(r[i] for r in rows) for i in range(1, 5)]
    print(f"{'total':{width}}  {total[0]:8,}  {total[1]:8,}  {total[2]:8,}  {total[3]:7,}")
    for key, tb in list(examples.items())[:show]:
        print(f"\nCRASH {key}\n{tb}")
    return 1 if total[3] else 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=10_000, help="inputs per entry point (CLI: a tenth of it)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", help="run only the entry points whose name contains this")
    ap.add_argument("--show", type=int, default=20, help="distinct crashes to print with their traceback")
    args = ap.parse_args()
    sys.exit(run(args.inputs, args.seed, args.only, args.show))
