"""The data of the Building X emulator: locations of the Structure API and stored point values.

Owns the rules a write must pass (as Siemens' public documentation gives them; where it is
silent the rule is marked inferred) and the stores of one emulated tenant, per partition.
Every refusal is an `ApiProblem`, which the HTTP layer turns into a JSON:API error object.

Must not: know about HTTP, read the clock (callers pass `now`), or hold request state.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, cast

__all__ = [
    "LABEL_MAX",
    "LOCATION_TYPES",
    "MAX_VALUES",
    "ApiProblem",
    "Location",
    "PointValues",
    "Structure",
    "parse_values",
]

LOCATION_TYPES: Final = (
    "Campus", "CampusPart", "Building", "BuildingPart", "Outside", "Floor", "FloorArea", "Room",
)  # fmt: skip
LABEL_MAX: Final = 255  # inferred: no documented limit was found
MAX_VALUES: Final = 100
_TEXT_ATTRIBUTES: Final = ("label", "externalId", "timeZone", "buildingType", "description")
_OTHER_ATTRIBUTES: Final = (
    "type", "constructionYear", "usableArea", "tags", "geoLocation", "geoArea", "primaryContact",
)  # fmt: skip
# isBuildingOf (a Building's Campus) and hasPostalAddress are in the API spec mirror; isPartOf,
# the inverse of the documented hasParts, is inferred.
RELATIONSHIPS: Final = ("isPartOf", "isBuildingOf", "hasPostalAddress")


@dataclass(frozen=True, slots=True)
class ApiProblem:
    """One JSON:API error object's content; `pointer`/`parameter` say where the problem is."""

    status: int
    code: str
    title: str
    detail: str | None = None
    pointer: str | None = None
    parameter: str | None = None


def _invalid(detail: str, pointer: str) -> ApiProblem:
    return ApiProblem(400, "invalid-attribute", "Invalid attribute", detail, pointer=pointer)


@dataclass(slots=True)
class Location:
    """One stored location; `relationships` maps a relationship name to the target's id."""

    id: str
    attributes: dict[str, Any]
    relationships: dict[str, str | None]
    created_at: float
    updated_at: float
    created_by: str
    updated_by: str

    @property
    def external_id(self) -> str | None:
        value = self.attributes.get("externalId")
        return value if isinstance(value, str) else None

    @property
    def parent(self) -> str | None:
        return self.relationships.get("isPartOf") or self.relationships.get("isBuildingOf")


