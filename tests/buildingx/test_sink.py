"""The Building X sink against the emulator on a real socket, both on one fake clock: the
mapping of native records to locations and point values, pacing, and every kind of answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import anyio.lowlevel
import pytest
from pydantic import SecretStr

from connector.auth import BearerAuth, ClientCredentials, TokenProvider
from connector.delivery import Wait, disposition
from connector.errors import EndpointMisconfigured, RateLimited, ServerError
from connector.ratelimit import RollingWindowLimiter
from connector.sinks.buildingx import APIS, BuildingXSink, ParentPending, error_text
from tests.support.batches import batch_of
from twin_emulators.buildingx import API_ROOT, BuildingXOptions
from twin_emulators.buildingx_state import AUDIENCE, DEMO_PARTITION, MachineUser

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from connector.sinks.base import SubmitResult
    from tests.support.clock import FakeClock
    from tests.support.emulators import BuildingX, StartBuildingX

pytestmark = pytest.mark.anyio


@dataclass
class Bed:
    bx: BuildingX
    sink: BuildingXSink
    request_ids: list[str]  # the X-Request-Id of every answer the sink's session saw

    async def submit(self, endpoint: str, records: list[dict[str, Any]]) -> SubmitResult:
        return await self.sink.submit(batch_of(endpoint, records))

    async def locations(self) -> dict[str, dict[str, Any]]:
        """Stored locations by externalId."""
        found = (await self.bx.admin("locations"))["locations"].get(DEMO_PARTITION, [])
        return {x["attributes"]["externalId"]: x for x in found}

    async def api_log(self) -> list[dict[str, Any]]:
        log = (await self.bx.admin("requests"))["requests"]
        return [r for r in log if r["path"].startswith(API_ROOT)]


MakeBed = Callable[..., Awaitable[Bed]]


@pytest.fixture
async def make_bed(start_bx: StartBuildingX, clock: FakeClock) -> AsyncIterator[MakeBed]:
    sessions: list[aiohttp.ClientSession] = []

    async def sleep(seconds: float) -> None:  # the limiters' waits move the shared clock
        clock.advance(seconds)
        await anyio.lowlevel.checkpoint()

    async def make(
        options: BuildingXOptions | None = None, *, base: str = API_ROOT, **kwargs: Any
    ) -> Bed:
        bx = await start_bx(options)
        plain = aiohttp.ClientSession()
        grant = ClientCredentials(
            str(bx.server.make_url("/oauth/token")), "demo-client", SecretStr("demo-secret"),
            audience=AUDIENCE, as_json=True,
        )  # fmt: skip
        provider = TokenProvider(plain, grant, clock=clock)
        seen: list[str] = []

        async def record(
            request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
        ) -> aiohttp.ClientResponse:
            response = await handler(request)
            seen.append(response.headers.get("X-Request-Id", ""))
            return response

        authed = aiohttp.ClientSession(middlewares=(BearerAuth(provider), record))
        sessions.extend((plain, authed))
        limiters = {api: RollingWindowLimiter(10, 1.0, clock=clock, sleep=sleep) for api in APIS}
        sink = BuildingXSink(
            authed, str(bx.server.make_url(base)), DEMO_PARTITION, limiters=limiters,
            clock=clock, **kwargs,
        )  # fmt: skip
        return Bed(bx, sink, seen)

    try:
        yield make
    finally:
        for session in sessions:
            await session.close()


def site(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "siteId": f"S-{i}", "eventType": "SiteAdded", "name": f"Campus {i}",
        "addressIds": ["A-1"], "type": "Office", "validFrom": "2024-01-01T00:00:00Z", **extra,
    }  # fmt: skip


def building(i: int, site_id: str | None = "S-1", **extra: Any) -> dict[str, Any]:
    record = {"buildingId": f"B-{i}", "eventType": "BuildingAdded", "name": f"Building {i}"}
    if site_id is not None:
        record["siteId"] = site_id
    return {**record, **extra}


def floor(i: int, building_id: str = "B-1") -> dict[str, Any]:
    return {
        "floorId": f"F-{i}", "eventType": "FloorAdded", "buildingId": building_id,
        "name": f"Level {i}", "validFrom": "2024-01-01T00:00:00Z",
        "validUntil": "2099-01-01T00:00:00Z",
    }  # fmt: skip


def space(i: int, floor_id: str = "F-1") -> dict[str, Any]:
    return {"spaceId": f"R-{i}", "eventType": "SpaceAdded", "floorId": floor_id, "name": f"R {i}"}


def reading(i: int, meter: str = "M-1", **extra: Any) -> dict[str, Any]:
    return {
        "operationalMeasurementId": f"OM-{i}", "eventType": "OperationalMeasurementAdded",
        "buildingId": "B-1", "procuredBy": "Landlord", "purpose": "Electricity",
        "meterId": meter, "measurementDate": f"2024-05-01T12:{i // 60:02d}:{i % 60:02d}Z",
        "value": float(i), **extra,
    }  # fmt: skip


# -- locations --------------------------------------------------------------------------------


async def test_the_hierarchy_becomes_locations_with_their_parents(make_bed: MakeBed) -> None:
    bed = await make_bed()
    for endpoint, records in (
        ("site", [site(1)]),
        ("building", [building(1, constructionYear="1975-01-01T00:00:00Z")]),
        ("floor", [floor(1)]),
        ("space", [space(1), space(2)]),
    ):
        result = await bed.submit(endpoint, records)
        assert result.failed == {}
        assert result.request_id in bed.request_ids

    stored = await bed.locations()
    campus, tower, level, room = (stored[k] for k in ("S-1", "B-1", "F-1", "R-1"))
    assert [x["attributes"]["type"] for x in (campus, tower, level, room)] == [
        "Campus", "Building", "Floor", "Room"
    ]  # fmt: skip
    assert tower["attributes"] == {
        "label": "Building 1", "type": "Building", "externalId": "B-1", "constructionYear": 1975
    }  # fmt: skip
    assert tower["relationships"] == {
        "isBuildingOf": {"data": {"type": "Location", "id": campus["id"]}}
    }
    assert level["relationships"]["isPartOf"]["data"]["id"] == tower["id"]
    assert room["relationships"]["isPartOf"]["data"]["id"] == level["id"]
    assert stored["R-2"]["relationships"]["isPartOf"]["data"]["id"] == level["id"]


async def test_an_update_patches_the_location_it_created(make_bed: MakeBed) -> None:
    bed = await make_bed()
    await bed.submit("site", [site(1)])
    before = len(await bed.api_log())

    result = await bed.submit("site", [site(1, name="Renamed", eventType="SiteUpdated")])

    assert result.failed == {}
    new = (await bed.api_log())[before:]
    assert [r["method"] for r in new] == ["PATCH"]  # the id is cached: no lookup, no create
    assert (await bed.locations())["S-1"]["attributes"]["label"] == "Renamed"


async def test_a_location_made_elsewhere_is_found_by_external_id_and_patched(
    make_bed: MakeBed,
) -> None:
    bed = await make_bed()
    await bed.submit("site", [site(1)])
    fresh = BuildingXSink(
        bed.sink.session, bed.sink.base_url, DEMO_PARTITION, limiters=bed.sink.limiters
    )
    before = len(await bed.api_log())

    await fresh.submit(batch_of("site", [site(1, name="Other")]))

    assert [r["method"] for r in (await bed.api_log())[before:]] == ["GET", "PATCH"]
    assert len(await bed.locations()) == 1


async def test_a_child_waits_for_its_parent_then_goes_without_resending_the_rest(
    make_bed: MakeBed,
) -> None:
    bed = await make_bed()
    await bed.submit("site", [site(1)])
    records = [building(1), building(2, site_id="S-2"), building(3)]

    with pytest.raises(ParentPending, match="site 'S-2'"):
        await bed.submit("building", records)
    assert set(await bed.locations()) == {"S-1", "B-1", "B-3"}
    await bed.submit("site", [site(2)])
    before = len(await bed.api_log())

    result = await bed.submit("building", records)

    assert result.failed == {}
    writes = [r for r in (await bed.api_log())[before:] if r["method"] != "GET"]
    assert [r["method"] for r in writes] == ["POST"]  # only B-2: B-1 and B-3 were settled
    stored = await bed.locations()
    assert stored["B-2"]["relationships"]["isBuildingOf"]["data"]["id"] == stored["S-2"]["id"]


async def test_a_parent_that_never_comes_is_a_failure_after_parent_wait(
    make_bed: MakeBed, clock: FakeClock
) -> None:
    bed = await make_bed(parent_wait=60)
    with pytest.raises(ParentPending):
        await bed.submit("floor", [floor(1, building_id="B-9")])
    clock.advance(61)

    result = await bed.submit("floor", [floor(1, building_id="B-9")])

    assert "parent building 'B-9' was not found" in result.failed[0]
    assert await bed.locations() == {}


async def test_deleted_events_delete_and_an_absent_location_is_fine(make_bed: MakeBed) -> None:
    bed = await make_bed()
    await bed.submit("site", [site(1), site(2)])

    result = await bed.submit(
        "site", [{"siteId": "S-1", "eventType": "SiteDeleted"},
                 {"siteId": "S-7", "eventType": "SiteDeleted"}],
    )  # fmt: skip

    assert result.failed == {}
    assert set(await bed.locations()) == {"S-2"}
    assert [r["method"] for r in await bed.api_log()].count("DELETE") == 1


async def test_a_rejected_record_fails_with_the_json_api_message_and_the_rest_goes(
    make_bed: MakeBed,
) -> None:
    bed = await make_bed()

    result = await bed.submit("site", [site(1), site(2, name="n" * 300), site(3)])

    assert set(result.failed) == {1}
    message = result.failed[1]
    assert "label must be at most 255 characters" in message
    assert "(at /data/attributes/label)" in message
    assert result.status == 400
    assert result.request_id in bed.request_ids
    assert set(await bed.locations()) == {"S-1", "S-3"}


async def test_records_without_a_building_x_place_fail_without_a_request(
    make_bed: MakeBed,
) -> None:
    bed = await make_bed()
    meter = {"meterId": "M-1", "eventType": "MeterAdded", "buildingId": "B-1"}

    result = await bed.submit("meter", [meter])

    assert "no Building X target for /meter" in result.failed[0]
    assert await bed.api_log() == []


# -- point values -----------------------------------------------------------------------------


async def test_readings_become_point_values_grouped_and_chunked_by_100(make_bed: MakeBed) -> None:
    bed = await make_bed(point_ids={"M-1": "point-elec"})
    records = [reading(i) for i in range(150)] + [reading(i, meter="M-2") for i in range(3)]

    result = await bed.submit("operational-measurement", records)

    assert result.failed == {}
    posts = [r for r in await bed.api_log() if r["method"] == "POST"]
    assert sorted(r["record_count"] for r in posts) == [3, 50, 100]
    assert all(r["path"].endswith("/values") for r in posts)
    points = (await bed.bx.admin("point-values"))["points"][DEMO_PARTITION]
    assert set(points) == {"point-elec", "M-2"}  # mapped, and unmapped as is
    assert len(points["point-elec"]) == 150
    assert points["M-2"][2] == {
        "timestamp": "2024-05-01T12:00:02.000Z", "value": 2.0, "qualityOfValue": 0
    }  # fmt: skip


async def test_a_value_the_api_names_fails_and_the_others_are_sent_again(
    make_bed: MakeBed,
) -> None:
    bed = await make_bed()
    records = [reading(0), reading(1, qualityOfValue=-1), reading(2)]

    result = await bed.submit("operational-measurement", records)

    assert set(result.failed) == {1}
    assert "(at /data/1/attributes/qualityOfValue)" in result.failed[1]
    stored = (await bed.bx.admin("point-values"))["points"][DEMO_PARTITION]["M-1"]
    assert [v["value"] for v in stored] == [0.0, 2.0]


async def test_readings_that_cannot_name_a_point_or_time_fail_without_a_request(
    make_bed: MakeBed,
) -> None:
    bed = await make_bed()
    no_meter = {k: v for k, v in reading(0).items() if k != "meterId"}

    result = await bed.submit(
        "operational-measurement",
        [no_meter, reading(1, measurementDate="yesterday"),
         {**reading(2), "eventType": "OperationalMeasurementDeleted"}],
    )  # fmt: skip

    assert "no meterId" in result.failed[0]
    assert "RFC 3339" in result.failed[1]
    assert "cannot delete" in result.failed[2]
    assert await bed.api_log() == []


async def test_a_replayed_reading_is_not_an_error(make_bed: MakeBed) -> None:
    bed = await make_bed(overwrite_values=False)
    await bed.submit("operational-measurement", [reading(0)])

    result = await bed.submit("operational-measurement", [reading(0)])  # answered 202

    assert result.failed == {}
    assert result.status == 202


# -- pacing and failures ----------------------------------------------------------------------


async def test_never_more_than_ten_requests_in_a_second_per_api(make_bed: MakeBed) -> None:
    bed = await make_bed()
    await bed.submit("site", [site(1)])
    await bed.submit("building", [building(i) for i in range(40)])
    await bed.submit("operational-measurement", [reading(i, meter=f"M-{i}") for i in range(25)])

    log = await bed.api_log()
    assert all(r["status"] != 429 for r in log)
    for api in ("/structure/", "/point-value-ingest/"):
        times = [datetime.fromisoformat(r["time"]).timestamp() for r in log if api in r["path"]]
        worst = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
        assert worst == 10, api  # the budget used to the full, never beyond


async def test_429_raises_rate_limited_and_blocks_that_apis_limiter(make_bed: MakeBed) -> None:
    bed = await make_bed()
    await bed.bx.set_faults(profile="429-storm", retry_after_seconds=7)

    with pytest.raises(RateLimited) as caught:
        await bed.submit("site", [site(1)])

    assert caught.value.retry_after == 7
    assert caught.value.request_id in bed.request_ids
    assert bed.sink.limiters["structure"].wait_time() > 6
    assert bed.sink.limiters["point-value-ingest"].wait_time() == 0


async def test_the_pipelines_answer_to_a_429_slows_only_the_api_that_sent_it(
    make_bed: MakeBed, clock: FakeClock
) -> None:
    bed = await make_bed()
    await bed.bx.set_faults(profile="429-storm", retry_after_seconds=7)
    with pytest.raises(RateLimited) as caught:
        await bed.submit("site", [site(1)])
    await bed.bx.set_faults(profile="none")

    what = disposition(caught.value, 1)
    assert what == Wait(7, "rate_limited")
    bed.sink.rate_limited(what.seconds)  # what the pipeline does with it
    before = clock()
    result = await bed.submit("operational-measurement", [reading(0)])

    assert result.failed == {}
    assert clock() == before, "point values did not wait for the structure API's 429"
    assert bed.sink.limiters["structure"].wait_time() > 6
    assert bed.sink.limiter is None, "a submission takes no slot of a budget of the pipeline"


@pytest.mark.parametrize("profile", ["errors", "resets"])
async def test_5xx_and_resets_raise_server_error(make_bed: MakeBed, profile: str) -> None:
    bed = await make_bed()
    await bed.bx.set_faults(profile=profile, rate=1.0)

    with pytest.raises(ServerError):
        await bed.submit("site", [site(1)])


async def test_a_forbidden_partition_is_a_misconfiguration(make_bed: MakeBed) -> None:
    users = (MachineUser("demo-client", "demo-secret", frozenset({"other"})),)
    bed = await make_bed(BuildingXOptions(users=users))

    with pytest.raises(EndpointMisconfigured, match=r"sink\.partition_id") as caught:
        await bed.submit("site", [site(1)])
    assert caught.value.status == 403


async def test_a_wrong_base_url_is_a_misconfiguration(make_bed: MakeBed) -> None:
    bed = await make_bed(base="/api/wrong")

    with pytest.raises(EndpointMisconfigured, match=r"sink\.base_url") as caught:
        await bed.sink.list_locations()
    assert caught.value.status == 404


def test_error_text_joins_title_detail_and_source() -> None:
    payload = {
        "errors": [
            {"title": "Invalid attribute", "detail": "too long", "source": {"pointer": "/a"}},
            {"title": "Invalid query parameter", "source": {"parameter": "page[limit]"}},
            {"code": "34-0001"},
        ]
    }

    assert error_text(payload, "x") == (
        "Invalid attribute: too long (at /a); Invalid query parameter (parameter page[limit]); "
        "34-0001"
    )
    assert error_text({"error": "other"}, "fallback") == "fallback"
