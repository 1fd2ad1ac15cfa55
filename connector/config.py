"""Settings: one YAML file, environment overrides, validated once at start.

Owns reading the config file, overlaying `CONNECTOR_<SECTION>__<KEY>` environment variables,
reading secret files, and validating everything into small frozen sections. Every problem is
reported at once, each with its key path and what to do (`ConfigError.problems`).

Must not: print or log a secret (secrets are `SecretStr`, masked in every repr and in
`Settings.summary()`), read anything but the config and secret files, or be re-read at run time.

Environment overrides: the key path in upper case, sections joined by a double underscore,
after the prefix `CONNECTOR_`, e.g. `CONNECTOR_KAFKA__BOOTSTRAP_SERVERS=broker:9092` or
`CONNECTOR_SINK__RATE_LIMIT__REQUESTS=50`. Text keys (IDs, URLs, secrets, file paths, and every
`…_file`) are taken verbatim, so a secret `abc #1`, `&pw`, `~` or `null` stays what it is; a list
key takes `a,b` or a YAML flow list `[a, b]`; numbers, booleans and mappings are read as YAML.
A problem with such a value names the variable, not the file.

Unsafe settings that a user may need (plain http:// to another host, `tls_verify: false`, a
secret file other users may read, a scope that names a permission) load, with a warning each
in `Settings.warnings`, also logged at WARNING by `load_settings`. Settings that cannot work
(a token renewal on a non-4xx status or on 429, an infinite timeout) are problems.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import types
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from connector.entities import ENTITIES, find_entity
from connector.errors import ConfigError
from connector.logs import get_logger, redact, register_secret
from connector.mapping import CompiledMapping, compile_mapping
from connector.sections import (
    ENV_PREFIX,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    Section,
    env_name,
    existing_file,
    http_url,
)
from connector.sinks import SINKS, settings_models
from connector.sinks.settings import RateLimitSettings, SinkSettings
from connector.sources import SOURCES
from connector.sources import settings_models as source_settings_models
from connector.sources.settings import SourceSettings

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "ENV_PREFIX",
    "AnySourceSettings",
    "KafkaSettings",
    "LoggingSettings",
    "MappingFieldSettings",
    "MappingSettings",
    "MetricsSettings",
    "PipelineSettings",
    "RateLimitSettings",
    "ReceiptsSettings",
    "SchemaRegistrySettings",
    "Settings",
    "SinkSettings",
    "SourceSettings",
    "TrackingSettings",
    "WindowSettings",
    "env_name",
    "load_settings",
]


# Secret keys that may instead be given as `<key>_file` (a path whose content is the secret).
SECRET_FILE_KEYS: tuple[tuple[str, ...], ...] = (
    ("sink", "client_secret"),
    ("kafka", "sasl_password"),
    ("schema_registry", "password"),
    ("schema_registry", "token"),
)
# The same in each item of `sources`: `SOURCE_SECRET_KEYS` (below), every source type's secrets.

log = get_logger(__name__)


# The building blocks are shared with the sink and source packages' sections (connector.sections).
class _Section(BaseModel):
    model_config = Section.model_config


_existing_file = existing_file
_http_url = http_url


def _topic_name(value: str) -> str:
    """Kafka's own rule for a topic name (so a typo is a config error, not a broker error)."""
    if not value or len(value) > 249 or value in (".", "..") or not set(value) <= _TOPIC_CHARS:
        raise ValueError(
            f"{value!r} is not a Kafka topic name: letters, digits, '.', '_' and '-', "
            "at most 249 characters"
        )
    return value


_TOPIC_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


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
    # 4 MiB: each fetch costs CPU of its own, and change envelopes are large (measured on
    # 430-byte Debezium records: 22.1 -> 17.8 CPU s per million from 1 MiB to 4 MiB)
    max_partition_fetch_bytes: Annotated[int, Field(ge=1024)] = 4 * 1024 * 1024

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _files_exist(cls, value: Path | None) -> Path | None:
        return _existing_file(value)

    @field_validator("topic_entities")
    @classmethod
    def _known_entities(cls, value: dict[str, str]) -> dict[str, str]:
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
        for topic in value:
            _topic_name(topic)
        return value

    @field_validator("dead_letter_topic")
    @classmethod
    def _dead_letter_topic_name(cls, value: str) -> str:
        return _topic_name(value)

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


