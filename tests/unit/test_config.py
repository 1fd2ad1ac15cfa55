"""Configuration: what a user sees for good and bad settings."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from connector.config import Settings, env_name, load_settings
from connector.errors import ConfigError

SECRET = "s3cr3t-Value-that-must-never-print"

MINIMAL = f"""
sink:
  client_id: my-client
  client_secret: {SECRET}
  scope: api://bm-prod
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "connector.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems_of(path: Path | None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env or {})
    return caught.value.problems


def test_minimal_file_gets_documented_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), {})
    assert settings.kafka.bootstrap_servers == "localhost:9092"
    assert settings.kafka.topics == ("building-changes", "meter-changes")
    assert settings.kafka.dead_letter_topic == "building-twin-connector.dlq"
    assert settings.sink.rate_limit.requests == 100
    assert settings.sink.rate_limit.per_seconds == 60
    assert settings.window.max_records == 500
    assert settings.window.max_wait_seconds == 1.0
    assert settings.metrics.port == 9108
    assert settings.sink.client_secret.get_secret_value() == SECRET


def test_example_config_is_valid_and_documents_every_key() -> None:
    example = Path(__file__).parents[2] / "config" / "connector.example.yaml"
    settings = load_settings(example, {})
    text = example.read_text()

    def keys(model: type[object], prefix: str = "") -> list[str]:
        found = []
        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            sub = field.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                found += keys(sub, f"{prefix}{name}.")
            else:
                found.append(f"{prefix}{name}")
        return found

    missing = [k for k in keys(Settings) if f"{k.rsplit('.', 1)[-1]}:" not in text]
    assert missing == [], f"keys not documented in the example config: {missing}"
    assert settings.sink.type == "buildingminds"


