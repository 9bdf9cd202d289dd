"""The ServiceNow Table API simulator over real HTTP on 127.0.0.1 (httpx client, no mocks).

One module over 600 lines: every case of the simulator against one server fixture."""
from __future__ import annotations

import http.client
import json
import re
import ssl
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from integrations.servicenow import seed
from integrations.servicenow.simulator import Simulator, SimulatorOptions

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=timezone.utc)
CHG = "/api/now/table/change_request"
INC = "/api/now/table/incident"
ALICE = seed.sys_id("sys_user", "alice")
WEB_OPS = seed.sys_id("sys_user_group", "Web Operations")


class MutableClock:
    """An injectable clock that tests move by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def fmt(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S")


@pytest.fixture
def snow_clock() -> MutableClock:
    return MutableClock(T0)


@pytest.fixture
def make_sim(snow_clock: MutableClock) -> Iterator[Callable[..., Simulator]]:
    """Start simulators with given options (demo seed and the test clock by default); stop them all after."""
    started: list[Simulator] = []

    def make(**options: Any) -> Simulator:
        options.setdefault("seed", "demo")
        options.setdefault("clock", snow_clock)
        sim = Simulator(SimulatorOptions(**options)).start()
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(make_sim: Callable[..., Simulator]) -> Simulator:
    return make_sim()


@pytest.fixture
def client(sim: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.base_url, auth=("admin", "admin"), timeout=5) as c:
        yield c


def result(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, response.text
    return response.json()["result"]


def numbers(rows: list[dict]) -> list[str]:
    return [row["number"] for row in rows]


def query(client: httpx.Client, path: str, q: str, **params: Any) -> list[dict]:
    return result(client.get(path, params={"sysparm_query": q, **params}))


# --------------------------------------------------------------------------- paths, CRUD, envelopes


@pytest.mark.parametrize("prefix", ["/api/now/table", "/api/now/v1/table", "/api/now/v2/table"])
def test_every_path_version_lists_and_reads(client, prefix):
    rows = result(client.get(f"{prefix}/change_request"))
    assert numbers(rows) == ["CHG0000001", "CHG0000002", "CHG0000003", "CHG0000004"]
    one = result(client.get(f"{prefix}/change_request/{rows[0]['sys_id']}"))
    assert one["number"] == "CHG0000001"
    assert one == rows[0]
    assert result(client.get(f"{prefix}/change_request/{rows[0]['sys_id']}/")) == one


def test_response_headers_and_keep_alive(sim):
    conn = http.client.HTTPConnection("127.0.0.1", int(sim.base_url.rsplit(":", 1)[1]), timeout=5)
    auth = {"Authorization": "Basic YWRtaW46YWRtaW4="}
    try:
        for _ in range(3):   # one connection, several requests (pysnow/requests pool connections)
            conn.request("GET", f"{CHG}?sysparm_limit=1", headers=auth)
            response = conn.getresponse()
            body = response.read()
            assert response.status == 200
            assert response.getheader("Content-Type") == "application/json;charset=UTF-8"
            assert int(response.getheader("Content-Length")) == len(body)
            assert not response.will_close
    finally:
        conn.close()


def test_post_creates_with_201_location_number_and_sys_fields(client, sim, snow_clock):
    response = client.post(CHG, json={"short_description": "New change", "assigned_to": ALICE})
    created = result(response, 201)
    assert re.fullmatch(r"[0-9a-f]{32}", created["sys_id"])
    assert response.headers["Location"] == f"{sim.base_url}/api/now/table/change_request/{created['sys_id']}"
    assert created["number"] == "CHG0000005"          # after the seed's CHG0000001..4
    assert created["state"] == "-5" and created["type"] == "normal"
    assert created["sys_created_on"] == created["sys_updated_on"] == fmt(T0)
    assert created["sys_created_by"] == created["sys_updated_by"] == "admin"
    assert created["sys_mod_count"] == "0"
    assert created["assigned_to"]["value"] == ALICE
    assert result(client.get(response.headers["Location"])) == created
    assert result(client.post(INC, json={"short_description": "x", "number": "INC0009999"}), 201)["number"] \
        == "INC0009999"                                 # a supplied number is kept
    assert result(client.post(INC, json={}), 201)["number"] == "INC0010000"
    assert result(client.post("/api/now/table/sc_req_item", json={}), 201)["number"] == "RITM0000001"


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_put_and_patch_update_only_given_fields(client, sim, snow_clock, method):
    chg = result(client.get(CHG, params={"sysparm_query": "number=CHG0000003"}))[0]
    snow_clock.advance(minutes=5)
    updated = result(client.request(method, f"{CHG}/{chg['sys_id']}", json={"approval": "approved", "state": -2}))
    assert updated["approval"] == "approved" and updated["state"] == "-2"
    assert updated["short_description"] == chg["short_description"]   # untouched
    assert updated["start_date"] == chg["start_date"]
    assert updated["sys_updated_on"] == fmt(T0 + timedelta(minutes=5)) != chg["sys_updated_on"]
    assert updated["sys_created_on"] == chg["sys_created_on"]
    assert updated["sys_updated_by"] == "admin" and updated["sys_mod_count"] == "1"
    snow_clock.advance(minutes=5)
    same = result(client.request(method, f"{CHG}/{chg['sys_id']}", json={"approval": "approved"}))
    assert same["sys_updated_on"] == updated["sys_updated_on"] and same["sys_mod_count"] == "1"  # no-op update


def test_delete_204_then_404_everywhere(client):
    sys_id = result(client.post(INC, json={"short_description": "to delete"}), 201)["sys_id"]
    response = client.delete(f"{INC}/{sys_id}")
    assert response.status_code == 204 and response.content == b""
    for method in ("GET", "PUT", "PATCH", "DELETE"):
        response = client.request(method, f"{INC}/{sys_id}", json={"state": "2"} if method in ("PUT", "PATCH") else None)
        assert response.status_code == 404
        assert response.json() == {"error": {"message": "No Record found",
                                              "detail": "Record doesn't exist or ACL restricts the record retrieval"},
                                   "status": "failure"}


def test_no_response_body_header(client):
    response = client.post(INC, json={"short_description": "quiet"}, headers={"X-no-response-body": "true"})
    assert response.status_code == 201 and response.content == b"" and "Location" in response.headers
    sys_id = response.headers["Location"].rsplit("/", 1)[1]
    for method in ("PUT", "PATCH"):
        response = client.request(method, f"{INC}/{sys_id}", json={"state": "2"},
                                  headers={"X-no-response-body": "true"})
        assert response.status_code == 200 and response.content == b""
    assert result(client.get(f"{INC}/{sys_id}"))["state"] == "2"


def test_empty_list_is_404_on_v1_and_empty_on_v2_and_unversioned(client):
    q = {"sysparm_query": "number=CHG9999999"}
    v1 = client.get("/api/now/v1/table/change_request", params=q)
    assert v1.status_code == 404
    assert v1.json() == {"error": {"message": "No Record found", "detail": "Records matching query not found. "
                                   "Check query parameter or offset parameter"}, "status": "failure"}
    assert result(client.get("/api/now/v2/table/change_request", params=q)) == []
    assert result(client.get(CHG, params=q)) == []
    assert client.get("/api/now/v1/table/change_request", params={"sysparm_offset": 100}).status_code == 404


def test_invalid_table_400(client):
    for method in ("GET", "POST"):
        response = client.request(method, "/api/now/table/no_such_table", json={} if method == "POST" else None)
        assert response.status_code == 400
        assert response.json() == {"error": {"message": "Invalid table no_such_table", "detail": None},
                                   "status": "failure"}


def test_unsupported_method_and_unknown_uri(client):
    assert client.post(f"{CHG}/{seed.sys_id('change_request', 'CHG0000001')}", json={}).status_code == 405
    assert client.delete(CHG).status_code == 405
    assert client.get("/api/now/nothing/here").status_code == 400


@pytest.mark.parametrize("auth", [None, ("admin", "wrong"), ("nobody", "admin")])
def test_bad_or_missing_auth_401(sim, auth):
    with httpx.Client(base_url=sim.base_url, auth=auth, timeout=5) as c:
        for response in (c.get(CHG), c.post(CHG, json={}), c.get("/sim/admin/stats")):
            assert response.status_code == 401
            assert response.json() == {"error": {"message": "User Not Authenticated",
                                                 "detail": "Required to provide Auth information"},
                                       "status": "failure"}
            assert response.headers["WWW-Authenticate"] == 'Basic realm="Service-now"'
        assert c.get(CHG, headers={"Authorization": "Basic !!notbase64"}).status_code == 401


def test_invalid_json_body_400(client):
    for method, path in (("POST", INC), ("PATCH", f"{INC}/{seed.sys_id('incident', 'INC0000042')}")):
        for body in (b"{not json", b"[1, 2]"):
            response = client.request(method, path, content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == 400, response.text
            assert response.json()["status"] == "failure" and response.json()["error"]["message"]


def test_query_parameters_on_writes_are_ignored(client):
    params = {"sysparm_query": "number=NOPE", "sysparm_limit": "abc", "sysparm_offset": "-3"}
    created = result(client.post(INC, params=params, json={"short_description": "leaky"}), 201)
    assert result(client.patch(f"{INC}/{created['sys_id']}", params=params, json={"state": "2"}))["state"] == "2"
    assert client.delete(f"{INC}/{created['sys_id']}", params=params).status_code == 204


def test_write_responses_honour_the_rendering_parameters(client):
    created = result(client.post(INC, params={"sysparm_display_value": "true", "sysparm_exclude_reference_link":
                                              "true", "sysparm_fields": "number,state,assigned_to"},
                                 json={"assigned_to": ALICE, "state": "2"}), 201)
    assert created == {"number": "INC0000045", "state": "In Progress", "assigned_to": "Alice Engineer"}


# --------------------------------------------------------------------------- stored values


@pytest.fixture
def custom(make_sim: Callable[..., Simulator]) -> Iterator[httpx.Client]:
    """A client of a simulator whose admin added custom fields to incident (as a dictionary entry does)."""
    sim = make_sim(custom_fields={"incident": ("u_flag", "u_ratio", "u_ticket_ref")})
    with httpx.Client(base_url=sim.base_url, auth=("admin", "admin"), timeout=5) as c:
        yield c


def test_every_value_is_a_string(custom):
    client = custom
    created = result(client.post(INC, params={"sysparm_exclude_reference_link": "true"},
                                 json={"short_description": 42, "priority": 2, "u_flag": True, "description": None,
                                       "u_ratio": 1.5, "assigned_to": {"value": ALICE}}), 201)
    assert created["short_description"] == "42" and created["priority"] == "2" and created["u_flag"] == "true"
    assert created["description"] == "" and created["u_ratio"] == "1.5" and created["assigned_to"] == ALICE
    for table in ("change_request", "incident", "sys_user", "sys_user_group", "sys_user_grmember", "cmdb_ci",
                  "cmn_schedule_blackout", "sys_journal_field"):
        for row in result(client.get(f"/api/now/table/{table}", params={"sysparm_exclude_reference_link": "true"})):
            assert all(isinstance(v, str) for v in row.values()), (table, row)
            assert set(row) >= {"sys_id", "sys_created_on", "sys_updated_on", "sys_created_by", "sys_updated_by",
                                "sys_mod_count"}
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row["sys_created_on"])


def test_custom_fields_are_stored_and_queryable(custom):
    result(custom.post(INC, json={"u_ticket_ref": "ABC-1"}), 201)
    assert numbers(query(custom, INC, "u_ticket_ref=ABC-1")) == ["INC0000045"]


def test_a_field_the_instance_does_not_have_is_ignored_on_write(client, sim):
    """As an instance does: the write succeeds, the unknown field is not stored, and a condition on
    it is dropped (so it matches every record)."""
    created = result(client.post(INC, json={"short_description": "disk full", "u_ticket_ref": "ABC-1"}), 201)
    assert "u_ticket_ref" not in created and created["short_description"] == "disk full"
    stored = next(r for r in sim.records("incident") if r["sys_id"] == created["sys_id"])
    assert "u_ticket_ref" not in stored
    updated = result(client.patch(f"{INC}/{created['sys_id']}", json={"u_other": "x", "short_description": "y"}))
    assert "u_other" not in updated and updated["short_description"] == "y"
    assert len(query(client, INC, "u_ticket_ref=ABC-1")) == len(sim.records("incident"))


def test_custom_fields_name_tables_the_simulator_has():
    with pytest.raises(ValueError, match="custom_fields: no table 'u_things'"):
        Simulator(SimulatorOptions(custom_fields={"u_things": ("u_x",)}))


def test_a_field_blanked_by_an_acl_comes_back_empty_in_every_view(client, sim):
    """A field-level read ACL: the record is readable, the field is sent empty (dot-walks too)."""
    sim.blanked = lambda user, table, name: table == "change_request" and name in ("risk", "assigned_to.user_name",
                                                                                    "assigned_to")
    for display in ("false", "true", "all"):
        row, = query(client, CHG, "number=CHG0000001", sysparm_display_value=display,
                     sysparm_fields="number,risk,assigned_to,assigned_to.user_name")
        empty = {"display_value": "", "value": ""} if display == "all" else ""
        assert row["number"] in ("CHG0000001", {"display_value": "CHG0000001", "value": "CHG0000001"})
        assert row["risk"] == empty and row["assigned_to.user_name"] == empty
        assert all(v == "" for v in row["assigned_to"].values()) if isinstance(row["assigned_to"], dict) \
            else row["assigned_to"] == ""
    sim.blanked = None
    row, = query(client, CHG, "number=CHG0000001", sysparm_fields="risk,assigned_to.user_name")
    assert row["risk"] != "" and row["assigned_to.user_name"] == "alice"


def test_reference_accepts_a_display_value_like_an_instance(client):
    created = result(client.post(INC, json={"assigned_to": "Alice Engineer"}), 201)
    assert created["assigned_to"]["value"] == ALICE


# --------------------------------------------------------------------------- queries


def test_query_operators_over_http(client):
    assert numbers(query(client, CHG, "approval=approved^state!=3")) == ["CHG0000001", "CHG0000002"]
    assert numbers(query(client, CHG, "short_descriptionLIKEtls")) == ["CHG0000001"]
    assert numbers(query(client, CHG, "stateIN-1,-3")) == ["CHG0000001", "CHG0000003"]
    assert numbers(query(client, CHG, "stateNOT IN-1,-3")) == ["CHG0000002", "CHG0000004"]
    assert numbers(query(client, CHG, "u_jit_targetISNOTEMPTY")) == ["CHG0000001"]
    assert numbers(query(client, CHG, "close_codeISEMPTY^numberENDSWITH3")) == ["CHG0000003"]
    assert numbers(query(client, CHG, f"start_date<={fmt(T0)}^end_date>={fmt(T0)}^approval=approved")) == \
        ["CHG0000001"]
    assert numbers(query(client, CHG, f"start_dateBETWEEN{fmt(T0)}@{fmt(T0 + timedelta(days=2))}")) == \
        ["CHG0000002"]
    assert numbers(query(client, INC, "state=1^ORstate=6^NQnumber=INC0000042")) == \
        ["INC0000042", "INC0000043", "INC0000044"]
    assert numbers(query(client, CHG, f"assigned_to={ALICE}^numberSTARTSWITHCHG000000")) == \
        ["CHG0000001", "CHG0000002", "CHG0000003", "CHG0000004"]


def test_orderby_and_orderbydesc(client):
    assert numbers(query(client, CHG, "ORDERBYDESCnumber")) == ["CHG0000004", "CHG0000003", "CHG0000002",
                                                                "CHG0000001"]
    assert numbers(query(client, CHG, "ORDERBYstate")) == ["CHG0000003", "CHG0000002", "CHG0000001", "CHG0000004"]
    assert numbers(query(client, CHG, "ORDERBYapproval^ORDERBYDESCnumber")) == \
        ["CHG0000004", "CHG0000002", "CHG0000001", "CHG0000003"]


def test_unknown_field_in_query_is_ignored(client):
    assert len(query(client, CHG, "no_such_field=1")) == 4
    assert numbers(query(client, CHG, "no_such_field=1^state=-3")) == ["CHG0000003"]


def test_dot_walk_in_query_and_fields(client):
    rows = query(client, INC, "assigned_to.user_name=dave", sysparm_fields="number,assigned_to.user_name,"
                 "assigned_to.name,caller_id.email,no_such_field")
    assert rows == [
        {"number": "INC0000042", "assigned_to.user_name": "dave", "assigned_to.name": "Dave Oncall",
         "caller_id.email": "erin@example.com"},
        {"number": "INC0000044", "assigned_to.user_name": "dave", "assigned_to.name": "Dave Oncall",
         "caller_id.email": "carol@example.com"},
    ]
    inc43 = query(client, INC, "number=INC0000043", sysparm_fields="number,assigned_to.user_name")
    assert inc43 == [{"number": "INC0000043", "assigned_to.user_name": ""}]   # empty reference


def test_sysparm_fields_empty_means_all(client):
    everything = query(client, CHG, "number=CHG0000001", sysparm_fields="")
    assert {"number", "u_jit_role", "sys_id", "assigned_to"} <= set(everything[0])
    assert query(client, CHG, "number=CHG0000001", sysparm_fields=" number , state ") == \
        [{"number": "CHG0000001", "state": "-1"}]


# --------------------------------------------------------------------------- display values


def chg1(client: httpx.Client, **params: str) -> dict:
    return query(client, CHG, "number=CHG0000001", sysparm_fields="state,assigned_to,short_description",
                 **params)[0]


def test_display_value_false_is_raw(client, sim):
    link = f"{sim.base_url}/api/now/table/sys_user/{ALICE}"
    expected = {"state": "-1", "short_description": "Renew TLS certificate on web-prod-01",
                "assigned_to": {"link": link, "value": ALICE}}
    assert chg1(client) == expected
    assert chg1(client, sysparm_display_value="false") == expected
    assert chg1(client, sysparm_display_value="False") == expected
    assert chg1(client, sysparm_exclude_reference_link="true")["assigned_to"] == ALICE


def test_display_value_true_gives_labels_and_names(client, sim):
    link = f"{sim.base_url}/api/now/table/sys_user/{ALICE}"
    for value in ("true", "TRUE"):
        row = chg1(client, sysparm_display_value=value)
        assert row["state"] == "Implement"
        assert row["assigned_to"] == {"display_value": "Alice Engineer", "link": link}
    assert chg1(client, sysparm_display_value="true", sysparm_exclude_reference_link="True")["assigned_to"] == \
        "Alice Engineer"
    group = query(client, CHG, "number=CHG0000001", sysparm_fields="assignment_group,cmdb_ci,approval,type",
                  sysparm_display_value="true", sysparm_exclude_reference_link="true")[0]
    assert group == {"assignment_group": "Web Operations", "cmdb_ci": "web-prod-01", "approval": "Approved",
                     "type": "Normal"}


def test_display_value_all_gives_both(client, sim):
    link = f"{sim.base_url}/api/now/table/sys_user/{ALICE}"
    for value in ("all", "All"):
        row = chg1(client, sysparm_display_value=value)
        assert row["state"] == {"display_value": "Implement", "value": "-1"}
        assert row["assigned_to"] == {"display_value": "Alice Engineer", "value": ALICE, "link": link}
        assert row["short_description"] == {"display_value": "Renew TLS certificate on web-prod-01",
                                            "value": "Renew TLS certificate on web-prod-01"}
    assert chg1(client, sysparm_display_value="all", sysparm_exclude_reference_link="true")["assigned_to"] == \
        {"display_value": "Alice Engineer", "value": ALICE}
    empty = query(client, INC, "number=INC0000043", sysparm_fields="assigned_to", sysparm_display_value="all")
    assert empty == [{"assigned_to": {"display_value": "", "value": ""}}]
    assert query(client, INC, "number=INC0000043", sysparm_fields="assigned_to") == [{"assigned_to": ""}]


# --------------------------------------------------------------------------- paging


def parse_link(header: str) -> dict[str, str]:
    links = dict((rel, url) for url, rel in re.findall(r'<([^>]*)>;rel="(\w+)"', header))
    assert header == ",".join(f'<{links[rel]}>;rel="{rel}"' for rel in ("first", "prev", "next", "last")
                              if rel in links)
    return links


def offset_of(url: str) -> int:
    return int(parse_qs(urlsplit(url).query)["sysparm_offset"][0])


def test_limit_offset_paging_follows_link_next(client, sim):
    for i in range(23):
        sim.insert("cmdb_ci", {"name": f"host-{i:02d}"})
    expected = {r["sys_id"] for r in sim.records("cmdb_ci")}
    assert len(expected) == 25
    seen: list[str] = []
    url: str | None = "/api/now/table/cmdb_ci?sysparm_limit=7&sysparm_query=ORDERBYname"
    pages = 0
    while url:
        response = client.get(url)
        assert response.status_code == 200
        assert response.headers["X-Total-Count"] == "25"
        links = parse_link(response.headers["Link"])
        assert offset_of(links["first"]) == 0 and offset_of(links["last"]) == 21
        assert ("prev" in links) == (pages > 0)
        assert parse_qs(urlsplit(links["first"]).query)["sysparm_query"] == ["ORDERBYname"]
        seen += [r["sys_id"] for r in response.json()["result"]]
        url = links.get("next")
        pages += 1
    assert pages == 4
    assert len(seen) == len(set(seen)) == 25 and set(seen) == expected
    middle = client.get("/api/now/table/cmdb_ci", params={"sysparm_limit": 7, "sysparm_offset": 10})
    links = parse_link(middle.headers["Link"])
    assert (offset_of(links["prev"]), offset_of(links["next"]), offset_of(links["last"])) == (3, 17, 21)
    assert len(middle.json()["result"]) == 7


def test_suppress_pagination_header_keeps_total_count(client):
    response = client.get(CHG, params={"sysparm_limit": 2, "sysparm_suppress_pagination_header": "true"})
    assert "Link" not in response.headers and response.headers["X-Total-Count"] == "4"
    assert len(response.json()["result"]) == 2


def test_default_limit_is_10000(client, sim):
    for i in range(10_000):
        sim.insert("cmdb_ci", {"name": f"bulk-{i}"})
    response = client.get("/api/now/table/cmdb_ci", params={"sysparm_fields": "name"})
    assert response.headers["X-Total-Count"] == "10002"
    assert len(response.json()["result"]) == 10_000
    assert offset_of(parse_link(response.headers["Link"])["next"]) == 10_000


@pytest.mark.parametrize("params", [{"sysparm_limit": "0"}, {"sysparm_limit": "-1"}, {"sysparm_limit": "ten"},
                                    {"sysparm_offset": "-1"}])
def test_bad_limit_or_offset_400(client, params):
    response = client.get(CHG, params=params)
    assert response.status_code == 400 and response.json()["status"] == "failure"


# --------------------------------------------------------------------------- journal


def test_work_notes_and_comments_go_to_the_journal(client, sim, snow_clock):
    created = result(client.post(INC, json={"short_description": "j", "work_notes": "first note"}), 201)
    sys_id = created["sys_id"]
    assert created["work_notes"] == "" and created["comments"] == ""
    snow_clock.advance(minutes=1)
    patched = result(client.patch(f"{INC}/{sys_id}", json={"work_notes": "second note", "comments": "to caller"}))
    assert patched["work_notes"] == "" and patched["comments"] == ""
    assert patched["sys_mod_count"] == "1"              # a journal-only write is still an update
    result(client.put(f"{INC}/{sys_id}", json={"work_notes": ""}))      # empty: no entry
    rows = sim.journal(sys_id)
    assert [(r["element"], r["value"]) for r in rows] == [("work_notes", "first note"),
                                                          ("work_notes", "second note"), ("comments", "to caller")]
    assert all(r["name"] == "incident" and r["element_id"] == sys_id and r["sys_created_by"] == "admin"
               for r in rows)
    assert rows[0]["sys_created_on"] == fmt(T0) and rows[1]["sys_created_on"] == fmt(T0 + timedelta(minutes=1))
    over_http = query(client, "/api/now/table/sys_journal_field",
                      f"element_id={sys_id}^element=work_notes^ORDERBYsys_created_on", sysparm_fields="value")
    assert over_http == [{"value": "first note"}, {"value": "second note"}]
    assert all(r["work_notes"] == "" for r in sim.records("incident"))


# --------------------------------------------------------------------------- OAuth


def token(sim: Simulator, **form: str) -> httpx.Response:
    return httpx.post(f"{sim.base_url}/oauth_token.do", data=form, timeout=5)


def test_oauth_password_grant_then_bearer_and_refresh(sim, snow_clock):
    response = token(sim, grant_type="password", username="admin", password="admin", client_id="jit",
                     client_secret="jit-secret")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "refresh_token", "scope", "token_type", "expires_in"}
    assert (body["scope"], body["token_type"], body["expires_in"]) == ("useraccount", "Bearer", 1799)
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    assert httpx.get(f"{sim.base_url}{CHG}", headers=bearer).status_code == 200
    created = result(httpx.post(f"{sim.base_url}{INC}", headers=bearer, json={"work_notes": "via oauth"}), 201)
    assert created["sys_created_by"] == "admin" and sim.journal(created["sys_id"])[0]["sys_created_by"] == "admin"

    refreshed = token(sim, grant_type="refresh_token", refresh_token=body["refresh_token"], client_id="jit",
                      client_secret="jit-secret")
    assert refreshed.status_code == 200 and refreshed.json()["access_token"] != body["access_token"]
    new_bearer = {"Authorization": f"Bearer {refreshed.json()['access_token']}"}

    snow_clock.advance(seconds=1800)                    # the first token has expired
    expired = httpx.get(f"{sim.base_url}{CHG}", headers=bearer)
    assert expired.status_code == 401 and expired.json()["error"]["message"] == "User Not Authenticated"
    snow_clock.now = T0 + timedelta(seconds=1000)
    assert httpx.get(f"{sim.base_url}{CHG}", headers=new_bearer).status_code == 200
    assert httpx.get(f"{sim.base_url}{CHG}", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_oauth_client_credentials_in_basic_header(sim):
    response = httpx.post(f"{sim.base_url}/oauth_token.do", auth=("jit", "jit-secret"), timeout=5,
                          data={"grant_type": "password", "username": "admin", "password": "admin"})
    assert response.status_code == 200
    bearer = {"Authorization": f"Bearer {response.json()['access_token']}"}
    assert httpx.get(f"{sim.base_url}{CHG}", headers=bearer).status_code == 200


@pytest.mark.parametrize("form", [
    {"client_secret": "wrong"},
    {"client_id": "other"},
    {"password": "wrong"},
    {"username": "alice"},
    {"grant_type": "client_credentials"},
    {"grant_type": "refresh_token", "refresh_token": "unknown"},
])
def test_oauth_denied(sim, form):
    base = {"grant_type": "password", "username": "admin", "password": "admin", "client_id": "jit",
            "client_secret": "jit-secret"}
    response = token(sim, **{**base, **form})
    assert response.status_code == 401
    assert response.json() == {"error_description": "access_denied", "error": "server_error"}


# --------------------------------------------------------------------------- rate limiting


def test_rate_limit_429_then_recovery(make_sim):
    sim = make_sim(rate_limit=3, rate_window=0.5)
    with httpx.Client(base_url=sim.base_url, auth=("admin", "admin"), timeout=5) as c:
        assert [c.get(CHG).status_code for _ in range(3)] == [200, 200, 200]
        limited = c.get(CHG)
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) >= 1
        assert limited.headers["X-RateLimit-Limit"] == "3" and limited.headers["X-RateLimit-Remaining"] == "0"
        assert abs(int(limited.headers["X-RateLimit-Reset"]) - time.time()) <= 2
        assert limited.json()["error"]["message"] == "Rate limit exceeded"
        assert limited.json()["status"] == "failure"
        assert sim.stats["429"] == 1
        assert c.get("/sim/admin/stats").status_code == 200      # admin is not rate limited
        time.sleep(0.55)
        assert c.get(CHG).status_code == 200


def test_every_answer_under_a_rate_limit_says_what_is_left(make_sim):
    sim = make_sim(rate_limit=3, rate_window=3600)  # per hour, as an instance's rate limit rules count
    with httpx.Client(base_url=sim.base_url, auth=("admin", "admin"), timeout=5) as c:
        answers = [c.get(CHG), c.post(INC, json={"short_description": "x"}), c.get(f"{CHG}/nosuchrecord")]
        assert [a.status_code for a in answers] == [200, 201, 404]
        assert [a.headers["X-RateLimit-Remaining"] for a in answers] == ["2", "1", "0"]
        assert all(a.headers["X-RateLimit-Limit"] == "3" for a in answers)
        assert all(3590 <= int(a.headers["X-RateLimit-Reset"]) - time.time() <= 3601 for a in answers)
        denied = c.get(CHG)
        assert denied.status_code == 429 and 3590 <= int(denied.headers["Retry-After"]) <= 3600
        assert denied.headers["X-RateLimit-Remaining"] == "0"
    with httpx.Client(base_url=make_sim().base_url, auth=("admin", "admin"), timeout=5) as c:
        assert "X-RateLimit-Limit" not in c.get(CHG).headers  # no rule, no headers


# --------------------------------------------------------------------------- TLS


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (IP SAN), self-signed, and its key, as PEM files."""
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "snow-sim test")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "sim.crt", directory / "sim.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_the_simulator_serves_https_to_a_client_that_requires_it(make_sim, tmp_path, monkeypatch):
    """With a certificate the simulator answers only TLS: a client that trusts the certificate reads
    (the product's own client through requests' ``REQUESTS_CA_BUNDLE``), one that does not is refused."""
    from integrations.servicenow.client import Credentials, ServiceNowClient
    from integrations.servicenow.errors import ServiceNowError
    from integrations.servicenow.tickets import Tickets
    cert, key = _self_signed(tmp_path)
    sim = make_sim(tls_cert=cert, tls_key=key)
    assert sim.base_url.startswith("https://127.0.0.1:")
    with httpx.Client(base_url=sim.base_url, auth=("admin", "admin"), timeout=5, verify=ssl.create_default_context(cafile=str(cert))) as c:
        assert numbers(query(c, CHG, "number=CHG0000001")) == ["CHG0000001"]
        link = c.get(CHG, params={"sysparm_limit": 1}).headers["Link"]
        assert link.startswith(f"<{sim.base_url}/")  # links name the https address
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{sim.base_url}{CHG}", auth=("admin", "admin"), timeout=5)
    plain = http.client.HTTPConnection("127.0.0.1", int(sim.base_url.rsplit(":", 1)[1]), timeout=5)
    with pytest.raises((http.client.HTTPException, ConnectionError)):  # plain http is not answered
        plain.request("GET", CHG)
        plain.getresponse().read()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    client = ServiceNowClient(sim.base_url, Credentials("admin", "admin"), retries=0)
    try:
        assert Tickets(client).find("CHG0000001").number == "CHG0000001"
    finally:
        client.close()
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    client = ServiceNowClient(sim.base_url, Credentials("admin", "admin"), retries=0)
    try:
        with pytest.raises(ServiceNowError):
            Tickets(client).find("CHG0000001")
    finally:
        client.close()