# `sink`: one section per sink package, told apart by `type` (buildingminds when absent)
_SINK_SETS: dict[str, type[SinkSettings]] = dict(zip(SINKS, settings_models(), strict=True))
if TYPE_CHECKING:
    AnySinkSettings = SinkSettings
else:
    AnySinkSettings = Annotated[
        typing.Union[tuple(_SINK_SETS.values())], Field(discriminator="type")  # noqa: UP007
    ]
DEFAULT_SINK = "buildingminds"


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
    parent_patience_seconds: NonNegativeFloat = 600.0
    lost_after_seconds: PositiveFloat = 600.0
    """A batch neither the listing nor a lookup by its ID has shown this long is lost."""
    lost_retries: Annotated[int, Field(ge=0, le=100)] = 3
    """How often a lost batch's records are sent again before they are dead-lettered."""


class ReceiptsSettings(_Section):
    """The receipts topic: each record's final outcome, keyed `Entity/ID` (connector.receipts)."""

    enabled: bool = False
    topic: str = "building-twin-connector.receipts"
    """Create it compacted (cleanup.policy=compact): the latest receipt per record is kept."""

    @field_validator("topic")
    @classmethod
    def _receipts_topic_name(cls, value: str) -> str:
        return _topic_name(value)


# `sources`: one section per source package, told apart by `type` (connector/sources/)
_SOURCE_SETS: dict[str, type[SourceSettings]] = dict(
    zip(SOURCES, source_settings_models(), strict=True)
)
if TYPE_CHECKING:
    AnySourceSettings = SourceSettings
else:
    AnySourceSettings = Annotated[
        typing.Union[tuple(_SOURCE_SETS.values())], Field(discriminator="type")  # noqa: UP007
    ]


class MappingFieldSettings(_Section):
    """A mapped field with an explicit conversion: `{expr: opened, convert: date}`."""

    expr: str
    convert: str | None = None


class MappingSettings(_Section):
    """Rows of one topic (or of one Debezium source table) -> records of one platform entity.

    docs/mapping.md has the whole reference. Compiled once here, so a bad expression is a
    configuration problem reported with its key path, never a failure at run time.
    """

    topic: str | None = None
    table: str | None = None
    entity: str
    id: str
    fields: dict[str, str | MappingFieldSettings] = {}
    constants: dict[str, Any] = {}
    filter: str | None = None
    on_delete: Literal["delete", "ignore"] = "delete"

    _compiled: CompiledMapping | None = PrivateAttr(default=None)

    @field_validator("entity")
    @classmethod
    def _known_entity(cls, value: str) -> str:
        if find_entity(value) is None:
            known = ", ".join(sorted(e.endpoint for e in ENTITIES.values()))
            raise ValueError(f"unknown entity {value!r}; one of: {known}")
        return value

    @model_validator(mode="after")
    def _compile(self) -> MappingSettings:
        if (self.topic is None) == (self.table is None):
            raise ValueError("give exactly one of topic (a Kafka topic) or table (source.table)")
        fields = {
            name: spec if isinstance(spec, str) else {"expr": spec.expr, "convert": spec.convert}
            for name, spec in self.fields.items()
        }
        entity = find_entity(self.entity)
        if entity is not None and entity.id_field in fields:
            raise ValueError(
                f"fields.{entity.id_field}: the external ID comes from `id`, not from fields"
            )
        compiled = compile_mapping(
            entity=self.entity, id_template=self.id, fields=fields,  # type: ignore[arg-type]
            constants=self.constants, filter_expression=self.filter, on_delete=self.on_delete,
        )  # fmt: skip
        self._compiled = compiled
        return self

    @property
    def compiled(self) -> CompiledMapping:
        assert self._compiled is not None  # noqa: S101 - set by the validator
        return self._compiled


class MetricsSettings(_Section):
    """The HTTP port that serves /metrics, /healthz and /readyz (0 turns it off)."""

    host: str = "0.0.0.0"  # noqa: S104 - a container's metrics must be reachable from outside
    port: Annotated[int, Field(ge=0, le=65535)] = 9108


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "text"] = "auto"


