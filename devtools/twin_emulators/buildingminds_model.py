"""The BuildingMinds record rules: how the emulated platform validates one submitted record.

Owns the validation of one record against its endpoint, as far as the public reference
documents it. The entities themselves (endpoint, ID field,
event types, mandatory fields, parent links, terminal status) come from the shared catalogue
`connector.entities`, so the connector and the emulator cannot drift apart; the emulator's
contract tests pin those facts independently. Added here are the documented form rules: IDs
are strings of 1-50 characters, `name` at most 200 characters (50 for Site), `*Code` fields
1-70, dates ISO-8601 `yyyy-mm-ddThh:mm:ssZ`, a few enums. Entities whose fields are not
documented (meter readings, certificates, ...) are held to their ID, `eventType` and links.

Must not: know about HTTP, time or storage. Every function here is pure, and fast: the
emulator validates hundreds of thousands of records per second with it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from connector.entities import ENTITIES as CATALOGUE
from connector.entities import SITE_TYPES

if TYPE_CHECKING:
    from collections.abc import Callable

    from connector.entities import Entity

__all__ = [
    "COMPLETED",
    "DOCUMENTED_STATUSES",
    "ENTITIES",
    "FAILED_VALIDATION",
    "IN_PROGRESS",
    "NEW",
    "PUBLISHED",
    "EntitySpec",
    "find_marker",
    "parent_references",
    "validate_record",
]

# Record statuses. The platform documents New ... Resubmitting; `Published` is named by its FAQ
# as the terminal state of some entity types, so the emulator uses it for the measurement ones.
NEW: Final = "New"
IN_PROGRESS: Final = "InProgress"
COMPLETED: Final = "Completed"
PUBLISHED: Final = "Published"
FAILED_VALIDATION: Final = "FailedValidation"
DOCUMENTED_STATUSES: Final = (
    NEW,
    IN_PROGRESS,
    "Failed",
    FAILED_VALIDATION,
    "Retrying",
    COMPLETED,
    "FailedGeoCoding",
    "GeoCodingSuccessful",
    "TransformationFailed",
    "Resubmitting",
    PUBLISHED,
)

ID_MAX = 50
CODE_MAX = 70
NAME_MAX = 200
CITY_MAX = 100

# Form rules the reference documents beyond the catalogue's mandatory fields and links.
NAME_MAX_BY_ENTITY: Final = {"site": 50}
ENUMS_BY_ENTITY: Final[dict[str, dict[str, frozenset[str]]]] = {
    "site": {"type": SITE_TYPES},
    "land": {
        "typeOfOwnership": frozenset({"Owner", "Tenant"}),
        "tenantStructure": frozenset({"Single-tenant", "Multi-tenant"}),
    },
}

DATE_FIELDS = ("validFrom", "validUntil", "measurementDate", "postingDate", "buildingPermitDate")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,7})?(?:Z|[+-]\d{2}:\d{2})")
_COUNTRY = re.compile(r"[A-Z]{2}")


@dataclass(frozen=True, slots=True)
class EntitySpec:
    """What one endpoint accepts: the catalogue's facts (`connector.entities`) in the shape the
    validator needs, plus the documented form rules. `name` is the endpoint: `rental-unit`."""

    name: str
    id_field: str
    event_types: frozenset[str]
    deleted_event: str
    required: tuple[str, ...]
    any_of: tuple[str, ...]  # at least one of these must be set (empty: no such rule)
    # Parent links: field -> whether it holds a list of IDs (`...Ids`) or one ID.
    references: dict[str, bool]
    parents: dict[str, str]  # field -> parent endpoint
    success_status: str
    enums: dict[str, frozenset[str]]
    name_max: int


def _spec(entity: Entity) -> EntitySpec:
    return EntitySpec(
        name=entity.endpoint,
        id_field=entity.id_field,
        event_types=frozenset(entity.event_types),
        deleted_event=entity.name + "Deleted",
        required=entity.required,
        any_of=entity.any_of,
        references={f: f.endswith("Ids") for f, _ in entity.parents},
        parents=dict(entity.parents),
        success_status=entity.success_status,
        enums=ENUMS_BY_ENTITY.get(entity.endpoint, {}),
        name_max=NAME_MAX_BY_ENTITY.get(entity.endpoint, NAME_MAX),
    )


# By endpoint, in the catalogue's order.
ENTITIES: Final[dict[str, EntitySpec]] = {e.endpoint: _spec(e) for e in CATALOGUE.values()}


def _present(value: Any) -> bool:
    """Whether a mandatory field counts as given: not null, not blank, not an empty list."""
    if value is None:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, list):
        return bool(value)
    return True


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= ID_MAX


def validate_record(spec: EntitySpec, record: Any) -> str | None:
    """Check one submitted record; None if valid, else every problem found, joined by '; '.

    A `<Entity>Deleted` record needs only its ID and `eventType`.
    """
    if not isinstance(record, dict):
        return "each record must be a JSON object"
    problems: list[str] = []
    record_id = record.get(spec.id_field)
    if record_id is None:
        problems.append(f"'{spec.id_field}' is required")
    elif not _is_id(record_id):
        problems.append(f"'{spec.id_field}' must be a string of 1-{ID_MAX} characters")
    event_type = record.get("eventType")
    if event_type not in spec.event_types:
        allowed = ", ".join(sorted(spec.event_types))
        problems.append(f"'eventType' must be one of {allowed}")
    elif event_type != spec.deleted_event:
        _check_fields(spec, record, problems)
    return "; ".join(problems) if problems else None


def _check_fields(spec: EntitySpec, record: dict[str, Any], problems: list[str]) -> None:
    missing = [key for key in spec.required if not _present(record.get(key))]
    if missing:
        problems.extend([f"'{key}' is required" for key in missing])
    if spec.any_of and not any(_present(record.get(key)) for key in spec.any_of):
        problems.append(f"at least one of {', '.join(spec.any_of)} is required")
    # One pass over the fields that are set; absence is the business of `required` above.
    for key, value in record.items():
        if value is not None:
            problem = _field_problem(spec, key, value)
            if problem is not None:
                problems.append(problem)


def _field_problem(spec: EntitySpec, key: str, value: Any) -> str | None:
    plural = spec.references.get(key)
    if plural is not None:
        return _reference_problem(key, value, plural=plural)
    rule = _RULES.get(key)
    if rule is not None:
        return rule(spec, key, value)
    allowed = spec.enums.get(key)
    if allowed is not None:
        return None if value in allowed else f"'{key}' must be one of {', '.join(sorted(allowed))}"
    if key.endswith("Code") and not (isinstance(value, str) and 0 < len(value) <= CODE_MAX):
        return f"'{key}' must be a string of 1-{CODE_MAX} characters"
    return None


def _reference_problem(key: str, value: Any, *, plural: bool) -> str | None:
    if not plural:
        return None if _is_id(value) else f"'{key}' must be a string of 1-{ID_MAX} characters"
    if isinstance(value, list) and all(_is_id(v) for v in value):
        return None
    return f"'{key}' must be an array of strings of 1-{ID_MAX} characters"


def _date_rule(spec: EntitySpec, key: str, value: Any) -> str | None:
    del spec
    if isinstance(value, str) and _DATE.fullmatch(value):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return None
    return f"'{key}' must be an ISO-8601 date-time like 2024-01-31T00:00:00Z"


def _name_rule(spec: EntitySpec, key: str, value: Any) -> str | None:
    if isinstance(value, str) and len(value) <= spec.name_max:
        return None
    return f"'{key}' must be a string of at most {spec.name_max} characters"


def _city_rule(spec: EntitySpec, key: str, value: Any) -> str | None:
    if spec.name != "address" or (isinstance(value, str) and len(value) <= CITY_MAX):
        return None
    return f"'{key}' must be a string of at most {CITY_MAX} characters"


def _country_rule(spec: EntitySpec, key: str, value: Any) -> str | None:
    if spec.name != "address" or (isinstance(value, str) and _COUNTRY.fullmatch(value)):
        return None
    return f"'{key}' must be an ISO 3166 alpha-2 code such as DE"


# Field name -> the check of its form, wherever it appears.
_RULES: Final[dict[str, Callable[[EntitySpec, str, Any], str | None]]] = {
    **dict.fromkeys(DATE_FIELDS, _date_rule),
    "name": _name_rule,
    "city": _city_rule,
    "country": _country_rule,
}


def parent_references(spec: EntitySpec, record: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The (entity, ID) pairs of the parents a valid, non-deleted record links to."""
    found: list[tuple[str, str]] = []
    for key, plural in spec.references.items():
        value = record.get(key)
        if value is None:
            continue
        parent = spec.parents[key]
        if plural:
            found.extend((parent, v) for v in value)
        else:
            found.append((parent, value))
    return tuple(dict.fromkeys(found))  # each parent once, in the order named


def find_marker(value: Any, marker: str, path: str = "") -> str | None:
    """The path (`a.b[2]`) of the first string inside `value` that contains `marker`, or None."""
    if isinstance(value, str):
        return (path or "(record)") if marker in value else None
    children: Any
    if isinstance(value, dict):
        children = ((f"{path}.{k}" if path else str(k), v) for k, v in value.items())
    elif isinstance(value, list):
        children = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for child_path, child in children:
        found = find_marker(child, marker, child_path)
        if found is not None:
            return found
    return None
