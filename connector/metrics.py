"""Metrics: the docs/design.md §3.5 set, built on a registry passed in, behind narrow methods.

Components call `metrics.batch_submitted(...)`, never prometheus objects, so names, units and
label sets live here alone. Labels come from small fixed sets (topic, entity endpoint,
reason, outcome): never an entity ID, a batch ID or a URL.

Must not: serve HTTP (the app serves `/metrics` from this registry) or keep state of its own.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from connector import __version__
from connector.decode import Reason

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
_SUBMIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)


class Metrics:
    """Every metric of the connector, registered on `registry` (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        p = "connector_"
        r = registry
        self._consumed = Counter(
            f"{p}records_consumed", "Records read from Kafka", ["topic"], registry=r
        )
        self._delivered = Counter(
            f"{p}records_delivered", "Records accepted by the platform", ["entity"], registry=r
        )
        self._dead = Counter(
            f"{p}records_dead_lettered",
            "Records written to the dead-letter topic",
            ["reason"],
            registry=r,
        )
        self._coalesced = Counter(
            f"{p}records_coalesced",
            "Records superseded by a newer version of the same ID before sending",
            ["entity"],
            registry=r,
        )
        self._skipped = Counter(
            f"{p}records_skipped",
            "Records that change nothing on the platform, finished as they are (the tombstone "
            "after a delete, a truncate, a row a mapping's filter leaves out)",
            ["why"],
            registry=r,
        )
        self._requests = Counter(
            f"{p}api_requests",
            "Requests to the platform API by outcome",
            ["endpoint", "outcome"],
            registry=r,
        )
        self._retries = Counter(
            f"{p}api_retries", "Retried requests by reason", ["reason"], registry=r
        )
        self._refreshes = Counter(
            f"{p}token_refreshes", "Calls to the token endpoint by outcome", ["outcome"], registry=r
        )
        self._rate_wait = Counter(
            f"{p}rate_limit_wait_seconds", "Time spent waiting for the request budget", registry=r
        )
        self._commits = Counter(
            f"{p}offset_commits", "Kafka offset commits by outcome", ["outcome"], registry=r
        )
        self._submit = Histogram(
            f"{p}batch_submit_duration_seconds",
            "Duration of one submission request",
            ["endpoint"],
            buckets=_SUBMIT_BUCKETS,
            registry=r,
        )
        self._size = Histogram(
            f"{p}batch_size_records",
            "Records per submission request",
            ["endpoint"],
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self._delivery = Histogram(
            f"{p}delivery_latency_seconds",
            "Kafka timestamp to API acceptance",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._onboarding = Histogram(
            f"{p}onboarding_latency_seconds",
            "Kafka timestamp to terminal batch status",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._pending = Gauge(
            f"{p}pending_records", "Records consumed and not yet finished", registry=r
        )
        self._in_flight = Gauge(
            f"{p}requests_in_flight", "Submission requests under way", registry=r
        )
        self._lag = Gauge(
            f"{p}consumer_lag_records",
            "Records between the consumer position and the log end",
            ["topic", "partition"],
            registry=r,
        )
        self._tokens = Gauge(
            f"{p}rate_limit_tokens_available",
            "Requests the rolling window allows right now",
            registry=r,
        )
        self._expiry = Gauge(
            f"{p}token_expiry_timestamp_seconds",
            "Unix time the current access token expires",
            registry=r,
        )
        self._last_commit = Gauge(
            f"{p}last_commit_timestamp_seconds",
            "Unix time of the last successful offset commit",
            registry=r,
        )
        self._terminal = Counter(
            f"{p}records_terminal",
            "Records that reached a final batch status",
            ["status"],
            registry=r,
        )
        self._polls = Counter(
            f"{p}status_polls", "Batch status requests by outcome", ["outcome"], registry=r
        )
        self._tracked = Gauge(
            f"{p}batches_tracked", "Accepted batches not yet terminal", registry=r
        )
        self._waiting = Gauge(
            f"{p}records_waiting_for_parent",
            "Records the platform holds until their parent arrives",
            registry=r,
        )
        self._source_polls = Counter(
            f"{p}source_polls",
            "Polls of source platforms (BIMlink, Bimplus) by outcome",
            ["source", "outcome"],
            registry=r,
        )
        self._source_changes = Counter(
            f"{p}source_changes",
            "Change events published by polling sources",
            ["source", "change"],
            registry=r,
        )
        self._schema_fetches = Counter(
            f"{p}schema_registry_requests",
            "Schema lookups at the Schema Registry by outcome (found, not_found, unusable, "
            "refused, unavailable)",
            ["outcome"],
            registry=r,
        )
        self._schema_held = Gauge(
            f"{p}schema_held_partitions",
            "Partitions held because a record names a schema the registry did not serve yet",
            registry=r,
        )
        self._build = Gauge(f"{p}build_info", "Build information", ["version"], registry=r)
        self._build.labels(version=__version__).set(1)
        self._coalesced_by: dict[str, Counter] = {}
        ProcessCollector(registry=registry)  # process_cpu_seconds_total, resident memory, fds
        # known label values start at 0, so increase() sees the first event
        for known in Reason:  # every reason, from the one list of them
            self._dead.labels(reason=known.value)
        for reason in ("rate_limited", "server_error", "unauthorized", "token_unavailable"):
            self._retries.labels(reason=reason)
        for outcome in ("success", "rejected", "unavailable"):
            self._refreshes.labels(outcome=outcome)
        for outcome in ("success", "failed"):
            self._commits.labels(outcome=outcome)
        for outcome in ("success", "error", "rate_limited"):
            self._polls.labels(outcome=outcome)  # fmt: skip

    # schema registry (connector.schemaregistry)
    def schema_fetched(self, outcome: str) -> None:
        self._schema_fetches.labels(outcome=outcome).inc()

    def set_schema_held(self, partitions: int) -> None:
        self._schema_held.set(partitions)

    # intake
    def consumed(self, topic: str, count: int = 1) -> None:
        self._consumed.labels(topic=topic).inc(count)

    def coalesced(self, entity: str) -> None:
        # called per record under a backlog: labels() costs ~10% of CPU there, so cache it
        child = self._coalesced_by.get(entity)
        if child is None:
            child = self._coalesced_by[entity] = self._coalesced.labels(entity=entity)
        child.inc()

    def dead_lettered(self, reason: str) -> None:
        self._dead.labels(reason=reason).inc()

    def skipped(self, why: str) -> None:
        """One record finished without a request; `why` is one of decode's Skip labels."""
        self._skipped.labels(why=why).inc()

    # submission
    def request(self, endpoint: str, outcome: str) -> None:
        """One API request finished with `outcome` (accepted, partial, rejected, 401, 429, ...)."""
        self._requests.labels(endpoint=endpoint, outcome=outcome).inc()

    def retry(self, reason: str) -> None:
        self._retries.labels(reason=reason).inc()

    def batch_submitted(self, endpoint: str, records: int, seconds: float) -> None:
        self._submit.labels(endpoint=endpoint).observe(seconds)
        self._size.labels(endpoint=endpoint).observe(records)

    def delivered(self, entity: str, count: int, latencies: list[float]) -> None:
        self._delivered.labels(entity=entity).inc(count)
        for seconds in latencies:
            self._delivery.observe(max(seconds, 0.0))

    def onboarded(self, seconds: float) -> None:
        self._onboarding.observe(max(seconds, 0.0))

    def terminal(self, status: str, count: int = 1) -> None:
        """`count` records reached `status` (a documented batch status, or waiting_for_parent)."""
        self._terminal.labels(status=status).inc(count)

    def polled(self, outcome: str) -> None:
        self._polls.labels(outcome=outcome).inc()

    # polling sources; `source` is the source type (bimlink, bimplus), never an instance name
    def source_polled(self, source: str, outcome: str) -> None:
        self._source_polls.labels(source=source, outcome=outcome).inc()

    def source_changed(self, source: str, change: str) -> None:
        self._source_changes.labels(source=source, change=change).inc()

    def set_tracking(self, batches: int, waiting_for_parent: int) -> None:
        self._tracked.set(batches)
        self._waiting.set(waiting_for_parent)

    def rate_limit_waited(self, seconds: float) -> None:
        if seconds > 0:
            self._rate_wait.inc(seconds)

    def token_refreshed(self, outcome: str) -> None:
        self._refreshes.labels(outcome=outcome).inc()

    # state
    def set_pending(self, records: int) -> None:
        self._pending.set(records)

    def set_in_flight(self, requests: int) -> None:
        self._in_flight.set(requests)

    def set_tokens_available(self, tokens: int) -> None:
        self._tokens.set(tokens)

    def set_token_expiry(self, unix_seconds: float) -> None:
        self._expiry.set(unix_seconds)

    def set_lag(self, topic: str, partition: int, records: int) -> None:
        self._lag.labels(topic=topic, partition=str(partition)).set(records)

    def forget_partition(self, topic: str, partition: int) -> None:
        with contextlib.suppress(KeyError):
            self._lag.remove(topic, str(partition))

    def committed(self, outcome: str, unix_seconds: float | None = None) -> None:
        self._commits.labels(outcome=outcome).inc()
        if unix_seconds is not None:
            self._last_commit.set(unix_seconds)
