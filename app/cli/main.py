"""``jit``: argument parsing and printing only. Every command but the local ones (``init``,
``demo``, ``snow-sim``, ``policy lint``, ``server``, ``engine``) is a call to ``jit server``'s API
(``app.client``): the server decides who is asking and whether they may; this process holds no
database, no secret and no backend, and imports none of their libraries.

Exit codes: 0 done; 1 refused by a rule or check (named on stderr); 2 bad configuration or
usage; 3 no such request; 4 someone else changed it first; 5 no server answers, or its database failed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import threading
from datetime import datetime
from typing import Any, Mapping, Sequence, TextIO

from app.client.connection import Client, client_settings
from app.domain.errors import BadInput, ConfigError, IdentityError, JitError, Refused
from app.domain.states import REVIEW_OUTCOMES, RequestState
from app.domain.times import instant, iso
from policies.durations import format_duration, parse_duration


SERVER_CONFIG = "/etc/jit/jit.toml"


class UsageError(Exception):
    pass


def _duration(text: str) -> Any:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _request_id(text: str) -> int:
    match = re.fullmatch(r"(?:REQ-)?(\d{1,12})", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a request id (e.g. 42 or REQ-42)")
    return int(match.group(1))


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time (e.g. 2026-11-24T09:00:00Z)") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} needs a UTC offset (e.g. 2026-11-24T09:00:00Z)")
    return value


class _Unused:
    """Stands in for the parser of a command not on this command line (whatever it is asked, it
    answers itself): building all of them costs 20 ms, a sixth of a ``jit list``."""

    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: self


def _command_of(argv: Sequence[str]) -> str | None:
    """The command word of ``argv`` (the first word that is not an option or an option's value)."""
    words = iter(argv)
    for word in words:
        if word in ("--config", "--server"):
            next(words, None)
        elif not word.startswith("-"):
            return word
        elif word in ("-h", "--help"):
            return None
    return None


def parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; with ``argv``, only its command's parser is built (all of them
    when the command is unknown, so the error lists the choices)."""
    only = _command_of(argv) if argv is not None else None
    names: list[str] = []
    p = _parser(only, names)
    return p if only is None or only in names else _parser(None, [])


def _parser(only: str | None, names: list[str]) -> argparse.ArgumentParser:
    # --config and --server may come before or after the command (jit server --config FILE)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    common.add_argument("--server", metavar="URL", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p = argparse.ArgumentParser(prog="jit", description="Just-in-time privileged access.")
    p.add_argument("--config", metavar="FILE",
                   help="server and engine: their config (else /etc/jit/jit.toml); clients: the file whose "
                        "[client] table says where the server is (else $JIT_CONFIG, ~/.config/jit/jit.toml)")
    p.add_argument("--server", metavar="URL", help="the jit server: unix:///run/jit/jit.sock or https://HOST:PORT "
                                                 "(else $JIT_SERVER, [client] server, unix:///run/jit/jit.sock)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help_: str) -> Any:
        names.append(name)
        if only is not None and name != only:
            return _Unused()
        return sub.add_parser(name, help=help_, description=help_, parents=[common])

    c = cmd("init", "write a runnable sandbox (config, policy, SQLite, sudoers.d, people)")
    c.add_argument("--sandbox", required=True, metavar="DIR", help="directory to create")
    c.add_argument("--force", action="store_true", help="overwrite an existing sandbox config")
    c.add_argument("--servicenow-url", default="http://127.0.0.1:8080", metavar="URL",
                   help="the ServiceNow (simulator) the sandbox uses; 'off' for none")

    c = cmd("snow-sim", "run the ServiceNow Table API simulator (for tests and the demo)")
    c.add_argument("--host", default="127.0.0.1")
    c.add_argument("--port", type=int, default=8080)
    c.add_argument("--data", metavar="FILE", help="keep records in this JSON file across restarts")
    c.add_argument("--user", default="admin")
    c.add_argument("--password", help="default: $JIT_SNOW_SIM_PASSWORD, else 'admin'")
    c.add_argument("--seed", choices=("demo",), help="load the demo users, groups, changes and incidents")
    c.add_argument("--rate-limit", type=int, metavar="N", help="answer 429 past N requests per second")
    c.add_argument("--tls-cert", metavar="PEM", help="serve https with this certificate chain (with --tls-key)")
    c.add_argument("--tls-key", metavar="PEM", help="the certificate's private key (with --tls-cert)")

    sync = cmd("sync", "ServiceNow sync").add_subparsers(dest="sync_command", required=True)
    c = sync.add_parser("status", parents=[common], help="last run, watermark and recent errors",
                        description="last run, watermark and recent errors")
    c.add_argument("--json", action="store_true")
    c = cmd("demo", "open the console on the demo's seeded sandbox, made the first time and kept running "
                    "(--narrate: a CLI walk-through on a sandbox of its own instead)")
    c.add_argument("--narrate", action="store_true", help="narrated CLI walk-through of every flow, no console")
    c.add_argument("--dir", metavar="DIR", help="the demo sandbox (default: $JIT_DEMO_DIR, else ./.jit-demo)")
    c.add_argument("--stop", action="store_true", help="stop the demo sandbox's servers and delete it")
    cmd("console", "the approval console (a terminal UI)")
    cmd("whoami", "show who the server says you are, how that was proven, and your groups").add_argument(
        "--json", action="store_true", help="print the API's JSON answer instead (errors too, on stdout)")

    pol = cmd("policy", "lint or explain policies").add_subparsers(dest="policy_command", required=True)
    c = pol.add_parser("lint", parents=[common], help="validate policy files", description="validate policy files")
    c.add_argument("files", nargs="+", metavar="FILE")
    c = pol.add_parser("explain", parents=[common], help="show the whole decision without submitting anything",
                       description="show the whole decision without submitting anything")
    _request_args(c, reason_required=False)

    c = cmd("request", "ask for elevation")
    _request_args(c, reason_required=True)
    c = cmd("approve", "approve a pending request")
    c.add_argument("--json", action="store_true", help="print the API's JSON answer instead (errors too, on stdout)")
    c.add_argument("id", type=_request_id)
    c.add_argument("--comment", default="")
    c = cmd("deny", "deny a pending request")
    c.add_argument("--json", action="store_true", help="print the API's JSON answer instead (errors too, on stdout)")
    c.add_argument("id", type=_request_id)
    c.add_argument("--reason", required=True)
    c = cmd("cancel", "cancel your own pending or scheduled request")
    c.add_argument("--json", action="store_true", help="print the API's JSON answer instead (errors too, on stdout)")
    c.add_argument("id", type=_request_id)
    c = cmd("release", "task done: de-elevate now")
    c.add_argument("--json", action="store_true", help="print the API's JSON answer instead (errors too, on stdout)")
    c.add_argument("id", type=_request_id)
    c = cmd("revoke", "operator: end someone's elevation now")
    c.add_argument("--json", action="store_true", help="print the API's JSON answer instead (errors too, on stdout)")
    c.add_argument("id", type=_request_id)
    c.add_argument("--reason", required=True)
    c = cmd("extend", "extend an elevation (policy is evaluated again)")
    c.add_argument("--json", action="store_true", help="print the API's JSON answer instead (errors too, on stdout)")
    c.add_argument("id", type=_request_id)
    c.add_argument("--by", required=True, type=_duration, metavar="D")
    c.add_argument("--reason", required=True)
    c = cmd("bypass", "emergency: elevate at once (on-call only), reviewed afterwards")
    c.add_argument("--json", action="store_true", help="print the API's JSON answer instead (errors too, on stdout)")
    c.add_argument("target")
    c.add_argument("role")
    c.add_argument("--duration", required=True, type=_duration, metavar="D")
    c.add_argument("--incident", required=True, metavar="INC")
    c.add_argument("--reason", required=True)
    c = cmd("review", "security operator: review an emergency bypass (a violation revokes it and holds the "
                      "person's next bypass until --clear)")
    c.add_argument("id", type=_request_id)
    how = c.add_mutually_exclusive_group(required=True)
    how.add_argument("--outcome", choices=REVIEW_OUTCOMES)
    how.add_argument("--clear", action="store_true", help="clear a violation: the person may bypass again")
    c.add_argument("--comment", required=True)
    c.add_argument("--json", action="store_true", help="print the API's JSON answer instead (errors too, on stdout)")
    c = cmd("list", "list requests")
    c.add_argument("--state", choices=[s.value for s in RequestState])
    c.add_argument("--mine", action="store_true", help="only my requests")
    c.add_argument("--requester", metavar="PERSON", help="only this person's requests")
    c.add_argument("--limit", type=int, default=100, metavar="N", help="at most N (1-500; default 100)")
    c.add_argument("--before", type=_request_id, metavar="ID", help="the page before this request id")
    c.add_argument("--json", action="store_true")
    c = cmd("show", "show one request with its checks, approvals and grant")
    c.add_argument("id", type=_request_id)
    c.add_argument("--json", action="store_true")

    aud = cmd("audit", "verify or export the audit chain").add_subparsers(dest="audit_command", required=True)
    aud.add_parser("verify", parents=[common], help="check the hash chain; names the first broken event",
                   description="check the hash chain; names the first broken event").add_argument(
        "--json", action="store_true", help="print the API's JSON answer instead (errors too, on stdout)")
    c = aud.add_parser("export", parents=[common], help="write every event as JSON lines", description="write every event")
    c.add_argument("--format", choices=("jsonl",), default="jsonl")

    aws = cmd("aws", "AWS helpers").add_subparsers(dest="aws_command", required=True)
    c = aws.add_parser("credentials", parents=[common], help="STS credentials for your active AWS grant (credential_process JSON)",
                       description="STS credentials for your active AWS grant, as the AWS CLI's "
                                   "credential_process expects: credential_process = jit aws credentials ID")
    c.add_argument("id", type=_request_id)

    c = cmd("reconcile", "drift: privileges no grant backs, artifacts that outlived their grant, missing ones")
    c.add_argument("--fix", action="store_true", help="remove or restore them (security operators), audited")
    c.add_argument("--json", action="store_true")
    c = cmd("stats", "exposure now: who holds elevated access against who could, privilege-hours")
    c.add_argument("--json", action="store_true")

    c = cmd("engine", "run the engine alone, without the API: activation, expiry, escalation, lapse, recovery")
    c.add_argument("--once", action="store_true", help="one pass, then exit")
    c = cmd("agent", "on a target host, as root: write this host's sudo grants from the server as drop-ins, "
                     "remove them when they end, report what the host holds")
    c.add_argument("--once", action="store_true", help="one pass, then exit")
    c.add_argument("--sudoers-dir", default="/etc/sudoers.d", metavar="DIR")
    c.add_argument("--state-dir", default="/var/lib/jit-agent", metavar="DIR",
                   help="where a removal's intent is kept until it is done (root only)")
    c.add_argument("--timestamp-dir", default="/run/sudo/ts", metavar="DIR",
                   help="sudo's credential cache, emptied for the person at revoke ('' for none)")
    c.add_argument("--visudo", default="/usr/sbin/visudo", metavar="PATH")
    c.add_argument("--cvtsudoers", default="/usr/bin/cvtsudoers", metavar="PATH")
    c = cmd("server", "the control plane: the engine, the sync, the outbox and the API")
    c.add_argument("--socket", metavar="PATH", help="the Unix socket to listen on (else [server] socket)")
    c.add_argument("--dev", metavar="DIR", help="dev mode on a sandbox in DIR (written when missing): listens on "
                                               "DIR/jit.sock and lets clients play anyone with JIT_USER")
    return p


def _request_args(c: argparse.ArgumentParser, *, reason_required: bool) -> None:
    c.add_argument("target")
    c.add_argument("role")
    c.add_argument("--duration", required=True, type=_duration, metavar="D", help="e.g. 15m, 2h, 1h30m")
    c.add_argument("--reason", required=reason_required, default="(explain only: no reason given)")
    c.add_argument("--ticket", help="change or incident reference, e.g. CHG0001234")
    c.add_argument("--start", type=_instant, help="ISO 8601 start with offset (default: now)")
    c.add_argument("--json", action="store_true", help="print the API's JSON answer instead (errors too, on stdout)")


# ------------------------------------------------------------------ printing
def _fmt_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else "-"


def print_request(v: Mapping[str, Any], out: TextIO) -> None:
    """One request as the API gives it (``RequestView.to_json()``): read as a plain mapping, so
    the CLI never builds the view classes (their import is a tenth of a ``jit show``)."""
    w = out.write
    w(f"REQ-{v['id']}  {v['state'].upper()}{'  (escalated)' if v['escalated_at'] and v['state'] == 'pending' else ''}\n")
    w(f"  {v['kind']:9} {v['requester']} -> {v['role']} on {v['target']} "
      f"({v['environment'] or '?'}, {v['tier'] or '?'} risk)\n")
    w(f"  window    {_fmt_time(instant(v['starts_at']))} .. {_fmt_time(instant(v['expires_at']))}\n")
    w(f"  reason    {v['reason']}\n")
    if v["ticket"]:
        w(f"  ticket    {v['ticket']}\n")
    groups = f" from {' and '.join(v['approver_groups'])}" if v["approver_groups"] else ""
    w(f"  approval  {v['approval_model']}{groups}\n")
    for a in v["approvals"]:
        w(f"    approved by {a['approver']} ({', '.join(a['groups'])}) at {_fmt_time(instant(a['at']))}"
          f"{': ' + a['comment'] if a['comment'] else ''}\n")
    w("  checks\n")
    for c in v["checks"]:
        w(f"    [{'pass' if c['passed'] else 'FAIL'}] {c['name']}: {c['message']}\n")
    if g := v["grant"]:
        w(f"  grant     {g['status']} on {g['backend']} ({g['ref'] or 'no artifact yet'})\n")
        if g["last_error"]:
            w(f"    last error: {g['last_error']}\n")
    if r := v["review"]:
        w(f"  review    {r['state']}{' by ' + r['reviewer'] if r['reviewer'] else ''}"
          f"{': ' + r['comment'] if r.get('comment') else ''}\n")
        if r.get("cleared_by"):
            w(f"    cleared by {r['cleared_by']}: {r['clear_comment']}\n")
        elif r["state"] == "violation":
            w(f"    not cleared: {v['requester']} cannot bypass until a security operator runs "
              f"jit review {v['id']} --clear\n")
    if v["closed_reason"]:
        w(f"  closed    by {v['closed_by']}: {v['closed_reason']}\n")


def print_table(rows: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    if not rows:
        out.write("no requests\n")
        return
    out.write(f"{'ID':9} {'STATE':10} {'REQUESTER':10} {'TARGET':14} {'ROLE':15} {'EXPIRES (UTC)':17} APPROVAL\n")
    for v in rows:
        out.write(f"{'REQ-' + str(v['id']):9} {v['state']:10} {v['requester']:10} {v['target'][:14]:14} "
                  f"{v['role'][:15]:15} {instant(v['expires_at']):%Y-%m-%d %H:%M}  {v['approval_model']}"
                  f"{' !' if v['escalated_at'] else ''}\n")


def print_outcome(o: Mapping[str, Any], out: TextIO) -> None:
    out.write(o["message"] + "\n")
    for note in o["notes"]:
        out.write(f"  {note}\n")


# ---------------------------------------------------------------- commands
LOCAL = {"init", "demo", "snow-sim", "server", "engine"}


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None,
         out: TextIO | None = None, err: TextIO | None = None) -> int:
    environ = os.environ if environ is None else environ
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            argv = sys.argv[1:] if argv is None else list(argv)
            args = parser(argv).parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        if args.command in LOCAL or (args.command == "policy" and args.policy_command == "lint"):
            return _local(args, environ, out, err)
        if args.command == "agent":
            from app.fleet.agent import run_agent
            return run_agent(args, client_settings(args.server, args.config, environ), out)
        with Client(client_settings(args.server, args.config, environ)) as client:
            return _remote(args, client, environ, out, err)
    except ConfigError as exc:
        err.write(f"configuration error in {exc.source}:\n" + "".join(f"  {p}\n" for p in exc.problems))
        return 2
    except IdentityError as exc:
        err.write(f"identity error: {exc}\n")
        return 2
    except UsageError as exc:
        if getattr(args, "json", False):
            return _json({"error": {"rule": "usage", "message": str(exc), "field": None}}, out, 2)
        err.write(f"error: {exc}\n")
        return 2
    except BrokenPipeError:  # `jit audit export | head`: the reader has what it wanted
        _quiet_stdout(out)
        return 141  # as a shell reports a process ended by SIGPIPE
    except Refused as exc:
        if getattr(args, "json", False):  # the API's error shape, where the script reads the answer
            field = exc.field if isinstance(exc, BadInput) else None
            return _json({"error": {"rule": exc.rule, "message": exc.message, "field": field}}, out, exc.exit_code)
        from policies.decision import split_refusal
        checks = split_refusal(exc.message) if exc.rule == "policy" else [exc.message]
        if len(checks) > 1:  # one failing check per line
            err.write(f"refused: {exc.rule}:\n" + "".join(f"  {c}\n" for c in checks))
        else:
            err.write(f"refused: {exc.rule}: {exc.message}\n")
        return exc.exit_code
    except JitError as exc:
        kind = "database error" if type(exc).__name__ == "StoreError" else "error"
        err.write(f"{kind}: {exc}\n")
        return exc.exit_code


# ------------------------------------------------------------ local commands
def _local(args: argparse.Namespace, environ: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    from policies.loader import PolicyError  # the server's and the linter's libraries, not a client's
    try:
        return _local_command(args, environ, out, err)
    except PolicyError as exc:
        err.write(f"policy error in {exc.source}:\n" + "".join(f"  {p}\n" for p in exc.problems))
        return 2


def _local_command(args: argparse.Namespace, environ: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    from pathlib import Path
    if args.command == "init":
        from app.dev.sandbox import write_sandbox
        url = None if args.servicenow_url == "off" else args.servicenow_url
        path = write_sandbox(Path(args.sandbox), force=args.force, servicenow_url=url)
        out.write(f"sandbox written: {path}\n  try:  jit server --dev {path.parent} &\n"
                  f"        JIT_SERVER=unix://{path.parent / 'jit.sock'} JIT_USER=alice jit whoami\n")
        return 0
    if args.command == "demo":
        from app.dev.demo import run_console_demo, run_demo, stop_demo
        from app.dev.demo_sandbox import DemoError
        directory = Path(args.dir or environ.get("JIT_DEMO_DIR") or ".jit-demo")
        try:
            if args.stop:
                return stop_demo(out, directory)
            return run_demo(out, cli=main) if args.narrate else run_console_demo(out, environ, directory)
        except DemoError as exc:
            raise UsageError(f"demo: {exc}") from None
    if args.command == "snow-sim":
        return _snow_sim(args, environ, out)
    if args.command == "policy":
        return _lint(args.files, environ, args.config, out, err)
    if args.command == "server":
        from app.server.run import run_server  # aiohttp, the database, the backends: only here
        if args.dev:
            if args.config:
                raise UsageError("--dev DIR uses DIR/jit.toml; leave out --config")
            from app.dev.sandbox import write_sandbox
            config = Path(args.dev) / "jit.toml"
            if not config.exists():
                write_sandbox(Path(args.dev), servicenow_url=None)
        else:
            config = Path(args.config or SERVER_CONFIG)
        return run_server(config, socket=args.socket, dev=bool(args.dev), environ=environ, out=out, err=err)
    return _engine(args, environ, out)


def _lint(files: list[str], environ: Mapping[str, str], config_path: str | None, out: TextIO, err: TextIO) -> int:
    """Policy files checked where they are written: by the configured backends when ``--config``
    names a config (no secrets needed), else by the default sudo backend."""
    from pathlib import Path
    from app.bootstrap import lint_backends, policy_problems, policy_warnings
    from app.config import load_config
    from policies.loader import PolicyError, load_policy
    config = load_config(Path(config_path)) if config_path else None
    failed = 0
    for name in files:
        warnings: list[str] = []
        try:
            policy = load_policy(name)
            backends = lint_backends(config, policy, environ)
            problems = policy_problems(policy, backends)
            warnings = policy_warnings(policy, backends)
        except PolicyError as exc:
            problems = exc.problems
        if problems:
            failed += 1
            err.write(f"{name}: {len(problems)} problem(s)\n" + "".join(f"  {p}\n" for p in problems))
        else:
            out.write(f"{name}: ok\n" + "".join(f"  warning: {w}\n" for w in warnings))
    return 2 if failed else 0


def _engine(args: argparse.Namespace, environ: Mapping[str, str], out: TextIO) -> int:
    from pathlib import Path
    from app.bootstrap import build
    from app.config import load_config
    sv = build(load_config(Path(args.config or SERVER_CONFIG)), environ=environ)
    try:
        if args.once:
            out.write(f"engine pass: {sv.engine.run_once()}\n")
            return 0
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        out.write("engine running (Ctrl-C to stop)\n")
        out.flush()
        sv.engine.run_forever(stop)
        return 0
    finally:
        sv.close()


def _snow_sim(args: argparse.Namespace, environ: Mapping[str, str], out: TextIO) -> int:
    import ssl
    from pathlib import Path
    from integrations.servicenow.simulator import Simulator, SimulatorOptions
    password = args.password or environ.get("JIT_SNOW_SIM_PASSWORD") or "admin"
    options = SimulatorOptions(user=args.user, password=password, seed=args.seed,
                               data_file=Path(args.data) if args.data else None, rate_limit=args.rate_limit,
                               tls_cert=Path(args.tls_cert) if args.tls_cert else None,
                               tls_key=Path(args.tls_key) if args.tls_key else None)
    try:
        sim = Simulator(options, host=args.host, port=args.port)
    except ValueError as exc:
        raise UsageError(f"--tls-cert/--tls-key: {exc}") from None
    except ssl.SSLError as exc:
        raise UsageError(f"--tls-cert/--tls-key: not a certificate and its key ({exc.reason or exc})") from None
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    out.write(f"ServiceNow simulator on {sim.base_url} (user {args.user}); Ctrl-C to stop\n")
    out.flush()

    def interrupt(*_: object) -> None:  # stop() from here would wait on the loop it runs in
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        sim.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()
    return 0


# ------------------------------------------------------------ API commands
def _remote(args: argparse.Namespace, api: Client, environ: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    cmd = args.command
    if cmd == "whoami":
        me = api.get("/v1/whoami")
        if args.json:
            return _json(me, out)
        out.write(f"{me['person']}  groups: {', '.join(me['groups']) or '(none)'}  "
                  f"(authenticated by {me['authenticated_by']})\n")
        return 0
    if cmd == "console":
        return open_console(api)
    if cmd == "show":
        data = api.get(f"/v1/requests/{args.id}")
        if args.json:
            out.write(json.dumps(data, indent=2) + "\n")
        else:
            print_request(data, out)
        return 0
    if cmd == "list":
        if not 1 <= args.limit <= 500:
            raise UsageError("--limit: must be between 1 and 500")
        page = api.get("/v1/requests", {"state": args.state, "mine": "true" if args.mine else None,
                                        "requester": args.requester, "limit": args.limit, "before": args.before})
        if args.json:
            out.write(json.dumps(page["items"], indent=2) + "\n")
        else:
            print_table(page["items"], out)
            if page["next"]:
                out.write(f"(more: jit list --before {page['next']})\n")
        return 0
    if cmd == "audit":
        if args.audit_command == "verify":
            result = api.get("/v1/audit/verify")
            if args.json:
                return _json(result, out, 0 if result["ok"] else 1)
            (out if result["ok"] else err).write(("audit chain ok: " if result["ok"] else "audit chain BROKEN: ")
                                                 + result["message"] + "\n")
            return 0 if result["ok"] else 1
        for line in api.lines("/v1/audit/export"):
            out.write(line + "\n")
        return 0
    if cmd == "sync":
        return _sync_status(args, api.get("/v1/sync/status"), out)
    if cmd == "stats":
        e = api.get("/v1/stats")
        if args.json:
            out.write(json.dumps(e, indent=2) + "\n")
            return 0
        out.write(f"elevated now      {e['elevated_now']} of {e['eligible']} eligible people ({e['ratio']:.0%})\n"
                  f"privilege-hours   {e['privilege_hours_7d']} in 7 days, {e['privilege_hours_30d']} in 30 days\n"
                  f"bypass reviews    {e['bypasses_awaiting_review']} awaiting\n")
        return 0
    if cmd == "reconcile":
        return _reconcile(args, api.post("/v1/reconcile", {"fix": args.fix})["findings"], out)
    if cmd == "aws":
        out.write(json.dumps(api.post(f"/v1/requests/{args.id}/credentials")) + "\n")
        return 0
    if cmd == "policy":  # explain
        d = api.post("/v1/policy/explain", _wanted(args))
        if args.json:
            return _json(d, out, 0 if d["allowed"] else 1)
        out.write(f"{d['person']} -> {args.role} on {args.target} for {format_duration(args.duration)}: "
                  f"{'ALLOWED' if d['allowed'] else 'REFUSED'}\n")
        for c in d["checks"]:
            out.write(f"  [{'pass' if c['passed'] else 'FAIL'}] {c['name']}: {c['message']}\n")
        if d["allowed"]:
            how = ("approved at once (self-service)" if d["auto_approved"] else
                   f"{d['approval']} approval from {' and '.join(d['approver_groups'])}")
            out.write(f"  approval: {how}\n")
        out.write("  (nothing was submitted)\n")
        return 0 if d["allowed"] else 1

    rid = getattr(args, "id", None)
    if cmd == "request":
        result = api.post("/v1/requests", _wanted(args))
    elif cmd == "approve":
        result = api.post(f"/v1/requests/{rid}/approve", {"comment": args.comment})
    elif cmd in ("deny", "revoke"):
        result = api.post(f"/v1/requests/{rid}/{cmd}", {"reason": args.reason})
    elif cmd in ("cancel", "release"):
        result = api.post(f"/v1/requests/{rid}/{cmd}")
    elif cmd == "extend":
        result = api.post(f"/v1/requests/{rid}/extend", {"by": format_duration(args.by), "reason": args.reason})
    elif cmd == "bypass":
        result = api.post("/v1/bypass", {"target": args.target, "role": args.role,
                                          "duration": format_duration(args.duration),
                                          "incident": args.incident, "reason": args.reason})
    elif cmd == "review" and args.clear:
        result = api.post(f"/v1/requests/{rid}/review/clear", {"comment": args.comment})
    elif cmd == "review":
        result = api.post(f"/v1/requests/{rid}/review", {"outcome": args.outcome, "comment": args.comment})
    else:  # pragma: no cover - argparse restricts the choices
        raise UsageError(f"unknown command {cmd}")
    code = 0 if result["request"]["state"] != "failed" else 1
    if args.json:
        return _json(result, out, code)
    print_outcome(result, out)
    return code


def _quiet_stdout(out: TextIO) -> None:
    """After a broken pipe: point stdout at /dev/null, so the interpreter's own flush at exit finds
    no pipe to fail on and prints no traceback."""
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _json(data: Any, out: TextIO, code: int = 0) -> int:
    """The API's answer as it came, for scripts: one documented shape per command (``jit server``'s
    OpenAPI description, ``GET /v1/openapi.json``)."""
    out.write(json.dumps(data, indent=2) + "\n")
    return code


def open_console(api: Client) -> int:
    """The console as a client of ``api``: the operator, its reads and actions, the keys of the
    server's ``[console] keys``, and live updates from ``/v1/events``."""
    from app.client.console import RemoteConsoleData
    data = RemoteConsoleData(api)
    try:
        keymap = data.keymap()
        from app.tui.launch import run_console  # Textual only when the console opens
        return run_console(data, keymap)
    finally:
        data.close()


