"""Repeated aiokafka lines: the first of each kind passes, then one summary per interval."""

from __future__ import annotations

import logging

from connector.repeats import RepeatFilter


def record(name: str, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


def test_the_first_line_of_each_kind_passes_and_repeats_are_summarised() -> None:
    now = [0.0]
    repeats = RepeatFilter(interval=60.0, clock=lambda: now[0])
    passed = []
    for i in range(6000):
        now[0] = i * 0.015  # 6,000 lines in 90 s
        line = record("aiokafka.conn", "Unable connect to node with id %s: %s", 1, "refused")
        if repeats.filter(line):
            passed.append(line.getMessage())
    assert passed[0] == "Unable connect to node with id 1: refused"
    assert len(passed) == 2
    assert passed[1].startswith("Unable connect to node with id 1: refused [")
    assert "more like this in the last 60 s]" in passed[1]


def test_other_kinds_and_other_loggers_are_not_held_back() -> None:
    repeats = RepeatFilter(interval=60.0, clock=lambda: 0.0)
    assert repeats.filter(record("aiokafka.consumer", "Heartbeat failed"))
    assert repeats.filter(record("aiokafka.conn", "Unable connect to node"))
    assert not repeats.filter(record("aiokafka.consumer", "Heartbeat failed"))
    for _ in range(3):
        assert repeats.filter(record("connector.app", "Kafka unreachable"))