class SchemaRegistrySettings(_Section):
    """A Confluent-compatible Schema Registry, for Avro and JSON Schema values in its wire
    format (docs/mapping.md); without `url` such values are dead-lettered with that hint."""

    url: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    """HTTP basic auth (Confluent Cloud: the API key and secret), with `username`."""
    token: SecretStr | None = None
    """A bearer token instead of basic auth."""
    request_timeout_seconds: Annotated[float, Field(gt=0, le=30, allow_inf_nan=False)] = 10.0
    """At most 30: a fetch runs in the consume loop, which /healthz expects to turn."""
    tls_verify: bool = True
    ca_file: Path | None = None
    retry_backoff_seconds: PositiveFloat = 1.0
    retry_backoff_max_seconds: PositiveFloat = 60.0
    max_schema_bytes: PositiveInt = 1024 * 1024

    @field_validator("url")
    @classmethod
    def _registry_url(cls, value: str | None) -> str | None:
        return None if value is None else _http_url(value)

    @field_validator("ca_file")
    @classmethod
    def _registry_ca_exists(cls, value: Path | None) -> Path | None:
        return _existing_file(value)

    @model_validator(mode="after")
    def _one_auth(self) -> SchemaRegistrySettings:
        if (self.username is None) != (self.password is None):
            raise ValueError("set both username and password (basic auth), or neither")
        if self.token is not None and self.username is not None:
            raise ValueError("set either username/password or token, not both")
        return self


class Settings(_Section):
    """The whole configuration. Built only by `load_settings`."""

    kafka: KafkaSettings = KafkaSettings()
    sink: AnySinkSettings
    """The platform the records go to: the section of `sink.type` (connector/sinks/)."""
    window: WindowSettings = WindowSettings()
    pipeline: PipelineSettings = PipelineSettings()
    tracking: TrackingSettings = TrackingSettings()
    receipts: ReceiptsSettings = ReceiptsSettings()
    metrics: MetricsSettings = MetricsSettings()
    logging: LoggingSettings = LoggingSettings()
    sources: tuple[AnySourceSettings, ...] = ()
    """Platforms polled into Kafka by the same process (BIMlink, Bimplus); none by default."""
    mappings: tuple[MappingSettings, ...] = ()
    """Source rows -> platform records, per topic or source table (docs/mapping.md)."""
    schema_registry: SchemaRegistrySettings = SchemaRegistrySettings()

    @model_validator(mode="before")
    @classmethod
    def _default_sink_type(cls, data: Any) -> Any:
        sink = data.get("sink") if isinstance(data, dict) else None
        if isinstance(sink, dict) and sink.get("type") is None:
            data = {**data, "sink": {**sink, "type": DEFAULT_SINK}}
        return data

    @field_validator("mappings")
    @classmethod
    def _one_mapping_each(cls, value: tuple[MappingSettings, ...]) -> tuple[MappingSettings, ...]:
        seen: set[str] = set()
        for m in value:
            name = f"topic {m.topic}" if m.topic else f"table {m.table}"
            if name in seen:
                raise ValueError(f"two mappings for {name}; merge them into one")
            seen.add(name)
        return value

    _warnings: tuple[str, ...] = PrivateAttr(default=())

    @property
    def warnings(self) -> tuple[str, ...]:
        """Unsafe settings this configuration chose, one sentence each (logged at load)."""
        return self._warnings

    def summary(self) -> dict[str, Any]:
        """The settings as plain data for `check` and start-up logs: every secret masked, the
        user and password of a URL masked (the sink's section has only its own type's keys)."""
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
    if isinstance(value, str):
        return redact(value)  # https://user:password@host -> https://***@host
    return value


