"""Intake: what the pipeline needs of a Kafka consumer, and when it stops fetching.

`Consumer` is the part of aiokafka's `AIOKafkaConsumer` the pipeline calls, as a protocol
(as `decode.RecordLike` is for a record), so the pipeline's policy runs in unit tests against
an in-memory consumer (`tests/support/consumer.py`) without a broker.

`backpressure` is the pause / resume decision as a pure function: pause while too much is
unsent, resume below the low-water mark (`pipeline.resume_ratio`).

`Intake` is the consume loop of one `Pipeline`: fetch, the schema-registry gate
(`schemaregistry`), decode, into the pipeline's window; a batch aiokafka cannot parse is read
record by record and what cannot be read is dead-lettered by its coordinates; fetching pauses
and resumes as `backpressure` decides. Fetched batches are parsed by `kafkarecords`, so a
record whose header keys are not UTF-8 is dead-lettered as `undecodable_record`.

Must not: commit, deliver or name a sink (a rejected record goes to `Delivery.dead_letter`).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Protocol

from aiokafka.errors import CorruptRecordException, UnsupportedCodecError

from connector.deadletter import DeadLetter
from connector.decode import Change, Decoder, Reason, Rejection, Skip
from connector.kafkarecords import undecodable_header_keys
from connector.logs import get_logger
from connector.offsets import TopicPartitionKey
from connector.schemaregistry import build_gate
from connector.window import Ref

if TYPE_CHECKING:
    from aiokafka import TopicPartition

    from connector.config import PipelineSettings
    from connector.pipeline import Pipeline

__all__ = ["STEP_LIMIT", "STEP_WAIT_MS", "Consumer", "Intake", "Pressure", "backpressure"]

log = get_logger(__name__)

# what aiokafka raises from `getmany` when it cannot parse a fetched batch (a compression codec
# this process lacks, a corrupt batch): the records, not the connection, are at fault
_UNREADABLE = (CorruptRecordException, UnsupportedCodecError, UnicodeDecodeError, ValueError)
STEP_LIMIT = 5000  # records read one at a time per partition after an unreadable batch
STEP_WAIT_MS = 300  # and how long each single read waits for a fetch
PAUSED_LOOK_MS = 20  # how often a paused consume loop checks whether to resume


class Consumer(Protocol):
    """The consumer calls of the pipeline (aiokafka's signatures)."""

    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]: ...
    def assignment(self) -> set[TopicPartition]: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...
    async def position(self, partition: TopicPartition) -> int: ...
    def seek(self, partition: TopicPartition, offset: int) -> None: ...
    async def seek_to_beginning(self, *partitions: TopicPartition) -> None: ...
    async def committed(self, partition: TopicPartition) -> int | None: ...
    async def commit(self, offsets: dict[TopicPartition, int | tuple[int, str]]) -> None: ...
    def highwater(self, partition: TopicPartition) -> int | None: ...
    def partitions_for_topic(self, topic: str) -> set[int] | None: ...


class Pressure(enum.Enum):
    PAUSE = "pause"  # stop fetching now
    RESUME = "resume"  # fetch again
    STAY = "stay"  # keep fetching, or keep paused (re-pausing newly assigned partitions)


def backpressure(
    settings: PipelineSettings, *, paused: bool, unsent: int, held: int, pending_bytes: int
) -> Pressure:
    """Whether to pause or resume fetching.

    The limit counts records not yet sent (`unsent`, dead letters being written included):
    records already accepted and waiting for their final status must not stall intake at a
    window boundary (the next window's requests would go out half-empty). All held records
    (`held`) are capped at twice the limit, so confirmations that never come cannot grow
    memory without bound; `pending_bytes` at `max_pending_bytes`.
    """
    p = settings
    over = (
        unsent >= p.max_pending_records
        or held >= 2 * p.max_pending_records
        or pending_bytes >= p.max_pending_bytes
    )
    under = (
        unsent < p.max_pending_records * p.resume_ratio
        and held < 2 * p.max_pending_records * p.resume_ratio
        and pending_bytes < p.max_pending_bytes * p.resume_ratio
    )
    if not paused and over:
        return Pressure.PAUSE
    if paused and under:
        return Pressure.RESUME
    return Pressure.STAY


