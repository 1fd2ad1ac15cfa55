"""Contract of the BIMlink emulator's API over a real socket: bearer auth, paging headers and
per-action maximum limits, per-user visibility, the rate limit, every fault profile, and the
admin API that changes data at run time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import aiohttp
import pytest

from tests.bimlink.helpers import Bimlink, free_port, options_for, running_bimlink
from twin_emulators.bimlink_data import demo_id

if TYPE_CHECKING:
    from tests.support.clock import FakeClock

pytestmark = pytest.mark.anyio

ACCOUNTS = "/api/v1/domainaccounts"
DA1, DA2, DA3 = demo_id("da-1"), demo_id("da-2"), demo_id("da-3")
PHASE = demo_id("prj-1/Beheer")


def elements_path(account: str, phase: str) -> str:
    return f"{ACCOUNTS}/{account}/projectphases/{phase}/spatialstructureelements"


async def access(emu: Bimlink) -> str:
    token: str = (await emu.tokens())["access_token"]
    return token


async def test_api_needs_a_valid_bearer_token(bimlink: Bimlink, clock: FakeClock) -> None:
    missing = await bimlink.call("GET", ACCOUNTS)
    assert missing.status == 401
    assert "invalid_token" in missing.headers["WWW-Authenticate"]
    assert missing.body["status"] == 401
    assert missing.body["title"] == "Unauthorized"
    assert (await bimlink.call("GET", ACCOUNTS, token="forged.jwt.token")).status == 401
    token = await access(bimlink)
    assert (await bimlink.call("GET", ACCOUNTS, token=token)).status == 200
    clock.advance(3600)
    assert (await bimlink.call("GET", ACCOUNTS, token=token)).status == 401


async def test_lists_are_paged_with_pagination_headers(bimlink: Bimlink) -> None:
    token = await access(bimlink)
    first = await bimlink.call("GET", f"{ACCOUNTS}?limit=1&offset=0", token=token)
    second = await bimlink.call("GET", f"{ACCOUNTS}?limit=1&offset=1", token=token)
    beyond = await bimlink.call("GET", f"{ACCOUNTS}?limit=1&offset=2", token=token)
    assert [r.headers["Pagination-Result"] for r in (first, second, beyond)] == ["2"] * 3
    assert (first.headers["Pagination-Limit"], second.headers["Pagination-Offset"]) == ("1", "1")
    assert [a["id"] for a in first.body + second.body] == [DA1, DA2]
    assert beyond.body == []
    default = await bimlink.call("GET", ACCOUNTS, token=token)
    assert default.headers["Pagination-Limit"] == "25"


@pytest.mark.parametrize(
    ("path", "highest"),
    [(ACCOUNTS, 100), (f"{ACCOUNTS}/{DA1}/locations", 100), (elements_path(DA1, PHASE), 1000)],
)
async def test_each_action_has_a_maximum_limit(bimlink: Bimlink, path: str, highest: int) -> None:
    token = await access(bimlink)
    assert (await bimlink.call("GET", f"{path}?limit={highest}", token=token)).status == 200
    above = await bimlink.call("GET", f"{path}?limit={highest + 1}", token=token)
    assert above.status == 400
    assert str(highest) in above.body["detail"]
    assert (await bimlink.call("GET", f"{path}?offset=-1", token=token)).status == 400


async def test_locations_tree_and_spatial_structure(bimlink: Bimlink) -> None:
    token = await access(bimlink)
    reply = await bimlink.call("GET", f"{ACCOUNTS}/{DA1}/locations?limit=100", token=token)
    names = {loc["name"]: loc for loc in reply.body}
    assert set(names) == {"Campus Utrecht", "Zuidas Amsterdam"}
    campus = names["Campus Utrecht"]
    assert campus["address"]["city"] == "Utrecht"
    kantoor = next(p for p in campus["projects"] if p["name"] == "Kantoor A")
    assert [ph["name"] for ph in kantoor["projectPhases"]] == ["Ontwerp", "Beheer"]
    elements = await bimlink.call("GET", elements_path(DA1, PHASE) + "?limit=1000", token=token)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for e in elements.body:
        by_type.setdefault(e["type"], []).append(e)
    storeys = {s["id"] for s in by_type["Storey"]}
    assert len(storeys) == 3
    assert len(by_type["Space"]) == 9
    assert all(space["parentId"] in storeys for space in by_type["Space"])


async def test_data_is_visible_per_user(bimlink: Bimlink) -> None:
    token = await access(bimlink)
    other = await bimlink.call("GET", f"{ACCOUNTS}/{DA3}/locations", token=token)
    assert other.status == 403
    partial = await bimlink.call("GET", f"{ACCOUNTS}/{DA2}/locations", token=token)
    assert [loc["name"] for loc in partial.body] == ["Rotterdam Haven"]
    hidden_phase = demo_id("prj-5/Beheer")
    assert (await bimlink.call("GET", elements_path(DA2, hidden_phase), token=token)).status == 403
    assert (await bimlink.call("GET", elements_path(DA1, "nope"), token=token)).status == 404
    await bimlink.admin("POST", "/login", {"user": "other-user"})
    other_token = await access(bimlink)
    mine = await bimlink.call("GET", ACCOUNTS, token=other_token)
    assert [a["id"] for a in mine.body] == [DA3]


async def test_rate_limit_answers_429_with_retry_after(clock: FakeClock) -> None:
    port = free_port()
    async with running_bimlink(
        options_for(port, rate_limit_requests=3), clock=clock, port=port
    ) as emu:
        token = await access(emu)
        statuses = [(await emu.call("GET", ACCOUNTS, token=token)).status for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = await emu.call("GET", ACCOUNTS, token=token)
        assert limited.status == 429
        assert int(limited.headers["Retry-After"]) == 60
        clock.advance(60)
        assert (await emu.call("GET", ACCOUNTS, token=token)).status == 200


async def statuses_under(emu: Bimlink, token: str, count: int, **profile: Any) -> list[int | str]:
    await emu.admin("POST", "/faults", profile)
    seen: list[int | str] = []
    for _ in range(count):
        try:
            seen.append((await emu.call("GET", ACCOUNTS, token=token)).status)
        except aiohttp.ClientError:
            seen.append("reset")
    return seen


async def test_fault_profiles(bimlink: Bimlink) -> None:
    token = await access(bimlink)
    assert set(await statuses_under(bimlink, token, 5, profile="errors", rate=1.0)) <= {
        500, 502, 503,
    }  # fmt: skip
    assert await statuses_under(bimlink, token, 3, profile="resets", rate=1.0) == ["reset"] * 3
    assert await statuses_under(bimlink, token, 2, profile="429-storm") == [429, 429]
    assert await statuses_under(
        bimlink, token, 2, profile="timeouts", rate=1.0, hang_seconds=0
    ) == [504, 504]
    assert await statuses_under(
        bimlink, token, 2, profile="latency", min_latency_seconds=0, max_latency_seconds=0.01
    ) == [200, 200]
    await bimlink.admin("POST", "/faults", {"profile": "token-outage"})
    outage = await bimlink.token(grant_type="refresh_token", refresh_token="x")
    assert (outage.status, outage.body["error"]) == (503, "temporarily_unavailable")
    log = (await bimlink.admin("GET", "/requests"))["requests"]
    assert {e["fault"] for e in log} >= {"error", "reset", "throttle", "hang", "delay"}


async def test_revoked_tokens_profile_revokes_access_and_refresh_tokens(bimlink: Bimlink) -> None:
    tokens = await bimlink.tokens()
    await bimlink.admin("POST", "/faults", {"profile": "revoked-tokens"})
    assert (await bimlink.call("GET", ACCOUNTS, token=tokens["access_token"])).status == 401
    reply = await bimlink.token(grant_type="refresh_token", refresh_token=tokens["refresh_token"])
    assert (reply.status, reply.body["error"]) == (400, "invalid_grant")
    fresh = await bimlink.tokens()  # a new login is not affected
    assert (await bimlink.call("GET", ACCOUNTS, token=fresh["access_token"])).status == 200


async def test_faults_are_reproducible_from_the_seed() -> None:
    runs = []
    for _ in range(2):
        async with running_bimlink() as emu:
            token = await access(emu)
            runs.append(await statuses_under(emu, token, 20, profile="errors", rate=0.5, seed=7))
    assert runs[0] == runs[1]
    assert 200 in runs[0]
    assert len(set(runs[0])) > 1


async def test_admin_changes_data_at_run_time(bimlink: Bimlink) -> None:
    token = await access(bimlink)
    space = demo_id("prj-1/Beheer/storey-0/space-0")
    renamed = await bimlink.admin("PUT", f"/data/element/{space}", {"name": "Vergaderzaal"})
    assert renamed["name"] == "Vergaderzaal"
    assert renamed["type"] == "Space"
    await bimlink.admin(
        "PUT", "/data/location/new-loc",
        {"domainAccountId": DA1, "name": "Nieuw", "address": {"city": "Delft", "country": "NL"}},
    )  # fmt: skip
    bad = await bimlink.call("PUT", "/_emulator/data/project/p", json={"locationId": "missing"})
    assert bad.status == 400
    assert "locationId" in bad.body["error"]
    removed = await bimlink.admin("DELETE", f"/data/element/{demo_id('prj-1/Beheer/storey-1')}")
    assert removed["deleted"] == 4  # the storey and its three spaces
    elements = await bimlink.call("GET", elements_path(DA1, PHASE) + "?limit=1000", token=token)
    names = {e["name"] for e in elements.body}
    assert "Vergaderzaal" in names
    assert "01 Verdieping" not in names
    assert "1.01" not in names
    locations = await bimlink.call("GET", f"{ACCOUNTS}/{DA1}/locations", token=token)
    assert "Nieuw" in {loc["name"] for loc in locations.body}
    missing = await bimlink.call("DELETE", "/_emulator/data/element/none")
    assert missing.status == 404
    await bimlink.admin("POST", "/reset")
    assert "Vergaderzaal" not in str(await bimlink.admin("GET", "/data"))
