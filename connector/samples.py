"""Sample events: a realistic little portfolio changing over time, for demos and benchmarks.

Produces sites, addresses, buildings, floors, spaces and meters as native records, some meter
changes as Debezium-style CDC envelopes, updates of earlier IDs (so coalescing has work), and a
configurable share of invalid events of every kind (not JSON, no ID, unknown entity, missing
required fields, CDC without `after`).

Must not: depend on Kafka; `produce` takes any object with `send(topic, key=, value=)`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["SampleEvent", "sample_events"]

CITIES = [("Berlin", "DE"), ("Munich", "DE"), ("Zurich", "CH"), ("Vienna", "AT"), ("Paris", "FR")]
SITE_TYPES = ["Office", "Residential", "Retail", "Mixed Use", "Industrial"]
VALID_FROM = "2024-01-01T00:00:00Z"
VALID_UNTIL = "2099-12-31T00:00:00Z"


@dataclass(frozen=True, slots=True)
class SampleEvent:
    topic: str
    key: bytes | None
    value: bytes | None
    invalid: bool = False


def _native(i: int, rng: random.Random, ids: int) -> tuple[str, dict[str, Any]]:
    """One native record for entity number `i % ids`; its kind is `n % 5`.

    Every parent named is one this generator also produces: addresses are n = 5k, sites
    n = 50k + 1 (address n - 1), buildings n = 10k + 2 and 10k + 7 (site n // 50, address
    n - 2), floors n = 5k + 3 (building n // 10), spaces n = 5k + 4 (floor n // 5).
    """
    n = i % ids
    site, building, floor = f"site-{n // 50}", f"bldg-{n // 10}", f"floor-{n // 5}"
    kind = n % 5
    city, country = CITIES[n % len(CITIES)]
    change = "Added" if i < ids else "Updated"
    if kind == 0:
        return f"addr-{n}", {
            "addressId": f"addr-{n}", "eventType": f"Address{change}", "city": city,
            "country": country, "street": f"Musterstrasse {n % 200 + 1}",
        }  # fmt: skip
    if kind == 1:
        return site, {
            "siteId": site, "eventType": f"Site{change}", "name": f"Campus {n // 50}",
            "addressIds": [f"addr-{n - 1}"], "type": SITE_TYPES[n % len(SITE_TYPES)],
            "validFrom": VALID_FROM,
        }  # fmt: skip
    if kind == 2:
        return building, {
            "buildingId": building, "eventType": f"Building{change}", "siteId": site,
            "addressIds": [f"addr-{n - 2}"], "name": f"Building {n // 10}",
            "constructionYear": f"{1950 + n % 70}-01-01T00:00:00Z",
            "airConditioning": bool(n % 2), "revision": i,
        }  # fmt: skip
    if kind == 3:
        return floor, {
            "floorId": floor, "eventType": f"Floor{change}", "buildingId": building,
            "name": f"Level {n % 12}", "floorNumber": n % 12, "validFrom": VALID_FROM,
            "validUntil": VALID_UNTIL,
        }  # fmt: skip
    return f"space-{n}", {
        "spaceId": f"space-{n}", "eventType": f"Space{change}", "floorId": floor,
        "name": f"Room {n}", "maximumOccupancy": rng.randint(1, 40),
    }  # fmt: skip


def _meter_cdc(i: int, meters: int, buildings: int) -> tuple[str, dict[str, Any]]:
    n = i % meters
    meter = {
        "meterId": f"meter-{n}", "buildingId": f"bldg-{n % buildings}",
        "utility": ["electricity", "gas", "water", "heat"][n % 4], "unit": "kWh",
        "meteringPointId": f"DE000{n:08d}", "revision": i,
    }  # fmt: skip
    op = "c" if i < meters else "u"
    envelope = {"before": None, "after": meter, "op": op, "source": {"table": "meter"}}
    return f"meter-{n}", {"payload": envelope}


_INVALID: list[tuple[bytes | None, bytes | None]] = [
    (b"bad-1", b"{this is not json"),
    (None, orjson.dumps({"eventType": "BuildingAdded", "name": "no id"})),
    (b"x-1", orjson.dumps({"eventType": "SpaceshipAdded", "spaceshipId": "x-1"})),
    (b"floor-bad", orjson.dumps({"floorId": "floor-bad", "eventType": "FloorAdded"})),
    (b"meter-bad", orjson.dumps({"payload": {"op": "u", "source": {"table": "meter"}}})),
]  # fmt: skip


def sample_events(
    count: int,
    *,
    building_topic: str,
    meter_topic: str,
    ids: int = 1000,
    invalid_share: float = 0.02,
    seed: int = 1,
) -> Iterator[SampleEvent]:
    """`count` events over about `ids` entity IDs; `invalid_share` of them are bad on purpose."""
    rng = random.Random(seed)  # noqa: S311 - sample data, not security
    ids = max(ids, 10)
    native = meter = 0
    for i in range(count):
        if invalid_share and rng.random() < invalid_share:
            key, value = _INVALID[i % len(_INVALID)]
            yield SampleEvent(building_topic, key, value, invalid=True)
        elif i % 4 == 3:
            key_text, obj = _meter_cdc(meter, max(ids // 4, 1), ids // 10)
            meter += 1
            yield SampleEvent(meter_topic, key_text.encode(), orjson.dumps(obj))
        else:
            key_text, obj = _native(native, rng, ids)
            native += 1
            yield SampleEvent(building_topic, key_text.encode(), orjson.dumps(obj))
