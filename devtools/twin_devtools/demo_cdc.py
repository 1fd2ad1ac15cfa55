"""`make demo-cdc`: a database's changes onboarded, on a laptop, with live progress.

PostgreSQL (a throw-away server, `wal_level=logical`) → Debezium (Kafka Connect standalone with
the Debezium PostgreSQL connector, `topic.prefix=cafm`) → Kafka → the connector (with the
README's "From your database" mapping, `demo_cdc.yaml`) → the BuildingMinds emulator. A small
change generator inserts, updates and deletes rows of the CAFM-like `buildings` and `floors`
tables at a modest rate; a progress line every 3 s follows them: rows changed → events in Kafka
→ onboarded (→ dead-lettered). The sites the buildings belong to are put into the emulator
first, as if another system had onboarded them. On stop, the demo lets the last changes arrive
(at most 30 s), then says what the database and the platform each hold.

Everything else (fresh start or `DEMO_KEEP=1`, Ctrl-C, the connector's summary) is
`twin_devtools.demo`'s. Needs Java 17+, Maven (first run) and PostgreSQL server binaries.

Must not: be imported by the connector; it is a developer tool.
"""

from __future__ import annotations

import functools
import json
import random
import shutil
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import anyio
from aiokafka import AIOKafkaConsumer, TopicPartition

from twin_devtools.cdc import CdcUnavailable, ConnectWorker, Postgres, debezium_connector
from twin_devtools.demo import (
    Demo,
    DemoError,
    Options,
    Workload,
    onboarded,
    parser,
    run_demo,
    say,
    scrape,
)

__all__ = ["CdcWorkload", "main"]

CONFIG = Path(__file__).with_name("demo_cdc.yaml")
TABLES = ("buildings", "floors")

SCHEMA = """
CREATE TABLE buildings (bldg_no text PRIMARY KEY, bldg_name text NOT NULL, site_no text NOT NULL,
                        built_at timestamp);
CREATE TABLE floors (floor_no text PRIMARY KEY, bldg_no text NOT NULL, floor_name text NOT NULL,
                     valid_from date NOT NULL, valid_until date NOT NULL);
INSERT INTO buildings
  SELECT 'B-' || i, 'Building ' || i, CASE WHEN i % 2 = 0 THEN 'S-1' ELSE 'S-2' END,
         TIMESTAMP '1999-12-31 23:59:59.123456' + (i || ' days')::interval
  FROM generate_series(1, 10) AS i;
INSERT INTO floors
  SELECT 'F-' || i, 'B-' || (1 + i % 10), 'Floor ' || i, DATE '2020-01-01', DATE '2099-12-31'
  FROM generate_series(1, 20) AS i;
"""
SNAPSHOT_ROWS = 30

# the parents the platform holds already (onboarded by another system): buildings link to them
ADDRESSES = [
    {"addressId": "A-1", "eventType": "AddressAdded", "city": "Berlin", "country": "DE"},
    {"addressId": "A-2", "eventType": "AddressAdded", "city": "Munich", "country": "DE"},
]
SITES = [
    {"siteId": f"S-{n}", "eventType": "SiteAdded", "name": name, "addressIds": [f"A-{n}"],
     "type": "Office", "validFrom": "2001-05-03T00:00:00Z"}
    for n, name in ((1, "Campus North"), (2, "Campus South"))
]  # fmt: skip


RENAME_BUILDING = (
    "UPDATE buildings SET bldg_name = 'Building {id} ({stamp})' WHERE bldg_no = '{id}';"
)
ADD_BUILDING = (
    "INSERT INTO buildings VALUES ('{id}', 'Building {id}', 'S-1', "
    "TIMESTAMP '2024-06-01 08:00:00');"
)
ADD_FLOOR = (
    "INSERT INTO floors VALUES ('{id}', '{building}', 'Floor {id}', DATE '2024-01-01', "
    "DATE '2099-12-31');"
)
RENAME_FLOOR = "UPDATE floors SET floor_name = 'Floor {id} ({stamp})' WHERE floor_no = '{id}';"
DELETE_FLOOR = "DELETE FROM floors WHERE floor_no = '{id}';"


