"""The reliability suite's results: one row per fault scenario (sent, lost, duplicated,
dead-lettered, peak memory), collected by the `report` fixture of tests/reliability."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Report", "Row"]


@dataclass
class Row:
    fault: str
    sent: int
    lost: int
    duplicated: int
    dead_lettered: int
    peak_rss_mb: float | None  # None: the connector ran inside the test process


class Report:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, row: Row) -> None:
        self.rows.append(row)
