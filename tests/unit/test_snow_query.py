"""ServiceNow encoded queries: parsing, every operator, precedence, unknown fields, ordering."""
from __future__ import annotations

import pytest

from integrations.servicenow.query import Condition, OrderBy, Query, QueryError, parse, parse_condition

RECORD = {
    "number": "CHG0000007",
    "short_description": "Renew TLS certificate",
    "state": "-1",
    "priority": "3",
    "start_date": "2026-11-24 09:00:00",
    "description": "",
    "formula": "a=b",
    "assigned_to.user_name": "alice",
}


def get(name: str) -> str | None:
    return RECORD.get(name)


def matches(q: str) -> bool:
    return parse(q).matches(get)


# -- parsing


@pytest.mark.parametrize("text, expected", [
    ("state=-1", Condition("state", "=", "-1")),
    ("state!=3", Condition("state", "!=", "3")),
    ("short_descriptionLIKEtls", Condition("short_description", "LIKE", "tls")),
    ("short_descriptionNOT LIKEtls", Condition("short_description", "NOT LIKE", "tls")),
    ("numberSTARTSWITHCHG", Condition("number", "STARTSWITH", "CHG")),
    ("numberENDSWITH7", Condition("number", "ENDSWITH", "7")),
    ("stateIN-1,-2", Condition("state", "IN", "-1,-2")),
    ("stateNOT IN3,4", Condition("state", "NOT IN", "3,4")),
    ("descriptionISEMPTY", Condition("description", "ISEMPTY", "")),
    ("descriptionISNOTEMPTY", Condition("description", "ISNOTEMPTY", "")),
    ("priority<3", Condition("priority", "<", "3")),
    ("priority<=3", Condition("priority", "<=", "3")),
    ("priority>3", Condition("priority", ">", "3")),
    ("priority>=3", Condition("priority", ">=", "3")),
    ("priorityBETWEEN1@3", Condition("priority", "BETWEEN", "1@3")),
    ("formula=a=b", Condition("formula", "=", "a=b")),
    ("assigned_to.user_name=alice", Condition("assigned_to.user_name", "=", "alice")),
    ("short_descriptionLIKEfooINbar", Condition("short_description", "LIKE", "fooINbar")),
])
def test_parse_condition_splits_at_the_leftmost_longest_operator(text, expected):
    assert parse_condition(text) == expected


def test_parse_condition_rejects_text_without_an_operator():
    with pytest.raises(QueryError):
        parse_condition("justafield")
    with pytest.raises(QueryError):
        parse_condition("=novalue")


def test_parse_structure_and_precedence():
    q = parse("a=1^b=2^ORc=3^NQd=4^ORDERBYa^ORDERBYDESCb")
    assert q.groups == (
        ((Condition("a", "=", "1"),), (Condition("b", "=", "2"), Condition("c", "=", "3"))),
        ((Condition("d", "=", "4"),),),
    )
    assert q.order_by == (OrderBy("a"), OrderBy("b", descending=True))


def test_parse_dategenerate_values_and_escaped_caret_and_eq_marker():
    q = parse("start_dateBETWEENjavascript:gs.dateGenerate('2026-11-24','00:00:00')"
              "@javascript:gs.dateGenerate('2026-11-24','23:59:59')^EQ")
    assert q.groups == (((Condition("start_date", "BETWEEN", "2026-11-24 00:00:00@2026-11-24 23:59:59"),),),)
    assert parse("name=a^^b").groups == (((Condition("name", "=", "a^b"),),),)


@pytest.mark.parametrize("q", ["", None, "^", "^EQ", "ORDERBYnumber"])
def test_empty_query_matches_everything(q):
    parsed = parse(q)
    assert parsed.groups == ()
    assert parsed.matches(get)


def test_garbage_conditions_are_dropped():
    assert parse("notacondition^state=-1").groups == (((Condition("state", "=", "-1"),),),)


# -- operators


