"""Fault profiles: each one's effect, its share under a seed, reproducibility, switching."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import aiohttp
import pytest

from tests.emulator.test_buildingminds_api import record
from twin_emulators.buildingminds import EmulatorOptions
from twin_emulators.faults import PROFILES

if TYPE_CHECKING:
    from tests.support.emulators import BuildingMinds, StartBuildingMinds

pytestmark = pytest.mark.anyio

# Plenty of budget: these tests send hundreds of requests at one instant of the fake clock.
ROOMY = EmulatorOptions(rate_limit_requests=100_000)


async def batch_statuses(emulator: BuildingMinds, token: str, count: int) -> list[int]:
    return [(await emulator.api("GET", "/batch", token=token)).status for _ in range(count)]


@pytest.mark.parametrize(("rate", "count"), [(0.2, 500), (0.5, 400)])
async def test_errors_hit_the_configured_share_with_5xx(
    start_emulator: StartBuildingMinds, rate: float, count: int
) -> None:
    emulator = await start_emulator(ROOMY)
    token = await emulator.token()
    assert (await emulator.set_faults(profile="errors", rate=rate, seed=7)).status == 200

    statuses = await batch_statuses(emulator, token, count)

    failed = [s for s in statuses if s != 200]
    assert set(failed) == {500, 502, 503}
    # Binomial(count, rate): 4 standard deviations cannot be missed by chance.
    tolerance = 4 * (rate * (1 - rate) / count) ** 0.5
    assert abs(len(failed) / count - rate) < tolerance


async def test_the_errors_profile_defaults_to_a_fifth(start_emulator: StartBuildingMinds) -> None:
    emulator = await start_emulator(
        EmulatorOptions(rate_limit_requests=100_000, fault_profile="errors", seed=3)
    )
    token = await emulator.token()

    statuses = await batch_statuses(emulator, token, 500)

    assert abs(sum(s != 200 for s in statuses) / 500 - 0.2) < 0.08


async def test_an_injected_503_has_the_error_body_and_retry_after(emulator: BuildingMinds) -> None:
    token = await emulator.token()
    await emulator.set_faults(profile="errors", rate=1.0, error_statuses=[503])

    reply = await emulator.post("building", [record("building", "B-1")], token)

    assert reply.status == 503
    assert reply.body["code"] == 503
    assert int(reply.headers["Retry-After"]) >= 1
    emulator.clock.advance(10)
    assert await emulator.entities("building") == {}  # not processed


async def test_faults_are_reproducible_from_the_seed(start_emulator: StartBuildingMinds) -> None:
    emulator = await start_emulator(ROOMY)
    token = await emulator.token()
    runs = []
    for seed in (11, 11, 12):
        await emulator.set_faults(profile="errors", rate=0.3, seed=seed)
        runs.append(await batch_statuses(emulator, token, 60))

    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


async def test_injected_faults_do_not_use_the_rate_budget(
    start_emulator: StartBuildingMinds,
) -> None:
    emulator = await start_emulator(EmulatorOptions(rate_limit_requests=3))
    token = await emulator.token()
    await emulator.set_faults(profile="errors", rate=1.0)
    assert set(await batch_statuses(emulator, token, 10)) <= {500, 502, 503}

    await emulator.set_faults(profile="none")

    assert await batch_statuses(emulator, token, 4) == [200, 200, 200, 429]


async def test_resets_drop_the_connection(start_emulator: StartBuildingMinds) -> None:
    emulator = await start_emulator(ROOMY)
    token = await emulator.token()
    await emulator.set_faults(profile="resets", rate=0.5, seed=5)
    outcomes = []
    for i in range(60):
        try:
            reply = await emulator.post("building", [record("building", f"B-{i}")], token)
        except aiohttp.ClientConnectionError:
            outcomes.append("reset")
        else:
            outcomes.append(str(reply.status))

    assert set(outcomes) == {"reset", "200"}
    assert abs(outcomes.count("reset") / 60 - 0.5) < 4 * (0.25 / 60) ** 0.5
    log = (await emulator.request("GET", "/_emulator/requests")).body["requests"]
    dropped = [e for e in log if e["fault"] == "reset"]
    assert len(dropped) == outcomes.count("reset")
    assert all(e["status"] is None for e in dropped)
    emulator.clock.advance(2)
    assert len(await emulator.entities("building")) == outcomes.count("200")


async def test_timeouts_hang_beyond_the_client_timeout(emulator: BuildingMinds) -> None:
    token = await emulator.token()
    await emulator.set_faults(profile="timeouts", rate=1.0, hang_seconds=30)

    with pytest.raises(TimeoutError):
        await emulator.api("GET", "/batch", token=token, timeout=0.5)


async def test_a_hung_request_ends_in_504_unprocessed(emulator: BuildingMinds) -> None:
    token = await emulator.token()
    await emulator.set_faults(profile="timeouts", rate=1.0, hang_seconds=0.3)

    started = time.monotonic()
    reply = await emulator.post("building", [record("building", "B-1")], token)

    assert time.monotonic() - started >= 0.3
    assert reply.status == 504
    emulator.clock.advance(10)
    assert await emulator.entities("building") == {}


async def test_latency_delays_each_request_within_its_range(emulator: BuildingMinds) -> None:
    token = await emulator.token()
    await emulator.set_faults(profile="latency", min_latency_seconds=0.1, max_latency_seconds=0.15)

    for _ in range(3):
        started = time.monotonic()
        reply = await emulator.api("GET", "/batch", token=token)
        assert reply.status == 200
        assert time.monotonic() - started >= 0.1


async def test_a_429_storm_ends_after_its_duration(start_emulator: StartBuildingMinds) -> None:
    emulator = await start_emulator(EmulatorOptions(rate_limit_requests=2))
    token = await emulator.token()
    await emulator.set_faults(profile="429-storm", duration_seconds=30)

    first = await emulator.api("GET", "/batch", token=token)
    emulator.clock.advance(10)
    later = await emulator.api("GET", "/batch", token=token)
    emulator.clock.advance(20)

    assert (first.status, first.headers["Retry-After"]) == (429, "30")
    assert (later.status, later.headers["Retry-After"]) == (429, "20")
    assert first.body["code"] == 429
    # The storm's 429s used none of the budget of 2.
    assert await batch_statuses(emulator, token, 3) == [200, 200, 429]
    health = await emulator.request("GET", "/_emulator/health")
    assert health.body["fault_profile"] == "none"


async def test_a_partial_429_storm_uses_the_configured_retry_after(emulator: BuildingMinds) -> None:
    token = await emulator.token()
    await emulator.set_faults(profile="429-storm", rate=0.5, retry_after_seconds=5, seed=1)

    replies = [await emulator.api("GET", "/batch", token=token) for _ in range(40)]

    limited = [r for r in replies if r.status == 429]
    assert 0 < len(limited) < 40
    assert {r.headers["Retry-After"] for r in limited} == {"5"}


async def test_a_token_outage_answers_503_and_spares_the_api(emulator: BuildingMinds) -> None:
    token = await emulator.token()
    await emulator.set_faults(profile="token-outage")

    outage = await emulator.token_reply()
    api = await emulator.api("GET", "/batch", token=token)
    await emulator.set_faults(profile="none")

    assert outage.status == 503
    assert outage.body["error"] == "temporarily_unavailable"
    assert outage.body["error_description"].startswith("AADSTS")
    assert api.status == 200
    assert (await emulator.token_reply()).status == 200


async def test_revoked_tokens_get_401_until_a_new_token_is_issued(emulator: BuildingMinds) -> None:
    old = await emulator.token()
    await emulator.set_faults(profile="revoked-tokens")

    refused = await emulator.api("GET", "/batch", token=old)
    new = await emulator.token()

    assert refused.status == 401
    assert "revoked" in refused.body["message"]
    assert (await emulator.api("GET", "/batch", token=new)).status == 200
    assert (await emulator.api("GET", "/batch", token=old)).status == 401


async def test_api_faults_spare_the_token_and_admin_endpoints(emulator: BuildingMinds) -> None:
    await emulator.set_faults(profile="errors", rate=1.0)

    assert (await emulator.token_reply()).status == 200
    assert (await emulator.request("GET", "/_emulator/health")).status == 200


@pytest.mark.parametrize(
    "body",
    [
        {"profile": "meltdown"},
        {"profile": "errors", "rate": 1.5},
        {"profile": "errors", "rate": "lots"},
        {"profile": "errors", "colour": "red"},
        {"profile": "errors", "error_statuses": [404]},
        {"profile": "latency", "min_latency_seconds": 2, "max_latency_seconds": 1},
        ["errors"],
    ],
    ids=repr,
)
async def test_bad_fault_settings_are_refused(emulator: BuildingMinds, body: object) -> None:
    reply = await emulator.request("POST", "/_emulator/faults", json=body)

    assert reply.status == 400
    assert reply.body["error"]
    current = await emulator.request("GET", "/_emulator/faults")
    assert current.body["profile"] == "none"


@pytest.mark.parametrize("profile", sorted(PROFILES))
async def test_every_profile_can_be_switched_on_and_read_back(
    emulator: BuildingMinds, profile: str
) -> None:
    reply = await emulator.set_faults(profile=profile, rate=0.25)

    assert reply.status == 200
    current = await emulator.request("GET", "/_emulator/faults")
    assert (current.body["profile"], current.body["rate"]) == (profile, 0.25)
