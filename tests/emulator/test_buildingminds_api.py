"""The platform API's status-code table, record validation and the rate limit, over sockets."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import pytest

from twin_emulators.buildingminds import EmulatorOptions
from twin_emulators.buildingminds_auth import DEMO_CLIENT, ClientCredential
from twin_emulators.buildingminds_model import ENTITIES

if TYPE_CHECKING:
    from tests.support.emulators import BuildingMinds, StartBuildingMinds

pytestmark = pytest.mark.anyio

DATE = "2024-01-01T00:00:00Z"

# The platform's endpoints, their ID fields and event-type prefixes, as the reference names them
# (spelled out here, not read from the emulator, so that these tests pin the facts).
IDS: dict[str, tuple[str, str]] = {
    "address": ("addressId", "Address"),
    "site": ("siteId", "Site"),
    "building": ("buildingId", "Building"),
    "land": ("landId", "Land"),
    "floor": ("floorId", "Floor"),
    "space": ("spaceId", "Space"),
    "rental-unit": ("rentalUnitId", "RentalUnit"),
    "operational-measurement": ("operationalMeasurementId", "OperationalMeasurement"),
    "meter": ("meterId", "Meter"),
    "resource-consumption": ("resourceConsumptionId", "ResourceConsumption"),
    "certificate": ("certificateId", "Certificate"),
    "energy-rating": ("energyRatingId", "EnergyRating"),
    "valuation": ("valuationId", "Valuation"),
    "area-measurement": ("areaMeasurementId", "AreaMeasurement"),
    "rental-contract": ("rentalContractId", "RentalContract"),
}

# The smallest valid Added record of each entity.
MINIMAL: dict[str, dict[str, Any]] = {
    "address": {"city": "Berlin", "country": "DE"},
    "site": {"name": "Campus", "addressIds": ["A-1"], "type": "Office", "validFrom": DATE},
    "building": {},
    "land": {"name": "Plot", "siteId": "S-1", "typeOfOwnership": "Owner"},
    "floor": {"buildingId": "B-1", "name": "Ground", "validFrom": DATE, "validUntil": DATE},
    "space": {"floorId": "F-1", "name": "Room 1"},
    "rental-unit": {"name": "Unit 1", "buildingIds": ["B-1"]},
    "operational-measurement": {"buildingId": "B-1", "procuredBy": "Owner", "purpose": "Heat"},
    "meter": {"buildingId": "B-1"},
    "resource-consumption": {},
    "certificate": {},
    "energy-rating": {},
    "valuation": {},
    "area-measurement": {},
    "rental-contract": {},
}


def record(
    entity: str, external_id: str = "X-1", event: str = "Added", **fields: Any
) -> dict[str, Any]:
    id_field, prefix = IDS[entity]
    return {
        id_field: external_id,
        "eventType": prefix + event,
        **MINIMAL[entity],
        **fields,
    }


def test_the_emulator_serves_exactly_the_documented_entities() -> None:
    assert set(MINIMAL) == set(IDS) == set(ENTITIES)
    assert {name: spec.id_field for name, spec in ENTITIES.items()} == {
        name: id_field for name, (id_field, _) in IDS.items()
    }


@pytest.mark.parametrize("entity", sorted(IDS))
async def test_every_entity_endpoint_accepts_a_valid_array(
    emulator: BuildingMinds, entity: str
) -> None:
    token = await emulator.token()

    reply = await emulator.post(entity, [record(entity, "E-1"), record(entity, "E-2")], token)

    assert reply.status == 200
    assert set(reply.body) == {"batchId"}
    uuid.UUID(reply.body["batchId"])


@pytest.mark.parametrize(
    ("entity", "bad", "message"),
    [
        ("building", {"buildingId": None}, "'buildingId' is required"),
        ("building", {"buildingId": 7}, "'buildingId' must be a string of 1-50"),
        ("building", {"buildingId": ""}, "'buildingId' must be a string of 1-50"),
        ("building", {"buildingId": "x" * 51}, "'buildingId' must be a string of 1-50"),
        ("building", {"eventType": "FloorAdded"}, "'eventType' must be one of"),
        ("building", {"eventType": None}, "'eventType' must be one of"),
        ("address", {"eventType": "AddressDeleted"}, "'eventType' must be one of"),
        ("address", {"city": None}, "'city' is required"),
        ("address", {"country": "Germany"}, "'country' must be an ISO 3166"),
        ("site", {"name": "x" * 51}, "'name' must be a string of at most 50"),
        ("site", {"addressIds": []}, "'addressIds' is required"),
        ("site", {"type": "Castle"}, "'type' must be one of"),
        ("site", {"validFrom": "2024-01-01"}, "'validFrom' must be an ISO-8601"),
        ("floor", {"validUntil": None}, "'validUntil' is required"),
        ("floor", {"name": "x" * 201}, "'name' must be a string of at most 200"),
        ("floor", {"floorCode": "x" * 71}, "'floorCode' must be a string of 1-70"),
        ("land", {"typeOfOwnership": "Lease"}, "'typeOfOwnership' must be one of"),
        ("space", {"floorId": None}, "'floorId' is required"),
        ("space", {"floorId": ["F-1"]}, "'floorId' must be a string"),
        ("rental-unit", {"buildingIds": None}, "at least one of siteIds, buildingIds"),
        ("rental-unit", {"buildingIds": "B-1"}, "'buildingIds' must be an array"),
        ("operational-measurement", {"purpose": ""}, "'purpose' is required"),
        ("meter", {"buildingId": None}, "at least one of buildingId, rentalUnitId"),
    ],
)
async def test_invalid_records_are_named_in_failed_messages(
    emulator: BuildingMinds, entity: str, bad: dict[str, Any], message: str
) -> None:
    token = await emulator.token()
    invalid = record(entity, "BAD-1", **bad)
    # An invalid field value replaces the minimal one; None removes it from the record.
    invalid = {k: v for k, v in invalid.items() if v is not None}

    reply = await emulator.post(entity, [invalid], token)

    assert reply.status == 400
    assert reply.body["error"] == "Request validation failed"
    assert reply.body["batchId"] is None
    [failed] = reply.body["failedMessages"]
    assert failed["message"] == invalid
    assert message in failed["error"]


async def test_a_deleted_record_needs_only_its_id_and_event_type(emulator: BuildingMinds) -> None:
    token = await emulator.token()

    reply = await emulator.post("floor", [{"floorId": "F-1", "eventType": "FloorDeleted"}], token)

    assert reply.status == 200


async def test_partial_acceptance_stores_the_valid_records(emulator: BuildingMinds) -> None:
    token = await emulator.token()
    good = [record("building", "B-1"), record("building", "B-3")]
    bad = [{"eventType": "BuildingAdded"}, "not an object"]

    reply = await emulator.post("building", [good[0], bad[0], good[1], bad[1]], token)

    assert reply.status == 400
    assert reply.body["error"] == "Request validation failed"
    assert [f["message"] for f in reply.body["failedMessages"]] == bad
    assert "'buildingId' is required" in reply.body["failedMessages"][0]["error"]
    assert "JSON object" in reply.body["failedMessages"][1]["error"]
    inbound = await emulator.inbound(reply.body["batchId"], token)
    assert [(r["externalId"], r["index"]) for r in inbound] == [("B-1", 0), ("B-3", 2)]
    emulator.clock.advance(2)
    assert set(await emulator.entities("building")) == {"B-1", "B-3"}


@pytest.mark.parametrize(
    "body", [b"{not json", b'{"buildingId": "B-1"}', b"[]", b"", b'"text"'], ids=repr
)
async def test_a_body_that_is_not_a_json_array_is_a_400(
    emulator: BuildingMinds, body: bytes
) -> None:
    token = await emulator.token()

    reply = await emulator.api("POST", "/building", token=token, data=body)

    assert reply.status == 400
    assert reply.body == {"error": "Request validation failed"}


async def test_unknown_paths_are_404(emulator: BuildingMinds) -> None:
    token = await emulator.token()

    for path in ("/buildings", "/batch/x/outbound", ""):
        reply = await emulator.api("POST", path, token=token, json=[])
        assert (reply.status, reply.body) == (404, {"code": 404, "message": "Resource not found"})
    outside = await emulator.request("GET", "/somewhere/else")
    assert outside.status == 404
    assert outside.body["code"] == 404


async def test_an_unknown_batch_is_404(emulator: BuildingMinds) -> None:
    token = await emulator.token()

    reply = await emulator.api("GET", f"/batch/{uuid.uuid4()}/inbound", token=token)

    assert (reply.status, reply.body) == (404, {"code": 404, "message": "Resource not found"})


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [("GET", "/building", "POST"), ("PUT", "/site", "POST"), ("POST", "/batch", "GET")],
)
async def test_a_wrong_method_is_405(
    emulator: BuildingMinds, method: str, path: str, allowed: str
) -> None:
    token = await emulator.token()

    reply = await emulator.api(method, path, token=token, json=[record("building")])

    assert reply.status == 405
    assert reply.body["code"] == 405
    assert allowed in reply.headers["Allow"]


async def test_a_credential_without_access_to_an_endpoint_gets_403(
    start_emulator: StartBuildingMinds,
) -> None:
    reader = ClientCredential(
        "reader", "reader-secret", "api://buildingminds-emulator", frozenset({"batch"})
    )
    emulator = await start_emulator(EmulatorOptions(clients=[DEMO_CLIENT, reader]))
    token = await emulator.token(client_id="reader", client_secret="reader-secret")

    denied = await emulator.post("building", [record("building")], token)
    allowed = await emulator.api("GET", "/batch", token=token)

    assert denied.status == 403
    assert denied.body["code"] == 403
    assert allowed.status == 200
    demo = await emulator.token()
    assert (await emulator.post("building", [record("building")], demo)).status == 200


async def test_a_body_above_the_limit_is_413(start_emulator: StartBuildingMinds) -> None:
    emulator = await start_emulator(EmulatorOptions(max_body_bytes=4096))
    token = await emulator.token()
    small = [record("building", f"B-{i}") for i in range(10)]
    large = [record("building", f"B-{i}", name="x" * 150) for i in range(40)]

    assert (await emulator.post("building", small, token)).status == 200
    reply = await emulator.post("building", large, token)

    assert reply.status == 413
    assert reply.body["code"] == 413
    assert "4096" in reply.body["message"]


async def test_the_101st_request_in_a_minute_gets_429_until_the_window_slides(
    emulator: BuildingMinds,
) -> None:
    token = await emulator.token()
    for _ in range(99):
        assert (await emulator.api("GET", "/batch", token=token)).status == 200
    # Failed requests use the budget too: the 100th is a 404.
    assert (await emulator.api("GET", "/nowhere", token=token)).status == 404

    emulator.clock.advance(30)
    limited = await emulator.api("GET", "/batch", token=token)
    assert limited.status == 429
    assert limited.headers["Retry-After"] == "30"
    assert limited.body["code"] == 429

    emulator.clock.advance(29.5)
    almost = await emulator.api("POST", "/building", token=token, json=[record("building")])
    assert almost.status == 429
    assert almost.headers["Retry-After"] == "1"

    emulator.clock.advance(0.5)
    # The 429s did not use the budget: the whole budget is free again.
    for _ in range(100):
        assert (await emulator.api("GET", "/batch", token=token)).status == 200
    assert (await emulator.api("GET", "/batch", token=token)).status == 429


async def test_the_budget_is_per_credential(start_emulator: StartBuildingMinds) -> None:
    other = ClientCredential("other", "other-secret", "api://buildingminds-emulator")
    emulator = await start_emulator(
        EmulatorOptions(rate_limit_requests=3, rate_limit_seconds=10, clients=[DEMO_CLIENT, other])
    )
    demo = await emulator.token()
    second = await emulator.token(client_id="other", client_secret="other-secret")

    demo_statuses = [(await emulator.api("GET", "/batch", token=demo)).status for _ in range(4)]
    other_status = (await emulator.api("GET", "/batch", token=second)).status

    assert demo_statuses == [200, 200, 200, 429]
    assert other_status == 200


@pytest.mark.parametrize("entity", sorted(IDS))
async def test_updates_and_deletes_are_accepted_except_deleting_an_address(
    emulator: BuildingMinds, entity: str
) -> None:
    token = await emulator.token()
    id_field, prefix = IDS[entity]
    deleted = {id_field: "E-2", "eventType": f"{prefix}Deleted"}

    reply = await emulator.post(entity, [record(entity, "E-1", "Updated"), deleted], token)

    if entity == "address":
        assert reply.status == 400
        assert [f["message"] for f in reply.body["failedMessages"]] == [deleted]
        assert reply.body["batchId"] is not None
    else:
        assert reply.status == 200
