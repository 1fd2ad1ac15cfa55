"""The shipped alert rules and dashboard in a real Prometheus, scraping a running connector.

One connector runs against its platforms and a broker of its own (`tests.prometheus.bed`)
while the faults the rules exist for are injected one after the other (`STAGES`: faults that
share no path run side by side in lanes). For each, Prometheus' `/api/v1/alerts` must show the
expected alert firing, and none once the fault is over; no other alert may fire at any moment
(but those of a fault running beside, which its own lane checks). The rules run with time
compressed 60 times (a minute of the shipped rules is a second here:
`tests.prometheus.server.scale_rules`).

Then every PromQL expression of the shipped Grafana dashboard is evaluated by that Prometheus
over the whole run: each must return data, except the few named in `EXPECTED_EMPTY` with the
reason.

The seconds from fault to firing and from recovery to resolved, and the range data of the key
panels, are written as JSON to `$PROMETHEUS_BED_OUT` (default: the test's tmp directory);
`tools/panels/render.py` turns them into the table of docs/operations.md and the README's
picture.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pytest
import yaml

from tests.integration.helpers import produce
from tests.prometheus.bed import BUILDINGS, Bed, alert_bed
from tests.prometheus.server import ALERTS, SCRAPE_SECONDS, prometheus_binary
from tests.support.hostile import reply

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from twin_devtools.devbroker import LocalBroker

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.kafka,
    pytest.mark.slow,
    pytest.mark.skipif(
        prometheus_binary() is None,
        reason="the Prometheus server is not installed (Debian/Ubuntu: apt-get install prometheus)",
    ),
]

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "dashboards" / "grafana" / "building-twin-connector.json"
POLL = 0.25


@dataclass(frozen=True)
class Fault:
    """One fault, the alert it must fire, and how to cause and end it."""

    name: str
    alert: str
    begin: Callable[[Bed], Awaitable[None]]
    end: Callable[[Bed], Awaitable[None]]
    fire_within: float = 60.0
    resolve_within: float = 60.0
    # PromQL that must return a sample before the fault is injected, besides FRESH: what the
    # rule compares with must be in Prometheus' data (a source's successes within its window)
    ready: str | None = None


# Before each fault the connector must be committing again, so that no fault's times include
# the tail of the one before (the connector rejoins its group after a SIGSTOP, for example).
FRESH = 'time() - connector_last_commit_timestamp_seconds{job="building-twin-connector"} < 5'


async def _dead_letter_spike(bed: Bed) -> None:
    await produce(bed.broker.bootstrap, [(BUILDINGS, b"k", b"{not json")] * 100)


async def _nothing(bed: Bed) -> None:
    del bed


async def _api_errors(bed: Bed) -> None:
    await bed.emulator.faults(profile="errors", rate=0.5)


async def _healthy(bed: Bed) -> None:
    await bed.emulator.faults(profile="none")


async def _forbid_meters(bed: Bed) -> None:
    bed.proxy.answer(
        r"/meter$",
        reply(403, {"code": 403, "message": "The credential has no access to /meter."}),
    )


async def _allow_meters(bed: Bed) -> None:
    bed.proxy.pass_through()


async def _token_outage(bed: Bed) -> None:
    await bed.emulator.faults(profile="token-outage")


async def _rate_limited(bed: Bed) -> None:
    await bed.emulator.faults(profile="429-storm", rate=0.5, retry_after_seconds=1)


async def _source_down(bed: Bed) -> None:
    await bed.bimplus_faults(profile="errors", rate=1.0)


async def _source_up(bed: Bed) -> None:
    await bed.bimplus_faults(profile="none")


async def _stop_connector(bed: Bed) -> None:
    bed.pause_connector()


async def _continue_connector(bed: Bed) -> None:
    bed.resume_connector()


async def _lose_a_batch(bed: Bed) -> None:
    await bed.forget_next_batch()


async def _kill_broker(bed: Bed) -> None:
    bed.producing = anyio.Event()
    await anyio.to_thread.run_sync(bed.broker.kill)


async def _start_broker(bed: Bed) -> None:
    await anyio.to_thread.run_sync(bed.broker.start)
    bed.producing.set()


async def _pause_broker(bed: Bed) -> None:
    await anyio.to_thread.run_sync(bed.broker.pause)


async def _resume_broker(bed: Bed) -> None:
    await anyio.to_thread.run_sync(bed.broker.resume)


DEAD_LETTERS, API_ERRORS, REFUSED, TOKEN, SOURCE, RATE_LIMITED, LOST, DOWN, PAUSED, KILLED = [
    Fault("100 invalid records at once (2 s of traffic is 40)", "ConnectorDeadLettersHigh",
          _dead_letter_spike, _nothing),
    Fault("half the API requests answered 500/502/503", "ConnectorApiErrorsHigh",
          _api_errors, _healthy),
    Fault("POST /meter answered 403", "ConnectorEndpointRefused", _forbid_meters, _allow_meters),
    Fault("the token endpoint answers 503", "ConnectorTokenRefreshFailing",
          _token_outage, _healthy),
    Fault("the Bimplus source's API answers 5xx", "ConnectorSourceFailing",
          _source_down, _source_up,
          ready='increase(connector_source_polls_total{outcome="success"}[30s]) > 0'),
    Fault("half the API requests answered 429", "ConnectorRateLimited", _rate_limited, _healthy),
    Fault("the platform loses an accepted batch", "ConnectorBatchesLost", _lose_a_batch, _nothing),
    Fault("the connector process stopped (SIGSTOP)", "ConnectorDown",
          _stop_connector, _continue_connector),
    Fault("the broker frozen (SIGSTOP): the consume loop stalls", "ConnectorCommitsStalled",
          _pause_broker, _resume_broker),
    Fault("the broker killed (-9), then restarted", "ConnectorCommitsStalled",
          _kill_broker, _start_broker),
]  # fmt: skip
# Stages run one after the other; the lanes of a stage at the same time. A failing source
# touches no sink path, and a lost batch only the tracking of one batch, so they run beside
# the sink's faults; the connector and the broker stopping stop everything, so they come last.
STAGES = [
    [[SOURCE, LOST], [DEAD_LETTERS, API_ERRORS, REFUSED, TOKEN, RATE_LIMITED]],
    [[DOWN, PAUSED, KILLED]],
]
FAULTS = [fault for stage in STAGES for lane in stage for fault in lane]

# Their thresholds are counts, not durations, so compressing time does not bring them within
# reach: well over 100,000 records arriving faster than the budget carries, for longer than
# this whole test. alerts_test.yml (promtool) covers them.
NOT_INJECTED = {
    "ConnectorLagGrowing": "a lag over 10,000 records, still rising, for 30 (scaled) minutes",
    "ConnectorBudgetSaturated": "no request left in the budget for 15 (scaled) minutes",
}


@dataclass
class Timing:
    """What one fault did: seconds to firing and to resolved, and the moments (Unix time)."""

    fault: str
    alert: str
    to_firing: float
    to_resolved: float
    seen_pending: list[str]
    began: float
    ended: float


def _say(alerts: list[dict[str, Any]]) -> str:
    return (
        ", ".join(
            f"{a['labels']['alertname']} {a['state']} {json.dumps(a['labels'])}" for a in alerts
        )
        or "none"
    )


async def _quiet(bed: Bed, ignore: frozenset[str], timeout: float = 60.0) -> None:
    """Until no alert is pending or firing (but those of `ignore`, a fault running beside)."""
    deadline = time.monotonic() + timeout
    while alerts := [
        a for a in await bed.prometheus.alerts() if a["labels"]["alertname"] not in ignore
    ]:
        firing = [a for a in alerts if a["state"] == "firing"]
        assert not firing, f"alerts firing between faults: {_say(firing)}"
        if time.monotonic() > deadline:
            pytest.fail(f"alerts still active {timeout} s after the last fault: {_say(alerts)}")
        await anyio.sleep(POLL)


async def _run(bed: Bed, fault: Fault, beside: frozenset[str] = frozenset()) -> Timing:
    """Inject `fault`, wait for its alert to fire, end it, wait for the alert to resolve.

    Any other alert firing meanwhile fails the test, but those of `beside`: the alerts of
    faults that run at the same time and cannot interfere (another lane checks them)."""
    pending: set[str] = set()

    async def look() -> set[str]:
        alerts = [
            a for a in await bed.prometheus.alerts() if a["labels"]["alertname"] not in beside
        ]
        others = [
            a for a in alerts if a["labels"]["alertname"] != fault.alert and a["state"] == "firing"
        ]
        assert not others, f"{fault.name}: other alerts fired: {_say(others)}"
        pending.update(a["labels"]["alertname"] for a in alerts if a["state"] == "pending")
        return {a["state"] for a in alerts if a["labels"]["alertname"] == fault.alert}

    await _quiet(bed, beside)
    for ready in (FRESH, fault.ready):
        deadline = time.monotonic() + 30
        while ready is not None and not await bed.prometheus.query(ready):
            assert time.monotonic() < deadline, f"{fault.name}: not ready after 30 s: {ready}"
            await anyio.sleep(POLL)
    began, began_at = time.monotonic(), time.time()
    await fault.begin(bed)
    while "firing" not in await look():
        if time.monotonic() - began > fault.fire_within:
            pytest.fail(
                f"{fault.name}: {fault.alert} did not fire within {fault.fire_within} s; "
                f"active: {_say(await bed.prometheus.alerts())}; log: {bed.server.log}"
            )
        await anyio.sleep(POLL)
    fired = time.monotonic()
    await fault.end(bed)
    ended, ended_at = time.monotonic(), time.time()
    while await look():
        if time.monotonic() - ended > fault.resolve_within:
            pytest.fail(
                f"{fault.name}: {fault.alert} did not resolve within {fault.resolve_within} s"
            )
        await anyio.sleep(POLL)
    pending.discard(fault.alert)
    resolved = time.monotonic()
    return Timing(
        fault.name,
        fault.alert,
        fired - began,
        resolved - ended,
        sorted(pending),
        began_at,
        ended_at,
    )


async def _lanes(bed: Bed, lanes: list[list[Fault]]) -> list[Timing]:
    """The lanes at the same time, each lane's faults one after the other."""
    timings: list[Timing] = []

    async def lane(faults: list[Fault]) -> None:
        beside = frozenset(f.alert for other in lanes if other is not faults for f in other)
        timings.extend([await _run(bed, fault, beside) for fault in faults])

    async with anyio.create_task_group() as tg:
        for faults in lanes:
            tg.start_soon(lane, faults)
    return timings