def test_three_mistakes_are_reported_together(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
        kafka:
          topics: []
        sink:
          client_id: my-client
          client_secret: {SECRET}
          scope: api://bm
          base_url: ftp://wrong
        window:
          max_record: 10
        """,
    )
    problems = problems_of(path)
    assert len(problems) == 3, problems
    assert any(p.startswith("kafka.topics: needs at least one topic") for p in problems)
    assert "sink.base_url: must be an http:// or https:// URL" in problems
    assert "window.max_record: unknown key; did you mean 'max_records'?" in problems


def test_missing_required_keys_name_the_key_and_its_environment_variable() -> None:
    problems = problems_of(None)
    assert "sink: required: set it in the config file or in CONNECTOR_SINK" in problems
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"CONNECTOR_SINK__CLIENT_ID": "x", "CONNECTOR_SINK__SCOPE": "y"})
    expected = (
        "sink.client_secret: required: set it in the config file or in "
        "CONNECTOR_SINK__CLIENT_SECRET (or client_secret_file / CONNECTOR_SINK__CLIENT_SECRET_FILE)"
    )
    assert caught.value.problems == [expected]
    assert str(caught.value).startswith("configuration has 1 problem:\n  - sink.client_secret")


def test_environment_overrides_file_values_with_typed_values(tmp_path: Path) -> None:
    env = {
        "CONNECTOR_KAFKA__BOOTSTRAP_SERVERS": "broker-1:9093",
        "CONNECTOR_KAFKA__TOPICS": "[a, b, c]",
        "CONNECTOR_SINK__RATE_LIMIT__REQUESTS": "50",
        "CONNECTOR_SINK__CLIENT_ID": "12345",
        "CONNECTOR_WINDOW__MAX_WAIT_SECONDS": "0.25",
        "UNRELATED": "ignored",
    }
    settings = load_settings(write(tmp_path, MINIMAL), env)
    assert settings.kafka.bootstrap_servers == "broker-1:9093"
    assert settings.kafka.topics == ("a", "b", "c")
    assert settings.sink.rate_limit.requests == 50
    assert settings.sink.client_id == "12345"
    assert settings.window.max_wait_seconds == 0.25
    assert env_name(("sink", "rate_limit", "requests")) == "CONNECTOR_SINK__RATE_LIMIT__REQUESTS"


def test_secret_from_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    path = write(tmp_path, f"sink: {{client_id: c, scope: s, client_secret_file: {secret_file}}}\n")
    settings = load_settings(path, {})
    assert settings.sink.client_secret.get_secret_value() == SECRET


def test_unreadable_secret_file_and_both_forms_are_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "sink: {client_id: c, scope: s, client_secret_file: /nonexistent}\n")
    problems = problems_of(path)
    assert (
        problems[0]
        == "sink.client_secret_file: cannot read /nonexistent (No such file or directory)"
    )
    path = write(
        tmp_path, "sink: {client_id: c, scope: s, client_secret: x, client_secret_file: y}\n"
    )
    assert "sink.client_secret: set either client_secret or client_secret_file, not both" in (
        problems_of(path)
    )


def test_file_problems_are_clear(tmp_path: Path) -> None:
    assert problems_of(tmp_path / "absent.yaml") == [
        f"{tmp_path / 'absent.yaml'}: cannot read the config file (No such file or directory)"
    ]
    broken = write(tmp_path, "sink: [unclosed\n")
    (problem,) = problems_of(broken)[:1]
    assert "not valid YAML at line 2" in problem
    scalar = write(tmp_path, "just a string\n")
    assert problems_of(scalar)[0].endswith(
        "the top level must be a mapping of sections (kafka, sink, ...)"
    )


def test_sasl_needs_its_credentials(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "kafka: {security_protocol: SASL_SSL}\n")
    (problem,) = problems_of(path)
    assert problem.startswith("kafka: security_protocol SASL_SSL needs sasl_mechanism")


def test_scope_gets_default_suffix_once(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), {})
    assert settings.sink.token_scope == "api://bm-prod/.default"
    env = {"CONNECTOR_SINK__SCOPE": "api://bm-prod/.default"}
    assert load_settings(write(tmp_path, MINIMAL), env).sink.token_scope == "api://bm-prod/.default"


def test_no_secret_in_reprs_summaries_or_errors(tmp_path: Path) -> None:
    env = {"CONNECTOR_KAFKA__SASL_PASSWORD": "kafka-" + SECRET}
    settings = load_settings(write(tmp_path, MINIMAL), env)
    for text in (repr(settings), str(settings), str(settings.summary()), repr(settings.sink)):
        assert SECRET not in text
    assert settings.summary()["sink"]["client_secret"] == "**********"
    bad = write(tmp_path, MINIMAL + "window: {max_records: " + SECRET + "}\n")
    message = str(problems_of(bad))
    assert SECRET not in message
    assert "window.max_records: Input should be a valid integer" in message


@pytest.mark.parametrize(
    "path",
    sorted((Path(__file__).parents[2] / "config").glob("*.yaml")),
    ids=lambda p: p.name,
)
def test_every_shipped_config_loads(path: Path) -> None:
    settings = load_settings(path, {})
    assert settings.sink.client_id


# --- sources ------------------------------------------------------------------------------


def test_a_sources_problems_name_its_index_and_suggest_the_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + textwrap.dedent(
            """
            sources:
              - type: bimlink
                poll_interval_secnds: 60
              - type: nosuch
            """
        ),
    )
    found = problems_of(path)
    assert (
        "sources.0.poll_interval_secnds: unknown key; did you mean 'poll_interval_seconds'?"
        in found
    )
    assert any(p.startswith("sources.1: ") and "bimlink" in p for p in found), found


def test_environment_overrides_reach_a_list_item_and_secret_files_work_there(
    tmp_path: Path,
) -> None:
    secret = tmp_path / "secret"
    secret.write_text(SECRET + "\n")
    source = "\nsources:\n  - {type: bimlink, client_id: c, refresh_token_file: /tmp/t}\n"
    path = write(tmp_path, MINIMAL + source)
    env = {
        "CONNECTOR_SOURCES__0__POLL_INTERVAL_SECONDS": "42",
        "CONNECTOR_SOURCES__0__CLIENT_SECRET_FILE": str(secret),
    }
    settings = load_settings(path, env)
    assert settings.sources[0].poll_interval_seconds == 42
    assert settings.sources[0].type == "bimlink"
    assert settings.sources[0].client_secret is not None
    assert settings.sources[0].client_secret.get_secret_value() == SECRET
    assert SECRET not in repr(settings) + str(settings.summary())
    assert problems_of(path, {"CONNECTOR_SOURCES__3__TOPIC": "x"}) == [
        "CONNECTOR_SOURCES__3__TOPIC: '3' is not an index of that list"
    ]
