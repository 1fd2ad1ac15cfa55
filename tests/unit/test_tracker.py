"""The tracker on its own: batches the listing misses are looked up by ID, and a batch the
platform shows nowhere is reported lost once its deadline passes, never before."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from connector.decode import Change
from connector.entities import ENTITIES
from connector.errors import EndpointMisconfigured
from connector.offsets import TopicPartitionKey
from connector.ratelimit import RollingWindowLimiter
from connector.sinks.buildingminds.tracker import LIST_PAGE, MAX_LIST_PAGES, Outcome, Tracker
from connector.window import Batch, Ref, Slot

pytestmark = pytest.mark.anyio

BUILDING = ENTITIES["Building"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Platform:
    """A StatusSource: `listed` batches appear in the pages, `known` only by their ID."""

    def __init__(self, *, others: int = 0) -> None:
        self.listed: dict[str, dict[str, int]] = {}
        self.known: dict[str, dict[str, int]] = {}
        self.others = others  # unrelated batches listed before ours (newest first)
        self.calls: list[dict[str, Any]] = []

    async def list_batches(
        self, *, limit: int = 10, skip: int = 0, batch_id: str | None = None
    ) -> dict[str, Any]:
        self.calls.append({"limit": limit, "skip": skip, "batch_id": batch_id})
        if batch_id is not None:
            counts = self.listed.get(batch_id) or self.known.get(batch_id)
            data = [] if counts is None else [{"batchId": batch_id, "statusCounts": counts}]
            return {"totalCount": len(data), "data": data}
        rows = [
            {"batchId": f"other-{i}", "statusCounts": {"Completed": 1}} for i in range(self.others)
        ]
        rows += [{"batchId": b, "statusCounts": c} for b, c in self.listed.items()]
        return {"totalCount": len(rows), "data": rows[skip : skip + limit]}

    async def inbound(
        self,
        batch_id: str,
        *,
        status: str | None = None,
        missing_dependencies: bool | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        del batch_id, status, missing_dependencies, limit
        return []


def batch(*ids: str) -> Batch:
    slots = []
    for offset, external_id in enumerate(ids):
        payload = orjson.dumps({"buildingId": external_id})
        ref = Ref(TopicPartitionKey("t", 0), offset, 0)
        slots.append(Slot(Change(BUILDING, external_id, payload), [ref], 0.0))
    return Batch(BUILDING, slots, 0)


class Reports(list[tuple[str, Outcome]]):
    """What the tracker reported to `on_terminal`: (batch ID, outcome), in order."""


def tracker(platform: Platform, clock: Clock, reports: Reports) -> Tracker:
    async def on_terminal(_: Batch, batch_id: str, outcome: Outcome) -> None:
        reports.append((batch_id, outcome))

    return Tracker(
        platform, RollingWindowLimiter(100_000, 60, clock=clock), on_terminal=on_terminal,
        submissions_waiting=lambda: False, poll_interval=5, lost_after=600, clock=clock,
    )  # fmt: skip


async def test_a_batch_beyond_the_listing_pages_is_found_by_its_id_and_settled() -> None:
    clock, reports = Clock(), Reports()
    platform = Platform(others=LIST_PAGE * MAX_LIST_PAGES)  # ours would be on page six
    t = tracker(platform, clock, reports)
    t.track("old", batch("b-1"), frozenset())
    t.track("older", batch("b-2"), frozenset())
    platform.listed = {"old": {"Completed": 1}, "older": {"Completed": 1}}
    clock.now += 5

    await t.poll_once()

    assert sorted(b for b, _ in reports) == ["old", "older"]
    assert all(not o.lost and not o.failed for _, o in reports)
    lookups = [c["batch_id"] for c in platform.calls if c["batch_id"] is not None]
    assert sorted(lookups) == ["old", "older"], "each looked up by its ID once"
    assert t.tracked == 0


async def test_a_batch_never_shown_is_reported_lost_after_the_deadline_and_not_before() -> None:
    clock, reports = Clock(), Reports()
    platform = Platform()
    t = tracker(platform, clock, reports)
    t.track("gone", batch("b-1", "b-2", "b-3"), frozenset({1}))  # b-2 refused at once
    t.track("fine", batch("b-4"), frozenset())
    platform.known = {"fine": {"InProgress": 1}}

    for _ in range(10):  # 595 s: short of the deadline
        clock.now += 59.5
        await t.poll_once()
    assert reports == []

    clock.now += 6
    await t.poll_once()

    assert [b for b, _ in reports] == ["gone"]
    ((_, outcome),) = reports
    assert outcome.lost == (0, 2), "the records the platform had accepted"
    assert outcome.resubmissions == 0
    assert t.tracked == 1, "the batch still shown (by ID) is still tracked"
    await t.poll_once()
    assert len(reports) == 1, "reported once"


async def test_a_batch_seen_once_counts_its_deadline_from_when_it_was_last_seen() -> None:
    clock, reports = Clock(), Reports()
    platform = Platform()
    t = tracker(platform, clock, reports)
    t.track("flaky", batch("b-1"), frozenset())
    platform.known = {"flaky": {"InProgress": 1}}
    clock.now += 500
    await t.poll_once()
    platform.known = {}  # the platform forgets it now

    clock.now += 500
    await t.poll_once()
    assert reports == [], "unseen for 500 s only"
    clock.now += 101
    await t.poll_once()
    assert [b for b, _ in reports] == ["flaky"]


async def test_a_resubmission_carries_its_count_to_the_next_loss() -> None:
    clock, reports = Clock(), Reports()
    t = tracker(Platform(), clock, reports)
    again = batch("b-1")
    t.resubmitting(again, 2)
    t.track("second-try", again, frozenset())
    clock.now += 601
    await t.poll_once()
    ((_, outcome),) = reports
    assert outcome.lost == (0,)
    assert outcome.resubmissions == 2


class ForgetfulPlatform(Platform):
    """Answers 404 for an ID it does not know, as some APIs do for a filter on one ID."""

    async def list_batches(
        self, *, limit: int = 10, skip: int = 0, batch_id: str | None = None
    ) -> dict[str, Any]:
        if batch_id is not None and batch_id not in self.listed | self.known:
            self.calls.append({"limit": limit, "skip": skip, "batch_id": batch_id})
            raise EndpointMisconfigured("GET /batch answered 404: not found", status=404)
        return await super().list_batches(limit=limit, skip=skip, batch_id=batch_id)


@pytest.mark.parametrize("tracked", [1, 2])
async def test_a_404_for_an_unknown_id_means_not_found_not_a_failed_round(tracked: int) -> None:
    clock, reports = Clock(), Reports()
    platform = ForgetfulPlatform()
    t = tracker(platform, clock, reports)
    t.track("gone", batch("b-1"), frozenset())
    if tracked == 2:
        t.track("done", batch("b-2"), frozenset())
        platform.listed = {"done": {"Completed": 1}}
    clock.now += 601

    await t.poll_once()

    assert sorted(b for b, _ in reports) == sorted(["gone", "done"][:tracked])
    assert dict(reports)["gone"].lost == (0,)
