"""Settings: one YAML file, environment overrides, validated once at start.

Owns reading the config file, overlaying `CONNECTOR_<SECTION>__<KEY>` environment variables,
reading secret files, and validating everything into small frozen sections. Every problem is
reported at once, each with its key path and what to do (`ConfigError.problems`).

Must not: print or log a secret (secrets are `SecretStr`, masked in every repr and in
`Settings.summary()`), read anything but the config and secret files, or be re-read at run time.

Environment overrides: the key path in upper case, sections joined by a double underscore,
after the prefix `CONNECTOR_`, e.g. `CONNECTOR_KAFKA__BOOTSTRAP_SERVERS=broker:9092` or
`CONNECTOR_SINK__RATE_LIMIT__REQUESTS=50`. Values are read as YAML scalars or flow lists
(`CONNECTOR_KAFKA__TOPICS='[a, b]'`).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from connector.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "ENV_PREFIX",
    "AnySourceSettings",
    "BimlinkSourceSettings",
    "BimplusSourceSettings",
    "KafkaSettings",
    "LoggingSettings",
    "MetricsSettings",
    "PipelineSettings",
    "RateLimitSettings",
    "Settings",
    "SinkSettings",
    "SourceSettings",
    "TrackingSettings",
    "WindowSettings",
    "env_name",
    "load_settings",
]

ENV_PREFIX = "CONNECTOR_"

# Secret keys that may instead be given as `<key>_file` (a path whose content is the secret).
SECRET_FILE_KEYS: tuple[tuple[str, ...], ...] = (
    ("sink", "client_secret"),
    ("kafka", "sasl_password"),
)
# The same, in each item of `sources`.
SOURCE_SECRET_KEYS: tuple[str, ...] = ("client_secret", "password")

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


def _existing_file(value: Path | None) -> Path | None:
    if value is not None and not value.is_file():
        raise ValueError(f"file {value} does not exist or is not a file")
    return value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")) or value.endswith("://"):
        raise ValueError("must be an http:// or https:// URL")
    return value.rstrip("/")


class KafkaSettings(_Section):
    """Where to read from, as whom, and where bad records go."""

    bootstrap_servers: str = "localhost:9092"
    group_id: str = "building-twin-connector"
    topics: tuple[str, ...] = ("building-changes", "meter-changes")
    dead_letter_topic: str = "building-twin-connector.dlq"
    client_id: str = "building-twin-connector"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    topic_entities: dict[str, str] = {}
    fetch_max_bytes: Annotated[int, Field(ge=1024)] = 8 * 1024 * 1024
    max_partition_fetch_bytes: Annotated[int, Field(ge=1024)] = 1024 * 1024

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _files_exist(cls, value: Path | None) -> Path | None:
        return _existing_file(value)

    @field_validator("topic_entities")
    @classmethod
    def _known_entities(cls, value: dict[str, str]) -> dict[str, str]:
        from connector.entities import ENTITIES, find_entity  # noqa: PLC0415 - avoids a cycle

        unknown = [f"{t}: {e}" for t, e in value.items() if find_entity(e) is None]
        if unknown:
            known = ", ".join(sorted(x.endpoint for x in ENTITIES.values()))
            raise ValueError(f"unknown entity in {'; '.join(unknown)} (known: {known})")
        return value

    @field_validator("topics")
    @classmethod
    def _topics_not_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or any(not t.strip() for t in value):
            raise ValueError("needs at least one topic name, and no empty names")
        return value

    @model_validator(mode="after")
    def _sasl_complete(self) -> KafkaSettings:
        if self.security_protocol.startswith("SASL") and (
            self.sasl_mechanism is None or not self.sasl_username or self.sasl_password is None
        ):
            raise ValueError(
                f"security_protocol {self.security_protocol} needs sasl_mechanism, "
                "sasl_username and sasl_password (or sasl_password_file)"
            )
        return self


class RateLimitSettings(_Section):
    """The platform's request budget per credential: `requests` per rolling `per_seconds`."""

    requests: PositiveInt = 100
    per_seconds: PositiveFloat = 60.0


