"""The background engine: activation at start, revocation at expiry, escalation, lapse, recovery.

``run_once()`` is one pass of everything. ``run_forever()`` runs APScheduler with
- a planner job every ``poll_interval`` that hands each expiry or start instant inside the next
  horizon to the precise timer, so a grant is revoked at its instant, not at the next poll;
- a sweep job every ``sweep_interval``: the safety net (recovery, escalation, lapse, overdue);
and the precise timer: one thread that sleeps until the earliest planned instant, then runs one
expiry/activation pass for everything due by then (instants that pile up share one pass). It
sleeps at most ``MAX_SLEEP_S`` at a time and asks the clock again, so a clock that jumps (either
way) moves the instant it acts at, and it never acts before an instant.

A database outage never stops the scheduler: each job logs the error and runs again. The
first failure of an outage is sent to ``alert`` (the webhook) at once, as nothing can be
written to the outbox then; the first good sweep afterwards records ``engine.database_recovered``
in the audit, logs it and alerts again.
"""
from __future__ import annotations

import gc
import heapq
import logging
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Callable

import sqlalchemy as sa

from app.clock import Clock
from app.config import EngineSettings
from app.domain.errors import StoreError
from app.jobs.outbox import Deliverer, DeliveryReport
from app.jobs.reconcile import Reconciler
from app.jobs.sync import SyncReport, TicketSync
from app.lifecycle import Lifecycle
from app.store import HEARTBEAT_PREFIX, SyncState, audit

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

log = logging.getLogger("jit.engine")
MAX_SLEEP_S = 1.0  # the timer's longest sleep before it asks the (injected) clock again


@dataclass(frozen=True)
class PassReport:
    recovered: int
    activated: int
    expired: int
    escalated: int
    lapsed: int
    sync: SyncReport | None = None
    delivery: DeliveryReport | None = None

    def __str__(self) -> str:
        text = (f"recovered {self.recovered}, activated {self.activated}, expired {self.expired}, "
                f"escalated {self.escalated}, lapsed {self.lapsed}")
        if self.sync is not None:
            text += f"\n  servicenow sync: {self.sync}"
        if self.delivery is not None:
            text += (f"\n  outbox: sent {self.delivery.sent}, will retry {self.delivery.retried}, "
                     f"failed {self.delivery.failed}")
        return text

    @property
    def busy(self) -> bool:
        return any((self.recovered, self.activated, self.expired, self.escalated, self.lapsed))


