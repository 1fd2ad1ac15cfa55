"""Polling sources: platforms that are read, not written, and turned into change events.

Owns the loop every polling source shares (BIMlink, Bimplus): take the platform's complete
current state from a `Source`, compare it with the last state published, and produce the
differences to Kafka as BuildingMinds native change events (`<Entity>Added|Updated|Deleted`,
keyed by external ID), so the core pipeline onboards them like any other record.

The last state lives in a compacted Kafka topic (`snapshot_topic`), one record per entity:
key `<source name>|<endpoint>|<external id>`, value `{"digest": ...}` (a tombstone once the
entity is gone). A restarted process reads it back, so nothing is re-published that did not
change, and a deletion seen while the process was down is still published.

Order of one poll, and why it is safe:
1. `Source.snapshot()` returns the complete state, or raises (a partial state would look like
   deletions, so a source must never return one);
2. change events are produced, parents before children (deletions children first), and
   acknowledged by the broker;
3. only then is the snapshot topic updated. A crash between 2 and 3 re-publishes the same
   changes on the next poll: harmless, the platform upserts by external ID.

Must not: publish anything from an incomplete snapshot, retry a rejected credential in a tight
loop, or log a record's content (it may be personal data).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import anyio
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from connector.entities import ENTITIES, Entity
from connector.errors import ConnectorError, CredentialsRejected
from connector.logs import get_logger
from connector.ratelimit import Backoff

if TYPE_CHECKING:
    from collections.abc import Sequence

    from connector.metrics import Metrics
    from connector.ratelimit import Clock
    from connector.sources.settings import SourceSettings

__all__ = [
    "Change",
    "Item",
    "LoginFailed",
    "Poller",
    "SnapshotStore",
    "Source",
    "changes_between",
]

log = get_logger(__name__)

_ORDER = {entity.name: index for index, entity in enumerate(ENTITIES.values())}
_SEP = "|"

ChangeKind = Literal["Added", "Updated", "Deleted"]


@dataclass(frozen=True, slots=True)
class Item:
    """One entity as the source platform has it now, already in the BuildingMinds shape.

    `record` holds the native fields without `eventType`; the entity's ID field and its parents'
    ID fields (`siteId`, `buildingId`, `floorId`, ...) must be set, so the platform can link it.
    """

    entity: Entity
    external_id: str
    record: dict[str, Any]

    def digest(self) -> str:
        """What changes when the record changes: a hash of its canonical JSON."""
        canonical = orjson.dumps(self.record, option=orjson.OPT_SORT_KEYS)
        return hashlib.blake2b(canonical, digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Change:
    """One change event to publish."""

    entity: Entity
    external_id: str
    kind: ChangeKind
    record: dict[str, Any] = field(default_factory=dict)

    def value(self) -> bytes:
        """The native change event: the record plus `eventType`; a deletion carries the ID."""
        body = dict(self.record) if self.kind != "Deleted" else {}
        body[self.entity.id_field] = self.external_id
        body["eventType"] = f"{self.entity.name}{self.kind}"
        return orjson.dumps(body)


class Source(Protocol):
    """A platform read as a whole. Implementations live beside this module."""

    @property
    def name(self) -> str:
        """Stable across restarts: it prefixes this source's keys in the snapshot topic."""
        ...

    async def snapshot(self) -> Sequence[Item]:
        """The platform's complete current state.

        Raises `CredentialsRejected` when the credential needs a human (e.g. the refresh token
        expired), any other `ConnectorError` for a transient failure. Never returns a partial
        state: a missing entity would be published as deleted.
        """
        ...

    async def probe(self) -> str:
        """For `check`: get a token and make one cheap read-only request, publishing nothing.

        Returns a one-line summary of what the credential sees (e.g. "2 domain accounts
        visible"). Raises what `snapshot` raises, each message saying what to fix. A token
        obtained here is handled as a poll handles it (a rotated refresh token is stored).
        """
        ...


class LoginFailed(ConnectorError):
    """`connector auth PLATFORM` (a source package's `auth.login`) could not obtain the
    credential a person's login gives; the message says why and what to do."""


def snapshot_key(source: str, entity: Entity, external_id: str) -> str:
    return _SEP.join((source, entity.endpoint, external_id))


def changes_between(previous: dict[str, str], items: Sequence[Item], source: str) -> list[Change]:
    """The change events that turn `previous` (snapshot key -> digest) into `items`.

    Ordered so that the platform sees parents before children: additions and updates in
    catalogue order (site, building, floor, space, ...), then deletions in reverse. Entities
    that cannot be deleted (Address) are left alone when they disappear.
    """
    upserts: list[Change] = []
    seen: set[str] = set()
    for item in items:
        key = snapshot_key(source, item.entity, item.external_id)
        if key in seen:
            continue  # a platform listing the same entity twice (paging over a moving list)
        seen.add(key)
        before = previous.get(key)
        if before is None:
            upserts.append(Change(item.entity, item.external_id, "Added", item.record))
        elif before != item.digest():
            upserts.append(Change(item.entity, item.external_id, "Updated", item.record))
    deletions: list[Change] = []
    by_endpoint = {entity.endpoint: entity for entity in ENTITIES.values()}
    for key in previous.keys() - seen:
        owner, endpoint, external_id = key.split(_SEP, 2)
        if owner != source:
            continue  # another source's entity: not this source's to delete
        entity = by_endpoint.get(endpoint)
        if entity is not None and entity.deletable:
            deletions.append(Change(entity, external_id, "Deleted"))
    upserts.sort(key=lambda c: _ORDER[c.entity.name])
    deletions.sort(key=lambda c: (-_ORDER[c.entity.name], c.external_id))
    return upserts + deletions