class ChangeGenerator:
    """Inserts, updates and deletes rows of `buildings` and `floors`, one change at a time.

    It is the only writer, so it knows which rows exist without asking the database."""

    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)  # noqa: S311 - demo data, not a secret
        self.buildings = {f"B-{i}": i for i in range(1, 11)}
        self.floors = {f"F-{i}": f"B-{1 + i % 10}" for i in range(1, 21)}
        self.next_building, self.next_floor = 11, 21
        self.changed = 0

    def next_sql(self) -> str:
        """The SQL of the next change (one row); every value in it is the generator's own."""
        roll = self.random.random()
        stamp = time.strftime("%H:%M:%S")
        if roll < 0.3 or not self.floors:
            bldg = self.random.choice(sorted(self.buildings))
            return RENAME_BUILDING.format(id=bldg, stamp=stamp)
        if roll < 0.5:
            floor, self.next_floor = f"F-{self.next_floor}", self.next_floor + 1
            bldg = self.random.choice(sorted(self.buildings))
            self.floors[floor] = bldg
            return ADD_FLOOR.format(id=floor, building=bldg)
        if roll < 0.7:
            floor = self.random.choice(sorted(self.floors))
            return RENAME_FLOOR.format(id=floor, stamp=stamp)
        if roll < 0.85:
            floor = self.random.choice(sorted(self.floors))
            del self.floors[floor]
            return DELETE_FLOOR.format(id=floor)
        bldg, self.next_building = f"B-{self.next_building}", self.next_building + 1
        self.buildings[bldg] = self.next_building
        return ADD_BUILDING.format(id=bldg)


def _post_json(url: str, body: Any, token: str | None = None, *, form: bool = False) -> Any:
    headers = {"Content-Type": "application/json"}
    data = json.dumps(body).encode()
    if form:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        data = urllib.parse.urlencode(body).encode()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback
        return json.load(response)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
        return json.load(response)


def settled(metrics: dict[str, float], events: int) -> bool:
    """The connector has read `events` records, finished each, and seen every batch end."""
    consumed = metrics.get("connector_records_consumed_total", 0)
    finished = sum(
        metrics.get(f"connector_records_{outcome}_total", 0)
        for outcome in ("delivered", "dead_lettered", "skipped", "coalesced")
    )
    delivered = metrics.get("connector_records_delivered_total", 0)
    return (
        consumed >= events
        and finished >= consumed
        and metrics.get("connector_records_terminal_total", 0) >= delivered
        and not metrics.get("connector_batches_tracked", 0)
        and not metrics.get("connector_requests_in_flight", 0)
    )