@dataclass
class Structure:
    """The locations of every partition, with an externalId index (unique per partition)."""

    partitions: dict[str, dict[str, Location]] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def locations(self, partition: str) -> dict[str, Location]:
        return self.partitions.setdefault(partition, {})

    def find(
        self,
        partition: str,
        *,
        external_id: str | None = None,
        types: frozenset[str] | None = None,
    ) -> list[Location]:
        """Locations in creation order, optionally filtered by exact externalId and types."""
        found = []
        for location in self.locations(partition).values():
            if external_id is not None and location.external_id != external_id:
                continue
            if types is not None and location.attributes.get("type") not in types:
                continue
            found.append(location)
        return found

    def create(
        self, partition: str, data: Any, *, client: str, now: float
    ) -> Location | list[ApiProblem]:
        problems = _resource_problems(data, creating=True)
        if problems:
            return problems
        attributes = dict(data.get("attributes") or {})
        relationships = _relationships(data)
        problems = self._consistency(partition, None, attributes, relationships)
        if problems:
            return problems
        location = Location(
            id=f"loc-{next(self._ids):06d}", attributes=attributes,
            relationships=relationships, created_at=now, updated_at=now,
            created_by=client, updated_by=client,
        )  # fmt: skip
        self.locations(partition)[location.id] = location
        return location

    def update(
        self, partition: str, location_id: str, data: Any, *, client: str, now: float
    ) -> Location | list[ApiProblem]:
        location = self.locations(partition).get(location_id)
        if location is None:
            return [_not_found(location_id)]
        problems = _resource_problems(data, creating=False)
        if not problems and data.get("id") != location_id:
            problems = [
                ApiProblem(
                    409, "id-mismatch", "Conflict",
                    f"data.id {data.get('id')!r} is not the id of the URL ({location_id!r})",
                    pointer="/data/id",
                )
            ]  # fmt: skip
        if problems:
            return problems
        attributes = {**location.attributes, **(data.get("attributes") or {})}
        relationships = {**location.relationships, **_relationships(data)}
        problems = self._consistency(partition, location_id, attributes, relationships)
        if problems:
            return problems
        location.attributes, location.relationships = attributes, relationships
        location.updated_at, location.updated_by = now, client
        return location

    def delete(self, partition: str, location_id: str) -> bool:
        """Remove a location; its parts keep existing without a parent (inferred)."""
        locations = self.locations(partition)
        if locations.pop(location_id, None) is None:
            return False
        for other in locations.values():
            for name, target in other.relationships.items():
                if target == location_id:
                    other.relationships[name] = None
        return True

    def _consistency(
        self,
        partition: str,
        own_id: str | None,
        attributes: dict[str, Any],
        relationships: dict[str, str | None],
    ) -> list[ApiProblem]:
        locations = self.locations(partition)
        problems: list[ApiProblem] = []
        external_id = attributes.get("externalId")
        if external_id is not None:
            taken = [x for x in self.find(partition, external_id=external_id) if x.id != own_id]
            if taken:
                problems.append(
                    ApiProblem(
                        409, "conflict-external-id", "Conflict",
                        f"externalId {external_id!r} is already used by location {taken[0].id}",
                        pointer="/data/attributes/externalId",
                    )
                )  # fmt: skip
        for name in ("isPartOf", "isBuildingOf"):
            target_id = relationships.get(name)
            if target_id is None:
                continue
            pointer = f"/data/relationships/{name}/data/id"
            target = locations.get(target_id)
            if target is None:
                problems.append(_invalid(f"location {target_id!r} does not exist", pointer))
            elif name == "isBuildingOf" and (
                attributes.get("type") != "Building" or target.attributes.get("type") != "Campus"
            ):
                problems.append(_invalid("isBuildingOf links a Building to a Campus", pointer))
            elif own_id is not None and self._is_within(partition, target_id, own_id):
                problems.append(_invalid("a location cannot be part of itself", pointer))
        return problems

    def _is_within(self, partition: str, start: str, ancestor: str) -> bool:
        locations, seen = self.locations(partition), set()
        current: str | None = start
        while current is not None and current not in seen:
            if current == ancestor:
                return True
            seen.add(current)
            found = locations.get(current)
            current = found.parent if found is not None else None
        return False


def _not_found(location_id: str) -> ApiProblem:
    return ApiProblem(404, "not-found", "Not Found", f"location {location_id!r} does not exist")


def _relationships(data: dict[str, Any]) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name, value in (data.get("relationships") or {}).items():
        target = value.get("data")
        found[name] = target.get("id") if isinstance(target, dict) else None
    return found


def _resource_problems(data: Any, *, creating: bool) -> list[ApiProblem]:
    """The shape of a Location resource object; `creating` also needs label and type."""
    if not isinstance(data, dict):
        return [_invalid("the body must be a JSON object with a data object", "/data")]
    if data.get("type") != "Location":
        mismatch = "data.type must be 'Location'"
        return [ApiProblem(409, "type-mismatch", "Conflict", mismatch, pointer="/data/type")]
    attributes = data.get("attributes")
    if attributes is None and not creating:
        attributes = {}
    if not isinstance(attributes, dict):
        return [_invalid("attributes must be an object", "/data/attributes")]
    problems = [
        ApiProblem(
            400, "missing-attribute", f"Missing mandatory property '{name}'",
            pointer=f"/data/attributes/{name}",
        )
        for name in (("label", "type") if creating else ())
        if name not in attributes
    ]  # fmt: skip
    for name, value in attributes.items():
        problems.extend(_attribute_problems(name, value))
    relationships = data.get("relationships")
    if relationships is not None and not isinstance(relationships, dict):
        problems.append(_invalid("relationships must be an object", "/data/relationships"))
    for name, value in (relationships or {}).items():
        pointer = f"/data/relationships/{name}"
        if name not in RELATIONSHIPS:
            problems.append(
                _invalid(f"unknown relationship; known: {', '.join(RELATIONSHIPS)}", pointer)
            )
            continue
        target = value.get("data", "absent") if isinstance(value, dict) else "absent"
        if target is not None and not (
            isinstance(target, dict)
            and isinstance(target.get("id"), str)
            and isinstance(target.get("type"), str)
        ):
            problems.append(_invalid("needs data: {type, id} or data: null", pointer + "/data"))
    return problems


