"""The BuildingMinds entity catalogue: endpoint, external-ID field, required fields, parents.

Owns the facts of the platform's API reference (its entity catalogue) in one table, so
decoding, the sink and the emulator agree on them. Fields marked inferred there are
inferred here too.

Must not: hold behaviour; it is data plus lookups.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

__all__ = ["ENTITIES", "SITE_TYPES", "Entity", "entity_for_event_type", "find_entity"]


@dataclass(frozen=True, slots=True)
class Entity:
    """One entity type of the platform."""

    name: str  # PascalCase, as in event types: "RentalUnit"
    endpoint: str  # path below the base URL: "rental-unit"
    id_field: str  # the caller's external ID: "rentalUnitId"
    required: tuple[str, ...] = ()  # besides the ID and eventType, for Added/Updated
    any_of: tuple[str, ...] = ()  # at least one of these, for Added/Updated
    parents: tuple[tuple[str, str], ...] = ()  # (field, parent endpoint); list fields allowed
    deletable: bool = True
    success_status: str = "Completed"

    @property
    def event_types(self) -> tuple[str, ...]:
        kinds = ("Added", "Updated", "Deleted") if self.deletable else ("Added", "Updated")
        return tuple(self.name + kind for kind in kinds)


_CATALOGUE = (
    Entity("Address", "address", "addressId", ("city", "country"), deletable=False),
    Entity(
        "Site", "site", "siteId", ("name", "addressIds", "type", "validFrom"),
        parents=(("addressIds", "address"),),
    ),
    Entity(
        "Building", "building", "buildingId",
        parents=(("siteId", "site"), ("addressIds", "address")),
    ),
    Entity(
        "Land", "land", "landId", ("name", "siteId", "typeOfOwnership"),
        parents=(("siteId", "site"),),
    ),
    Entity(
        "Floor", "floor", "floorId", ("buildingId", "name", "validFrom", "validUntil"),
        parents=(("buildingId", "building"),),
    ),
    Entity("Space", "space", "spaceId", ("floorId", "name"), parents=(("floorId", "floor"),)),
    Entity(
        "RentalUnit", "rental-unit", "rentalUnitId", ("name",),
        any_of=("siteIds", "buildingIds", "floorIds", "spaceIds", "landIds"),
        parents=(
            ("siteIds", "site"), ("buildingIds", "building"), ("floorIds", "floor"),
            ("spaceIds", "space"), ("landIds", "land"),
        ),
    ),
    Entity(
        "OperationalMeasurement", "operational-measurement", "operationalMeasurementId",
        ("buildingId", "procuredBy", "purpose"), parents=(("buildingId", "building"),),
        success_status="Published",
    ),
    Entity(
        "Meter", "meter", "meterId", any_of=("buildingId", "rentalUnitId"),
        parents=(("buildingId", "building"), ("rentalUnitId", "rental-unit")),
    ),
    Entity(
        "ResourceConsumption", "resource-consumption", "resourceConsumptionId",
        parents=(("meterId", "meter"),), success_status="Published",
    ),
    Entity("Certificate", "certificate", "certificateId", parents=(("buildingId", "building"),)),
    Entity(
        "EnergyRating", "energy-rating", "energyRatingId", parents=(("buildingId", "building"),)
    ),
    Entity("Valuation", "valuation", "valuationId", parents=(("buildingId", "building"),)),
    Entity(
        "AreaMeasurement", "area-measurement", "areaMeasurementId",
        parents=(("buildingId", "building"),),
    ),
    Entity(
        "RentalContract", "rental-contract", "rentalContractId",
        parents=(("rentalUnitId", "rental-unit"),),
    ),
)  # fmt: skip

ENTITIES: dict[str, Entity] = {e.name: e for e in _CATALOGUE}

# The values the platform takes for a Site's `type`: config checks a
# source's `site_type` against them, and the emulator validates records with them.
SITE_TYPES: frozenset[str] = frozenset(
    {
        "Education", "Health Care", "Hotel", "Industrial", "Lodging", "Leisure & Recreation",
        "Mixed Use", "Office", "Residential", "Retail", "Technology/Science", "Other",
    }
)  # fmt: skip

_ALIASES: dict[str, Entity] = {}
for _e in _CATALOGUE:
    for _alias in (
        _e.name,
        _e.endpoint,
        _e.endpoint.replace("-", "_"),
        _e.endpoint.replace("-", ""),
        _e.endpoint.replace("-", "_") + "s",
        _e.endpoint + "s",
    ):
        _ALIASES[_alias.lower()] = _e

_EVENT_TYPE = re.compile(r"^([A-Z][A-Za-z]*?)(Added|Updated|Deleted)$")


def find_entity(name: str) -> Entity | None:
    """The entity for a config mapping or a CDC table name: 'building', 'rental_unit', ..."""
    return _ALIASES.get(name.strip().lower())


@functools.lru_cache(maxsize=256)  # a handful of event types, looked up once per record
def entity_for_event_type(event_type: str) -> tuple[Entity, str] | None:
    """('BuildingAdded') -> (Building, 'Added'); None for an unknown entity or kind."""
    match = _EVENT_TYPE.match(event_type)
    if match is None:
        return None
    entity = ENTITIES.get(match.group(1))
    if entity is None:
        return None
    return entity, match.group(2)
