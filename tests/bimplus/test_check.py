"""`building-twin-connector check` with Bimplus sources, over real sockets: the CLI runs in a
worker thread (its own event loop) against the Bimplus and BuildingMinds emulators served by
the test's loop, with no Kafka broker (bootstrap_servers points at a closed port).

A passing check reads only discovery, a token and the teams; each failure prints the fix its
error carries and exits 1, after the other sources were checked too; no secret or token
reaches the output."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import anyio
import pytest
import yaml

from connector.cli import EXIT_CHECK_FAILED, EXIT_OK, main
from tests.integration.helpers import running_emulator
from twin_devtools.devbroker import free_port
from twin_emulators.bimplus_state import (
    DEMO_APPLICATION_ID,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_PASSWORD,
    DEMO_USER,
)
from twin_emulators.buildingminds import EmulatorOptions

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.integration.helpers import Emulator
    from tests.support.emulators import Bimplus

pytestmark = pytest.mark.anyio


@pytest.fixture
async def sink() -> AsyncIterator[Emulator]:
    async with running_emulator(EmulatorOptions()) as emulator:
        yield emulator


async def check(tmp_path: Path, sink: Emulator, *sources: dict[str, Any]) -> tuple[int, str, str]:
    """`check --config FILE` with these sources in a worker thread."""
    config = {
        "kafka": {"bootstrap_servers": f"127.0.0.1:{free_port()}"},  # nothing listens there
        "sink": {
            "base_url": sink.base_url, "token_url": sink.token_url, "client_id": "demo-client",
            "client_secret": "demo-secret", "scope": "api://buildingminds-emulator/.default",
        },
        "sources": list(sources),
    }  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    out, err = io.StringIO(), io.StringIO()
    argv = ["check", "--skip-kafka", "--config", str(path)]  # no broker in these tests
    code = await anyio.to_thread.run_sync(main, argv, out, err)
    return code, out.getvalue(), err.getvalue()


def source(bimplus: Bimplus, **overrides: Any) -> dict[str, Any]:
    """One `sources[]` entry for the emulator; an override of None removes the key."""
    raw: dict[str, Any] = {
        "type": "bimplus", "base_url": f"{bimplus.url}/v2", "client_id": DEMO_CLIENT_ID,
        "client_secret": DEMO_CLIENT_SECRET, "request_timeout_seconds": 5, **overrides,
    }  # fmt: skip
    return {k: v for k, v in raw.items() if v is not None}


def assert_no_secrets(text: str, *secrets: str) -> None:
    for secret in (DEMO_CLIENT_SECRET, DEMO_PASSWORD, *secrets):
        assert secret not in text
    assert "eyJ" not in text, "an access token (a JWT) was printed"


async def test_client_credentials_pass_reading_only_the_teams(
    bimplus: Bimplus, sink: Emulator, tmp_path: Path
) -> None:
    code, out, err = await check(tmp_path, sink, source(bimplus))
    assert code == EXIT_OK, err
    assert "GET /batch: ok" in out, "the sink is still checked first"
    assert "source bimplus: ok (team 'bimplus-demo' visible)" in out
    assert_no_secrets(out + err)
    paths = [r["path"] for r in await bimplus.requests()]
    assert paths == [
        "/v2/.well-known/openid-configuration",
        "/realms/bimplus/protocol/openid-connect/token",
        "/v2/teams",
    ]


async def test_the_legacy_login_passes(bimplus: Bimplus, sink: Emulator, tmp_path: Path) -> None:
    legacy = source(
        bimplus, auth="legacy", client_id=None, client_secret=None, username=DEMO_USER,
        password=DEMO_PASSWORD, application_id=DEMO_APPLICATION_ID,
    )  # fmt: skip
    code, out, err = await check(tmp_path, sink, legacy)
    assert code == EXIT_OK, err
    assert "source bimplus: ok (team 'bimplus-demo' visible)" in out
    assert_no_secrets(out + err)


async def test_a_bad_client_secret_says_to_recopy_it(
    bimplus: Bimplus, sink: Emulator, tmp_path: Path
) -> None:
    code, out, err = await check(tmp_path, sink, source(bimplus, client_secret="not-the-secret"))
    assert code == EXIT_CHECK_FAILED
    assert "source bimplus: FAILED:" in err
    assert "invalid_client" in err
    assert "re-copy both" in err
    assert_no_secrets(out + err, "not-the-secret")


async def test_a_wrong_discovery_url_says_which_key_to_set(
    bimplus: Bimplus, sink: Emulator, tmp_path: Path
) -> None:
    wrong = f"{bimplus.url}/v3/.well-known/openid-configuration"
    code, _, err = await check(tmp_path, sink, source(bimplus, discovery_url=wrong))
    assert code == EXIT_CHECK_FAILED
    assert f"source bimplus: FAILED: OIDC discovery {wrong} answered 404" in err
    assert "set discovery_url (or base_url)" in err


async def test_an_unknown_team_lists_the_users_teams_and_the_next_source_is_still_checked(
    bimplus: Bimplus, sink: Emulator, tmp_path: Path
) -> None:
    code, out, err = await check(
        tmp_path, sink, source(bimplus, name="first", team_slug="nosuch"),
        source(bimplus, name="second"),
    )  # fmt: skip
    assert code == EXIT_CHECK_FAILED
    assert (
        "source first: FAILED: team_slug 'nosuch' is not a team of this Bimplus user; "
        "the user's teams: bimplus-demo"
    ) in err
    assert "source second: ok (team 'bimplus-demo' visible)" in out


async def test_a_failing_sink_does_not_stop_the_sources_being_checked(
    bimplus: Bimplus, sink: Emulator, tmp_path: Path
) -> None:
    await sink.faults(profile="token-outage")
    code, out, err = await check(tmp_path, sink, source(bimplus))
    assert code == EXIT_CHECK_FAILED
    assert "FAILED: token endpoint" in err
    assert "source bimplus: ok (team 'bimplus-demo' visible)" in out


async def test_an_outage_is_said_to_be_worth_a_retry(
    bimplus: Bimplus, sink: Emulator, tmp_path: Path
) -> None:
    await bimplus.admin("POST", "/faults", profile="token-outage")
    code, _, err = await check(tmp_path, sink, source(bimplus))
    assert code == EXIT_CHECK_FAILED
    assert "source bimplus: FAILED: OIDC discovery" in err
    assert "fix: this may pass on a retry" in err