def test_a_certificate_without_its_key_is_refused_at_start(tmp_path):
    cert, _ = _self_signed(tmp_path)
    with pytest.raises(ValueError, match="tls_cert and tls_key go together"):
        Simulator(SimulatorOptions(tls_cert=cert))


# --------------------------------------------------------------------------- faults


def test_fail_next_gives_500_then_normal(client, sim):
    sim.faults.fail_next = 2
    for _ in range(2):
        response = client.get(CHG)
        assert response.status_code == 500
        assert response.json() == {"error": {"message": "Internal Server Error",
                                             "detail": "Simulated failure (fail_next)"}, "status": "failure"}
    assert client.get(CHG).status_code == 200
    assert sim.stats["500"] == 2 and sim.stats["GET /api/now/table/change_request"] == 3


def test_drop_next_closes_without_response(client, sim):
    sim.faults.drop_next = 1
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        client.post(INC, json={"short_description": "never"})
    assert not any(r["short_description"] == "never" for r in sim.records("incident"))
    assert client.get(CHG).status_code == 200
    assert sim.stats["dropped"] == 1


def test_fail_after_write_applies_the_write_then_drops(client, sim):
    sim.faults.fail_after_write_next = 2
    assert client.get(CHG).status_code == 200          # reads do not consume it
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        client.post(INC, json={"short_description": "applied", "work_notes": "note written"})
    applied = [r for r in sim.records("incident") if r["short_description"] == "applied"]
    assert len(applied) == 1 and [j["value"] for j in sim.journal(applied[0]["sys_id"])] == ["note written"]
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        client.patch(f"{INC}/{applied[0]['sys_id']}", json={"state": "2"})
    assert sim.records("incident")[-1]["state"] == "2"
    assert result(client.patch(f"{INC}/{applied[0]['sys_id']}", json={"state": "3"}))["state"] == "3"
    assert sim.stats["dropped"] == 2


