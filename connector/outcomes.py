"""What became of each record, told once when it is final: onboarded or dead-lettered.

The pipeline calls an `OutcomeListener` (when one is configured) at the moment a record's
fate is decided: onboarded when the platform reported its batch's terminal status (or accepted
it, with tracking off), dead-lettered when its dead letter was acknowledged. The receipts
topic (`connector.receipts`) is one listener. A listener must not block: it is called from the
pipeline's own task, so it buffers and writes in a task of its own.

Records coalesced into one submission (older versions of the same ID) share their newest
version's outcome; `refs` names every one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["OutcomeListener", "RecordOutcome", "SourceRef"]


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a record came from."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    """The final outcome of one submitted ID (or of one undecodable record).

    `entity` is the platform entity's name ("Building") and `external_id` the record's ID,
    both None for a record that never decoded that far. `status` is the platform's terminal
    status (e.g. "Published", "Failed") or "accepted" with tracking off; `reason` and `message`
    are the dead letter's."""

    outcome: Literal["onboarded", "dead_lettered"]
    refs: tuple[SourceRef, ...]
    entity: str | None = None
    external_id: str | None = None
    batch_id: str | None = None
    status: str | None = None
    reason: str | None = None
    message: str | None = None


class OutcomeListener(Protocol):
    def record_finished(self, outcome: RecordOutcome) -> None:
        """Called once per outcome, from the pipeline's task: must return at once."""