class Intake:
    """The consume loop of pipeline `p` (`consume`, one task of its task group): takes
    records into `p.window` and tracks their offsets in `p.offsets`, until `p` drains."""

    def __init__(self, p: Pipeline) -> None:
        self.p = p
        self.consumer = p.consumer
        self.paused = False  # fetching paused by backpressure
        # Avro / JSON Schema values: their schemas are fetched before a batch is decoded
        self.schemas, cache = build_gate(p.settings.schema_registry, metrics=p.metrics,
                                         clock=p.clock, start=p.start)  # fmt: skip
        self.decoder = Decoder(
            p.settings.kafka.topic_entities, p.settings.window.max_record_bytes,
            p.settings.mappings, schemas=cache,
        )  # fmt: skip

    async def consume(self) -> None:
        while not self.p.draining:
            self.p.heartbeat = self.p.clock()
            self._apply_backpressure()
            # paused, the call only waits: look again soon, or a backlog that drains in less
            # than the wait leaves the pipeline idle until the next look (seen: resumed with
            # 0 of 50,000 unsent, several times a second)
            wait_ms = PAUSED_LOOK_MS if self.paused else 200
            try:
                batches = await self.consumer.getmany(timeout_ms=wait_ms, max_records=2000)
            except _UNREADABLE as exc:
                await self._step_past_unreadable(exc)
                continue
            if self.schemas is not None:  # fetch the schemas it names; retry held partitions
                batches = await self.schemas.admit(batches, self.consumer)
            self._take_in_all(batches)

    def _take_in_all(self, batches: dict[Any, list[Any]]) -> None:
        for tp, records in batches.items():
            key = TopicPartitionKey(tp.topic, tp.partition)
            coalesced = 0
            track = self.p.offsets.partition(key).track
            for rec in records:
                track(rec.offset)
                coalesced += self._take_in(key, rec)
            self.p.metrics.consumed(tp.topic, len(records))
            self.p.stats.consumed += len(records)
            self.p.stats.coalesced += coalesced
        if batches:
            self.p.delivery.update_pending()
            self.p.delivery.notify()

    async def _step_past_unreadable(self, first: Exception) -> None:
        """aiokafka could not parse a fetched batch (`kafkarecords` reads what it can): find
        the records at fault and dead-letter them by their coordinates.

        The failed `getmany` had already moved the positions of whatever it drained from other
        partitions, so every partition goes back to where this pipeline stopped taking in.
        Then each is read one record at a time: a record that fails twice at the same position
        (once could be a corrupt fetch) is dead-lettered as `undecodable_record` with only its
        coordinates (neither key nor value could be read), and reading goes on after it."""
        log.error(
            "a fetched batch could not be read (%s): reading record by record; what cannot be "
            "read is dead-lettered by its coordinates (for a compression codec: install it)",
            first,
        )
        for tp in self.consumer.assignment():
            await self._rewind(tp)
        for tp in sorted(self.consumer.assignment()):
            key = TopicPartitionKey(tp.topic, tp.partition)
            failed_at: int | None = None
            settle = False  # a seek leaves one stale, empty answer behind
            for _ in range(STEP_LIMIT):
                if self.p.draining:
                    return
                try:
                    got = await self.consumer.getmany(tp, timeout_ms=STEP_WAIT_MS, max_records=1)
                except _UNREADABLE as exc:
                    position = await self.consumer.position(tp)
                    if failed_at != position:
                        failed_at = position  # once more, from a fresh fetch
                    else:
                        self._unreadable(key, position, exc)
                        failed_at = None
                        position += 1
                    self.consumer.seek(tp, position)
                    settle = True
                    continue
                if not got:
                    if settle:
                        settle = False
                        continue
                    break  # this partition's fetched data is taken in
                if self.schemas is not None:  # a held partition is paused: the next read is empty
                    got = await self.schemas.admit(got, self.consumer)
                self._take_in_all(got)

    async def _rewind(self, tp: TopicPartition) -> None:
        """Seek `tp` to the first offset not taken in yet (from the group's commit if none)."""
        offset = self.p.offsets.next_offset(TopicPartitionKey(tp.topic, tp.partition))
        if offset is None:
            offset = await self.consumer.committed(tp)
        if offset is None:
            await self.consumer.seek_to_beginning(tp)  # auto_offset_reset is earliest
        else:
            self.consumer.seek(tp, offset)

    def _unreadable(self, key: TopicPartitionKey, offset: int, exc: Exception) -> None:
        self.p.offsets.track(key, offset)
        self.p.metrics.consumed(key.topic)
        self.p.stats.consumed += 1
        letter = DeadLetter(
            key=None, value=None, headers=[], reason=Reason.UNDECODABLE_RECORD,
            message=f"the record could not be read ({type(exc).__name__}: {exc}); only its "
            "coordinates are known",
            topic=key.topic, partition=key.partition, offset=offset,
        )  # fmt: skip
        refs = [Ref(key, offset, 0)]
        self.p.start(self.p.delivery.dead_letter, letter, Reason.UNDECODABLE_RECORD, refs)

    def _take_in(self, key: TopicPartitionKey, rec: Any) -> bool:
        """Take one record in (its offset tracked already); True when it superseded a pending
        version of its ID. (Runs once per record: kept to the few calls it needs.)"""
        result: Change | Rejection | Skip
        headers = rec.headers
        if headers and (undecodable := undecodable_header_keys(headers)):
            # read by `kafkarecords`' lenient parser: aiokafka could not decode its header keys
            shown = ", ".join(repr(k.encode("utf-8", "surrogateescape")) for k in undecodable)
            result = Rejection(Reason.UNDECODABLE_RECORD, f"header key is not UTF-8: {shown}")
        else:
            result = self.decoder.decode(rec)
        if isinstance(result, Rejection):
            letter = DeadLetter(
                key=rec.key, value=rec.value, headers=list(rec.headers or ()),
                reason=result.reason, message=result.message,
                topic=key.topic, partition=key.partition, offset=rec.offset,
                max_value_bytes=self.p.settings.window.max_record_bytes,
            )  # fmt: skip
            refs = [Ref(key, rec.offset, rec.timestamp)]
            self.p.start(self.p.delivery.dead_letter, letter, result.reason, refs)
            return False
        if isinstance(result, Skip):  # changes nothing on the platform: finished as it is
            self.p.offsets.finish(key, rec.offset)
            self.p.metrics.skipped(result.why)
            self.p.stats.skipped += 1
            return False
        ref = Ref(key, rec.offset, rec.timestamp, rec.key, tuple(headers) if headers else ())
        if self.p.window.add(result, ref):
            self.p.metrics.coalesced(result.entity.endpoint)
            return True
        return False

    def _apply_backpressure(self) -> None:
        """Pause fetching while too much is unsent; resume below the low-water mark
        (`intake.backpressure` decides)."""
        unsent = self.p.window.unsent_records + self.p.delivery.dead_letters_open
        held = self.p.window.pending_records
        pending_bytes = self.p.window.pending_bytes
        pressure = backpressure(
            self.p.settings.pipeline, paused=self.paused, unsent=unsent, held=held,
            pending_bytes=pending_bytes,
        )  # fmt: skip
        if pressure is Pressure.PAUSE:
            self.consumer.pause(*self.consumer.assignment())
            self.paused = True
            log.info("paused fetching: %d unsent, %d held, %d bytes", unsent, held, pending_bytes)
        elif pressure is Pressure.RESUME:
            self.consumer.resume(*self.consumer.assignment())
            self.paused = False
            log.info("resumed fetching: %d unsent, %d held", unsent, held)
        elif self.paused:
            # partitions assigned by a rebalance meanwhile start unpaused
            self.consumer.pause(*self.consumer.assignment())
        self.p.window.behind = self.paused or self._unfetched()

    def _unfetched(self) -> bool:
        """Whether Kafka holds more than a request's worth of an assigned partition not taken
        in yet, as of the last fetch's high watermark (not merely some: a transactional
        producer's commit markers are offsets too, and no record is ever taken in for them)."""
        enough = self.p.window.max_records
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            taken = self.p.offsets.next_offset(TopicPartitionKey(tp.topic, tp.partition))
            if high is not None and taken is not None and high - taken > enough:
                return True
        return False
