"""`emulate buildingx` as its own process, and `check` against it: each mistake says what to
fix; the configuration problems of `sink.type: buildingx` name their keys."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from connector.cli import EXIT_CHECK_FAILED, EXIT_OK, EXIT_USAGE, main
from connector.config import load_settings
from connector.errors import ConfigError
from connector.sinks.buildingx.settings import BuildingXSinkSettings
from tests.integration.helpers import emulator_process

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SECRET = "demo-secret"


@pytest.fixture(scope="module")
def emulator_url() -> Iterator[str]:
    with emulator_process("buildingx") as url:
        yield url


def write(tmp_path: Path, **sink: Any) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"sink": {"type": "buildingx", **sink}}))
    return path


def check(tmp_path: Path, url: str, **sink: str) -> tuple[int, str, str]:
    values = {
        "base_url": f"{url}/api/openness",
        "token_url": f"{url}/oauth/token",
        "client_id": "demo-client",
        "client_secret": SECRET,
        "partition_id": "demo-partition",
        **sink,
    }
    out, err = io.StringIO(), io.StringIO()
    code = main(["check", "--skip-kafka", "--config", str(write(tmp_path, **values))], out, err)
    return code, out.getvalue(), err.getvalue()


def test_good_credentials_pass(tmp_path: Path, emulator_url: str) -> None:
    code, out, err = check(tmp_path, emulator_url)
    assert code == EXIT_OK, err
    assert "token: ok (expires in 1440 min)" in out
    assert "GET /structure/partitions/demo-partition/locations: ok" in out
    assert SECRET not in out + err


def test_a_wrong_secret_says_to_recopy_the_credentials(tmp_path: Path, emulator_url: str) -> None:
    code, out, err = check(tmp_path, emulator_url, client_secret="not-the-secret")
    assert code == EXIT_CHECK_FAILED
    assert "access_denied" in err
    assert "re-copy sink.client_id and sink.client_secret" in err
    assert "not-the-secret" not in out + err


def test_a_wrong_audience_says_to_set_the_audience(tmp_path: Path, emulator_url: str) -> None:
    code, _, err = check(tmp_path, emulator_url, audience="https://example.com")
    assert code == EXIT_CHECK_FAILED
    assert "set sink.audience" in err
    assert "https://horizon.siemens.com" in err


def test_a_wrong_partition_points_at_partition_id(tmp_path: Path, emulator_url: str) -> None:
    code, _, err = check(tmp_path, emulator_url, partition_id="someone-elses")
    assert code == EXIT_CHECK_FAILED
    assert "answered 403" in err
    assert "check sink.partition_id" in err


def test_a_wrong_base_url_points_at_base_url(tmp_path: Path, emulator_url: str) -> None:
    code, _, err = check(tmp_path, emulator_url, base_url=f"{emulator_url}/api/wrong")
    assert code == EXIT_CHECK_FAILED
    assert "answered 404" in err
    assert "check sink.base_url" in err


def test_batches_is_refused_for_building_x(tmp_path: Path, emulator_url: str) -> None:
    check(tmp_path, emulator_url)
    out, err = io.StringIO(), io.StringIO()
    code = main(["batches", "--config", str(tmp_path / "c.yaml")], out, err)
    assert code == EXIT_CHECK_FAILED
    assert "no batches" in err.getvalue()


# -- configuration ----------------------------------------------------------------------------


def test_buildingx_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, client_id="c", client_secret="s", partition_id="p")
    sink = load_settings(path, {}).sink

    assert isinstance(sink, BuildingXSinkSettings)
    assert sink.base_url == "https://eu.buildingx.siemens.com/api/openness"
    assert sink.token_url == "https://siemens-bt-015.eu.auth0.com/oauth/token"
    assert sink.audience == "https://horizon.siemens.com"
    assert (sink.rate_limit.requests, sink.rate_limit.per_seconds) == (10, 1.0)
    assert (sink.point_field, sink.point_ids, sink.overwrite_values) == ("meterId", {}, True)


def test_a_partial_rate_limit_keeps_the_buildingx_default_of_the_other_half(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, client_id="c", client_secret="s", partition_id="p")
    env = {"CONNECTOR_SINK__RATE_LIMIT__REQUESTS": "8"}
    rate = load_settings(path, env).sink.rate_limit

    assert (rate.requests, rate.per_seconds) == (8, 1.0)


def test_buildingx_problems_name_their_keys(tmp_path: Path) -> None:
    path = write(tmp_path, client_id="c", scope="api://x")

    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})

    assert sorted(caught.value.problems) == [
        (
            "sink.client_secret: required: set it in the config file or in "
            "CONNECTOR_SINK__CLIENT_SECRET "
            "(or client_secret_file / CONNECTOR_SINK__CLIENT_SECRET_FILE)"
        ),
        (
            "sink.partition_id: required for sink.type buildingx: set it in the config file or "
            "in CONNECTOR_SINK__PARTITION_ID"
        ),
        "sink.scope: only sink.type buildingminds takes it; remove it",
    ]


def test_buildingminds_still_needs_its_scope_and_refuses_partition_id(tmp_path: Path) -> None:
    path = tmp_path / "bm.yaml"
    path.write_text(yaml.safe_dump({"sink": {"client_id": "c", "client_secret": "s",
                                             "partition_id": "p"}}))  # fmt: skip

    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})

    assert sorted(caught.value.problems) == [
        "sink.partition_id: only sink.type buildingx takes it; remove it",
        (
            "sink.scope: required for sink.type buildingminds: set it in the config file or in "
            "CONNECTOR_SINK__SCOPE"
        ),
    ]


def test_the_example_config_is_valid_and_documents_every_buildingx_key() -> None:
    from pathlib import Path  # noqa: PLC0415

    example = Path(__file__).parents[2] / "config" / "connector.buildingx.yaml"
    settings = load_settings(example, {})
    text = example.read_text()

    assert settings.sink.type == "buildingx"
    for key in ("audience", "partition_id", "point_field", "point_ids", "overwrite_values",
                "parent_wait_seconds", "base_url", "token_url", "rate_limit"):  # fmt: skip
        assert f"{key}:" in text


def test_emulate_refuses_a_bad_clients_file(tmp_path: Path) -> None:
    bad = tmp_path / "clients.yaml"
    bad.write_text("- {client_id: a}\n")

    code = main(["emulate", "buildingx", "--port", "0", "--clients", str(bad)])

    assert code == EXIT_USAGE