def _out_dir(tmp_path: Path) -> Path:
    out = Path(os.environ.get("PROMETHEUS_BED_OUT") or tmp_path / "out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def test_every_rule_is_injected_or_named() -> None:
    rules = yaml.safe_load(ALERTS.read_text())["groups"]
    names = {r["alert"] for g in rules for r in g["rules"]}
    injected = {f.alert for f in FAULTS}
    assert injected | set(NOT_INJECTED) == names
    assert not injected & set(NOT_INJECTED)


@pytest.mark.timeout(600)
async def test_each_fault_fires_its_alert_and_only_it(
    tmp_path: Path, restartable_broker: LocalBroker
) -> None:
    out = _out_dir(tmp_path)
    timings: list[Timing] = []
    async with alert_bed(tmp_path, restartable_broker) as bed:
        for stage in STAGES:
            timings += await _lanes(bed, stage)
            (out / "alerts.json").write_bytes(
                orjson.dumps([t.__dict__ for t in timings], option=orjson.OPT_INDENT_2)
            )
        await _quiet(bed, frozenset())
        await _check_panels(bed, out)
    assert sorted(t.alert for t in timings) == sorted(f.alert for f in FAULTS)


# ------------------------------------------------------------------------------ panels
# Expressions of the dashboard that have no data after this run, and why.
EXPECTED_EMPTY = {
    "connector_records_skipped_total": "the samples hold no tombstones, truncates or filters",
    "connector_schema_registry_requests_total": "no Schema Registry formats in this bed",
}


def _expressions() -> list[tuple[str, str]]:
    def walk(panels: list[dict[str, Any]]) -> list[tuple[str, str]]:
        found = []
        for panel in panels:
            found += walk(panel.get("panels", []))
            found += [(panel["title"], t["expr"]) for t in panel.get("targets", []) if "expr" in t]
        return found

    return walk(json.loads(DASHBOARD.read_text())["panels"])


def _substitute(expr: str, job: str, instance: str, range_seconds: float) -> str:
    expr = expr.replace('"$job"', json.dumps(re.escape(job)))
    expr = expr.replace('"$instance"', json.dumps(re.escape(instance)))
    # Grafana's $__rate_interval is at least four scrape intervals
    expr = expr.replace("$__rate_interval", f"{4 * SCRAPE_SECONDS}s")
    return expr.replace("$__range", f"{int(range_seconds)}s")


async def _check_panels(bed: Bed, out: Path) -> None:
    info = await bed.prometheus.query("connector_build_info")
    assert len(info) == 1, info
    job, instance = info[0]["metric"]["job"], info[0]["metric"]["instance"]
    end = time.time()
    start = bed.started
    empty: list[str] = []
    data: dict[str, list[dict[str, Any]]] = {}
    for title, expr in _expressions():
        query = _substitute(expr, job, instance, end - start)
        assert "$" not in query, query
        result = await bed.prometheus.query_range(query, start, end, 2)
        has_data = any(v[1] not in ("NaN", "+Inf", "-Inf") for s in result for v in s["values"])
        expected_empty = any(metric in expr for metric in EXPECTED_EMPTY)
        if not has_data and not expected_empty:
            empty.append(f"{title}: {query}")
        if has_data and expected_empty:
            empty.append(f"{title}: has data now; take it off EXPECTED_EMPTY: {query}")
        data.setdefault(title, []).append({"expr": query, "result": result})
    (out / "panels.json").write_bytes(
        orjson.dumps({"start": start, "end": end, "step": 2, "panels": data})
    )
    assert not empty, "panels without data:\n" + "\n".join(empty)
