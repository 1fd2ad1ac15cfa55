"""The real upstream, once per module: PostgreSQL with a CAFM-like schema, its history of changes,
and Kafka Connect running Debezium four ways (envelope / ExtractNewRecordState, each with
JsonConverter schemas on and off)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.cdc import CdcUnavailable, ConnectWorker, Postgres, debezium_connector

if TYPE_CHECKING:
    from collections.abc import Iterator

    from twin_devtools.devbroker import Broker

TABLES = ("addresses", "sites", "buildings", "floors", "spaces", "meters")

SCHEMA = """
CREATE TABLE addresses (addr_no text PRIMARY KEY, city text NOT NULL, country text NOT NULL);
CREATE TABLE sites (site_no text PRIMARY KEY, site_name text NOT NULL,
                    addr_no text NOT NULL, opened date NOT NULL);
CREATE TABLE buildings (bldg_no text PRIMARY KEY, bldg_name text NOT NULL, site_no text NOT NULL,
                        built_at timestamp, area numeric(10,2));
CREATE TABLE floors (floor_no text PRIMARY KEY, bldg_no text NOT NULL, floor_name text NOT NULL,
                     valid_from date NOT NULL, valid_until date NOT NULL);
CREATE TABLE spaces (space_no text PRIMARY KEY, floor_no text NOT NULL, space_name text NOT NULL);
CREATE TABLE meters (meter_no text PRIMARY KEY, bldg_no text NOT NULL, medium text);
INSERT INTO addresses VALUES ('A-1', 'Berlin', 'DE'), ('A-2', 'Munich', 'DE');
INSERT INTO sites VALUES ('S-1', 'Campus North', 'A-1', '2001-05-03'),
                         ('S-2', 'Campus South', 'A-2', '2010-01-01');
INSERT INTO buildings
  SELECT 'B-' || i, 'Building ' || i, CASE WHEN i % 2 = 0 THEN 'S-1' ELSE 'S-2' END,
         TIMESTAMP '1999-12-31 23:59:59.123456' + (i || ' days')::interval, 1000 + i * 0.25
  FROM generate_series(1, 20) AS i;
INSERT INTO floors
  SELECT 'F-' || i, 'B-' || (1 + i % 20), 'Floor ' || i, DATE '2020-01-01', DATE '2099-12-31'
  FROM generate_series(1, 30) AS i;
INSERT INTO spaces SELECT 'R-' || i, 'F-' || (1 + i % 30), 'Room ' || i
  FROM generate_series(1, 40) AS i;
INSERT INTO meters SELECT 'M-' || i, 'B-' || (1 + i % 20), 'electricity'
  FROM generate_series(1, 10) AS i;
"""

# after the snapshot: updates, deletes, one transaction touching many rows, a column added
CHANGES = """
UPDATE buildings SET bldg_name = 'Tower A' WHERE bldg_no = 'B-1';
DELETE FROM spaces WHERE space_no IN ('R-1', 'R-2');
DELETE FROM meters WHERE meter_no = 'M-1';
BEGIN;
UPDATE spaces SET space_name = space_name || ' (renovated)' WHERE space_no LIKE 'R-1%';
INSERT INTO meters SELECT 'M-' || i, 'B-' || (1 + i % 20), 'heat' FROM generate_series(11, 40) AS i;
COMMIT;
ALTER TABLE buildings ADD COLUMN energy_class text;
UPDATE buildings SET energy_class = 'A+' WHERE bldg_no IN ('B-2', 'B-3');
"""

# prefix -> (ExtractNewRecordState, JsonConverter schemas.enable)
VARIANTS = {
    "env1": (False, True),
    "env0": (False, False),
    "flat1": (True, True),
    "flat0": (True, False),
}


@dataclass
class Upstream:
    pg: Postgres
    worker: ConnectWorker

    def topic(self, prefix: str, table: str) -> str:
        return f"{prefix}.public.{table}"


def _converters(*, schemas: bool) -> dict[str, str]:
    flag = "true" if schemas else "false"
    json = "org.apache.kafka.connect.json.JsonConverter"
    return {
        "key.converter": json,
        "value.converter": json,
        "key.converter.schemas.enable": flag,
        "value.converter.schemas.enable": flag,
    }


@pytest.fixture(scope="module")
def upstream(kafka_broker: Broker) -> Iterator[Upstream]:
    """Snapshot, then the changes, captured by each variant; the worker is stopped afterwards."""
    # two directories: the server's must be enterable by the `postgres` user when we are root
    root = Path(tempfile.mkdtemp(prefix="cdc-"))
    pg = Postgres(Path(tempfile.mkdtemp(prefix="cdc-pg-")))
    try:
        pg.start()
    except CdcUnavailable as exc:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(pg.root, ignore_errors=True)
        pytest.fail(f"PostgreSQL could not start: {exc}")
    pg.sql(SCHEMA)
    tables = [f"public.{t}" for t in TABLES]
    connectors = [
        debezium_connector(f"cafm-{prefix}", pg, tables=tables, topic_prefix=prefix,
                           unwrap=unwrap, extra=_converters(schemas=schemas))
        for prefix, (unwrap, schemas) in VARIANTS.items()
    ]  # fmt: skip
    worker = ConnectWorker(root / "connect", kafka_broker.bootstrap)
    try:
        worker.start(connectors)
        pg.sql(CHANGES)
        yield Upstream(pg, worker)
    finally:
        worker.stop()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(pg.root, ignore_errors=True)