def _attribute_problems(name: str, value: Any) -> list[ApiProblem]:
    problem: str | None = None
    if name in _TEXT_ATTRIBUTES:
        if not isinstance(value, str) or not value.strip():
            problem = f"{name} must be a non-empty string"
        elif len(value) > LABEL_MAX:
            problem = f"{name} must be at most {LABEL_MAX} characters"
    elif name == "type":
        if value not in LOCATION_TYPES:
            problem = f"type must be one of {', '.join(LOCATION_TYPES)}"
    elif name == "constructionYear":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 10_000:
            problem = "constructionYear must be a year (an integer)"
    elif name not in _OTHER_ATTRIBUTES:
        problem = "unknown attribute of a Location"
    return [] if problem is None else [_invalid(problem, f"/data/attributes/{name}")]


# -- point values ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PointValue:
    millisecond: int
    value: float | int | str | bool
    quality: int


def _timestamp_ms(raw: Any) -> int | None:
    """An RFC 3339 timestamp with an offset, as whole milliseconds since the epoch."""
    if not isinstance(raw, str) or "T" not in raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        return None
    return math.floor(moment.timestamp() * 1000)


def parse_values(body: Any) -> list[PointValue] | list[ApiProblem]:
    """The values of one Point Value Ingest request, or every problem with it."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not 1 <= len(data) <= MAX_VALUES:
        return [
            ApiProblem(
                400, "invalid-data", "Invalid request body",
                f"data must be an array of 1 to {MAX_VALUES} PointValue objects", pointer="/data",
            )
        ]  # fmt: skip
    values: list[PointValue] = []
    problems: list[ApiProblem] = []
    for index, item in enumerate(data):
        where = f"/data/{index}"
        if not isinstance(item, dict) or item.get("type") != "PointValue":
            problems.append(_invalid("type must be 'PointValue'", f"{where}/type"))
            continue
        attributes = item.get("attributes")
        if not isinstance(attributes, dict):
            problems.append(_invalid("attributes must be an object", f"{where}/attributes"))
            continue
        millisecond = _timestamp_ms(attributes.get("timestamp"))
        if millisecond is None:
            problems.append(
                _invalid(
                    "timestamp must be an RFC 3339 date-time with an offset",
                    f"{where}/attributes/timestamp",
                )
            )
        value = attributes.get("value")
        if not isinstance(value, int | float | str | bool) or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            problems.append(
                _invalid(
                    "value must be a number, a string or a boolean", f"{where}/attributes/value"
                )
            )
        quality = attributes.get("qualityOfValue", 0)
        if isinstance(quality, bool) or not isinstance(quality, int) or quality < 0:
            problems.append(
                _invalid(  # inferred: an integer quality code
                    "qualityOfValue must be a non-negative integer",
                    f"{where}/attributes/qualityOfValue",
                )
            )
        if millisecond is not None and not problems:
            values.append(PointValue(millisecond, cast("float | int | str | bool", value), quality))
    return problems or values


@dataclass
class PointValues:
    """Stored values per (partition, point): one value per millisecond."""

    points: dict[tuple[str, str], dict[int, PointValue]] = field(default_factory=dict)

    def store(
        self, partition: str, point: str, values: list[PointValue], *, overwrite: bool
    ) -> list[int]:
        """Store `values`; the 0-based indices of those dropped as duplicate timestamps.

        A timestamp already stored is a duplicate unless `overwrite`; a timestamp seen earlier
        in the same request is always one (the first value of a request wins, inferred).
        """
        stored = self.points.setdefault((partition, point), {})
        seen: set[int] = set()
        dropped: list[int] = []
        for index, value in enumerate(values):
            ms = value.millisecond
            if ms in seen or (ms in stored and not overwrite):
                dropped.append(index)
                continue
            seen.add(ms)
            stored[ms] = value
        return dropped
