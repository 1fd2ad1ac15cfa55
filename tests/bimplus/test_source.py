"""The Bimplus source against its emulator over a real socket, and its mapping as pure
functions: discovery, the three credentials and their failures, team selection, the mapping
to BuildingMinds records, and re-reading only the topology of changed projects."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest
import yaml
from pydantic import ValidationError

from connector.config import load_settings
from connector.errors import (
    ConfigError,
    CredentialsRejected,
    EndpointMisconfigured,
    RateLimited,
    ServerError,
    TokenEndpointUnavailable,
)
from connector.sources.base import Change
from connector.sources.bimplus.client import BimplusSource, external_id, iso_datetime, map_topology
from connector.sources.bimplus.settings import BimplusSourceSettings
from twin_emulators.bimplus_state import DEMO_APPLICATION_ID, DEMO_PASSWORD, DEMO_USER
from twin_emulators.buildingminds_model import ENTITIES as RULES
from twin_emulators.buildingminds_model import validate_record

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.emulators import Bimplus

pytestmark = pytest.mark.anyio

GUID = "c8c8e6f2-4495-484c-929d-0049f1f9d4ff"


def source(bimplus: Bimplus, **overrides: Any) -> BimplusSource:
    return BimplusSource(bimplus.settings(**overrides), bimplus.session, clock=bimplus.clock)


def topology_reads(log: list[dict[str, Any]]) -> list[str]:
    return [r["path"].split("/")[4] for r in log if r["path"].endswith("/topology")]


# -- pure mapping -----------------------------------------------------------------------------


def test_external_ids_are_prefixed_and_at_most_50_characters() -> None:
    assert external_id(GUID) == f"bimplus:{GUID}"
    assert len(external_id(GUID)) == 44
    assert len(external_id(GUID, "bimplus:addr:")) == 49
    long = external_id("x" * 80)
    assert long.startswith("bimplus:")
    assert len(long) <= 50
    assert long == external_id("x" * 80)  # stable


def test_timestamps_become_utc_iso() -> None:
    assert iso_datetime("2013-05-01T09:33:18") == "2013-05-01T09:33:18Z"
    assert iso_datetime("2013-05-01T09:33:18.123+02:00") == "2013-05-01T07:33:18Z"
    assert iso_datetime(None) is None
    assert iso_datetime("yesterday") is None


def test_topology_links_each_level_to_the_nearest_parent_and_skips_orphans() -> None:
    tree = {
        "id": "p", "type": "Project", "children": [
            {"id": "site", "type": "IfcSite", "children": [
                {"id": "b", "type": "IfcBuilding", "name": "B", "children": [
                    {"id": "f", "type": "IfcBuildingStorey", "name": "", "children": [
                        {"id": "div", "type": "TopologyDivision", "children": [
                            {"id": "s", "type": "IfcSpace", "name": "Room"},
                        ]},
                        {"id": "w", "type": "IfcWall", "name": "Wall"},
                    ]},
                ]},
            ]},
            {"id": "lost", "type": "IfcBuildingStorey", "name": "No building"},
            {"id": "lost-room", "type": "IfcSpace", "name": "No storey"},
        ],
    }  # fmt: skip
    items, orphans = map_topology(tree, "bimplus:p", "bimplus:addr:p", "2020-01-01T00:00:00Z")
    by_id = {i.external_id: i for i in items}
    assert list(by_id) == ["bimplus:b", "bimplus:f", "bimplus:s"]
    assert by_id["bimplus:b"].record["siteId"] == "bimplus:p"
    assert by_id["bimplus:f"].record["buildingId"] == "bimplus:b"
    assert by_id["bimplus:f"].record["name"] == "IfcBuildingStorey f"
    assert by_id["bimplus:s"].record["floorId"] == "bimplus:f"
    assert orphans == 2
    for item in items:  # every record passes the platform's own rules
        body = Change(item.entity, item.external_id, "Added", item.record).value()
        assert validate_record(RULES[item.entity.endpoint], orjson.loads(body)) is None


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"auth": "legacy", "username": "u", "password": "p"}, "missing: application_id"),
        ({"client_id": "c"}, "missing: client_secret (secrets may come from client_secret_file)"),
        ({"username": "u", "password": "p"}, "missing: client_id"),
        ({"client_id": "c", "client_secret": "s", "team_slug": "Not A Slug"}, "team slug"),
        ({"client_id": "c", "client_secret": "s", "base_url": "api.bimplus.net"}, "http"),
    ],
)
def test_settings_say_what_is_missing(raw: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        BimplusSourceSettings.model_validate({"type": "bimplus", **raw})


def test_settings_mask_secrets() -> None:
    settings = BimplusSourceSettings.model_validate(
        {"type": "bimplus", "client_id": "c", "client_secret": "topsecret"}
    )
    assert "topsecret" not in repr(settings)
    assert settings.discovery == "https://api-stage.bimplus.net/v2/.well-known/openid-configuration"


# -- discovery and credentials ----------------------------------------------------------------


async def test_discovery_is_read_once(bimplus: Bimplus) -> None:
    src = source(bimplus)
    await src.snapshot()
    await src.snapshot()
    log = await bimplus.requests()
    assert sum(r["path"].endswith("openid-configuration") for r in log) == 1
    assert await src.token_url() == f"{bimplus.url}/realms/bimplus/protocol/openid-connect/token"


async def test_a_wrong_discovery_url_is_named_in_the_error(bimplus: Bimplus) -> None:
    wrong = f"{bimplus.url}/v3/.well-known/openid-configuration"
    with pytest.raises(CredentialsRejected) as caught:
        await source(bimplus, discovery_url=wrong).snapshot()
    assert wrong in str(caught.value)
    assert "discovery_url" in str(caught.value)


async def test_an_unreachable_discovery_url_is_retriable() -> None:
    settings = BimplusSourceSettings.model_validate(
        {"type": "bimplus", "base_url": "http://127.0.0.1:9/v2", "client_id": "c",
         "client_secret": "s"}
    )  # fmt: skip
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TokenEndpointUnavailable, match=re.escape("127.0.0.1:9/v2/.well-known")):
            await BimplusSource(settings, session).snapshot()


async def test_discovery_outage_is_retriable_then_recovers(bimplus: Bimplus) -> None:
    src = source(bimplus)
    await bimplus.admin("POST", "/faults", profile="token-outage")
    with pytest.raises(TokenEndpointUnavailable):
        await src.snapshot()
    await bimplus.admin("POST", "/faults", profile="none")
    assert await src.snapshot()


async def test_a_bad_client_secret_says_what_to_fix(bimplus: Bimplus) -> None:
    with pytest.raises(CredentialsRejected) as caught:
        await source(bimplus, client_secret="wrong").snapshot()
    text = str(caught.value)
    assert "invalid_client" in text
    assert "client ID or secret" in text
    assert "wrong" not in text.replace("wrong)", "")  # the secret itself is never shown


async def test_password_grant_reads_the_same_data(bimplus: Bimplus) -> None:
    src = source(bimplus, client_id="bimplus-web", client_secret=None, username=DEMO_USER,
                 password=DEMO_PASSWORD)  # fmt: skip
    assert len(await src.snapshot()) == 18


async def test_legacy_scheme_works_and_warns_once(
    bimplus: Bimplus, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    src = source(bimplus, auth="legacy", client_id=None, client_secret=None,
                 username=DEMO_USER, password=DEMO_PASSWORD,
                 application_id=DEMO_APPLICATION_ID)  # fmt: skip
    assert len(await src.snapshot()) == 18
    await src.snapshot()
    warnings = [r for r in caplog.records if "obsolete" in r.getMessage()]
    assert len(warnings) == 1
    log = await bimplus.requests()
    assert next(r["path"] for r in log) == "/v2/authorize"
    assert not any("openid" in r["path"] for r in log)
    bimplus.clock.advance(7200)  # the legacy token expires: renewed with the same client_id
    assert len(await src.snapshot()) == 18
    assert sum(r["path"] == "/v2/authorize" for r in await bimplus.requests()) == 2


async def test_legacy_bad_password_says_what_to_fix(bimplus: Bimplus) -> None:
    src = source(bimplus, auth="legacy", username=DEMO_USER, password="wrong",
                 application_id=DEMO_APPLICATION_ID)  # fmt: skip
    with pytest.raises(CredentialsRejected, match="user name or password"):
        await src.snapshot()


async def test_legacy_unknown_application_says_what_to_fix(bimplus: Bimplus) -> None:
    src = source(bimplus, auth="legacy", username=DEMO_USER, password=DEMO_PASSWORD,
                 application_id="0000")  # fmt: skip
    with pytest.raises(CredentialsRejected, match="application_id"):
        await src.snapshot()


# -- teams --------------------------------------------------------------------------------------


async def test_the_only_team_is_chosen(bimplus: Bimplus) -> None:
    assert await source(bimplus).team() == "bimplus-demo"


async def test_several_teams_need_team_slug(bimplus: Bimplus) -> None:
    await bimplus.admin("POST", "/teams", slug="second", name="Second")
    with pytest.raises(EndpointMisconfigured) as caught:
        await source(bimplus).team()
    assert "bimplus-demo, second" in str(caught.value)
    assert "team_slug" in str(caught.value)
    assert await source(bimplus, team_slug="second").team() == "second"


async def test_an_unknown_team_slug_lists_the_users_teams(bimplus: Bimplus) -> None:
    with pytest.raises(EndpointMisconfigured) as caught:
        await source(bimplus, team_slug="nosuch").snapshot()
    assert "'nosuch'" in str(caught.value)
    assert "bimplus-demo" in str(caught.value)


# -- snapshots --------------------------------------------------------------------------------


async def test_snapshot_maps_every_level(bimplus: Bimplus) -> None:
    items = await source(bimplus).snapshot()
    counts: dict[str, int] = {}
    for item in items:
        counts[item.entity.name] = counts.get(item.entity.name, 0) + 1
    assert counts == {"Address": 2, "Site": 2, "Building": 2, "Floor": 4, "Space": 8}
    site = next(i for i in items if i.entity.name == "Site")
    address = next(i for i in items if i.entity.name == "Address")
    assert site.record["addressIds"] == [address.external_id]
    assert address.record["city"] == "Muenchen"
    assert address.record["country"] == "DE"
    assert site.record["type"] == "Other"
    assert all(len(i.external_id) <= 50 for i in items)


async def test_only_changed_projects_have_their_topology_read_again(bimplus: Bimplus) -> None:
    src = source(bimplus)
    first = await src.snapshot()
    projects = [p.id for p in bimplus.state.projects.values()]
    assert sorted(topology_reads(await bimplus.requests())) == sorted(projects)
    await bimplus.admin("POST", "/reset")
    again = await src.snapshot()
    assert again == first
    assert topology_reads(await bimplus.requests()) == []
    storey = next(n for n in bimplus.state.projects[projects[1]].nodes.values()
                  if n.type == "IfcBuildingStorey")  # fmt: skip
    await bimplus.admin("PATCH", f"/projects/{projects[1]}/nodes/{storey.id}", name="Ground")
    changed = await src.snapshot()
    assert topology_reads(await bimplus.requests()) == [projects[1]]
    floor = next(i for i in changed if i.external_id == f"bimplus:{storey.id}")
    assert floor.record["name"] == "Ground"
    await bimplus.admin("DELETE", f"/projects/{projects[0]}")
    remaining = await src.snapshot()
    assert not any(projects[0] in i.external_id for i in remaining)


async def test_transient_failures_raise_retriable_errors(bimplus: Bimplus) -> None:
    src = source(bimplus)
    await src.team()
    await bimplus.admin("POST", "/faults", profile="errors", rate=1.0)
    with pytest.raises(ServerError) as caught:
        await src.snapshot()
    assert caught.value.retriable
    await bimplus.admin("POST", "/faults", profile="429-storm", retry_after_seconds=5)
    with pytest.raises(RateLimited) as limited:
        await src.snapshot()
    assert limited.value.retry_after == 5
    await bimplus.admin("POST", "/faults", profile="resets", rate=1.0)
    with pytest.raises(ServerError):
        await src.snapshot()
    await bimplus.admin("POST", "/faults", profile="none")
    assert len(await src.snapshot()) == 18


async def test_a_revoked_token_is_renewed_once(bimplus: Bimplus) -> None:
    src = source(bimplus)
    await src.snapshot()
    await bimplus.admin("POST", "/faults", profile="revoked-tokens")
    assert len(await src.snapshot()) == 18
    tokens = [r for r in await bimplus.requests() if r["path"].endswith("/token")]
    assert len(tokens) == 2


def test_config_file_errors_name_the_source_and_secret_files_work(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("demo-password\n")
    base = {
        "sink": {"client_id": "c", "client_secret": "s", "scope": "api://x"},
        "sources": [{"type": "bimplus", "auth": "legacy", "username": DEMO_USER,
                     "password_file": str(secret)}],
    }  # fmt: skip
    config = tmp_path / "connector.yaml"
    config.write_text(yaml.safe_dump(base))
    with pytest.raises(ConfigError, match=r"sources\.0: .*missing: application_id"):
        load_settings(config, environ={})
    settings = load_settings(config, environ={"CONNECTOR_SOURCES__0__APPLICATION_ID": "A1"})
    source = settings.sources[0]
    assert isinstance(source, BimplusSourceSettings)
    assert source.password is not None
    assert source.password.get_secret_value() == DEMO_PASSWORD
    assert DEMO_PASSWORD not in str(settings.summary())
