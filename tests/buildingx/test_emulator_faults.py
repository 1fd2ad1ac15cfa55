"""The Building X emulator's budget and fault profiles (the BuildingMinds emulator's own
injector, reused): each profile's effect, reproducibility, switching at run time."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tests.support.emulators import LOCATIONS, point_values, values_path
from twin_emulators.buildingx import BuildingXOptions

if TYPE_CHECKING:
    from tests.support.emulators import BuildingX, StartBuildingX

pytestmark = pytest.mark.anyio

ROOMY = BuildingXOptions(rate_limit_requests=100_000)


async def statuses(bx: BuildingX, token: str, count: int) -> list[int]:
    return [(await bx.api("GET", LOCATIONS, token)).status for _ in range(count)]


async def test_ten_requests_per_second_per_client_and_api(bx: BuildingX) -> None:
    token = await bx.token()
    assert await statuses(bx, token, 10) == [200] * 10
    limited = await bx.api("GET", LOCATIONS, token)
    assert limited.status == 429
    assert limited.body["errors"][0]["status"] == "429"
    assert int(limited.headers["Retry-After"]) >= 1
    # the ingest API has a budget of its own
    body = point_values("2024-05-01T12:00:00Z")
    assert (await bx.api("POST", values_path("P"), token, json=body)).status == 204
    bx.clock.advance(1.0)
    assert (await bx.api("GET", LOCATIONS, token)).status == 200


async def test_a_refused_request_does_not_spend_the_budget(bx: BuildingX) -> None:
    token = await bx.token()
    await statuses(bx, token, 10)
    for _ in range(5):
        assert (await bx.api("GET", LOCATIONS, token)).status == 429
    bx.clock.advance(1.0)
    assert await statuses(bx, token, 10) == [200] * 10


@pytest.mark.parametrize("rate", [0.2, 0.5])
async def test_errors_hit_their_share_with_5xx(start_bx: StartBuildingX, rate: float) -> None:
    bx = await start_bx(ROOMY)
    token = await bx.token()
    assert (await bx.set_faults(profile="errors", rate=rate, seed=7)).status == 200

    seen = await statuses(bx, token, 400)

    failed = [s for s in seen if s != 200]
    assert set(failed) == {500, 502, 503}
    assert abs(len(failed) / 400 - rate) < 4 * (rate * (1 - rate) / 400) ** 0.5


async def test_an_injected_error_is_a_json_api_error_with_a_request_id(bx: BuildingX) -> None:
    token = await bx.token()
    await bx.set_faults(profile="errors", rate=1.0, error_statuses=[503])

    reply = await bx.api("GET", LOCATIONS, token)

    assert reply.status == 503
    assert reply.body["errors"][0]["id"] == reply.headers["X-Request-Id"]
    assert int(reply.headers["Retry-After"]) >= 1


async def test_faults_are_reproducible_from_the_seed(start_bx: StartBuildingX) -> None:
    bx = await start_bx(ROOMY)
    token = await bx.token()
    runs = []
    for seed in (11, 11, 12):
        await bx.set_faults(profile="errors", rate=0.3, seed=seed)
        runs.append(await statuses(bx, token, 60))

    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


async def test_resets_drop_the_connection(start_bx: StartBuildingX) -> None:
    import aiohttp  # noqa: PLC0415

    bx = await start_bx(ROOMY)
    token = await bx.token()
    await bx.set_faults(profile="resets", rate=1.0)

    with pytest.raises(aiohttp.ClientError):
        await bx.api("GET", LOCATIONS, token)
    log = (await bx.admin("requests"))["requests"]
    assert log[-1]["fault"] == "reset"
    assert log[-1]["status"] is None


async def test_latency_delays_and_timeouts_hang(start_bx: StartBuildingX) -> None:
    bx = await start_bx(ROOMY)
    token = await bx.token()
    await bx.set_faults(profile="latency", min_latency_seconds=0.0, max_latency_seconds=0.01)
    assert (await bx.api("GET", LOCATIONS, token)).status == 200
    await bx.set_faults(profile="timeouts", rate=1.0, hang_seconds=0.05)
    assert (await bx.api("GET", LOCATIONS, token)).status == 504
    log = (await bx.admin("requests"))["requests"]
    assert [r["fault"] for r in log[-2:]] == ["delay", "hang"]


async def test_a_429_storm_asks_to_come_back_when_it_is_over(bx: BuildingX) -> None:
    token = await bx.token()
    await bx.set_faults(profile="429-storm", duration_seconds=5)

    reply = await bx.api("GET", LOCATIONS, token)
    assert reply.status == 429
    assert reply.headers["Retry-After"] == "5"
    bx.clock.advance(5)
    assert (await bx.api("GET", LOCATIONS, token)).status == 200
    assert (await bx.admin("faults"))["profile"] == "none"


async def test_a_token_outage_answers_503_temporarily_unavailable(bx: BuildingX) -> None:
    await bx.set_faults(profile="token-outage")

    reply = await bx.token_reply()

    assert reply.status == 503
    assert reply.body["error"] == "temporarily_unavailable"
    await bx.set_faults(profile="none")
    assert (await bx.token_reply()).status == 200


async def test_revoked_tokens_are_refused_and_new_ones_work(bx: BuildingX) -> None:
    old = await bx.token()
    await bx.set_faults(profile="revoked-tokens")

    assert (await bx.api("GET", LOCATIONS, old)).status == 401
    assert (await bx.api("GET", LOCATIONS, await bx.token())).status == 200


async def test_bad_fault_settings_are_refused(bx: BuildingX) -> None:
    reply = await bx.set_faults(profile="volcano")

    assert reply.status == 400
    assert "volcano" in reply.body["error"]


async def test_reset_forgets_data_log_and_windows(bx: BuildingX) -> None:
    token = await bx.token()
    await statuses(bx, token, 11)
    assert (await bx.request("POST", "/_emulator/reset")).status == 200

    assert (await bx.admin("requests"))["count"] == 0
    assert (await bx.api("GET", LOCATIONS, token)).status == 200
