"""`check` against the emulator running as its own process: each mistake says what to fix."""

from __future__ import annotations

import io
import json
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING

import pytest
import yaml

from connector.cli import EXIT_CHECK_FAILED, EXIT_OK, main
from connector.devbroker import free_port
from tests.integration.helpers import emulator_process

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SECRET = "demo-secret"


@pytest.fixture(scope="module")
def emulator_url() -> Iterator[str]:
    with emulator_process("buildingminds") as url:
        yield url


def check(tmp_path: Path, url: str, **sink: str) -> tuple[int, str, str]:
    values = {
        "base_url": f"{url}/api/digitaltwinintegration",
        "token_url": f"{url}/buildingminds.onmicrosoft.com/oauth2/v2.0/token",
        "client_id": "demo-client",
        "client_secret": SECRET,
        "scope": "api://buildingminds-emulator/.default",
    }
    values.update(sink)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"sink": values}))
    out, err = io.StringIO(), io.StringIO()
    code = main(["check", "--config", str(path)], out, err)
    return code, out.getvalue(), err.getvalue()


def test_good_credentials_pass(tmp_path: Path, emulator_url: str) -> None:
    code, out, err = check(tmp_path, emulator_url)
    assert code == EXIT_OK, err
    assert "token: ok" in out
    assert "GET /batch: ok" in out
    assert SECRET not in out + err


def test_wrong_secret_says_to_recopy_it(tmp_path: Path, emulator_url: str) -> None:
    code, out, err = check(tmp_path, emulator_url, client_secret="not-the-secret")
    assert code == EXIT_CHECK_FAILED
    assert "AADSTS7000215" in err
    assert "client secret" in err.lower()
    assert "not-the-secret" not in out + err


def test_wrong_client_id_names_the_client_id(tmp_path: Path, emulator_url: str) -> None:
    code, _, err = check(tmp_path, emulator_url, client_id="demo-cIient")
    assert code == EXIT_CHECK_FAILED
    assert "AADSTS700016" in err
    assert "client id" in err.lower() or "client_id" in err.lower()


def test_scope_without_default_suffix_is_completed_and_said(
    tmp_path: Path, emulator_url: str
) -> None:
    code, out, err = check(tmp_path, emulator_url, scope="api://buildingminds-emulator")
    assert code == EXIT_OK, err
    assert "sink.scope has no /.default; sending 'api://buildingminds-emulator/.default'" in out


def test_wrong_scope_says_so(tmp_path: Path, emulator_url: str) -> None:
    code, _, err = check(tmp_path, emulator_url, scope="api://someone-else/.default")
    assert code == EXIT_CHECK_FAILED
    assert "AADSTS70011" in err
    assert "scope" in err.lower()


def test_wrong_base_url_points_at_base_url(tmp_path: Path, emulator_url: str) -> None:
    code, _, err = check(tmp_path, emulator_url, base_url=f"{emulator_url}/api/wrong-path")
    assert code == EXIT_CHECK_FAILED
    assert "answered 404" in err
    assert "check sink.base_url" in err


def test_unreachable_token_endpoint_is_named(tmp_path: Path, emulator_url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}/t/oauth2/v2.0/token"
    code, _, err = check(tmp_path, emulator_url, token_url=dead)
    assert code == EXIT_CHECK_FAILED
    assert f"token endpoint {dead} is not reachable" in err


def test_batches_lists_recent_batches_with_their_status(tmp_path: Path, emulator_url: str) -> None:
    token = post_form(
        f"{emulator_url}/x/oauth2/v2.0/token",
        {"client_id": "demo-client", "client_secret": SECRET, "grant_type": "client_credentials",
         "scope": "api://buildingminds-emulator/.default"},
    )["access_token"]  # fmt: skip
    body = b'[{"buildingId": "B-77", "eventType": "BuildingAdded", "name": "__fail_async__"}]'
    request = urllib.request.Request(  # noqa: S310 - a loopback URL of the test
        f"{emulator_url}/api/digitaltwinintegration/building", data=body, method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request) as response:  # noqa: S310
        batch_id = json.loads(response.read())["batchId"]
    check(tmp_path, emulator_url)  # writes c.yaml
    out, err = io.StringIO(), io.StringIO()
    code = main(["batches", "--config", str(tmp_path / "c.yaml"), "--batch-id", batch_id], out, err)
    assert code == EXIT_OK, err.getvalue()
    text = out.getvalue()
    assert batch_id in text
    assert "/building" in text
    assert "1 of 1 batches" in text


def post_form(url: str, fields: dict[str, str]) -> dict[str, str]:
    data = urllib.parse.urlencode(fields).encode()
    with urllib.request.urlopen(url, data=data) as response:  # noqa: S310 - loopback
        result: dict[str, str] = json.loads(response.read())
        return result