class CdcWorkload(Workload):
    """PostgreSQL + Debezium as the upstream; changes made by `ChangeGenerator`."""

    name = "demo-cdc"
    config = CONFIG
    topics = tuple(f"cafm.public.{t}" for t in TABLES)
    processing_delay = 1.0

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.changes = ChangeGenerator(seed=int(time.time()))
        self.pg: Postgres | None = None
        self.offsets: AIOKafkaConsumer | None = None
        self.events = 0  # Debezium's records in this run (tombstones included)
        self.baseline = 0  # the topics' records of earlier runs

    async def prepare(self, demo: Demo) -> None:
        say("demo: starting PostgreSQL and Kafka Connect with Debezium (about 20 s) ...")
        began = time.monotonic()
        self.offsets = AIOKafkaConsumer(bootstrap_servers=demo.bootstrap)
        await self.offsets.start()

        async def close_offsets() -> None:
            if self.offsets is not None:
                await self.offsets.stop()

        demo.async_cleanups.append(close_offsets)
        self.baseline = await self._end_offsets()
        # the server's directory must be enterable by the `postgres` user when we are root
        pg = Postgres(Path(tempfile.mkdtemp(prefix="demo-cdc-pg-")))
        demo.cleanups.append(lambda: shutil.rmtree(pg.root, ignore_errors=True))
        demo.cleanups.append(pg.stop)
        try:
            await anyio.to_thread.run_sync(pg.start)
            await anyio.to_thread.run_sync(pg.sql, SCHEMA)
            self.pg = pg
            connect_dir = demo.options.work / "connect"
            shutil.rmtree(connect_dir, ignore_errors=True)  # a new database: no old offsets
            worker = ConnectWorker(connect_dir, demo.bootstrap)
            demo.cleanups.append(worker.stop)
            debezium = debezium_connector(
                "cafm-demo", pg, tables=[f"public.{t}" for t in TABLES], topic_prefix="cafm"
            )
            await anyio.to_thread.run_sync(worker.start, [debezium])
        except CdcUnavailable as exc:
            raise DemoError(str(exc)) from None
        say(
            f"demo: PostgreSQL 127.0.0.1:{pg.port}/{pg.database} (tables {', '.join(TABLES)}, "
            f"{SNAPSHOT_ROWS} rows) | Debezium's Connect REST http://127.0.0.1:{worker.rest_port}"
            f" | Connect's log {worker.log_path} | ready in {time.monotonic() - began:.0f} s"
        )

    async def seed(self, demo: Demo) -> None:
        api = f"{demo.emulator}/api/digitaltwinintegration"
        token_url = f"{demo.emulator}/buildingminds.onmicrosoft.com/oauth2/v2.0/token"
        form = {"client_id": "demo-client", "client_secret": "demo-secret",
                "scope": "api://buildingminds-emulator/.default",
                "grant_type": "client_credentials"}  # fmt: skip
        grant = await anyio.to_thread.run_sync(
            functools.partial(_post_json, token_url, form, form=True)
        )
        token = str(grant["access_token"])
        for endpoint, records in (("address", ADDRESSES), ("site", SITES)):
            post = functools.partial(_post_json, f"{api}/{endpoint}", records, token)
            await anyio.to_thread.run_sync(post)
        say("demo: the emulator holds the sites S-1 and S-2 (and their addresses) already")

    @property
    def database(self) -> Postgres:
        if self.pg is None:
            raise DemoError("PostgreSQL has not started")
        return self.pg

    async def feed(self, demo: Demo, stop: anyio.Event) -> None:  # noqa: ARG002 - a hook
        say(f"demo: changing about {self.rate:g} rows/s in {', '.join(TABLES)}")
        pg = self.database
        while not stop.is_set():
            sql = self.changes.next_sql()
            await anyio.to_thread.run_sync(pg.sql, sql)
            self.changes.changed += 1
            with anyio.move_on_after(1 / self.rate):
                await stop.wait()

    async def _end_offsets(self) -> int:
        if self.offsets is None:
            return 0
        tps = [TopicPartition(t, p) for t in self.topics for p in range(3)]
        return sum((await self.offsets.end_offsets(tps)).values())

    async def _events(self) -> int:
        self.events = await self._end_offsets() - self.baseline
        return self.events

    def progress(self, metrics: dict[str, float]) -> str:
        return (
            f"rows changed {SNAPSHOT_ROWS + self.changes.changed:>5} "
            f"({SNAPSHOT_ROWS} snapshot + {self.changes.changed} changes)  → "
            f"events {self.events:>5}  → "
            f"consumed {metrics.get('connector_records_consumed_total', 0):>5.0f}  → "
            f"onboarded {onboarded(metrics):>5.0f}  "
            f"(dead-lettered {metrics.get('connector_records_dead_lettered_total', 0):.0f}, "
            f"coalesced {metrics.get('connector_records_coalesced_total', 0):.0f}, "
            f"batches tracked {metrics.get('connector_batches_tracked', 0):.0f})"
        )

    async def refresh(self, demo: Demo) -> None:  # noqa: ARG002 - a hook
        await self._events()

    async def settle(self, demo: Demo) -> None:
        """Wait (at most 30 s) until the connector has read every event and tracked every batch."""
        say(
            "demo: letting the last changes reach the platform "
            "(at most 30 s; Ctrl-C again skips this) ..."
        )
        began = time.monotonic()
        with anyio.move_on_after(30):
            while True:
                events = await self._events()
                metrics = await anyio.to_thread.run_sync(scrape, demo.metrics_port)
                if settled(metrics, events):
                    waited = time.monotonic() - began
                    say(f"demo: every event read and every batch final after {waited:.0f} s")
                    return
                await anyio.sleep(0.5)
        say("demo: some changes are still on their way after 30 s")

    async def report(self, demo: Demo) -> None:
        pg = self.database
        held = {}
        for table in TABLES:
            count = await anyio.to_thread.run_sync(pg.sql, f"SELECT count(*) FROM {table}")  # noqa: S608
            held[table] = int(count.strip())
        stored = await anyio.to_thread.run_sync(_get_json, f"{demo.emulator}/_emulator/entities")
        entities = stored.get("entities", {})
        on_platform = {"buildings": len(entities.get("building", [])),
                       "floors": len(entities.get("floor", []))}  # fmt: skip
        say(
            f"demo: the database holds {held['buildings']} buildings, {held['floors']} floors; "
            f"the emulator holds {on_platform['buildings']} buildings, "
            f"{on_platform['floors']} floors"
        )


def main(argv: list[str] | None = None) -> int:
    args_parser = parser("python -m twin_devtools.demo_cdc", __doc__, "demo-cdc")
    args_parser.add_argument("--rate", type=float, default=2.0, help="row changes/s (default 2)")
    args = args_parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    options = Options(args.work_dir, args.duration, keep=args.keep)
    return anyio.run(run_demo, CdcWorkload(args.rate), options)


if __name__ == "__main__":
    sys.exit(main())