def test_latency_and_timeout(client, sim):
    sim.faults.latency_ms = 300
    started = time.monotonic()
    assert client.get(CHG).status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert client.get("/sim/admin/faults").status_code == 200        # admin is not delayed
    assert time.monotonic() - started < 0.3
    sim.faults.latency_ms = 0
    sim.faults.timeout_s = 1.0
    sim.faults.timeout_next = 1
    with pytest.raises(httpx.ReadTimeout):
        client.get(CHG, timeout=0.2)
    assert client.get(CHG).status_code == 200


def test_down_drops_everything_but_admin_and_oauth(client, sim):
    sim.faults.down = True
    for _ in range(2):
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            client.get(CHG)
    assert client.get("/sim/admin/faults").json()["down"] is True
    assert token(sim, grant_type="password", username="admin", password="admin", client_id="jit",
                 client_secret="jit-secret").status_code == 200
    assert client.post("/sim/admin/faults", json={"down": False}).status_code == 200
    assert client.get(CHG).status_code == 200


def test_admin_endpoint_sets_reads_and_resets(client, sim):
    assert client.get("/sim/admin/faults").json() == {
        "latency_ms": 0, "fail_next": 0, "drop_next": 0, "timeout_next": 0, "timeout_s": 30.0, "down": False,
        "fail_after_write_next": 0}
    response = client.post("/sim/admin/faults", json={"fail_next": 1, "timeout_s": 2.5})
    assert response.status_code == 200 and response.json()["fail_next"] == 1
    assert sim.faults.fail_next == 1 and sim.faults.timeout_s == 2.5
    assert client.get(CHG).status_code == 500
    assert client.get(CHG).status_code == 200
    assert client.get("/sim/admin/stats").json() == {"GET /api/now/table/change_request": 2, "500": 1}
    for bad in ({"nope": 1}, {"fail_next": -1}, {"down": "yes"}, {"drop_next": "2"}, {"fail_next": 1.5}):
        assert client.post("/sim/admin/faults", json=bad).status_code == 400
    assert client.post("/sim/admin/faults", content=b"{bad").status_code == 400
    client.post("/sim/admin/faults", json={"drop_next": 3, "down": True})
    assert client.post("/sim/admin/reset").status_code == 200
    assert sim.faults.snapshot()["drop_next"] == 0 and not sim.faults.down and sim.faults.timeout_s == 30.0
    assert client.get("/sim/admin/stats").json() == {}
    assert client.get("/api/now/v2/table/incident").status_code == 200
    assert sim.stats == {"GET /api/now/table/incident": 1}