class SnapshotStore:
    """The last published state of every source, in a compacted topic."""

    def __init__(self, producer: AIOKafkaProducer, topic: str, kafka_options: dict[str, Any]):
        self._producer = producer
        self.topic = topic
        self._options = kafka_options

    async def ensure_topic(self) -> None:
        """Create the compacted topic if it does not exist (a broker may forbid auto-creation)."""
        admin = AIOKafkaAdminClient(**self._options)
        await admin.start()
        try:
            brokers = len((await admin.describe_cluster())["brokers"])
            new = NewTopic(
                self.topic, num_partitions=1, replication_factor=min(3, max(brokers, 1)),
                topic_configs={"cleanup.policy": "compact"},
            )  # fmt: skip
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics([new])
        finally:
            await admin.close()

    async def _partitions(self) -> list[int]:
        # a consumer without a subscription knows no topic's partitions; the admin client does
        admin = AIOKafkaAdminClient(**self._options)
        await admin.start()
        try:
            described = await admin.describe_topics([self.topic])
        finally:
            await admin.close()
        return [int(p["partition"]) for d in described for p in d.get("partitions", [])]

    async def load(self, source: str) -> dict[str, str]:
        """Snapshot key -> digest of everything `source` published and has not deleted."""
        consumer = AIOKafkaConsumer(
            enable_auto_commit=False, auto_offset_reset="earliest", **self._options
        )
        partitions = await self._partitions()
        await consumer.start()
        state: dict[str, str] = {}
        try:
            assigned = [TopicPartition(self.topic, p) for p in partitions]
            if not assigned:
                return state
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            ends = await consumer.end_offsets(assigned)
            prefix = source + _SEP
            while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
                batch = await consumer.getmany(*assigned, timeout_ms=1000)
                for records in batch.values():
                    for rec in records:
                        key = rec.key.decode() if rec.key else ""
                        if not key.startswith(prefix):
                            continue
                        if rec.value is None:
                            state.pop(key, None)
                        else:
                            state[key] = str(orjson.loads(rec.value)["digest"])
        finally:
            await consumer.stop()
        return state

    async def save(self, source: str, changes: Sequence[Change], items: Sequence[Item]) -> None:
        """Record what was published; returns once the broker acknowledged every write."""
        digests = {snapshot_key(source, i.entity, i.external_id): i.digest() for i in items}
        sends = []
        for change in changes:
            key = snapshot_key(source, change.entity, change.external_id)
            value = None if change.kind == "Deleted" else orjson.dumps({"digest": digests[key]})
            sends.append(await self._producer.send(self.topic, value=value, key=key.encode()))
        for sent in sends:
            await sent


class Poller:
    """Runs one source: poll, publish the changes, remember them, wait, again.

    `poll_once` is the unit the loop repeats (tests call it directly). The loop never ends by
    itself: transient failures back off with full jitter; a rejected credential is logged with
    its fix and retried after the poll interval, since only a human can repair it.
    """

    def __init__(
        self,
        source: Source,
        settings: SourceSettings,
        *,
        producer: AIOKafkaProducer,
        store: SnapshotStore,
        metrics: Metrics | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.source = source
        self.settings = settings
        self._producer = producer
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._known: dict[str, str] | None = None
        self._kind = getattr(settings, "type", "source")

    async def poll_once(self) -> list[Change]:
        """One poll. Returns the changes published; raises what `Source.snapshot` raises."""
        if self._known is None:
            self._known = await self._store.load(self.source.name)
        started = self._clock()
        items = await self.source.snapshot()
        changes = changes_between(self._known, items, self.source.name)
        sends = [
            await self._producer.send(
                self.settings.topic, value=c.value(), key=c.external_id.encode()
            )
            for c in changes
        ]
        for sent in sends:
            await sent
        await self._store.save(self.source.name, changes, items)
        self._known = {
            snapshot_key(self.source.name, i.entity, i.external_id): i.digest() for i in items
        }
        if self._metrics is not None:
            self._metrics.source_polled(self._kind, "success")
            for change in changes:
                self._metrics.source_changed(self._kind, change.kind)
        counts = {k: sum(c.kind == k for c in changes) for k in ("Added", "Updated", "Deleted")}
        log.info(
            "%s: %d entities, %d added, %d updated, %d deleted in %.1f s",
            self.source.name, len(items), counts["Added"], counts["Updated"],
            counts["Deleted"], self._clock() - started,
            extra={"source": self.source.name, "topic": self.settings.topic},
        )  # fmt: skip
        return changes

    async def run(self) -> None:
        """Poll until cancelled."""
        backoff = Backoff(base=1.0, cap=self.settings.poll_interval_seconds)
        failures = 0
        while True:
            try:
                await self.poll_once()
            except CredentialsRejected as exc:
                self._failed("rejected", exc)
                failures = 0
                await anyio.sleep(self.settings.poll_interval_seconds)
                continue
            except (ConnectorError, KafkaError) as exc:  # transient: the platform or the broker
                self._failed("unavailable", exc)
                await anyio.sleep(backoff.delay(failures))
                failures += 1
                continue
            failures = 0
            await anyio.sleep(self.settings.poll_interval_seconds)

    def _failed(self, outcome: str, exc: Exception) -> None:
        log.error("%s: poll failed: %s", self.source.name, exc)
        if self._metrics is not None:
            self._metrics.source_polled(self._kind, outcome)
