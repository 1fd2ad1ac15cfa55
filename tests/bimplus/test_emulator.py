"""Contract tests of the Bimplus emulator over a real socket: discovery, both logins and their
errors, the BimPlus scheme, teams, projects, topology, 401/403/404/429, faults and the admin API."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING

import aiohttp
import orjson
import pytest

from tests.support.emulators import BIMPLUS_TOKEN_PATH, LEGACY_BODY
from twin_emulators.bimplus import BimplusOptions
from twin_emulators.bimplus_state import DEMO_TEAM, DEMO_USER

if TYPE_CHECKING:
    from tests.support.emulators import Bimplus, StartBimplus

pytestmark = pytest.mark.anyio


async def test_discovery_points_at_the_realm_of_the_same_server(bimplus: Bimplus) -> None:
    reply = await bimplus.request("GET", "/v2/.well-known/openid-configuration")
    assert reply.status == 200
    doc = reply.body
    assert doc["issuer"] == f"{bimplus.url}/realms/bimplus"
    assert doc["token_endpoint"] == f"{bimplus.url}{BIMPLUS_TOKEN_PATH}"
    assert doc["jwks_uri"].startswith(doc["issuer"])
    assert doc["authorization_endpoint"].endswith("/protocol/openid-connect/auth")
    realm = await bimplus.request("GET", "/realms/bimplus/.well-known/openid-configuration")
    assert realm.body == doc


async def test_client_credentials_give_a_jwt_shaped_bearer_token(bimplus: Bimplus) -> None:
    reply = await bimplus.request(
        "POST", BIMPLUS_TOKEN_PATH,
        data={"grant_type": "client_credentials", "client_id": "demo-client",
              "client_secret": "demo-secret"},
    )  # fmt: skip
    assert reply.status == 200
    assert reply.body["token_type"] == "Bearer"
    assert reply.body["expires_in"] == 300
    _, claims, signature = reply.body["access_token"].split(".")
    decoded = orjson.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    assert decoded["azp"] == "demo-client"
    assert decoded["iss"] == f"{bimplus.url}/realms/bimplus"
    assert signature


@pytest.mark.parametrize(
    ("form", "status", "error"),
    [
        ({"client_secret": "wrong"}, 401, "invalid_client"),
        ({"client_id": "nobody"}, 401, "invalid_client"),
        ({"grant_type": None}, 400, "invalid_request"),
        ({"grant_type": "implicit"}, 400, "unsupported_grant_type"),
        ({"client_id": "bimplus-web", "client_secret": None}, 400, "unauthorized_client"),
        ({"grant_type": "password", "username": DEMO_USER, "password": "nope"}, 401,
         "invalid_grant"),
    ],
)  # fmt: skip
async def test_token_errors_are_keycloaks(
    bimplus: Bimplus, form: dict[str, str | None], status: int, error: str
) -> None:
    base = {"grant_type": "client_credentials", "client_id": "demo-client",
            "client_secret": "demo-secret"}  # fmt: skip
    sent = {k: v for k, v in {**base, **form}.items() if v is not None}
    reply = await bimplus.request("POST", BIMPLUS_TOKEN_PATH, data=sent)
    assert reply.status == status
    assert reply.body["error"] == error
    assert reply.body["error_description"]


async def test_password_grant_and_the_public_client(bimplus: Bimplus) -> None:
    token = await bimplus.token(
        grant_type="password", client_id="bimplus-web", client_secret=None,
        username=DEMO_USER, password="demo-password",
    )  # fmt: skip
    teams = await bimplus.api("/teams", token)
    assert teams.status == 200


async def test_legacy_authorize_gives_a_bimplus_token_for_two_hours(bimplus: Bimplus) -> None:
    reply = await bimplus.request("POST", "/v2/authorize", json=LEGACY_BODY)
    assert reply.status == 200
    assert reply.body["token_type"] == "BimPlus"
    assert reply.body["expires_in"] == 7200
    assert reply.body["client_id"]
    token = reply.body["access_token"]
    assert (await bimplus.api("/teams", token, scheme="BimPlus")).status == 200
    assert (await bimplus.api("/teams", token, scheme="Bearer")).status == 401
    remember = await bimplus.request(
        "POST", "/v2/authorize", json={**LEGACY_BODY, "remember_me": True}
    )
    assert remember.body["expires_in"] == 28 * 24 * 3600


async def test_legacy_client_id_regenerates_that_clients_token(bimplus: Bimplus) -> None:
    first = (await bimplus.request("POST", "/v2/authorize", json=LEGACY_BODY)).body
    again = await bimplus.request(
        "POST", "/v2/authorize", json={**LEGACY_BODY, "client_id": first["client_id"]}
    )
    assert again.body["client_id"] == first["client_id"]
    assert (await bimplus.api("/teams", first["access_token"], "BimPlus")).status == 401
    assert (await bimplus.api("/teams", again.body["access_token"], "BimPlus")).status == 200


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"application_id": None}, 400, "invalid_request"),
        ({"password": None}, 400, "invalid_request"),
        ({"application_id": "0000"}, 400, "invalid_client"),
        ({"password": "wrong"}, 401, "invalid_grant"),
    ],
)
async def test_legacy_authorize_errors(
    bimplus: Bimplus, body: dict[str, str | None], status: int, error: str
) -> None:
    sent = {k: v for k, v in {**LEGACY_BODY, **body}.items() if v is not None}
    reply = await bimplus.request("POST", "/v2/authorize", json=sent)
    assert (reply.status, reply.body["error"]) == (status, error)


async def test_teams_projects_topology_and_objects(bimplus: Bimplus) -> None:
    token = await bimplus.token()
    teams = (await bimplus.api("/teams", token)).body
    assert [t["slug"] for t in teams] == [DEMO_TEAM]
    projects = (await bimplus.api(f"/{DEMO_TEAM}/projects", token)).body
    assert len(projects) == 2
    project = projects[0]
    assert {"id", "name", "shortDescr", "created", "changed", "disciplines"} <= set(project)
    assert project["changed"] is None
    tree = (await bimplus.api(f"/{DEMO_TEAM}/projects/{project['id']}/topology", token)).body
    assert (tree["id"], tree["type"], tree["parent"]) == (project["id"], "Project", None)
    site = tree["children"][0]
    building = site["children"][0]
    storey = building["children"][0]
    assert [site["type"], building["type"], storey["type"]] == [
        "IfcSite", "IfcBuilding", "IfcBuildingStorey",
    ]  # fmt: skip
    assert storey["parent"] == building["id"]
    assert [c["type"] for c in storey["children"]] == ["IfcSpace", "IfcSpace", "IfcWall"]
    obj = (await bimplus.api(f"/{DEMO_TEAM}/objects/{storey['id']}", token)).body
    assert obj["parent"] == building["id"]
    assert obj["attributes"] == {"elevation": 0.0}
    assert len(obj["children"]) == 3


async def test_unknown_team_is_404_and_a_foreign_team_403(bimplus: Bimplus) -> None:
    token = await bimplus.token()
    await bimplus.admin("POST", "/teams", slug="other", name="Other", member=False)
    assert (await bimplus.api("/nosuch/projects", token)).status == 404
    assert (await bimplus.api("/other/projects", token)).status == 403
    missing = await bimplus.api(f"/{DEMO_TEAM}/projects/00000000-0000/topology", token)
    assert missing.status == 404
    assert [t["slug"] for t in (await bimplus.api("/teams", token)).body] == [DEMO_TEAM]


async def test_401_for_missing_expired_or_unknown_tokens(bimplus: Bimplus) -> None:
    token = await bimplus.token()
    assert (await bimplus.api("/teams", None)).status == 401
    assert (await bimplus.api("/teams", "garbage")).status == 401
    assert (await bimplus.api("/teams", token, scheme="BimPlus")).status == 401
    bimplus.clock.advance(300)
    expired = await bimplus.api("/teams", token)
    assert expired.status == 401
    assert "WWW-Authenticate" in expired.headers


async def test_rate_limit_answers_429_with_retry_after(start_bimplus: StartBimplus) -> None:
    bimplus = await start_bimplus(BimplusOptions(rate_limit_requests=3, rate_limit_seconds=10))
    token = await bimplus.token()
    statuses = [(await bimplus.api("/teams", token)).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    limited = await bimplus.api("/teams", token)
    assert limited.headers["Retry-After"] == "10"
    bimplus.clock.advance(10)
    assert (await bimplus.api("/teams", token)).status == 200


async def test_fault_profiles(bimplus: Bimplus) -> None:
    token = await bimplus.token()
    await bimplus.admin("POST", "/faults", profile="errors", rate=1.0, seed=3)
    assert (await bimplus.api("/teams", token)).status in (500, 502, 503)
    await bimplus.admin("POST", "/faults", profile="429-storm", retry_after_seconds=7)
    storm = await bimplus.api("/teams", token)
    assert (storm.status, storm.headers["Retry-After"]) == (429, "7")
    await bimplus.admin("POST", "/faults", profile="token-outage")
    for path in (BIMPLUS_TOKEN_PATH, "/v2/.well-known/openid-configuration", "/v2/authorize"):
        outage = await bimplus.request("POST" if "well-known" not in path else "GET", path)
        assert (outage.status, outage.body["error"]) == (503, "temporarily_unavailable")
    assert (await bimplus.api("/teams", token)).status == 200  # the API itself still works
    await bimplus.admin("POST", "/faults", profile="revoked-tokens")
    assert (await bimplus.api("/teams", token)).status == 401
    assert (await bimplus.api("/teams", await bimplus.token())).status == 200
    await bimplus.admin("POST", "/faults", profile="resets", rate=1.0)
    with pytest.raises(aiohttp.ClientError):
        await bimplus.api("/teams", token)
    await bimplus.admin("POST", "/faults", profile="latency", min_latency_seconds=0.0,
                        max_latency_seconds=0.01)  # fmt: skip
    assert (await bimplus.api("/teams", await bimplus.token())).status == 200
    faults = [r["fault"] for r in await bimplus.requests() if r["fault"]]
    assert {"error", "throttle", "token-outage", "reset", "delay"} <= set(faults)


async def test_faults_are_reproducible_from_the_seed(start_bimplus: StartBimplus) -> None:
    runs = []
    for _ in range(2):
        bimplus = await start_bimplus(BimplusOptions(fault_profile="errors", seed=11))
        token = await bimplus.token()
        runs.append([(await bimplus.api("/teams", token)).status for _ in range(20)])
    assert runs[0] == runs[1]
    assert set(runs[0]) != {200}


async def test_admin_changes_data_and_bumps_changed(bimplus: Bimplus) -> None:
    token = await bimplus.token()
    created = await bimplus.admin("POST", "/projects", name="New", address="Main St 1, Berlin")
    pid = created["id"]
    assert created["changed"] is None
    node = await bimplus.admin("POST", f"/projects/{pid}/nodes", type="IfcBuilding", name="B")
    assert node["project"]["changed"] is not None
    first = node["project"]["changed"]
    renamed = await bimplus.admin("PATCH", f"/projects/{pid}/nodes/{node['id']}", name="B2")
    assert renamed["project"]["changed"] > first
    quiet = await bimplus.admin(
        "PATCH", f"/projects/{pid}/nodes/{node['id']}", name="B3", bump=False
    )
    assert quiet["project"]["changed"] == renamed["project"]["changed"]
    tree = (await bimplus.api(f"/{DEMO_TEAM}/projects/{pid}/topology", token)).body
    assert [c["name"] for c in tree["children"]] == ["B3"]
    await bimplus.admin("DELETE", f"/projects/{pid}/nodes/{node['id']}")
    await bimplus.admin("DELETE", f"/projects/{pid}")
    ids = [p["id"] for p in (await bimplus.api(f"/{DEMO_TEAM}/projects", token)).body]
    assert pid not in ids
    bad = await bimplus.request("POST", "/_emulator/projects", json={"team": "nope", "name": "x"})
    assert bad.status == 400
    unknown = await bimplus.request("PATCH", "/_emulator/projects/nope", json={})
    assert unknown.status == 404


async def test_request_log_names_the_caller(bimplus: Bimplus) -> None:
    await bimplus.api("/teams", await bimplus.token())
    log = await bimplus.requests()
    assert [(r["method"], r["path"], r["status"]) for r in log] == [
        ("POST", BIMPLUS_TOKEN_PATH, 200), ("GET", "/v2/teams", 200),
    ]  # fmt: skip
    assert log[1]["client_id"] == "service-account-demo-client"
    await bimplus.admin("POST", "/reset")
    assert await bimplus.requests() == []
