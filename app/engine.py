"""The background engine: activation at start, revocation at expiry, escalation, lapse, recovery.

``run_once()`` is one pass of everything. ``run_forever()`` runs APScheduler with
- a planner job every ``poll_interval`` that schedules a one-shot job at each expiry or start
  instant inside the next horizon, so a grant is revoked at its instant, not at the next poll;
- a sweep job every ``sweep_interval``: the safety net (recovery, escalation, lapse, overdue).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler

from app.clock import Clock
from app.config import EngineSettings
from app.lifecycle import Lifecycle
from app.store import StoreError

log = logging.getLogger("jit.engine")


@dataclass(frozen=True)
class PassReport:
    recovered: int
    activated: int
    expired: int
    escalated: int
    lapsed: int

    def __str__(self) -> str:
        return (f"recovered {self.recovered}, activated {self.activated}, expired {self.expired}, "
                f"escalated {self.escalated}, lapsed {self.lapsed}")


class Engine:
    def __init__(self, lifecycle: Lifecycle, settings: EngineSettings, clock: Clock) -> None:
        self.lifecycle = lifecycle
        self.settings = settings
        self.clock = clock
        self._scheduler: BackgroundScheduler | None = None
        self._planned: set[datetime] = set()
        self._lock = threading.Lock()  # guards _planned
        self._work = threading.Lock()  # one expiry/activation run at a time: each takes all that is due

    def run_once(self) -> PassReport:
        now = self.clock()
        lc = self.lifecycle
        recovered = lc.recover(now)
        expired = lc.expire_due(now)
        activated = lc.activate_due(now)
        escalated, lapsed = lc.escalate_and_lapse(now)
        return PassReport(recovered, activated, expired, escalated, lapsed)

    # ------------------------------------------------------------ continuous
    def start(self) -> None:
        """Start the scheduler in background threads; returns at once."""
        sched = BackgroundScheduler(timezone="UTC", executors={"default": ThreadPoolExecutor(4)},
                                    job_defaults={"coalesce": True, "max_instances": 1,
                                                  "misfire_grace_time": 3600})
        sched.add_job(self._sweep, "interval", seconds=self.settings.sweep_interval.total_seconds(),
                      id="sweep", next_run_time=datetime.now(tz=self.clock().tzinfo))
        sched.add_job(self._plan, "interval", seconds=self.settings.poll_interval.total_seconds(),
                      id="plan", next_run_time=datetime.now(tz=self.clock().tzinfo))
        sched.start()
        self._scheduler = sched

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=True)
            self._scheduler = None

    def run_forever(self, stop: threading.Event) -> None:
        self.start()
        try:
            stop.wait()
        finally:
            self.stop()

    def _sweep(self) -> None:
        try:
            with self._work:
                report = self.run_once()
            if any((report.recovered, report.activated, report.expired, report.escalated, report.lapsed)):
                log.info("sweep: %s", report)
        except StoreError as exc:
            log.error("sweep failed, will retry: %s", exc)

    def _plan(self) -> None:
        """Schedule a one-shot job at every deadline within the next two poll intervals."""
        horizon = self.clock() + self.settings.poll_interval * 2
        try:
            deadlines = self.lifecycle.next_deadlines(horizon)
        except StoreError as exc:
            log.error("planning failed, will retry: %s", exc)
            return
        with self._lock:
            self._planned = {d for d in self._planned if d > self.clock() - timedelta(minutes=5)}
            for when in deadlines:
                if when in self._planned or self._scheduler is None:
                    continue
                self._planned.add(when)
                self._scheduler.add_job(self._at_deadline, "date", run_date=when, args=[when],
                                        id=f"deadline-{when.timestamp()}", replace_existing=True)

    def _at_deadline(self, when: datetime) -> None:
        early = (when - self.clock()).total_seconds()
        if early > 0:  # the scheduler may wake a little early: never revoke before the instant
            time.sleep(early)
        try:
            with self._work:
                now = self.clock()
                self.lifecycle.expire_due(now)
                self.lifecycle.activate_due(now)
        except StoreError as exc:
            log.error("deadline job at %s failed; the sweep will retry: %s", when, exc)