class Engine:
    def __init__(self, lifecycle: Lifecycle, settings: EngineSettings, clock: Clock, *,
                 sync: TicketSync | None = None, deliverer: Deliverer | None = None,
                 reconciler: Reconciler | None = None,
                 sync_interval: timedelta = timedelta(seconds=30),
                 expiry_warning: timedelta = timedelta(minutes=15),
                 alert: Callable[[str], None] | None = None) -> None:
        self.lifecycle = lifecycle
        self.sync, self.deliverer, self.reconciler = sync, deliverer, reconciler
        self.sync_interval, self.expiry_warning = sync_interval, expiry_warning
        self.settings = settings
        self.clock = clock
        self._scheduler: BackgroundScheduler | None = None
        self._planned: set[datetime] = set()
        self._deadlines: list[datetime] = []  # a heap of planned instants, for the timer
        self._lock = threading.Lock()  # guards _planned and _deadlines
        self._wake = threading.Event()  # a new instant was planned, or the engine stops
        self._stopping = threading.Event()
        self._timer: threading.Thread | None = None
        self._work = threading.Lock()  # one expiry/activation run at a time: each takes all that is due
        self.alert = alert
        self._db_down: tuple[datetime, int] | None = None  # since when, and how many jobs failed since

    def run_once(self) -> PassReport:
        now = self.clock()
        lc = self.lifecycle
        recovered = lc.recover(now)
        expired = lc.expire_due(now)
        activated = lc.activate_due(now)
        escalated, lapsed = lc.escalate_and_lapse(now)
        lc.warn_expiring(self.expiry_warning, now)
        self.heartbeat()
        synced = self.run_sync() if self.sync is not None else None
        delivered = self.deliver() if self.deliverer is not None else None
        return PassReport(recovered, activated, expired, escalated, lapsed, synced, delivered)

    def run_sync(self) -> SyncReport | None:
        """One ServiceNow sync; then whatever it made due (activation) happens at once."""
        report = self.sync.run_once()
        if report.created:
            self.lifecycle.activate_due()
        return report

    def reconcile(self) -> None:
        findings = self.reconciler.run(fix=self.settings.reconcile_fix)
        for f in findings:
            log.warning("drift on %s: %s %s (%s) -> %s", f.backend, f.kind, f.ref, f.detail, f.action)

    def deliver(self) -> DeliveryReport:
        return self.deliverer.run_once()

    # ------------------------------------------------------------ continuous
    def start(self) -> None:
        """Start the scheduler in background threads; returns at once, heard from already (a console
        opened next does not report it silent while the first planning pass is still on its way)."""
        try:
            self.heartbeat()
        except StoreError as exc:  # the planning pass retries, and says so
            log.error("heartbeat at start failed: %s", exc)
        from apscheduler.executors.pool import ThreadPoolExecutor  # only a running engine needs the scheduler
        from apscheduler.schedulers.background import BackgroundScheduler
        sched = BackgroundScheduler(timezone="UTC", executors={"default": ThreadPoolExecutor(4)},
                                    job_defaults={"coalesce": True, "max_instances": 1,
                                                  "misfire_grace_time": 3600})
        sched.add_job(self._sweep, "interval", seconds=self.settings.sweep_interval.total_seconds(),
                      id="sweep", next_run_time=datetime.now(tz=self.clock().tzinfo))
        sched.add_job(self._plan, "interval", seconds=self.settings.poll_interval.total_seconds(),
                      id="plan", next_run_time=datetime.now(tz=self.clock().tzinfo))
        if self.sync is not None:
            sched.add_job(self._guard(self.run_sync), "interval", seconds=self.sync_interval.total_seconds(),
                          id="servicenow-sync", next_run_time=datetime.now(tz=self.clock().tzinfo))
        if self.deliverer is not None:
            sched.add_job(self._guard(self.deliver), "interval", seconds=5, id="outbox")
        if self.reconciler is not None:  # first one sweep interval in: overdue expiries come before drift
            sched.add_job(self._guard(self.reconcile), "interval",
                          seconds=self.settings.reconcile_interval.total_seconds(), id="reconcile",
                          next_run_time=datetime.now(tz=self.clock().tzinfo) + self.settings.sweep_interval)
        sched.start()
        self._scheduler = sched
        self._stopping.clear()
        self._timer = threading.Thread(target=self._run_timer, name="jit-expiry-timer", daemon=True)
        self._timer.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._timer is not None:
            self._timer.join(timeout=60)
            self._timer = None
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None

    def run_forever(self, stop: threading.Event) -> None:
        self.start()
        # What start-up built (modules, policy, pools) lives as long as the engine: out of the cyclic
        # collector's way, a full collection no longer rescans it (it cost a 10,000-ticket sync ~0.5 s).
        gc.collect()
        gc.freeze()
        try:
            stop.wait()
        finally:
            gc.unfreeze()
            self.stop()

    def _sweep(self) -> None:
        try:
            with self._work:
                now = self.clock()
                lc = self.lifecycle
                report = PassReport(lc.recover(now), lc.activate_due(now), lc.expire_due(now),
                                    *lc.escalate_and_lapse(now))
            lc.warn_expiring(self.expiry_warning, now)  # not under _work: expiries at their instant go first
            if report.busy:
                log.info("sweep: %s", report)
        except StoreError as exc:
            log.error("sweep failed, will retry: %s", exc)
            self._database_failed(exc)
            return
        self._database_ok()

    def _send_alert(self, text: str) -> None:
        if self.alert is None:
            return
        try:
            self.alert(text)
        except Exception as exc:  # noqa: BLE001 - an alert that cannot be sent must not stop the engine
            log.error("alert not sent (%s): %s", exc, text)

    def _database_failed(self, exc: StoreError) -> None:
        with self._lock:
            first = self._db_down is None
            since, failures = self._db_down or (self.clock(), 0)
            self._db_down = (since, failures + 1)
        if first:
            self._send_alert(f":rotating_light: JIT engine {self.lifecycle.owner}: the database is unreachable; "
                             f"expiries wait until it is back: {exc}")

    def _database_ok(self) -> None:
        """After an outage: record it (the database answers again), log it and alert."""
        with self._lock:
            down, self._db_down = self._db_down, None
        if down is None:
            return
        since, failures = down
        now = self.clock()
        try:
            with self.lifecycle.store.transaction() as s:
                audit.append(s, at=now, actor="engine", action="engine.database_recovered", since=since.isoformat(),
                             down_s=round((now - since).total_seconds(), 3), failed_jobs=failures)
        except StoreError as exc:
            with self._lock:
                self._db_down = down
            log.error("database answered, then failed again: %s", exc)
            return
        log.warning("the database is reachable again after %.0fs (%d failed job runs)",
                    (now - since).total_seconds(), failures)
        self._send_alert(f":white_check_mark: JIT engine {self.lifecycle.owner}: the database is reachable again "
                         f"after {(now - since).total_seconds():.0f}s")

    @staticmethod
    def _guard(job: Callable[[], object]) -> Callable[[], None]:
        """A scheduled job never dies of an outside failure: it logs and runs again next time."""
        def run() -> None:
            try:
                job()
            except Exception:  # noqa: BLE001 - logged with its traceback; the scheduler must go on
                log.exception("%s failed; will run again", getattr(job, "__name__", "job"))
        return run

    def heartbeat(self) -> None:
        """Say this engine is alive (the console shows it); forget engines silent for a day."""
        now = self.clock()
        with self.lifecycle.store.transaction() as s:
            name = f"{HEARTBEAT_PREFIX}{self.lifecycle.owner}"
            row = s.get(SyncState, name) or SyncState(name=name, errors=[])
            row.last_run_at = now
            s.add(row)
            s.execute(sa.delete(SyncState).where(SyncState.name.like(f"{HEARTBEAT_PREFIX}%"),
                                                 SyncState.last_run_at < now - timedelta(days=1)))

    def _plan(self) -> None:
        """Hand the timer every deadline within the next two poll intervals."""
        horizon = self.clock() + self.settings.poll_interval * 2
        try:
            self.heartbeat()
            deadlines = self.lifecycle.next_deadlines(horizon)
        except StoreError as exc:
            log.error("planning failed, will retry: %s", exc)
            self._database_failed(exc)
            return
        with self._lock:
            self._planned = {d for d in self._planned if d > self.clock() - timedelta(minutes=5)}
            new = [d for d in deadlines if d not in self._planned]
            for when in new:
                self._planned.add(when)
                heapq.heappush(self._deadlines, when)
        if new:
            self._wake.set()

    def _run_timer(self) -> None:
        """Sleep until the earliest planned instant (never wake to revoke before it), then run one
        pass for all that is due; instants reached while a pass runs are served by the next pass."""
        while not self._stopping.is_set():
            with self._lock:
                first = self._deadlines[0] if self._deadlines else None
            wait = (self.settings.poll_interval.total_seconds() if first is None
                    else (first - self.clock()).total_seconds())
            if wait > 0:
                self._wake.wait(min(wait, MAX_SLEEP_S))  # then ask the clock again: it may have jumped
                self._wake.clear()
                continue
            now = self.clock()
            with self._lock:
                while self._deadlines and self._deadlines[0] <= now:
                    heapq.heappop(self._deadlines)
            try:
                with self._work:
                    now = self.clock()
                    self.lifecycle.expire_due(now)
                    self.lifecycle.activate_due(now)
            except StoreError as exc:
                log.error("deadline pass at %s failed; the sweep will retry: %s", now, exc)
                self._database_failed(exc)
            except Exception:  # noqa: BLE001 - logged with its traceback; the timer must go on
                log.exception("deadline pass at %s failed; the sweep will retry", now)
