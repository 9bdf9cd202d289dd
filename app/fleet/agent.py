"""``jit agent``: on a Linux target, as root, the host's own grants from ``jit server`` written as
drop-ins (the ``sudo`` backend's visudo-checked files, NOTBEFORE/NOTAFTER, I/O logging), removed
when they end, and what the host holds reported back.

One pass (``converge``): remove what has expired (the agent's own clock, so this holds with the
server away) and, when the server has just answered, what it no longer lists; write what it
lists and the host lacks; report. Between passes the agent waits on the server's long poll for
a change, never longer than until the next drop-in's end. With the server unreachable it writes
nothing new, keeps removing drop-ins at their end, and catches up when the server answers again.

Intent before action, as in the engine: before a drop-in is removed, a note saying so (person,
start, programs) is written to ``state_dir``; the note goes once the person's sudo sessions are
ended and the server has been told. A restarted agent finishes every note it finds, and removes
the temporary files of a write it was killed in (sudo ignores them: their names hold a dot)."""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping

from app import failpoints
from app.clock import Clock
from app.domain.errors import IdentityError, JitError, Refused
from app.fleet import sessions
from integrations.base import Artifact, BackendError, GrantSpec, InvalidGrant
from integrations.sudo import SudoBackend, hosts_of
from policies.names import TARGET

log = logging.getLogger("jit.agent")
POLL = 25.0  # seconds the server may hold a long poll open
RESCAN = 60.0  # seconds between full re-reads of the drop-in directory (a file changed by hand)
_TEMP = re.compile(r"\.jit_g\d+\.tmp-.*")


def host_name() -> str:
    """This host's name as the kernel has it (``uname -n``), lower case: the name its rules carry."""
    name = socket.gethostname().lower()
    if not re.fullmatch(TARGET, name):
        raise JitError(f"this host's name {name[:64]!r} is not a host name jit can write a rule for")
    return name


@dataclass
class Local:
    """One drop-in this host holds, as the agent last wrote or read it."""

    grant_id: int
    person: str
    not_before: datetime | None
    not_after: datetime | None
    ref: str
    programs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"grant_id": self.grant_id, "person": self.person, "ref": self.ref,
                "not_before": self.not_before.isoformat() if self.not_before else None,
                "not_after": self.not_after.isoformat() if self.not_after else None}


def _programs(params: Mapping[str, Any]) -> list[str]:
    found = [str(c).split()[0] for c in params.get("commands", []) or [] if str(c).strip()]
    return found + (["sudoedit"] if params.get("edit") else [])