def test_latency_from_options(make_sim):
    sim = make_sim(latency_ms=150)
    assert sim.faults.latency_ms == 150


# --------------------------------------------------------------------------- persistence


def test_data_file_survives_a_restart(make_sim, tmp_path: Path):
    data_file = tmp_path / "snow" / "data.json"
    first = make_sim(data_file=data_file)
    assert data_file.exists()                            # the seed was saved
    with httpx.Client(base_url=first.base_url, auth=("admin", "admin"), timeout=5) as c:
        created = result(c.post(CHG, json={"short_description": "persisted", "work_notes": "kept"}), 201)
        result(c.patch(f"{CHG}/{seed.sys_id('change_request', 'CHG0000003')}", json={"approval": "approved"}))
        assert c.delete(f"{INC}/{seed.sys_id('incident', 'INC0000044')}").status_code == 204
    first.stop()
    saved = json.loads(data_file.read_text())
    assert "_counters" in saved and saved["_counters"]["change_request"] == 5
    assert [p.name for p in data_file.parent.iterdir()] == ["data.json"]   # no temp files left behind

    second = make_sim(data_file=data_file, seed="demo")   # the file wins; the seed is not loaded twice
    with httpx.Client(base_url=second.base_url, auth=("admin", "admin"), timeout=5) as c:
        assert numbers(result(c.get(CHG))) == ["CHG0000001", "CHG0000002", "CHG0000003", "CHG0000004",
                                                "CHG0000005"]
        assert result(c.get(f"{CHG}/{created['sys_id']}"))["short_description"] == "persisted"
        assert query(c, CHG, "number=CHG0000003")[0]["approval"] == "approved"
        assert numbers(result(c.get(INC))) == ["INC0000042", "INC0000043"]
        assert result(c.post(CHG, json={}), 201)["number"] == "CHG0000006"
    assert [j["value"] for j in second.journal(created["sys_id"])] == ["kept"]