def _wanted(args: argparse.Namespace) -> dict[str, Any]:
    return {"target": args.target, "role": args.role, "duration": format_duration(args.duration),
            "reason": args.reason, "ticket": args.ticket, "start": iso(args.start)}


def _reconcile(args: argparse.Namespace, findings: list[dict], out: TextIO) -> int:
    if args.json:
        out.write(json.dumps(findings, indent=2) + "\n")
    elif not findings:
        out.write("no drift: every managed artifact is backed by a live grant and every grant's artifact exists\n")
    else:
        for f in findings:
            who = f" {f['person']}" if f.get("person") else ""
            grant = f" grant {f['grant_id']}" if f.get("grant_id") else ""
            out.write(f"{f['kind'].upper():9} {f['backend']}{who}{grant}: {f['ref']}: {f['detail']}"
                      f"{' -> ' + f['action'] if f['action'] != 'none' else ''}\n")
    unresolved = [f for f in findings if f["action"] == "none" or f["action"].startswith("failed")]
    return 1 if unresolved else 0


def _sync_status(args: argparse.Namespace, data: dict[str, Any], out: TextIO) -> int:
    if not data.get("enabled"):
        raise UsageError("ServiceNow is not enabled in the server's configuration ([servicenow] enabled = false)")
    data = {k: v for k, v in data.items() if k != "enabled"}
    times = {k: _fmt_time(instant(data[k])) for k in ("last_run_at", "last_ok_at", "watermark")}
    if args.json:
        return _json(data, out)
    if data["last_run_at"] is None:
        out.write("the ServiceNow sync has not run yet (it runs in 'jit server')\n")
        return 0
    out.write(f"last run     {times['last_run_at']}\nlast success {times['last_ok_at']}\n"
              f"watermark    {times['watermark']}\nbehind       {data['behind_s'] or 0:.0f}s at the last run\n"
              f"processed    {data['processed']} change(s) in all\n")
    if (c := data["last_catch_up"]) is not None:
        out.write(f"caught up    {_fmt_time(instant(c['at']))} after {c['down_s']:.0f}s without ServiceNow: read "
                  f"{c['caught_up']} change(s), the oldest {c['behind_s']:.0f}s late\n")
    errors = data["recent_errors"]
    out.write("recent errors:\n" + "".join(f"  {e}\n" for e in errors) if errors else "no recent errors\n")
    return 0
