"""Policy decisions per second on one core: ``evaluate()`` with the default policy.

A realistic mix, built once and replayed: self-service and approval-needing requests on the
development and production targets, with and without ServiceNow ticket facts (found, missing,
an incident), requesters holding zero to three elevations (the concurrency and separation-of-duties
checks have work to do), and refusals (unknown target, unknown role, not eligible, too long, no
reason). One thread, no I/O: the figure is evaluate() alone.

    .venv/bin/python tests/benchmarks/policy_decisions.py [--decisions 200000]

Goal (issue 6): at least 10,000 decisions per second.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import ROOT  # noqa: E402

from policies.decision import AccessRequest, Context, Holding, TicketFacts  # noqa: E402
from policies.evaluate import evaluate  # noqa: E402
from policies.loader import load_policy  # noqa: E402

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
GROUPS = [frozenset({"engineers"}), frozenset({"engineers", "oncall"}), frozenset({"security"}),
          frozenset({"managers"})]
REASONS = ["restart nginx after the config change", "investigate 502s on the web tier", "short", ""]


def _ticket(rng: random.Random, number: str, start: datetime, hours: float) -> TicketFacts | None:
    roll = rng.random()
    if roll < 0.4:
        return None  # no ServiceNow configured, or no ticket
    if roll < 0.85:
        return TicketFacts(number=number, status="found", kind="change", state=rng.choice(["-1", "-2", "-3"]),
                           approval=rng.choice(["approved", "approved", "requested"]),
                           start=start - timedelta(hours=1), end=start + timedelta(hours=hours + rng.choice([-1, 2])),
                           assignee=rng.choice(["user1", "user2"]), group_name="Web Operations",
                           group_members=frozenset({"user1", "user2", "user3"}),
                           blackouts=(("Year-end freeze", start + timedelta(days=10), start + timedelta(days=20)),))
    if roll < 0.95:
        return TicketFacts(number=number, status="found", kind="incident", state=rng.choice(["2", "6"]))
    return TicketFacts(number=number, status="missing")


def mix(size: int, seed: int = 6) -> list[tuple[str, AccessRequest, Context]]:
    """``size`` (category, request, context) triples."""
    rng = random.Random(seed)
    out = []
    for i in range(size):
        category = rng.choices(["dev self-service", "dev approval", "prod dual", "refused"], [40, 20, 30, 10])[0]
        start = NOW + timedelta(minutes=rng.randrange(0, 600))
        target, role, hours = "web-dev-01", "service-admin", rng.choice([0.1, 0.25])
        reason, ticket, groups = rng.choice(REASONS[:2]), None, rng.choice(GROUPS[:2])
        if category == "dev approval":
            hours = rng.choice([1, 4, 8])
        elif category == "prod dual":
            target, role, hours = "web-prod-01", rng.choice(["service-admin", "log-auditor"]), rng.choice([1, 2, 4])
            ticket = f"CHG{rng.randrange(10 ** 7):07d}"
        elif category == "refused":
            kind = rng.randrange(5)
            target = "db-prod-09" if kind == 0 else target
            role = "root" if kind == 1 else role
            hours = 30 if kind == 3 else hours
            groups = GROUPS[2] if kind == 2 else groups  # not eligible for the role
            reason = rng.choice(REASONS[2:]) if kind == 4 else reason
        requester = f"user{rng.randrange(1, 6)}"
        holdings = tuple(Holding(rng.choice(["web-prod-01", "web-dev-01"]), rng.choice(["service-admin", "log-auditor"]),
                                 start - timedelta(hours=1), start + timedelta(hours=rng.choice([-0.5, 2])))
                         for _ in range(rng.choice([0, 0, 1, 2, 3])))
        ctx = Context(groups=groups, holdings=holdings, ticket=_ticket(rng, ticket, start, hours) if ticket else None)
        out.append((category, AccessRequest(requester, target, role, start, timedelta(hours=hours), reason, ticket), ctx))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decisions", type=int, default=200_000)
    ap.add_argument("--distinct", type=int, default=5_000, help="distinct requests in the replayed mix")
    args = ap.parse_args(argv)
    if args.decisions < 1 or args.distinct < 1:
        ap.error("--decisions and --distinct must be at least 1")
    policy = load_policy(ROOT / "policies" / "default.toml")
    cases = mix(args.distinct)
    for _, req, ctx in cases[:200]:  # warm the caches (regexes, time zones) as a running service has them
        evaluate(policy, req, ctx)
    seconds, outcomes, count = Counter(), Counter(), Counter()
    for n in range(args.decisions):
        category, req, ctx = cases[n % len(cases)]
        t0 = time.perf_counter()
        decision = evaluate(policy, req, ctx)
        seconds[category] += time.perf_counter() - t0
        count[category] += 1
        outcomes[(category, "allowed" if decision.allowed else "refused")] += 1
    print(f"\nPolicy decisions per second on one core: evaluate() with policies/default.toml "
          f"(goal: >= 10,000/s)")
    print(f"{'mix':18} {'decisions':>9} {'allowed':>7} {'refused':>7} {'us/decision':>11} {'per second':>10}")
    for category in sorted(count):
        print(f"{category:18} {count[category]:>9} {outcomes[(category, 'allowed')]:>7} "
              f"{outcomes[(category, 'refused')]:>7} {seconds[category] / count[category] * 1e6:>11.1f} "
              f"{count[category] / seconds[category]:>10.0f}")
    total, spent = sum(count.values()), sum(seconds.values())
    allowed = sum(v for (c, o), v in outcomes.items() if o == "allowed")
    print(f"{'all':18} {total:>9} {allowed:>7} {total - allowed:>7} {spent / total * 1e6:>11.1f} {total / spent:>10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
