"""Batches as the pipeline hands them to a sink, built from native records, for tests that
call a sink directly (the sink contract takes decoded records, never a body).

Must not: decode records differently from the pipeline: the kind comes from the record's
`eventType` suffix, as `connector.decode` reads it; without one a record is an update.
"""

from __future__ import annotations

from typing import Any

import orjson

from connector.decode import Change
from connector.entities import entity_for_event_type, find_entity
from connector.offsets import TopicPartitionKey
from connector.window import Batch, Ref, Slot

__all__ = ["batch_of"]


def batch_of(endpoint: str, records: list[dict[str, Any]], *, topic: str = "t") -> Batch:
    """One batch of `endpoint`'s records, each at its own offset of `topic` partition 0."""
    entity = find_entity(endpoint)
    assert entity is not None, f"no entity {endpoint!r}"
    slots = []
    for offset, record in enumerate(records):
        found = entity_for_event_type(str(record.get("eventType", "")))
        kind = found[1] if found is not None else "Updated"
        payload = orjson.dumps(record)
        change = Change(entity, str(record.get(entity.id_field)), payload, kind)
        slots.append(Slot(change, [Ref(TopicPartitionKey(topic, 0), offset, 0)], 0.0))
    size = 2 + sum(len(s.change.payload) for s in slots) + max(len(slots) - 1, 0)
    return Batch(entity, slots, size)