# What `sink.type: buildingx` changes: its own defaults, and the keys only it needs or takes.
_BUILDINGX_DEFAULTS: dict[str, Any] = {
    "base_url": "https://eu.buildingx.siemens.com/api/openness",
    "token_url": "https://siemens-bt-015.eu.auth0.com/oauth/token",
    "audience": "https://horizon.siemens.com",
    "rate_limit": {"requests": 10, "per_seconds": 1.0},  # per client and API (seed 002)
}
_TYPE_KEYS: dict[str, tuple[str, ...]] = {
    "buildingminds": ("scope",),
    "buildingx": ("audience", "partition_id"),
}


class SinkSettings(_Section):
    """The platform the records go to, and the credential used for it.

    `type: buildingminds` (the default) needs `scope`; `type: buildingx` (docs/buildingx.md)
    needs `partition_id`, takes `audience`, and has its own defaults for `base_url`,
    `token_url`, `audience` and `rate_limit` (10 requests per second, per API).
    """

    type: Literal["buildingminds", "buildingx"] = "buildingminds"
    base_url: str = "https://api.onbuildingminds.com/api/digitaltwinintegration"
    token_url: str = (
        "https://login.microsoftonline.com/buildingminds.onmicrosoft.com/oauth2/v2.0/token"  # noqa: S105 - a URL, not a password
    )
    client_id: str
    client_secret: SecretStr
    scope: str | None = Field(default=None, validate_default=True)
    audience: str | None = Field(default=None, validate_default=True)
    partition_id: str | None = Field(default=None, validate_default=True)
    point_field: str = "meterId"
    """buildingx: the field of an operational-measurement record that names its point."""
    point_ids: dict[str, str] = {}
    """buildingx: that field's value -> Building X point id (unmapped values are used as is)."""
    overwrite_values: bool = True
    """buildingx: send point values with `overwrite=true`, so a corrected reading replaces."""
    parent_wait_seconds: Annotated[float, Field(ge=0)] = 600.0
    """buildingx: how long a location waits for its parent before it is dead-lettered."""
    rate_limit: RateLimitSettings = RateLimitSettings()
    request_timeout_seconds: PositiveFloat = 30.0
    tls_verify: bool = True
    ca_file: Path | None = None
    token_renew_statuses: tuple[int, ...] = (401,)
    token_skew_seconds: Annotated[float, Field(ge=0)] = 300.0
    max_retry_after_seconds: PositiveFloat = 120.0
    retry_backoff_seconds: PositiveFloat = 0.5
    retry_backoff_max_seconds: PositiveFloat = 60.0
    misconfigured_pause_seconds: PositiveFloat = 300.0

    @field_validator("base_url", "token_url")
    @classmethod
    def _urls(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("ca_file")
    @classmethod
    def _ca_exists(cls, value: Path | None) -> Path | None:
        return _existing_file(value)

    @model_validator(mode="before")
    @classmethod
    def _type_defaults(cls, data: Any) -> Any:
        """Fill the defaults of `type: buildingx`; a partial rate_limit keeps its other half."""
        if not isinstance(data, dict) or data.get("type") != "buildingx":
            return data
        data = dict(data)
        for key, default in _BUILDINGX_DEFAULTS.items():
            given = data.get(key)
            if isinstance(default, dict) and isinstance(given, dict):
                data[key] = {**default, **given}
            elif given is None:
                data[key] = default
        return data

    @field_validator("client_id")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("scope", "audience", "partition_id")
    @classmethod
    def _of_type(cls, value: str | None, info: ValidationInfo) -> str | None:
        """Required by its sink type, refused by the others (the problem names the key)."""
        sink_type = info.data.get("type")
        if sink_type is None:  # the type itself is wrong: that problem is reported alone
            return value
        name = str(info.field_name)
        needed = name in _TYPE_KEYS[sink_type]
        if value is None and needed:
            raise ValueError(
                f"required for sink.type {sink_type}: set it in the config file or in "
                f"{env_name(('sink', name))}"
            )
        if value is not None and not needed:
            users = [t for t, keys in _TYPE_KEYS.items() if name in keys]
            raise ValueError(f"only sink.type {' / '.join(users)} takes it; remove it")
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return None if value is None else value.strip()

    @property
    def token_scope(self) -> str:
        """The scope sent to the token endpoint: the client-credentials flow needs `/.default`."""
        scope = self.scope or ""
        return scope if scope.endswith("/.default") else f"{scope}/.default"


class WindowSettings(_Section):
    """When a request closes: full (`max_records` / `max_request_bytes`) or old enough."""

    max_records: Annotated[int, Field(gt=0, le=10_000)] = 500
    max_wait_seconds: Annotated[float, Field(ge=0, le=3600)] = 1.0
    max_request_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024
    max_record_bytes: Annotated[int, Field(ge=256)] = 1024 * 1024

    @model_validator(mode="after")
    def _record_fits_request(self) -> WindowSettings:
        if self.max_record_bytes > self.max_request_bytes - 2:
            raise ValueError("max_record_bytes must be smaller than max_request_bytes")
        return self


class PipelineSettings(_Section):
    """Backpressure, concurrency, commits and shutdown."""

    max_pending_records: PositiveInt = 50_000
    max_pending_bytes: PositiveInt = 64 * 1024 * 1024
    resume_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.5
    max_in_flight_requests: Annotated[int, Field(gt=0, le=64)] = 4
    commit_interval_seconds: PositiveFloat = 5.0
    shutdown_grace_seconds: PositiveFloat = 30.0


class TrackingSettings(_Section):
    """Following accepted batches to their final status."""

    enabled: bool = True
    commit_on: Literal["completed", "accepted"] = "completed"
    poll_interval_seconds: PositiveFloat = 5.0
    max_poll_share: Annotated[float, Field(gt=0, le=1)] = 0.2
    parent_patience_seconds: Annotated[float, Field(ge=0)] = 600.0


class SourceSettings(_Section):
    """What every polling source shares: where its change events and its snapshot go.

    A source reads a platform's current state every `poll_interval_seconds`, compares it with
    the last snapshot (kept in the compacted `snapshot_topic`) and publishes the differences to
    `topic` as BuildingMinds native change events (connector/sources/base.py).
    """

    name: str | None = None
    """Tells two sources of one type apart in the snapshot topic and in logs (default: type)."""
    topic: str = "building-changes"
    snapshot_topic: str = "building-twin-connector.snapshots"
    poll_interval_seconds: PositiveFloat = 300.0
    request_timeout_seconds: PositiveFloat = 30.0
    tls_verify: bool = True
    ca_file: Path | None = None

    @field_validator("ca_file")
    @classmethod
    def _source_ca_exists(cls, value: Path | None) -> Path | None:
        return _existing_file(value)


class BimlinkSourceSettings(SourceSettings):
    """BIMlink (BIMcollab Twin) Public API, read as a source (connector/sources/bimlink.py).

    The credential is a user's refresh token, obtained once by `connector auth bimlink` and
    kept (rotated at every use) in `refresh_token_file`; docs/bimlink.md explains each key.
    """

    type: Literal["bimlink"]
    base_url: str = "https://api.bimlink.nl"
    api_prefix: str = "/api/v1"
    """Path of the API below base_url (inferred; set "" if the Swagger shows none)."""
    authority_url: str = "https://api.bimlink.nl"
    """The auth server: /connect/authorize and /connect/token live below it (quickstart)."""
    client_id: str
    client_secret: SecretStr | None = None
    scope: str = "bimlink_publicapi offline_access"
    refresh_token_file: Path
    redirect_port: Annotated[int, Field(ge=1, le=65535)] = 8765
    login_timeout_seconds: PositiveFloat = 300.0
    domain_account_ids: tuple[str, ...] = ()
    """Domain accounts to read; empty: every account the user sees."""
    page_limit: Annotated[int, Field(ge=1, le=1000)] = 100
    phase_names: tuple[str, ...] = ()
    """Which project phase gives a building its floors and spaces: the first phase whose name
    matches one of these (case-insensitive), else the project's last phase."""
    site_type: str = "Other"
    default_country: str = "NL"
    default_city: str = "Unknown"
    valid_from: str = "1900-01-01T00:00:00Z"
    valid_until: str = "9999-12-31T23:59:59Z"
    token_skew_seconds: Annotated[float, Field(ge=0)] = 60.0
    max_attempts: Annotated[int, Field(ge=1, le=20)] = 4
    """Tries per API request (5xx, resets, timeouts, 429) before the poll fails and backs off."""
    max_retry_after_seconds: PositiveFloat = 60.0

    @field_validator("base_url", "authority_url")
    @classmethod
    def _bimlink_urls(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("api_prefix")
    @classmethod
    def _bimlink_prefix(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not value.startswith("/"):
            raise ValueError("must be empty or start with '/', e.g. /api/v1")
        return value

    @field_validator("client_id")
    @classmethod
    def _bimlink_client(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty: the client ID BIMlink support gave you")
        return value.strip()

    @field_validator("scope")
    @classmethod
    def _bimlink_scope(cls, value: str) -> str:
        scopes = value.split()
        missing = [s for s in ("bimlink_publicapi", "offline_access") if s not in scopes]
        if missing:
            raise ValueError(
                f"must include {' and '.join(missing)} (bimlink_publicapi reads the API, "
                "offline_access gives the refresh token the connector runs on)"
            )
        return " ".join(scopes)

    @field_validator("site_type")
    @classmethod
    def _bimlink_site_type(cls, value: str) -> str:
        from connector.emulators.buildingminds_model import SITE_TYPES  # noqa: PLC0415

        if value not in SITE_TYPES:
            raise ValueError(f"must be a BuildingMinds site type: {', '.join(sorted(SITE_TYPES))}")
        return value

    @field_validator("default_country")
    @classmethod
    def _bimlink_country(cls, value: str) -> str:
        if len(value) != 2 or not value.isalpha():
            raise ValueError("must be an ISO 3166 alpha-2 code such as NL")
        return value.upper()

    @field_validator("valid_from", "valid_until")
    @classmethod
    def _bimlink_dates(cls, value: str) -> str:
        from datetime import datetime  # noqa: PLC0415

        try:
            datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")  # noqa: DTZ007 - checked, not used
        except ValueError:
            raise ValueError("must be a UTC date-time like 2024-01-31T00:00:00Z") from None
        return value

    @field_validator("domain_account_ids", "phase_names")
    @classmethod
    def _bimlink_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not v.strip() for v in value):
            raise ValueError("must not contain empty values")
        return tuple(v.strip() for v in value)

    @property
    def token_url(self) -> str:
        return f"{self.authority_url}/connect/token"

    @property
    def authorize_url(self) -> str:
        return f"{self.authority_url}/connect/authorize"

    @property
    def redirect_uri(self) -> str:
        """The URI `connector auth bimlink` listens on; BIMlink must whitelist it exactly."""
        return f"http://127.0.0.1:{self.redirect_port}/callback"


class BimplusSourceSettings(SourceSettings):
    """Bimplus (Allplan) API, read as a source (connector/sources/bimplus.py, docs/bimplus.md).

    `auth: oidc` (the default) finds the token endpoint by OIDC discovery and uses client
    credentials, or the password grant when `username` is set; `auth: legacy` uses the obsolete
    `POST /v2/authorize` with `username`, `password` and `application_id` (`BimPlus` tokens).
    """

    type: Literal["bimplus"]
    base_url: str = "https://api-stage.bimplus.net/v2"
    discovery_url: str | None = None
    """Default: `{base_url}/.well-known/openid-configuration`."""
    auth: Literal["oidc", "legacy"] = "oidc"
    client_id: str | None = None
    client_secret: SecretStr | None = None
    scope: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    application_id: str | None = None
    team_slug: str | None = None
    site_type: Literal[
        "Education", "Health Care", "Hotel", "Industrial", "Lodging", "Leisure & Recreation",
        "Mixed Use", "Office", "Residential", "Retail", "Technology/Science", "Other",
    ] = "Other"  # fmt: skip
    """BuildingMinds Site `type` of every project (Bimplus has no such field)."""
    default_country: Annotated[str, Field(pattern=r"^[A-Z]{2}$")] = "DE"
    default_city: str = "Unknown"
    token_skew_seconds: Annotated[float, Field(ge=0)] = 300.0

    @field_validator("base_url", "discovery_url")
    @classmethod
    def _bimplus_urls(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @field_validator("team_slug")
    @classmethod
    def _slug(cls, value: str | None) -> str | None:
        allowed = set("abcdefghijklmnopqrstuvwxyz0123456789-")
        if value is not None and (not value or not set(value) <= allowed):
            raise ValueError("a team slug is lowercase letters, digits and '-', e.g. my-team")
        return value

    @model_validator(mode="after")
    def _bimplus_credentials(self) -> BimplusSourceSettings:
        values = {
            "client_id": self.client_id, "username": self.username,
            "application_id": self.application_id,
            "client_secret": self.client_secret and self.client_secret.get_secret_value(),
            "password": self.password and self.password.get_secret_value(),
        }  # fmt: skip
        given = {k for k, v in values.items() if v and v.strip()}
        if self.auth == "legacy":
            needed = ["username", "password", "application_id"]
            why = "auth: legacy (POST /v2/authorize) needs"
        elif "username" in given or "password" in given:
            needed = ["client_id", "username", "password"]
            why = "auth: oidc with a user (password grant) needs"
        else:
            needed = ["client_id", "client_secret"]
            why = "auth: oidc (client credentials) needs"
        missing = [k for k in needed if k not in given]
        if missing:
            files = [f"{k}_file" for k in missing if k in ("password", "client_secret")]
            hint = f" (secrets may come from {' / '.join(files)})" if files else ""
            raise ValueError(f"{why} {', '.join(needed)}; missing: {', '.join(missing)}{hint}")
        return self

    @property
    def discovery(self) -> str:
        """Where the OIDC discovery document is read."""
        return self.discovery_url or f"{self.base_url}/.well-known/openid-configuration"


AnySourceSettings = Annotated[
    BimlinkSourceSettings | BimplusSourceSettings, Field(discriminator="type")
]


class MetricsSettings(_Section):
    """The HTTP port that serves /metrics, /healthz and /readyz (0 turns it off)."""

    host: str = "0.0.0.0"  # noqa: S104 - a container's metrics must be reachable from outside
    port: Annotated[int, Field(ge=0, le=65535)] = 9108


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "text"] = "auto"


class Settings(_Section):
    """The whole configuration. Built only by `load_settings`."""

    kafka: KafkaSettings = KafkaSettings()
    sink: SinkSettings
    window: WindowSettings = WindowSettings()
    pipeline: PipelineSettings = PipelineSettings()
    tracking: TrackingSettings = TrackingSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    sources: tuple[AnySourceSettings, ...] = ()
    """Platforms polled into Kafka by the same process (BIMlink, Bimplus); none by default."""

    def summary(self) -> dict[str, Any]:
        """The settings as plain data with every secret masked, for `check` and start-up logs."""
        masked: dict[str, Any] = _mask(self.model_dump(mode="python"))
        return masked


def _mask(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return "**********" if value.get_secret_value() else ""
    if isinstance(value, dict):
        return {k: _mask(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_mask(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def env_name(path: tuple[str | int, ...]) -> str:
    """The environment variable that overrides the key at `path`."""
    return ENV_PREFIX + "__".join(str(p).upper() for p in path)


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, overlay and validate the configuration.

    `path` may be None to configure from the environment alone. Raises `ConfigError` listing
    every problem found; never returns a partly valid result.
    """
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(path, problems)
        if problems:  # what follows would only repeat "required" for every key
            raise ConfigError(problems)
    _overlay_environment(raw, environ, problems)
    _read_secret_files(raw, problems)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_describe(err) for err in exc.errors())
    else:
        if not problems:
            return settings
    raise ConfigError(problems)


def _read_yaml(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(f"{path}: cannot read the config file ({exc.strerror})")
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problems.append(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}")
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path}: the top level must be a mapping of sections (kafka, sink, ...)")
        return {}
    return dict(data)


def _overlay_environment(
    raw: dict[str, Any], environ: Mapping[str, str], problems: list[str]
) -> None:
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__")]
        if any(not k for k in keys):
            problems.append(f"{name}: malformed variable name; join keys with '__'")
            continue
        try:
            value = yaml.safe_load(environ[name]) if environ[name] else ""
        except yaml.YAMLError:
            value = environ[name]
        if value is None:
            value = ""
        if isinstance(value, int | float) and not isinstance(value, bool) and _is_text(keys):
            value = environ[name]  # an ID or a secret that happens to look like a number
        _place(raw, name, keys, value, problems)


def _place(
    raw: dict[str, Any], name: str, keys: list[str], value: Any, problems: list[str]
) -> None:
    """Put one environment value at its key path; list items are named by index."""
    node: Any = raw
    for key in keys[:-1]:
        if isinstance(node, list):  # CONNECTOR_SOURCES__0__CLIENT_ID: an item of a list
            if not key.isdigit() or int(key) >= len(node):
                problems.append(f"{name}: '{key}' is not an index of that list")
                return
            child = node[int(key)]
        else:
            child = node.setdefault(key, {})
        if not isinstance(child, dict | list):
            problems.append(f"{name}: '{key}' is not a section")
            return
        node = child
    if isinstance(node, list):
        problems.append(f"{name}: name a key of one list item, e.g. CONNECTOR_SOURCES__0__NAME")
    else:
        node[keys[-1]] = value


_TEXT_KEYS = {
    "client_id", "client_secret", "scope", "group_id", "sasl_password", "sasl_username",
    "password", "username", "partition_id", "application_id", "team_slug", "name",
}  # fmt: skip


def _is_text(keys: list[str]) -> bool:
    return keys[-1] in _TEXT_KEYS


def _secret_places(raw: dict[str, Any]) -> list[tuple[str, dict[str, Any], str]]:
    """(dotted parent, mapping, key) for every place a secret may be given as `<key>_file`."""
    places: list[tuple[str, dict[str, Any], str]] = []
    for *sections, key in SECRET_FILE_KEYS:
        node: Any = raw
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict):
            places.append((".".join(sections), node, key))
    sources = raw.get("sources")
    for index, item in enumerate(sources if isinstance(sources, list) else []):
        if isinstance(item, dict):
            places.extend((f"sources.{index}", item, key) for key in SOURCE_SECRET_KEYS)
    return places


def _read_secret_files(raw: dict[str, Any], problems: list[str]) -> None:
    for parent, node, key in _secret_places(raw):
        if f"{key}_file" not in node:
            continue
        dotted = f"{parent}.{key}"
        file_value = node.pop(f"{key}_file")
        if key in node and node[key] not in (None, ""):
            problems.append(f"{dotted}: set either {key} or {key}_file, not both")
            continue
        try:
            node[key] = Path(str(file_value)).read_text(encoding="utf-8").strip()
        except OSError as exc:
            problems.append(f"{dotted}_file: cannot read {file_value} ({exc.strerror})")


_FIELD_SETS: dict[str, type[BaseModel]] = {
    "": Settings,
    "kafka": KafkaSettings,
    "sink": SinkSettings,
    "sink.rate_limit": RateLimitSettings,
    "window": WindowSettings,
    "pipeline": PipelineSettings,
    "tracking": TrackingSettings,
    "metrics": MetricsSettings,
    "logging": LoggingSettings,
}


_SOURCE_SETS: dict[str, type[BaseModel]] = {
    "bimlink": BimlinkSourceSettings,
    "bimplus": BimplusSourceSettings,
}


def _describe(err: Any) -> str:
    loc = tuple(err["loc"])
    model_of_parent: type[BaseModel] | None = _FIELD_SETS.get(".".join(str(p) for p in loc[:-1]))
    if len(loc) >= 3 and loc[0] == "sources" and isinstance(loc[1], int) and loc[2] in _SOURCE_SETS:
        # pydantic puts the discriminator's choice after the index: sources.0.bimlink.key
        model_of_parent = _SOURCE_SETS[str(loc[2])] if len(loc) == 4 else None
        loc = (*loc[:2], *loc[3:])
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    kind = err["type"]
    if kind == "missing":
        hint = f"required: set it in the config file or in {env_name(loc)}"
        if loc[-1] in {"client_secret", "sasl_password", "password"}:
            hint += f" (or {loc[-1]}_file / {env_name(loc)}_FILE)"
        return f"{dotted}: {hint}"
    if kind == "extra_forbidden":
        known = list(model_of_parent.model_fields) if model_of_parent else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        suggestion = f"; did you mean '{close[0]}'?" if close else ""
        choices = f" (known keys: {', '.join(known)})" if known and not close else ""
        return f"{dotted}: unknown key{suggestion}{choices}"
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{dotted}: {message}"