# Where a key's value came from, when not from the file: key path -> environment variable.
_Origins = dict[tuple[str, ...], str]


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read, overlay and validate the configuration.

    `path` may be None to configure from the environment alone. Raises `ConfigError` listing
    every problem found; never returns a partly valid result. On success, registers every
    configured secret with `logs.register_secret` (so no log line can show one) and logs each
    of `Settings.warnings` at WARNING.
    """
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    warnings: list[str] = []
    origins: _Origins = {}
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_yaml(path, problems)
        if problems:  # what follows would only repeat "required" for every key
            raise ConfigError(problems)
    _overlay_environment(raw, environ, problems, origins)
    _read_secret_files(raw, problems, warnings, origins)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        problems.extend(_describe(err, origins) for err in exc.errors())
    else:
        if not problems:
            _register_secrets(settings)
            warnings.extend(_unsafe_choices(settings))
            settings._warnings = tuple(warnings)
            for warning in warnings:
                log.warning("configuration: %s", warning)
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
        problems.append(f"{path}: not valid YAML{_yaml_where(exc)}")
        return {}
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path}: the top level must be a mapping of sections (kafka, sink, ...)")
        return {}
    return dict(data)


def _yaml_where(exc: yaml.YAMLError) -> str:
    """Where a YAML problem starts, and what it is.

    PyYAML's `problem_mark` is where it gave up: for an unclosed quote or bracket that is the
    end of the file, far below the mistake. Its `context_mark` is where the construct began
    (the opening quote). The line shown is the context's when the parser ran to the end of the
    file, else the problem's; the other line follows when it differs.
    """
    problem = getattr(exc, "problem", None)
    problem_mark = getattr(exc, "problem_mark", None)
    context = getattr(exc, "context", None)
    context_mark = getattr(exc, "context_mark", None)
    if problem_mark is None:
        return f": {problem or exc}"
    at_end = problem_mark.buffer is not None and problem_mark.index >= len(problem_mark.buffer) - 1
    text = f"{context}, {problem}" if context else str(problem)
    if context_mark is not None and at_end:
        where, other = context_mark, problem_mark
        last_line = other.line + (1 if other.column else 0)  # the end of the file
        note = f" (still open at the end of the file, line {last_line})"
    else:
        where, other, note = problem_mark, context_mark, ""
        if other is not None and other.line != where.line:
            what = str(context).removeprefix("while parsing ").removeprefix("while scanning ")
            note = f" ({what} starts at line {other.line + 1})"
    return f" at line {where.line + 1}, column {where.column + 1}: {text}{note}"


def _overlay_environment(
    raw: dict[str, Any], environ: Mapping[str, str], problems: list[str], origins: _Origins
) -> None:
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX) :].split("__")]
        if any(not k for k in keys):
            problems.append(f"{name}: malformed variable name; join keys with '__'")
            continue
        value = _env_value(environ[name], _kind_of(raw, keys))
        if _place(raw, name, keys, value, problems):
            origins[tuple(keys)] = name


def _env_value(text: str, kind: str) -> Any:
    """One variable's value: verbatim for text, split at commas for a list, else YAML."""
    if kind == "text":
        return text
    if kind == "list" and not text.lstrip().startswith("["):
        return [item.strip() for item in text.split(",")] if text.strip() else []
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    return "" if value is None else value


def _field_of(raw: dict[str, Any], keys: list[str]) -> Any:
    """The pydantic field at `keys` (an item of `sources` by its `type`), or None."""
    model: type[BaseModel] | None = _FIELD_SETS.get(".".join(keys[:-1]))
    if keys[0] == "sink" and len(keys) == 2:  # the section of the configured sink type
        sink = raw.get("sink")
        chosen = sink.get("type") if isinstance(sink, dict) else None
        model = _SINK_SETS.get(str(chosen or DEFAULT_SINK), SinkSettings)
    if keys[0] == "sources" and len(keys) == 3 and keys[1].isdigit():
        items = raw.get("sources")
        item = items[int(keys[1])] if isinstance(items, list) and int(keys[1]) < len(items) else {}
        model = _SOURCE_SETS.get(str(item.get("type"))) if isinstance(item, dict) else None
    return model.model_fields.get(keys[-1]) if model is not None else None