# --------------------------------------------------------------------------- demo seed


def test_demo_seed(client, sim):
    chg = query(client, CHG, "number=CHG0000001", sysparm_exclude_reference_link="true")[0]
    assert chg["type"] == "normal" and chg["approval"] == "approved" and chg["state"] == "-1"
    assert chg["start_date"] == fmt(T0 - timedelta(hours=1)) and chg["end_date"] == fmt(T0 + timedelta(hours=4))
    assert (chg["assigned_to"], chg["assignment_group"]) == (ALICE, WEB_OPS)
    assert chg["cmdb_ci"] == seed.sys_id("cmdb_ci", "web-prod-01")
    assert chg["short_description"] == "Renew TLS certificate on web-prod-01"
    assert (chg["u_jit_target"], chg["u_jit_role"]) == ("web-prod-01", "service-admin")
    assert chg["work_notes"] == "" and sim.journal(chg["sys_id"]) == []
    assert result(client.get("/api/now/table/sys_journal_field")) == []

    changes = {r["number"]: r for r in result(client.get(CHG, params={"sysparm_exclude_reference_link": "true"}))}
    assert (changes["CHG0000002"]["approval"], changes["CHG0000002"]["state"]) == ("approved", "-2")
    assert changes["CHG0000002"]["start_date"] == fmt(T0 + timedelta(days=1))
    assert changes["CHG0000002"]["end_date"] == fmt(T0 + timedelta(days=1, hours=4))
    assert changes["CHG0000002"]["u_jit_target"] == "" and changes["CHG0000002"]["cmdb_ci"] == chg["cmdb_ci"]
    assert (changes["CHG0000003"]["approval"], changes["CHG0000003"]["state"]) == ("requested", "-3")
    assert changes["CHG0000003"]["start_date"] == chg["start_date"]
    assert (changes["CHG0000004"]["state"], changes["CHG0000004"]["close_code"]) == ("3", "successful")
    assert changes["CHG0000004"]["end_date"] == fmt(T0 - timedelta(days=2))
    assert all(r["assigned_to"] == ALICE for r in changes.values())

    incidents = query(client, INC, "ORDERBYnumber", sysparm_display_value="true",
                      sysparm_exclude_reference_link="true", sysparm_fields="number,state,assigned_to")
    assert incidents == [{"number": "INC0000042", "state": "In Progress", "assigned_to": "Dave Oncall"},
                         {"number": "INC0000043", "state": "New", "assigned_to": ""},
                         {"number": "INC0000044", "state": "Resolved", "assigned_to": "Dave Oncall"}]
    assert query(client, INC, "number=INC0000042")[0]["short_description"] == "nginx down on web-prod-01"

    users = {r["user_name"]: r for r in result(client.get("/api/now/table/sys_user"))}
    assert set(users) == {"alice", "bob", "carol", "dave", "erin"} and users["alice"]["name"] == "Alice Engineer"
    members = query(client, "/api/now/table/sys_user_grmember", "group.name=Web Operations",
                    sysparm_fields="user.user_name")
    assert sorted(m["user.user_name"] for m in members) == ["alice", "dave"]
    cab = query(client, "/api/now/table/sys_user_grmember", "group.name=Change Advisory Board",
                sysparm_fields="user.user_name")
    assert sorted(m["user.user_name"] for m in cab) == ["bob", "carol"]
    assert sorted(r["name"] for r in result(client.get("/api/now/table/cmdb_ci"))) == ["web-dev-01", "web-prod-01"]
    blackout = result(client.get("/api/now/table/cmn_schedule_blackout"))
    assert [(b["name"], b["time_zone"], b["cmdb_ci"]) for b in blackout] == [("Year-end freeze", "UTC", "")]
    spans = result(client.get("/api/now/table/cmn_schedule_span", params={"sysparm_exclude_reference_link": "true"}))
    assert [(s["schedule"], s["start_date_time"], s["end_date_time"], s["repeat_type"]) for s in spans] == \
        [(blackout[0]["sys_id"], (T0 + timedelta(days=10)).strftime("%Y%m%dT%H%M%S"),
          (T0 + timedelta(days=20)).strftime("%Y%m%dT%H%M%S"), "")]


