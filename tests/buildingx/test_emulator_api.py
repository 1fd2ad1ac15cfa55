"""The Building X emulator's contract: Auth0 tokens, locations, point values, errors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from tests.support.emulators import LOCATIONS, location, point_values, values_path
from twin_emulators.buildingx import MEDIA_TYPE, BuildingXOptions
from twin_emulators.buildingx_state import MachineUser

if TYPE_CHECKING:
    from tests.support.emulators import BuildingX, StartBuildingX

pytestmark = pytest.mark.anyio

ROOMY = BuildingXOptions(rate_limit_requests=100_000)


# -- token endpoint ---------------------------------------------------------------------------


async def test_a_token_is_issued_for_the_json_client_credentials_body(bx: BuildingX) -> None:
    reply = await bx.token_reply()

    assert reply.status == 200
    assert reply.body["token_type"] == "Bearer"
    assert reply.body["expires_in"] == 86400
    assert reply.body["access_token"]
    assert reply.headers["X-Request-Id"]


@pytest.mark.parametrize(
    ("overrides", "status", "error"),
    [
        ({"client_secret": "wrong"}, 401, "access_denied"),
        ({"client_id": "nobody"}, 401, "invalid_client"),
        ({"audience": "https://elsewhere.example"}, 403, "access_denied"),
        ({"grant_type": "password"}, 403, "unauthorized_client"),
        ({"grant_type": None}, 400, "invalid_request"),
        ({"audience": None}, 400, "invalid_request"),
    ],
)
async def test_token_errors_are_auth0s(
    bx: BuildingX, overrides: dict[str, str | None], status: int, error: str
) -> None:
    reply = await bx.token_reply(**overrides)

    assert reply.status == status
    assert reply.body["error"] == error
    assert reply.body["error_description"]
    assert "wrong" not in str(reply.body)


async def test_a_wrong_audience_is_named(bx: BuildingX) -> None:
    reply = await bx.token_reply(audience="https://elsewhere.example")

    assert reply.body["error_description"] == "Service not found: https://elsewhere.example"


async def test_api_refuses_missing_unknown_and_expired_tokens(bx: BuildingX) -> None:
    token = await bx.token()
    for used in (None, "not-a-token"):
        reply = await bx.api("GET", LOCATIONS, used)
        assert reply.status == 401
        assert reply.body["errors"][0]["status"] == "401"
    assert (await bx.api("GET", LOCATIONS, token)).status == 200
    bx.clock.advance(86400)
    assert (await bx.api("GET", LOCATIONS, token)).status == 401


# -- structure API ----------------------------------------------------------------------------


async def test_a_location_is_created_read_patched_and_deleted(bx: BuildingX) -> None:
    token = await bx.token()
    campus = await bx.api("POST", LOCATIONS, token, json=location("HQ", "Campus", externalId="S-1"))
    assert campus.status == 201
    campus_id = campus.body["data"]["id"]
    assert campus.headers["Location"].endswith(campus_id)
    assert campus.headers["Content-Type"].startswith(MEDIA_TYPE)
    body = location("Tower", externalId="B-1")
    body["data"]["relationships"] = {
        "isBuildingOf": {"data": {"type": "Location", "id": campus_id}}
    }
    building = await bx.api("POST", LOCATIONS, token, json=body)
    assert building.status == 201, building.body
    building_id = building.body["data"]["id"]

    got = await bx.api("GET", f"{LOCATIONS}/{building_id}", token)
    assert got.body["data"]["attributes"]["label"] == "Tower"
    assert got.body["data"]["relationships"]["isBuildingOf"]["data"]["id"] == campus_id
    patch = {"data": {"type": "Location", "id": building_id, "attributes": {"label": "T2"}}}
    patched = await bx.api("PATCH", f"{LOCATIONS}/{building_id}", token, json=patch)
    assert patched.status == 200
    assert patched.body["data"]["attributes"] == {
        "label": "T2", "type": "Building", "externalId": "B-1"
    }  # fmt: skip

    assert (await bx.api("DELETE", f"{LOCATIONS}/{campus_id}", token)).status == 204
    assert (await bx.api("GET", f"{LOCATIONS}/{campus_id}", token)).status == 404
    orphan = await bx.api("GET", f"{LOCATIONS}/{building_id}", token)
    assert orphan.body["data"]["relationships"]["isBuildingOf"]["data"] is None


async def test_writes_need_the_json_api_media_type(bx: BuildingX) -> None:
    token = await bx.token()
    for media_type in ("application/json", None):
        reply = await bx.api(
            "POST", LOCATIONS, token, json=location("X", externalId="x"), media_type=media_type
        )
        assert reply.status == 415
        assert reply.body["errors"][0]["code"] == "unsupported-media-type"
    assert (await bx.admin("locations"))["count"] == 0


async def test_validation_errors_are_json_api_error_objects_with_pointers(bx: BuildingX) -> None:
    token = await bx.token()
    reply = await bx.api("POST", LOCATIONS, token, json=location("x" * 300, "Spaceship"))

    assert reply.status == 400
    errors = reply.body["errors"]
    assert {e["source"]["pointer"] for e in errors} == {
        "/data/attributes/label", "/data/attributes/type"
    }  # fmt: skip
    assert all(e["status"] == "400" and e["title"] and e["detail"] for e in errors)
    assert all(e["id"] == reply.headers["X-Request-Id"] for e in errors)


async def test_missing_label_unknown_attribute_and_bad_parent(bx: BuildingX) -> None:
    token = await bx.token()
    body: dict[str, Any] = {
        "data": {
            "type": "Location",
            "attributes": {"type": "Floor", "colour": "red"},
            "relationships": {"isPartOf": {"data": {"type": "Location", "id": "loc-404"}}},
        }
    }
    reply = await bx.api("POST", LOCATIONS, token, json=body)

    assert reply.status == 400
    pointers = {e["source"]["pointer"] for e in reply.body["errors"]}
    assert pointers == {"/data/attributes/label", "/data/attributes/colour"}
    body["data"]["attributes"] = {"type": "Floor", "label": "L1"}
    orphan = await bx.api("POST", LOCATIONS, token, json=body)
    assert orphan.status == 400
    assert orphan.body["errors"][0]["source"]["pointer"] == "/data/relationships/isPartOf/data/id"


async def test_external_ids_are_unique_per_partition(bx: BuildingX) -> None:
    token = await bx.token()
    assert (
        await bx.api("POST", LOCATIONS, token, json=location("A", externalId="E"))
    ).status == 201
    again = await bx.api("POST", LOCATIONS, token, json=location("B", externalId="E"))

    assert again.status == 409
    assert again.body["errors"][0]["source"]["pointer"] == "/data/attributes/externalId"


async def test_list_filters_by_external_id_and_type_and_pages_with_links(
    start_bx: StartBuildingX,
) -> None:
    bx = await start_bx(ROOMY)
    token = await bx.token()
    for i in range(25):
        kind = "Floor" if i % 5 == 0 else "Room"
        reply = await bx.api(
            "POST", LOCATIONS, token, json=location(f"L{i}", kind, externalId=f"E{i}")
        )
        assert reply.status == 201

    one = await bx.api("GET", LOCATIONS, token, params={"filter[externalId]": "E7"})
    assert [x["attributes"]["externalId"] for x in one.body["data"]] == ["E7"]
    assert "next" not in one.body["links"]
    floors = await bx.api("GET", LOCATIONS, token, params={"filter[type]": "Floor"})
    assert len(floors.body["data"]) == 5

    seen: list[str] = []
    page = await bx.api("GET", LOCATIONS, token, params={"page[limit]": "10"})
    while True:
        assert page.status == 200
        assert len(page.body["data"]) <= 10
        seen += [x["attributes"]["externalId"] for x in page.body["data"]]
        if "next" not in page.body["links"]:
            break
        assert page.body["links"]["next"].startswith(LOCATIONS)  # relative to the host
        page = await bx.api("GET", page.body["links"]["next"], token)
    assert seen == [f"E{i}" for i in range(25)]


@pytest.mark.parametrize("limit", ["0", "101", "ten"])
async def test_page_limit_is_1_to_100(bx: BuildingX, limit: str) -> None:
    token = await bx.token()
    reply = await bx.api("GET", LOCATIONS, token, params={"page[limit]": limit})

    assert reply.status == 400
    assert reply.body["errors"][0]["source"] == {"parameter": "page[limit]"}


async def test_another_partition_is_forbidden_and_unknown_routes_are_404_405(
    start_bx: StartBuildingX,
) -> None:
    users = (MachineUser("demo-client", "demo-secret", frozenset({"p-1"})),)
    bx = await start_bx(BuildingXOptions(users=users))
    token = await bx.token()
    forbidden = await bx.api("GET", LOCATIONS, token)
    assert forbidden.status == 403
    assert forbidden.body["errors"][0]["status"] == "403"
    mine = LOCATIONS.replace("demo-partition", "p-1")
    assert (await bx.api("GET", mine, token)).status == 200
    assert (await bx.api("GET", mine.replace("locations", "devices"), token)).status == 404
    assert (await bx.api("PUT", mine, token, json={})).status == 405


# -- point value ingest -----------------------------------------------------------------------


async def test_values_are_stored_one_per_millisecond(bx: BuildingX) -> None:
    token = await bx.token()
    stamps = ("2024-05-01T12:00:00Z", "2024-05-01T12:00:00.001Z", "2024-05-01T14:00:00+02:00")
    reply = await bx.api("POST", values_path("P-1"), token, json=point_values(*stamps))

    assert reply.status == 202  # the third is 12:00:00Z again
    assert reply.body["meta"]["duplicates"] == [2]
    stored = (await bx.admin("point-values"))["points"]["demo-partition"]["P-1"]
    assert [v["timestamp"] for v in stored] == [
        "2024-05-01T12:00:00.000Z",
        "2024-05-01T12:00:00.001Z",
    ]
    assert reply.headers["X-Request-Id"]


async def test_duplicates_of_stored_values_are_dropped_unless_overwrite(bx: BuildingX) -> None:
    token = await bx.token()
    path = values_path("P-1")
    first = await bx.api("POST", path, token, json=point_values("2024-05-01T12:00:00Z", value=1))
    assert first.status == 204
    assert first.body is None
    again = await bx.api("POST", path, token, json=point_values("2024-05-01T12:00:00Z", value=2))
    assert again.status == 202
    assert again.body["meta"]["duplicates"] == [0]
    replaced = await bx.api(
        "POST", path, token, json=point_values("2024-05-01T12:00:00Z", value=3),
        params={"overwrite": "true"},
    )  # fmt: skip
    assert replaced.status == 204
    stored = (await bx.admin("point-values", point="P-1"))["points"]["demo-partition"]["P-1"]
    assert [v["value"] for v in stored] == [3]


@pytest.mark.parametrize("count", [0, 101])
async def test_a_request_carries_1_to_100_values(bx: BuildingX, count: int) -> None:
    token = await bx.token()
    stamps = [f"2024-05-01T12:00:{i // 1000:02d}.{i % 1000:03d}Z" for i in range(count)]
    reply = await bx.api("POST", values_path("P-1"), token, json=point_values(*stamps))

    assert reply.status == 400
    assert reply.body["errors"][0]["source"]["pointer"] == "/data"


async def test_100_values_are_accepted(bx: BuildingX) -> None:
    token = await bx.token()
    stamps = [f"2024-05-01T12:00:00.{i:03d}Z" for i in range(100)]
    assert (
        await bx.api("POST", values_path("P-1"), token, json=point_values(*stamps))
    ).status == 204


async def test_bad_values_are_named_by_pointer_and_nothing_is_stored(bx: BuildingX) -> None:
    token = await bx.token()
    body = point_values("2024-05-01T12:00:00Z", "yesterday", "2024-05-01T12:00:02")
    body["data"][0]["attributes"]["value"] = None
    reply = await bx.api("POST", values_path("P-1"), token, json=body)

    assert reply.status == 400
    assert {e["source"]["pointer"] for e in reply.body["errors"]} == {
        "/data/0/attributes/value", "/data/1/attributes/timestamp",
        "/data/2/attributes/timestamp",
    }  # fmt: skip
    assert (await bx.admin("point-values"))["points"] == {}


async def test_an_unknown_point_is_404_when_points_are_configured(
    start_bx: StartBuildingX,
) -> None:
    bx = await start_bx(BuildingXOptions(known_points=frozenset({"P-1"})))
    token = await bx.token()
    body = point_values("2024-05-01T12:00:00Z")

    assert (await bx.api("POST", values_path("P-1"), token, json=body)).status == 204
    assert (await bx.api("POST", values_path("P-2"), token, json=body)).status == 404


# -- admin ------------------------------------------------------------------------------------


async def test_the_request_log_has_time_client_method_path_status(bx: BuildingX) -> None:
    token = await bx.token()
    await bx.api("GET", LOCATIONS, token)
    await bx.api("GET", LOCATIONS, None)

    log = (await bx.admin("requests"))["requests"]

    assert [(r["method"], r["path"], r["status"]) for r in log] == [
        ("POST", "/oauth/token", 200), ("GET", LOCATIONS, 200), ("GET", LOCATIONS, 401),
    ]  # fmt: skip
    assert [r["client_id"] for r in log] == ["demo-client", "demo-client", None]
    assert all(r["time"].endswith("Z") for r in log)