def _kind_of(raw: dict[str, Any], keys: list[str]) -> str:
    """'text' (a string, secret or path: taken verbatim), 'list', or 'yaml' (anything else)."""
    if keys[-1].endswith("_file"):  # client_secret_file, refresh_token_file, ...: a path
        return "text"
    field = _field_of(raw, keys)
    if field is None:
        return "yaml"
    kinds = set()
    for arg in _union_members(field.annotation):
        origin = typing.get_origin(arg) or arg
        if origin in (str, SecretStr, Path):
            kinds.add("text")
        elif origin in (tuple, list):
            kinds.add("list")
        elif arg is not type(None):
            kinds.add("yaml")
    return kinds.pop() if len(kinds) == 1 else "yaml"


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if typing.get_origin(annotation) is Annotated:
        return _union_members(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return tuple(m for a in typing.get_args(annotation) for m in _union_members(a))
    return (annotation,)


def _place(
    raw: dict[str, Any], name: str, keys: list[str], value: Any, problems: list[str]
) -> bool:
    """Put one environment value at its key path; list items are named by index."""
    node: Any = raw
    for key in keys[:-1]:
        if isinstance(node, list):  # CONNECTOR_SOURCES__0__CLIENT_ID: an item of a list
            if not key.isdigit() or int(key) >= len(node):
                problems.append(f"{name}: '{key}' is not an index of that list")
                return False
            child = node[int(key)]
        else:
            child = node.setdefault(key, {})
        if not isinstance(child, dict | list):
            problems.append(f"{name}: '{key}' is not a section")
            return False
        node = child
    if isinstance(node, list):
        problems.append(f"{name}: name a key of one list item, e.g. CONNECTOR_SOURCES__0__NAME")
        return False
    node[keys[-1]] = value
    return True


def _secret_places(raw: dict[str, Any]) -> list[tuple[tuple[str, ...], dict[str, Any], str]]:
    """(parent path, mapping, key) for every place a secret may be given as `<key>_file`."""
    places: list[tuple[tuple[str, ...], dict[str, Any], str]] = []
    for *sections, key in SECRET_FILE_KEYS:
        node: Any = raw
        for section in sections:
            node = node.get(section) if isinstance(node, dict) else None
        if isinstance(node, dict):
            places.append((tuple(sections), node, key))
    sources = raw.get("sources")
    for index, item in enumerate(sources if isinstance(sources, list) else []):
        if isinstance(item, dict):
            places.extend((("sources", str(index)), item, key) for key in SOURCE_SECRET_KEYS)
    return places


def _read_secret_files(
    raw: dict[str, Any], problems: list[str], warnings: list[str], origins: _Origins
) -> None:
    for parent, node, key in _secret_places(raw):
        if f"{key}_file" not in node:
            continue
        dotted = ".".join((*parent, key))
        where = _named(f"{dotted}_file", origins.get((*parent, f"{key}_file")))
        file_value = node.pop(f"{key}_file")
        if key in node and node[key] not in (None, ""):
            problems.append(f"{dotted}: set either {key} or {key}_file, not both")
            continue
        secret_file = Path(str(file_value))
        try:
            node[key] = secret_file.read_text(encoding="utf-8").strip()
            mode = secret_file.stat().st_mode & 0o777
        except OSError as exc:
            problems.append(f"{where}: cannot read {file_value} ({exc.strerror})")
            continue
        if mode & 0o077:
            warnings.append(
                f"{where}: {file_value} may be read by other users (mode {mode:04o}); "
                f"chmod 600 it (Kubernetes: a secret volume's defaultMode: 0400)"
            )


def _named(dotted: str, variable: str | None) -> str:
    return dotted if variable is None else f"{variable} ({dotted})"


def _register_secrets(settings: Settings) -> None:
    """Every configured secret, so `logs.redact` masks it wherever it turns up."""

    def walk(value: Any) -> None:
        if isinstance(value, SecretStr):
            register_secret(value.get_secret_value(), permanent=True)
        elif isinstance(value, BaseModel):
            for name in type(value).model_fields:
                walk(getattr(value, name))
        elif isinstance(value, tuple):
            for item in value:
                walk(item)

    walk(settings)


def _is_loopback(host: str | None) -> bool:
    if host is None or host == "localhost" or host.endswith(".localhost"):
        return host is not None
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _unsafe_choices(settings: Settings) -> list[str]:
    """One warning per setting a user may need but should know is unsafe."""
    found: list[str] = []
    sink = settings.sink
    urls: list[tuple[str, str | None]] = [
        ("sink.base_url", sink.base_url), ("sink.token_url", sink.token_url),
    ]  # fmt: skip
    tls: list[tuple[str, bool]] = [("sink", sink.tls_verify)]
    for index, source in enumerate(settings.sources):
        prefix = f"sources.{index}"
        tls.append((prefix, source.tls_verify))
        urls += [(f"{prefix}.{key}", getattr(source, key)) for key in source.url_keys]
    if settings.schema_registry.url is not None:
        urls.append(("schema_registry.url", settings.schema_registry.url))
        tls.append(("schema_registry", settings.schema_registry.tls_verify))
    for key, url in urls:
        if url is None:
            continue
        parts = urlsplit(url)
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            found.append(
                f"{key}: {redact(url)} is plain http:// to another host: the credential, the "
                "token and the data cross the network unencrypted; use https://"
            )
        if parts.username is not None or parts.password is not None:
            found.append(
                f"{key}: {redact(url)} carries a user name or password; the connector signs in "
                "with its client credentials, so remove them from the URL"
            )
    for section, verify in tls:
        if not verify:
            found.append(
                f"{section}.tls_verify is false: certificates are not checked, so anyone on "
                f"the path can read the token and the data; set {section}.ca_file to your "
                "CA bundle instead"
            )
    found.extend(sink.warnings())  # the sink type's own keys
    return found


_FIELD_SETS: dict[str, type[BaseModel]] = {
    "": Settings,
    "kafka": KafkaSettings,
    "sink.rate_limit": RateLimitSettings,
    "window": WindowSettings,
    "pipeline": PipelineSettings,
    "tracking": TrackingSettings,
    "receipts": ReceiptsSettings,
    "metrics": MetricsSettings,
    "logging": LoggingSettings,
    "schema_registry": SchemaRegistrySettings,
}


# Every secret key of a source type (client_secret, password), which may be `<key>_file` too.
SOURCE_SECRET_KEYS: tuple[str, ...] = tuple(
    dict.fromkeys(
        name
        for model in _SOURCE_SETS.values()
        for name, field in model.model_fields.items()
        if SecretStr in _union_members(field.annotation)
    )
)

_LIST_HINT = (
    "a list: in the file [a, b] or one item per '- ' line; in an environment variable a,b or [a, b]"
)


def _describe(err: Any, origins: _Origins) -> str:
    loc = tuple(err["loc"])
    model_of_parent: type[BaseModel] | None = _FIELD_SETS.get(".".join(str(p) for p in loc[:-1]))
    sink_problem = _sink_problem(err, loc, origins)
    if sink_problem is not None:
        return sink_problem
    if len(loc) >= 2 and loc[0] == "sink" and loc[1] in _SINK_SETS:
        # pydantic puts the discriminator's choice after the section: sink.buildingx.key
        loc = (loc[0], *loc[2:])
        model_of_parent = _FIELD_SETS.get(".".join(str(p) for p in loc[:-1]))
        if len(loc) == 2:
            model_of_parent = _SINK_SETS[str(err["loc"][1])]
    if len(loc) >= 3 and loc[0] == "sources" and isinstance(loc[1], int) and loc[2] in _SOURCE_SETS:
        # pydantic puts the discriminator's choice after the index: sources.0.bimlink.key
        model_of_parent = _SOURCE_SETS[str(loc[2])] if len(loc) == 4 else None
        loc = (*loc[:2], *loc[3:])
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    path = tuple(str(p) for p in loc)
    variable = next(
        (origins[path[:n]] for n in range(len(path), 0, -1) if path[:n] in origins), None
    )
    kind = err["type"]
    if kind == "missing":
        hint = f"required: set it in the config file or in {env_name(loc)}"
        if loc[-1] in {"client_secret", "sasl_password", "password"}:
            hint += f" (or {loc[-1]}_file / {env_name(loc)}_FILE)"
        return f"{dotted}: {hint}"
    if kind == "extra_forbidden":
        known = list(model_of_parent.model_fields) if model_of_parent else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        if variable is not None:
            suggestion = f"; did you mean {env_name((*loc[:-1], close[0]))}?" if close else ""
            return f"{variable}: no such setting ({dotted}){suggestion}"
        suggestion = f"; did you mean '{close[0]}'?" if close else ""
        choices = f" (known keys: {', '.join(known)})" if known and not close else ""
        return f"{dotted}: unknown key{suggestion}{choices}"
    message = str(err["msg"]).removeprefix("Value error, ")
    if kind in ("tuple_type", "list_type"):
        message = f"{message}: {_LIST_HINT}"
    return f"{_named(dotted, variable)}: {message}"


def _sink_problem(err: Any, loc: tuple[Any, ...], origins: _Origins) -> str | None:
    """The problems only `sink`'s union has: a wrong `type`, a key its type needs, a key
    only another type takes. None for any other problem."""
    kind = err["type"]
    if loc == ("sink",) and kind == "union_tag_invalid":
        choices = " or ".join(repr(name) for name in _SINK_SETS)
        return f"{_named('sink.type', origins.get(('sink', 'type')))}: Input should be {choices}"
    if len(loc) != 3 or loc[0] != "sink" or loc[1] not in _SINK_SETS:
        return None
    sink_type, key = str(loc[1]), str(loc[2])
    dotted = f"sink.{key}"
    if kind == "missing" and key in _SINK_SETS[sink_type].required_keys:
        return (
            f"{dotted}: required for sink.type {sink_type}: set it in the config file or in "
            f"{env_name(('sink', key))}"
        )
    users = [t for t, model in _SINK_SETS.items() if key in model.model_fields]
    if kind == "extra_forbidden" and users:
        where = _named(dotted, origins.get(("sink", key)))
        return f"{where}: only sink.type {' / '.join(users)} takes it; remove it"
    return None