def test_direct_helpers(make_sim):
    sim = make_sim(seed=None)
    assert sim.records("change_request") == []
    stored = sim.insert("change_request", {"short_description": "direct", "work_notes": "n"})
    assert stored["number"] == "CHG0000001" and stored["sys_created_by"] == "system"
    assert sim.records("change_request") == [stored]
    stored["short_description"] = "changed copy"
    assert sim.records("change_request")[0]["short_description"] == "direct"   # copies, not the store
    assert [j["value"] for j in sim.journal(stored["sys_id"])] == ["n"]
    with pytest.raises(ValueError):
        sim.insert("nope", {})


def test_jit_snow_sim_serves_https_from_the_command_line(tmp_path):
    import subprocess
    import sys
    cert, key = _self_signed(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "app", "snow-sim", "--seed", "demo", "--port", "0",
                             "--tls-cert", str(cert), "--tls-key", str(key)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "on https://127.0.0.1:" in line, line + proc.stderr.read()
        url = line.split(" on ", 1)[1].split()[0]
        context = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=url, auth=("admin", "admin"), timeout=5, verify=context) as c:
            assert numbers(query(c, CHG, "number=CHG0000001")) == ["CHG0000001"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("args,says", [
    (["--tls-cert", "CERT"], "--tls-cert/--tls-key: tls_cert and tls_key go together"),
    (["--tls-cert", "CERT", "--tls-key", "CERT"], "--tls-cert/--tls-key: not a certificate and its key"),
    (["--tls-cert", "CERT", "--tls-key", "MISSING"], "--tls-cert/--tls-key: cannot read"),
])
def test_jit_snow_sim_refuses_a_bad_certificate_naming_the_option(tmp_path, capsys, args, says):
    from app.cli.main import main
    cert, _ = _self_signed(tmp_path)
    argv = [str(cert) if a == "CERT" else str(tmp_path / "missing.key") if a == "MISSING" else a for a in args]
    assert main(["snow-sim", "--port", "0", *argv]) != 0
    assert says in capsys.readouterr().err
