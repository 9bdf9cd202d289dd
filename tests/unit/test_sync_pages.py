"""The sync reads ServiceNow a page ahead (``read_ahead``) and decides a page per transaction."""
from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from test_ticket_batches import change, requests

from app.jobs import sync as sync_module
from app.jobs.sync import TicketSync, read_ahead
from app.lifecycle.ticket_facts import TicketGateway
from integrations.servicenow.client import ServiceNowError
from tests.conftest import T0

S = timedelta(seconds=1)
H = timedelta(hours=1)


def test_read_ahead_hands_over_pages_in_order():
    assert list(read_ahead(iter(range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(read_ahead(iter(range(6)), 3)) == [[0, 1, 2], [3, 4, 5]]
    assert list(read_ahead(iter(()), 3)) == []


def test_read_ahead_raises_the_error_after_what_was_read_before_it():
    def items():
        yield from range(4)
        raise ServiceNowError("ServiceNow query change_request: 500 boom")

    pages = read_ahead(items(), 3)
    assert next(pages) == [0, 1, 2]
    assert next(pages) == [3]
    with pytest.raises(ServiceNowError, match="boom"):
        next(pages)


def test_read_ahead_stops_reading_when_the_caller_stops():
    pulled = []

    def items():
        for i in range(1000):
            pulled.append(i)
            yield i

    before = {t.ident for t in threading.enumerate()}
    for page in read_ahead(items(), 10):
        break
    assert page == list(range(10))
    assert len(pulled) <= 40  # one page handed over, at most one queued and one being read: not all 1000
    assert not [t for t in threading.enumerate() if t.ident not in before and t.name == "sync-read-ahead"]


class FakeTickets:
    """ServiceNow as the sync sees it: changes since the watermark, then an outage after ``fail_after``."""

    def __init__(self, items, fail_after=None):
        self.items, self.fail_after = items, fail_after
        self.target_field, self.role_field = "u_jit_target", "u_jit_role"

    def missing_fields(self):
        return []  # the instance has them (the check itself: tests/integration/test_snow_instance.py)

    def changes_since(self, watermark):
        for n, (ticket, _) in enumerate(self.items):
            if self.fail_after is not None and n == self.fail_after:
                raise ServiceNowError("ServiceNow query change_request: timed out (gave up after 3 attempt(s))")
            if ticket.updated_on >= watermark:
                yield ticket

    def approvals_many(self, changes):
        return {t.sys_id: t.approvals for t in changes}

    def find_many_by_sys_id(self, tickets):
        return {}

    def find_many(self, numbers):
        return {}

    def blackouts(self, start, end):
        return []


def test_an_outage_mid_run_keeps_the_pages_read_before_it(lifecycle, store, clock, monkeypatch):
    """Pages of 2: ServiceNow fails while the third page is read. The five changes read before the
    failure become requests and the watermark moves past them only; the next run does the rest,
    and nothing twice."""
    monkeypatch.setattr(sync_module, "PAGE", 2)
    items = []
    for i in range(8):
        ticket, facts = change("alice" if i % 2 else "dave", start=T0 + (1 + 3 * i) * H)  # windows apart
        items.append((ticket.__class__(**{**ticket.__dict__, "updated_on": T0 - (60 - i) * S}), facts))
    tickets = FakeTickets(items, fail_after=5)
    sync = TicketSync(store, lifecycle, tickets, TicketGateway(tickets), clock, timedelta(days=1))
    report = sync.run_once()
    assert report.error and "timed out" in report.error
    assert (report.read, report.created) == (5, 5)
    assert sync.status().watermark == T0 - 56 * S  # the fifth change's time: no further
    tickets.fail_after = None
    again = sync.run_once()
    # every change lies within REREAD of the watermark: all are read again, and each made once
    assert again.error is None and again.created == 3 and again.read == 8
    assert sorted(r.ticket for r in requests(store)) == sorted(t.number for t, _ in items)