@pytest.mark.parametrize("q, expected", [
    ("state=-1", True), ("state=-2", False),
    ("state!=-2", True), ("state!=-1", False),
    ("short_descriptionLIKEtls", True), ("short_descriptionLIKEdns", False),
    ("short_descriptionNOT LIKEdns", True), ("short_descriptionNOT LIKETLS", False),
    ("numberSTARTSWITHchg", True), ("numberSTARTSWITHINC", False),
    ("short_descriptionENDSWITHCertificate", True), ("short_descriptionENDSWITHRenew", False),
    ("stateIN-2,-1", True), ("stateIN3,4", False), ("stateIN -2, -1", True),
    ("stateNOT IN3,4", True), ("stateNOT IN-1", False),
    ("descriptionISEMPTY", True), ("numberISEMPTY", False),
    ("numberISNOTEMPTY", True), ("descriptionISNOTEMPTY", False),
    ("priority<4", True), ("priority<3", False), ("priority<10", True),   # numeric, not "3" < "10" as text
    ("priority<=3", True), ("priority<=2", False),
    ("priority>2", True), ("priority>3", False), ("priority>10", False),
    ("priority>=3", True), ("priority>=4", False),
    ("priorityBETWEEN3@5", True), ("priorityBETWEEN1@3", True), ("priorityBETWEEN4@5", False),
    ("priorityBETWEEN3", False),
    ("start_date>2026-11-24 08:59:59", True), ("start_date<2026-11-24 09:00:00", False),
    ("start_date<=2026-11-24 09:00:00", True),
    ("start_dateBETWEEN2026-11-24 00:00:00@2026-11-24 23:59:59", True),
    ("start_dateBETWEEN2026-11-25 00:00:00@2026-11-25 23:59:59", False),
    ("formula=a=b", True), ("formula=a", False),
    ("assigned_to.user_name=alice", True), ("assigned_to.user_name=bob", False),
])
def test_each_operator(q, expected):
    assert matches(q) is expected


def test_empty_field_never_satisfies_comparisons():
    for op in ("<", "<=", ">", ">="):
        assert not matches(f"description{op}z")
    assert not matches("descriptionBETWEEN@z")


def test_equality_is_exact_but_like_ignores_case():
    assert not matches("number=chg0000007")
    assert matches("short_descriptionLIKErenew tls")


# -- precedence


def test_and_requires_every_condition():
    assert matches("state=-1^priority=3")
    assert not matches("state=-1^priority=4")


def test_or_binds_tighter_than_and():
    # state=-1 AND (priority=4 OR priority=3)
    assert matches("state=-1^priority=4^ORpriority=3")
    # state=-2 AND (priority=3 OR ...): the AND still fails
    assert not matches("state=-2^priority=4^ORpriority=3")
    # (state=-2 OR state=-1) AND priority=3
    assert matches("state=-2^ORstate=-1^priority=3")


def test_nq_ors_whole_queries():
    assert matches("state=-2^priority=3^NQstate=-1^priority=3")
    assert not matches("state=-2^priority=3^NQstate=-1^priority=4")
    assert matches("state=-2^NQpriority=1^NQnumber=CHG0000007")


def test_leading_or_is_a_plain_condition():
    assert matches("ORstate=-1")
    assert not matches("ORstate=-2")


# -- unknown fields


def test_condition_on_unknown_field_is_ignored():
    assert matches("nosuchfield=x")
    assert matches("nosuchfield=x^state=-1")
    assert not matches("nosuchfield=x^state=-2")


def test_unknown_field_in_an_or_leaves_the_other_alternatives():
    assert not matches("state=-2^ORnosuchfield=x")
    assert matches("state=-1^ORnosuchfield=x")


def test_unknown_field_in_an_nq_group_makes_that_group_match():
    assert matches("state=-2^NQnosuchfield=x")


# -- ordering and filtering


ROWS = [
    {"n": "1", "state": "2", "name": "b"},
    {"n": "2", "state": "10", "name": "a"},
    {"n": "3", "state": "2", "name": "A"},
    {"n": "4", "state": "", "name": "c"},
]


def field_of(row: dict, name: str) -> str | None:
    return row.get(name)


def numbers(rows: list[dict]) -> list[str]:
    return [r["n"] for r in rows]


def test_orderby_numeric_empty_first_and_stable():
    assert numbers(parse("ORDERBYstate").order(ROWS, field_of)) == ["4", "1", "3", "2"]
    assert numbers(parse("ORDERBYDESCstate").order(ROWS, field_of)) == ["2", "1", "3", "4"]