def _spec(d: Mapping[str, Any]) -> GrantSpec:
    """A grant as the server sent it; ``InvalidGrant`` naming the first field that is not right."""
    try:
        return GrantSpec(grant_id=int(d["grant_id"]), request_id=int(d["request_id"]), person=str(d["person"]),
                         target=str(d["target"]), role=str(d["role"]),
                         starts_at=datetime.fromisoformat(d["starts_at"]),
                         expires_at=datetime.fromisoformat(d["expires_at"]), params=dict(d.get("params") or {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidGrant("grant", f"the server sent a grant this agent cannot read ({exc})") from None


def _second(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


class Agent:
    def __init__(self, api: Any, host: str, sudo: SudoBackend, state_dir: Path, clock: Clock,
                 say: Callable[[str], None] = lambda _: None) -> None:
        self.api, self.host, self.sudo, self.state_dir, self.clock, self.say = api, host, sudo, state_dir, clock, say
        self.path = f"/v1/agent/hosts/{host}"
        self.local: dict[int, Local] = {}
        self.desired: dict[int, GrantSpec] = {}
        self.refused: dict[int, str] = {}
        self.version = ""
        self.online = False
        self.ended: list[dict[str, Any]] = []  # what the next report tells the server was done
        self.removed: list[dict[str, Any]] = []
        self._scanned = 0.0
        self._reported: str | None = None
        self._reported_at = 0.0

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        """What the host holds, read from its directory, and what a killed agent left half-done."""
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.sudo.sudoers_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
        for name in os.listdir(self.sudo.sudoers_dir):
            if _TEMP.fullmatch(name):
                (self.sudo.sudoers_dir / name).unlink(missing_ok=True)
        self._rescan()
        for note in sorted(self.state_dir.glob("done-*.json")):  # removed, but the server was not told
            done = json.loads(note.read_text())
            self.removed.append(done["removed"])
            self.ended += [done["ended"]] if done.get("ended") else []
        for note in sorted(self.state_dir.glob("revoking-*.json")):
            self._finish_removal(json.loads(note.read_text()), note)

    def _rescan(self) -> None:
        found: dict[int, Local] = {}
        for a in self.sudo.list_managed():
            if a.grant_id is None:
                continue
            known = self.local.get(a.grant_id)
            found[a.grant_id] = Local(a.grant_id, a.person, a.not_before, a.not_after, a.ref,
                                      known.programs if known else _programs(_params_of(a)))
        self.local = found
        self._scanned = time.monotonic()

    # ------------------------------------------------------------------ the server
    def fetch(self, wait: float) -> bool:
        """The host's grants from the server, after a change or ``wait`` seconds; False when the
        server cannot be reached (the agent then goes on with what it holds)."""
        try:
            answer = self.api.get(self.path + "/grants", {"known": self.version or None, "wait": round(wait, 3)})
        except (Refused, IdentityError):
            raise  # not this host's, or not proven: going on would hide it
        except (JitError, OSError) as exc:
            if self.online:
                log.warning("the server is unreachable, enforcing expiry locally: %s", exc)
                self.say(f"server unreachable: {exc}")
            self.online = False
            return False
        if not self.online:
            self.say("server reachable: following its grants")
        self.online = True
        if answer["version"] != self.version:
            self.version = answer["version"]
            wanted: dict[int, GrantSpec] = {}
            listed = {item.get("grant_id") for item in answer["grants"]}
            self.refused = {g: why for g, why in self.refused.items() if g in listed}
            for item in answer["grants"]:
                try:
                    spec = _spec(item)
                    if self.host not in hosts_of(spec):
                        raise InvalidGrant("hosts", f"the rule is not for this host ({self.host})")
                except InvalidGrant as exc:
                    self.refused[int(item.get("grant_id", -1))] = str(exc)
                    continue
                wanted[spec.grant_id] = spec
            self.desired = wanted
        return True

    def report(self, force: bool = False) -> None:
        body = {"held": [h.to_json() for h in sorted(self.local.values(), key=lambda h: h.grant_id)],
                "refused": [{"grant_id": g, "error": e[:500]} for g, e in sorted(self.refused.items())],
                "ended": self.ended, "removed": self.removed}
        digest = json.dumps(body, sort_keys=True)
        if digest == self._reported and not force and time.monotonic() - self._reported_at < RESCAN:
            return
        try:
            self.api.put(self.path + "/held", body)
        except (Refused, IdentityError):
            raise
        except (JitError, OSError) as exc:
            log.warning("report not delivered (sent again with the next one): %s", exc)
            self.online = False
            return
        self._reported = json.dumps({**body, "ended": [], "removed": []}, sort_keys=True)
        self._reported_at = time.monotonic()
        self.ended, self.removed = [], []
        for note in self.state_dir.glob("done-*.json"):
            note.unlink(missing_ok=True)

    # ------------------------------------------------------------------ one pass
    def converge(self) -> None:
        now = self.clock()
        if time.monotonic() - self._scanned > RESCAN:
            self._rescan()
        for local in list(self.local.values()):
            if local.not_after is not None and local.not_after <= now:
                self._remove(local, "expired")
            elif self.online and local.grant_id not in self.desired:
                self._remove(local, "no longer granted")
        if not self.online:
            return  # nothing new is granted while the server is away
        due = [spec for spec in self.desired.values() if spec.expires_at > now and spec.grant_id not in self.refused
               and not self._in_place(spec)]
        if due:
            self._write(due)

    def _in_place(self, spec: GrantSpec) -> bool:
        local = self.local.get(spec.grant_id)
        return local is not None and _second(local.not_after) == _second(spec.expires_at) \
            and _second(local.not_before) == _second(spec.starts_at)

    def _write(self, specs: list[GrantSpec]) -> None:
        for spec, result in zip(specs, self.sudo.apply_many(specs)):
            if isinstance(result, InvalidGrant) or (isinstance(result, BackendError) and not result.transient):
                self.refused[spec.grant_id] = str(result)
                log.error("grant %s refused on this host: %s", spec.grant_id, result)
                self.say(f"grant {spec.grant_id} refused: {result}")
                continue
            if isinstance(result, BackendError):
                log.warning("grant %s not written, tried again next pass: %s", spec.grant_id, result)
                continue
            failpoints.hit("agent.apply.after_write")
            self.local[spec.grant_id] = Local(spec.grant_id, spec.person, spec.starts_at, spec.expires_at, result,
                                              _programs(spec.params))
            self.say(f"grant {spec.grant_id} written for {spec.person} until "
                     f"{spec.expires_at:%Y-%m-%d %H:%M:%S} UTC: {result}")

    def _remove(self, local: Local, why: str) -> None:
        note = self.state_dir / f"revoking-{local.grant_id}.json"
        intent = {"grant_id": local.grant_id, "person": local.person, "why": why, "programs": local.programs,
                  "not_before": (local.not_before or self.clock()).isoformat()}
        _write_json(note, intent)
        failpoints.hit("agent.revoke.after_intent")
        self._finish_removal(intent, note)

    def _finish_removal(self, intent: Mapping[str, Any], note: Path) -> None:
        gid, person = int(intent["grant_id"]), str(intent["person"])
        spec = GrantSpec(grant_id=gid, request_id=0, person=person, target=self.host, role="x",
                         starts_at=datetime.fromisoformat(intent["not_before"]),
                         expires_at=datetime.fromisoformat(intent["not_before"]))
        try:
            self.sudo.revoke(spec)  # the drop-in and the person's credential cache
        except BackendError as exc:
            log.error("grant %s: cannot remove its drop-in, tried again next pass: %s", gid, exc)
            return
        self.local.pop(gid, None)
        failpoints.hit("agent.revoke.after_unlink")
        others = [h for h in self.local.values() if h.person == person]
        if others:
            spared = {p for h in others for p in h.programs}
            procs = sessions.sessions_of(person, spec.starts_at, intent.get("programs") or [], spared)
        else:
            procs = sessions.sessions_of(person, spec.starts_at, None)
        ended = sessions.end(procs)
        done = {"removed": {"grant_id": gid, "person": person, "why": str(intent.get("why", ""))},
                "ended": {"grant_id": gid, "person": person,
                          "processes": [{"pid": p.pid, "command": " ".join(p.argv)[:200] or p.name}
                                        for p in ended][:100]} if ended else None}
        self.removed.append(done["removed"])
        self.ended += [done["ended"]] if ended else []
        _write_json(self.state_dir / f"done-{gid}.json", done)  # kept until the server has been told
        note.unlink(missing_ok=True)
        self.say(f"grant {gid} removed ({intent.get('why')}); {len(ended)} sudo process(es) of {person} ended")

    def next_end(self) -> float:
        """Seconds until the soonest drop-in's end (POLL when there is none sooner)."""
        ends = [h.not_after for h in self.local.values() if h.not_after is not None]
        if not ends:
            return POLL
        return max(0.0, min(POLL, (min(ends) - self.clock()).total_seconds()))

    # ------------------------------------------------------------------ the loop
    def once(self) -> None:
        self.start()
        self.fetch(0)
        self.converge()
        if self.online:
            self.report(force=True)

    def run(self, stopping: Callable[[], bool]) -> None:
        self.start()
        backoff = 0.5
        while not stopping():
            self.fetch(self.next_end() if self.online else 0)
            self.converge()
            if self.online:
                self.report()
                backoff = 0.5
                continue
            time.sleep(min(backoff, max(self.next_end(), 0.05)))
            backoff = min(backoff * 2, 10.0)


def _params_of(a: Artifact) -> dict[str, Any]:
    return {"commands": list(a.details.get("commands", []))}


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)



class _Stop(Exception):
    pass


def run_agent(args: Any, settings: Any, out: Any) -> int:
    """``jit agent [--once]``: as this host (its name as the kernel has it), until SIGTERM or SIGINT."""
    import signal

    from app.client.connection import Client
    from app.clock import system_clock
    host = host_name()
    sudo = SudoBackend(args.sudoers_dir, visudo=args.visudo, cvtsudoers=args.cvtsudoers,
                       timestamp_dir=args.timestamp_dir or None)

    def say(text: str) -> None:
        out.write(f"{system_clock():%Y-%m-%d %H:%M:%S}Z {text}\n")
        out.flush()

    with Client(settings._replace(agent_host=host, impersonate="")) as api:
        agent = Agent(api, host, sudo, Path(args.state_dir), system_clock, say)
        if args.once:
            agent.once()
            say(f"agent pass on {host}: {len(agent.local)} drop-in(s) held, "
                f"{'reported' if agent.online else 'server unreachable: nothing new written'}")
            return 0 if agent.online else 5

        def stop(*_: object) -> None:
            raise _Stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)
        say(f"agent for {host} following {settings.server} (drop-ins in {sudo.sudoers_dir})")
        try:
            agent.run(lambda: False)
        except _Stop:
            say("agent stopped")
        return 0
