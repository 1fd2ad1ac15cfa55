"""Properties of the emulator's rate window and record lifecycle, over generated histories."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twin_emulators.buildingminds_ingest import InboundRecord, Ingest
from twin_emulators.buildingminds_model import ENTITIES
from twin_emulators.limits import RateLimiter

LIMIT, WINDOW = 5, 6.0


@given(st.lists(st.floats(min_value=0, max_value=3, allow_nan=False), max_size=200))
def test_the_window_admits_exactly_while_fewer_than_the_limit_are_recent(
    gaps: list[float],
) -> None:
    limiter = RateLimiter(LIMIT, WINDOW)
    now = 0.0
    admitted: list[float] = []
    for gap in gaps:
        now += gap
        wait = limiter.admit("client", now)
        recent = [t for t in admitted if t > now - WINDOW]
        if wait is None:
            assert len(recent) < LIMIT
            admitted.append(now)
        else:
            assert len(recent) == LIMIT
            assert wait == pytest.approx(recent[0] + WINDOW - now)
            assert 0 < wait <= WINDOW


# A history: at increasing times, a building or a floor (linking to a building) is sent.
_step = st.tuples(
    st.floats(min_value=0, max_value=3, allow_nan=False),
    st.sampled_from(["building", "floor"]),
    st.sampled_from(["1", "2", "3"]),
    st.sampled_from(["1", "2", "3", "9"]),  # building 9 is never sent
)


@given(st.lists(_step, max_size=40))
def test_the_store_holds_the_newest_completed_version_of_each_entity(
    history: list[tuple[float, str, str, str]],
) -> None:
    ingest = Ingest(processing_delay=2.0, failure_marker="__fail_async__")
    now, sent = 0.0, []
    for version, (gap, entity, external_id, building) in enumerate(history):
        now += gap
        ingest.advance(now)
        payload: dict[str, Any] = {
            ENTITIES[entity].id_field: external_id,
            "eventType": "BuildingAdded" if entity == "building" else "FloorAdded",
            "version": version,
        }
        if entity == "floor":
            payload |= {"buildingId": building, "name": "F", "validFrom": "2024-01-01T00:00:00Z"}
            payload["validUntil"] = "2030-01-01T00:00:00Z"
        batch = ingest.submit(ENTITIES[entity], [payload], now=now, client_id="c").batch
        assert batch is not None
        sent.extend(batch.records)

    now += 10 * (len(history) + 1)  # long enough for every chain to resolve
    ingest.advance(now)

    sent_buildings = {r.key[1] for r in sent if r.key[0] == "building"}
    for record in sent:
        status, _ = ingest.status_at(record, now)
        waits_forever = record.key[0] == "floor" and record.payload["buildingId"] not in (
            sent_buildings
        )
        assert status == ("New" if waits_forever else "Completed")
    for entity in ("building", "floor"):
        stored = {e[ENTITIES[entity].id_field]: e for e in ingest.entities(entity)[entity]}
        assert stored == _newest_completed(sent, entity, now, ingest)


def _newest_completed(
    sent: list[InboundRecord], entity: str, now: float, ingest: Ingest
) -> dict[str, dict[str, Any]]:
    newest: dict[str, dict[str, Any]] = {}
    for record in sent:  # in acceptance order, so later versions overwrite earlier ones
        if record.key[0] == entity and ingest.status_at(record, now)[0] == "Completed":
            newest[record.key[1]] = record.payload
    return newest