def test_orderby_several_keys_first_is_primary():
    assert numbers(parse("ORDERBYstate^ORDERBYname").order(ROWS, field_of)) == ["4", "3", "1", "2"]
    assert numbers(parse("ORDERBYstate^ORDERBYDESCname").order(ROWS, field_of)) == ["4", "1", "3", "2"]


def test_orderby_text_ignores_case_and_unknown_field_keeps_order():
    assert numbers(parse("ORDERBYname").order(ROWS, field_of)) == ["2", "3", "1", "4"]
    assert numbers(parse("ORDERBYnosuch").order(ROWS, field_of)) == ["1", "2", "3", "4"]
    assert numbers(Query().order(ROWS, field_of)) == ["1", "2", "3", "4"]


def test_filter_then_order():
    q = parse("state=2^ORstate=10^ORDERBYDESCn")
    assert numbers(q.order(q.filter(ROWS, field_of), field_of)) == ["3", "2", "1"]


@pytest.mark.parametrize("text", [
    "descriptionCONTAINSfoo",  # was split at the IN inside it, on a field that does not exist: matched all
    "sys_created_onONToday@javascript:gs.beginningOfToday()@javascript:gs.endOfToday()",
    "sys_updated_onRELATIVEGE@hour@ago@1", "assigned_toDYNAMIC90d1b8f25f2310009ffa2d2f8d2b0e1c",
    "assigned_toSAMEASopened_by", "sys_created_onDATEPARTMonday@javascript:gs.datePart('dayofweek','dayofweek','EE')",
    "sys_updated_on>javascript:gs.daysAgo(1)", "state=1^ORshort_descriptionCONTAINSx",
])
def test_an_operator_servicenow_has_and_the_parser_does_not_is_an_error_not_a_match_all(text):
    from integrations.servicenow.query import UnsupportedQuery
    with pytest.raises(UnsupportedQuery):
        parse(text)


def test_the_simulator_answers_400_for_an_operator_it_does_not_implement():
    import httpx
    from integrations.servicenow.simulator import Simulator, SimulatorOptions
    with Simulator(SimulatorOptions(seed="demo")) as sim:
        r = httpx.get(f"{sim.base_url}/api/now/table/change_request", auth=("admin", "admin"),
                      params={"sysparm_query": "sys_updated_onRELATIVEGE@hour@ago@1"})
        assert r.status_code == 400 and "RELATIVEGE" in r.json()["error"]["detail"]
        ok = httpx.get(f"{sim.base_url}/api/now/table/change_request", auth=("admin", "admin"),
                       params={"sysparm_query": "start_date>=javascript:gs.dateGenerate('2026-01-31','23:59:59')"})
        assert ok.status_code == 200


def test_a_schedule_entry_without_the_fields_jit_reads_is_an_error():
    from integrations.servicenow.schedules import ScheduleError, span_of
    with pytest.raises(ScheduleError, match="cmn_schedule_span has no start_date_time field"):
        span_of({"schedule": "x", "name": "old", "start_date": "2026-12-24 18:00:00", "end_date": "2026-12-25 06:00:00"})


def test_weekly_entries_follow_the_zone_across_a_dst_change():
    from datetime import datetime, timezone
    from integrations.servicenow.schedules import span_of, windows, zone
    span = span_of({"schedule": "s", "name": "w", "start_date_time": "20260320T180000",
                    "end_date_time": "20260320T200000", "repeat_type": "weekly", "repeat_count": "1",
                    "days_of_week": "5", "repeat_until": "", "all_day": "false"})
    got = windows(span, zone("Europe/Berlin"), datetime(2026, 3, 19, tzinfo=timezone.utc),
                  datetime(2026, 4, 4, tzinfo=timezone.utc))
    # Fridays 18:00-20:00 Berlin: 17:00 UTC before the change to summer time (29 March), 16:00 after
    assert [(s.isoformat(), e.isoformat()) for s, e in got] == [
        ("2026-03-20T17:00:00+00:00", "2026-03-20T19:00:00+00:00"),
        ("2026-03-27T17:00:00+00:00", "2026-03-27T19:00:00+00:00"),
        ("2026-04-03T16:00:00+00:00", "2026-04-03T18:00:00+00:00")]
