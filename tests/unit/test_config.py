"""Configuration: what a user sees for good and bad settings."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from connector.config import Settings, env_name, load_settings
from connector.errors import ConfigError
from connector.sinks.buildingminds.settings import BuildingMindsSinkSettings
from connector.sources.bimlink.settings import BimlinkSourceSettings
from connector.sources.bimplus.settings import BimplusSourceSettings

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
    assert "not valid YAML at line 1, column 7: while parsing a flow sequence" in problem
    scalar = write(tmp_path, "just a string\n")
    assert problems_of(scalar)[0].endswith(
        "the top level must be a mapping of sections (kafka, sink, ...)"
    )


def test_sasl_needs_its_credentials(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "kafka: {security_protocol: SASL_SSL}\n")
    (problem,) = problems_of(path)
    assert problem.startswith("kafka: security_protocol SASL_SSL needs sasl_mechanism")


def _buildingminds(settings: Settings) -> BuildingMindsSinkSettings:
    assert isinstance(settings.sink, BuildingMindsSinkSettings), "the default sink.type"
    return settings.sink


def test_scope_gets_default_suffix_once(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), {})
    assert _buildingminds(settings).token_scope == "api://bm-prod/.default"
    env = {"CONNECTOR_SINK__SCOPE": "api://bm-prod/.default"}
    settings = load_settings(write(tmp_path, MINIMAL), env)
    assert _buildingminds(settings).token_scope == "api://bm-prod/.default"


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
    assert isinstance(settings.sources[0], BimlinkSourceSettings)
    assert settings.sources[0].client_secret is not None
    assert settings.sources[0].client_secret.get_secret_value() == SECRET
    assert SECRET not in repr(settings) + str(settings.summary())
    assert problems_of(path, {"CONNECTOR_SOURCES__3__TOPIC": "x"}) == [
        "CONNECTOR_SOURCES__3__TOPIC: '3' is not an index of that list"
    ]


# --- environment values, unsafe settings and the messages a user trips over ---------------


@pytest.mark.parametrize("value", ["abc #frag", "&pw-anchor", "~", "null", "'quoted'", " pad "])
def test_secrets_from_the_environment_are_taken_verbatim(tmp_path: Path, value: str) -> None:
    """YAML made 'abc #frag' into 'abc', and '&pw', '~' and 'null' into an empty secret."""
    source = "\nsources:\n  - {type: bimplus, client_id: c, username: u, password: x}\n"
    path = write(tmp_path, MINIMAL + source)
    env = {
        "CONNECTOR_SINK__CLIENT_SECRET": value,
        "CONNECTOR_KAFKA__SASL_PASSWORD": value,
        "CONNECTOR_SOURCES__0__PASSWORD": value,
        "CONNECTOR_SINK__CLIENT_ID": value,
    }
    settings = load_settings(path, env)
    assert settings.sink.client_secret.get_secret_value() == value
    assert settings.kafka.sasl_password is not None
    assert settings.kafka.sasl_password.get_secret_value() == value
    assert isinstance(settings.sources[0], BimplusSourceSettings)
    password = settings.sources[0].password
    assert password is not None
    assert password.get_secret_value() == value


def test_a_secret_file_path_from_the_environment_is_taken_verbatim(tmp_path: Path) -> None:
    folder = tmp_path / "a #b"
    folder.mkdir()
    (folder / "secret").write_text(SECRET)
    (folder / "secret").chmod(0o600)
    path = write(tmp_path, "sink: {client_id: c, scope: s}\n")
    settings = load_settings(path, {"CONNECTOR_SINK__CLIENT_SECRET_FILE": f"{folder}/secret"})
    assert settings.sink.client_secret.get_secret_value() == SECRET


def test_a_problem_from_an_environment_variable_names_the_variable(tmp_path: Path) -> None:
    """It said `sink.clientsecret: unknown key`, as if the file held the typo."""
    env = {
        "CONNECTOR_SINK__CLIENTSECRET": "x",
        "CONNECTOR_SINK__RATE_LIMIT__REQUESTS": "lots",
        "CONNECTOR_SINK__CLIENT_SECRET_FILE": "/nonexistent/secret",
    }
    found = problems_of(write(tmp_path, MINIMAL.replace(f"client_secret: {SECRET}", "")), env)
    assert (
        "CONNECTOR_SINK__CLIENTSECRET: no such setting (sink.clientsecret); "
        "did you mean CONNECTOR_SINK__CLIENT_SECRET?"
    ) in found
    assert (
        "CONNECTOR_SINK__RATE_LIMIT__REQUESTS (sink.rate_limit.requests): "
        "Input should be a valid integer, unable to parse string as an integer"
    ) in found
    assert (
        "CONNECTOR_SINK__CLIENT_SECRET_FILE (sink.client_secret_file): "
        "cannot read /nonexistent/secret (No such file or directory)"
    ) in found
    from_file = write(tmp_path, MINIMAL + "window: {max_records: lots}\n")
    assert problems_of(from_file)[0].startswith("window.max_records: Input should be")


@pytest.mark.parametrize(
    ("value", "topics"),
    [("a,b", ("a", "b")), ("a, b ,c", ("a", "b", "c")), ("a", ("a",)), ("[a, b]", ("a", "b"))],
)
def test_list_keys_take_a_comma_list_from_the_environment(
    tmp_path: Path, value: str, topics: tuple[str, ...]
) -> None:
    """CONNECTOR_KAFKA__TOPICS='a,b' said 'Input should be a valid tuple'."""
    env = {"CONNECTOR_KAFKA__TOPICS": value, "CONNECTOR_SINK__TOKEN_RENEW_STATUSES": "401,403"}
    settings = load_settings(write(tmp_path, MINIMAL), env)
    assert settings.kafka.topics == topics
    assert settings.sink.token_renew_statuses == (401, 403)


def test_a_list_key_given_something_else_shows_the_forms_a_list_takes(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, MINIMAL + "kafka: {topics: {a: 1}}\n"))
    assert problem == (
        "kafka.topics: Input should be a valid tuple: a list: in the file [a, b] or one item "
        "per '- ' line; in an environment variable a,b or [a, b]"
    )


def test_a_topic_name_kafka_would_refuse_is_a_config_error(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, MINIMAL), {"CONNECTOR_KAFKA__TOPICS": "[a b]"})
    assert problem.startswith("CONNECTOR_KAFKA__TOPICS (kafka.topics): 'a b' is not a Kafka topic")


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"CONNECTOR_SINK__REQUEST_TIMEOUT_SECONDS": ".inf"},
            (
                "CONNECTOR_SINK__REQUEST_TIMEOUT_SECONDS (sink.request_timeout_seconds): "
                "Input should be a finite number"
            ),
        ),
        (
            {"CONNECTOR_PIPELINE__SHUTDOWN_GRACE_SECONDS": "0"},
            (
                "CONNECTOR_PIPELINE__SHUTDOWN_GRACE_SECONDS (pipeline.shutdown_grace_seconds): "
                "Input should be greater than 0"
            ),
        ),
        (
            {"CONNECTOR_SINK__TOKEN_SKEW_SECONDS": "-1"},
            (
                "CONNECTOR_SINK__TOKEN_SKEW_SECONDS (sink.token_skew_seconds): "
                "Input should be greater than or equal to 0"
            ),
        ),
        (
            {"CONNECTOR_TRACKING__PARENT_PATIENCE_SECONDS": ".inf"},
            (
                "CONNECTOR_TRACKING__PARENT_PATIENCE_SECONDS (tracking.parent_patience_seconds): "
                "Input should be a finite number"
            ),
        ),
        (
            {"CONNECTOR_SINK__TOKEN_RENEW_STATUSES": "[200]"},
            (
                "CONNECTOR_SINK__TOKEN_RENEW_STATUSES (sink.token_renew_statuses): 200: only a 4xx "
                "status can mean the token expired (usually 401); renewing on any other answer "
                "would resend every request"
            ),
        ),
        (
            {"CONNECTOR_SINK__TOKEN_RENEW_STATUSES": "401,429"},
            (
                "CONNECTOR_SINK__TOKEN_RENEW_STATUSES (sink.token_renew_statuses): 429 is the rate "
                "limit, which the connector answers by waiting Retry-After; renewing the token on "
                "it would only add requests"
            ),
        ),
    ],
)
def test_settings_that_cannot_work_are_refused(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    assert problems_of(write(tmp_path, MINIMAL), env) == [expected]


def test_an_infinite_source_timeout_is_refused(tmp_path: Path) -> None:
    source = "\nsources:\n  - {type: bimlink, client_id: c, refresh_token_file: /tmp/t}\n"
    env = {"CONNECTOR_SOURCES__0__REQUEST_TIMEOUT_SECONDS": ".inf"}
    assert problems_of(write(tmp_path, MINIMAL + source), env) == [
        (
            "CONNECTOR_SOURCES__0__REQUEST_TIMEOUT_SECONDS (sources.0.request_timeout_seconds): "
            "Input should be a finite number"
        )
    ]


def test_unsafe_settings_a_user_may_need_load_with_a_loud_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o644)
    text = f"""
    sink:
      client_id: c
      client_secret_file: {secret_file}
      scope: api://bm-prod
      base_url: http://api.example.com/api/digitaltwinintegration
      token_url: https://login.example.com/t/oauth2/v2.0/token
      tls_verify: false
    sources:
      - type: bimlink
        client_id: c
        refresh_token_file: /tmp/t
        base_url: http://10.0.0.7:8091
        tls_verify: false
    """
    with caplog.at_level("WARNING", logger="connector.config"):
        settings = load_settings(write(tmp_path, text), {})
    assert settings.warnings == (
        (
            f"sink.client_secret_file: {secret_file} may be read by other users (mode 0644); "
            "chmod 600 it (Kubernetes: a secret volume's defaultMode: 0400)"
        ),
        (
            "sink.base_url: http://api.example.com/api/digitaltwinintegration is plain http:// to "
            "another host: the credential, the token and the data cross the network unencrypted; "
            "use https://"
        ),
        (
            "sources.0.base_url: http://10.0.0.7:8091 is plain http:// to another host: the "
            "credential, the token and the data cross the network unencrypted; use https://"
        ),
        (
            "sink.tls_verify is false: certificates are not checked, so anyone on the path can "
            "read the token and the data; set sink.ca_file to your CA bundle instead"
        ),
        (
            "sources.0.tls_verify is false: certificates are not checked, so anyone on the path "
            "can read the token and the data; set sources.0.ca_file to your CA bundle instead"
        ),
    )
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert logged == [f"configuration: {w}" for w in settings.warnings]


def test_safe_settings_warn_about_nothing(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    secret_file.chmod(0o600)
    text = f"""
    sink:
      client_id: c
      client_secret_file: {secret_file}
      scope: api://bm-prod
      base_url: http://127.0.0.1:8080/api/digitaltwinintegration
      token_url: http://localhost:8080/t/oauth2/v2.0/token
    """
    assert load_settings(write(tmp_path, text), {}).warnings == ()
    assert load_settings(write(tmp_path, MINIMAL), {}).warnings == ()


def test_the_summary_shows_only_the_keys_of_the_chosen_sink_type(tmp_path: Path) -> None:
    buildingx_only = {
        "audience", "partition_id", "point_field", "point_ids", "overwrite_values",
        "parent_wait_seconds",
    }  # fmt: skip
    summary = load_settings(write(tmp_path, MINIMAL), {}).summary()["sink"]
    assert not buildingx_only & set(summary), summary
    assert summary["scope"] == "api://bm-prod"
    buildingx = "sink: {type: buildingx, client_id: c, client_secret: s, partition_id: p}\n"
    summary = load_settings(write(tmp_path, buildingx), {}).summary()["sink"]
    assert buildingx_only <= set(summary)
    assert "scope" not in summary


def test_the_summary_masks_the_password_of_a_url(tmp_path: Path) -> None:
    url = "https://svc:Url-Pass-91@api.example.com/api/digitaltwinintegration"
    settings = load_settings(write(tmp_path, MINIMAL), {"CONNECTOR_SINK__BASE_URL": url})
    assert settings.summary()["sink"]["base_url"] == (
        "https://***@api.example.com/api/digitaltwinintegration"
    )
    assert "Url-Pass-91" not in str(settings.summary()) + "".join(settings.warnings)


@pytest.mark.parametrize(
    ("scope", "sent"),
    [
        ("api://bm-prod", "api://bm-prod/.default"),
        ("api://bm-prod/", "api://bm-prod/.default"),
        ("api://bm-prod/.default", "api://bm-prod/.default"),
        ("8a6f0c4e-1111-2222-3333-444455556666", "8a6f0c4e-1111-2222-3333-444455556666/.default"),
        ("api://bm-prod/user_impersonation", "api://bm-prod/user_impersonation"),
        ("https://api.example.com/Data.Read", "https://api.example.com/Data.Read"),
    ],
)
def test_default_is_appended_only_to_a_scope_that_names_no_permission(
    tmp_path: Path, scope: str, sent: str
) -> None:
    """`api://x/user_impersonation` became `api://x/user_impersonation/.default`."""
    settings = load_settings(write(tmp_path, MINIMAL), {"CONNECTOR_SINK__SCOPE": scope})
    assert _buildingminds(settings).token_scope == sent


def test_a_scope_that_names_a_permission_warns_with_the_fix(tmp_path: Path) -> None:
    env = {"CONNECTOR_SINK__SCOPE": "api://bm-prod/user_impersonation"}
    assert load_settings(write(tmp_path, MINIMAL), env).warnings == (
        (
            "sink.scope 'api://bm-prod/user_impersonation' names the permission "
            "'user_impersonation', so it is sent as given; Entra's client-credentials flow takes "
            "only '<resource>/.default': if the token endpoint answers AADSTS1002012 or "
            "AADSTS70011, set 'api://bm-prod' (sent as 'api://bm-prod/.default')"
        ),
    )


def test_a_yaml_error_names_the_line_where_the_problem_starts(tmp_path: Path) -> None:
    """An unclosed quote on line 13 of a 20-line file was reported at the end of the file."""
    lines = [f"# line {n}" for n in range(1, 21)]
    lines[3:6] = ["sink:", "  client_id: c", "  client_secret: s"]
    lines[12] = '  scope: "api://bm-prod'
    (problem,) = problems_of(write(tmp_path, "\n".join(lines) + "\n"))
    assert problem.endswith(
        "not valid YAML at line 13, column 10: while scanning a quoted scalar, found "
        "unexpected end of stream (still open at the end of the file, line 20)"
    )


def test_configured_secrets_are_masked_in_every_log_line_from_the_start(tmp_path: Path) -> None:
    """A secret echoed by an API or a library (in a message or an `extra=` field) is masked."""
    import io  # noqa: PLC0415
    import logging  # noqa: PLC0415

    from connector.logs import get_logger, setup_logging  # noqa: PLC0415

    env = {"CONNECTOR_KAFKA__SASL_PASSWORD": "kafka-pw-Q7x2"}
    load_settings(write(tmp_path, MINIMAL), env)
    buffer = io.StringIO()
    handler = setup_logging("INFO", "json", buffer)
    try:
        log = get_logger("auth")
        log.warning("token endpoint said: invalid client %s", SECRET)
        log.warning("broker refused", extra={"detail": "SASL auth failed for kafka-pw-Q7x2"})
    finally:
        for name in ("connector", "aiokafka", "aiohttp"):
            logging.getLogger(name).removeHandler(handler)
    output = buffer.getvalue().splitlines()
    assert len(output) == 2
    assert all(SECRET not in line and "kafka-pw-Q7x2" not in line for line in output), output


def test_the_product_never_imports_an_emulator(tmp_path: Path) -> None:
    """config imported SITE_TYPES from devtools/twin_emulators/buildingminds_model."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    source = (
        "\nsources:\n  - {type: bimlink, client_id: c, refresh_token_file: /tmp/t, "
        "site_type: Office}\n"
    )
    path = write(tmp_path, MINIMAL + source)
    code = (
        "import sys; from pathlib import Path; from connector.config import load_settings; "
        f"load_settings(Path({str(path)!r}), {{}}); "
        "print(sorted(m for m in sys.modules if m.startswith('twin_emulators')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
