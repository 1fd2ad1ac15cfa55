"""The BIMlink emulator's data: domain accounts, locations, projects, project phases and
spatial structure elements, and which user may see what.

Owns the records of one emulated BIMlink installation, their parent links, the views the API
returns (shapes inferred: the public quickstart names the actions but not their fields; see
docs/bimlink.md), per-user visibility, and the changes the admin API makes at run time.

Records are plain JSON objects with an `id` and a link to their parent:

    domainaccount  {"id", "name"}
    location       {"id", "domainAccountId", "name", "address": {"street", "houseNumber",
                    "postalCode", "city", "country"}}
    project        {"id", "locationId", "name", "number"}
    phase          {"id", "projectId", "name"}
    element        {"id", "projectPhaseId", "parentId" (null at the top), "name",
                    "type": "Site" | "Building" | "Storey" | "Space" | "Zone", "elevation"}

Must not: know about HTTP or time. Every function is pure over the store it is given.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = [
    "DEMO_USER",
    "KINDS",
    "OTHER_USER",
    "DataStore",
    "Forbidden",
    "NotFound",
    "demo_id",
    "demo_store",
]

DEMO_USER: Final = "demo-user"
OTHER_USER: Final = "other-user"

# kind -> (the field that links to the parent, the parent's kind); None at the top.
KINDS: Final[dict[str, tuple[str, str] | None]] = {
    "domainaccount": None,
    "location": ("domainAccountId", "domainaccount"),
    "project": ("locationId", "location"),
    "phase": ("projectId", "project"),
    "element": ("projectPhaseId", "phase"),
}
ELEMENT_TYPES: Final = frozenset({"Site", "Building", "Storey", "Space", "Zone"})


class Forbidden(Exception):
    """The user may not see this domain account (or location)."""


class NotFound(Exception):
    """No such record in the domain account."""


@dataclass
class DataStore:
    """Every record by kind and ID (insertion order is listing order), and each user's view:
    user -> domain account -> the location IDs visible (None: all of them)."""

    records: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )
    access: dict[str, dict[str, frozenset[str] | None]] = field(default_factory=dict)
    emails: dict[str, str] = field(default_factory=dict)

    # -- changes (admin API) -------------------------------------------------------------

    def upsert(self, kind: str, record: dict[str, Any]) -> bool:
        """Add or update one record (fields merge into an existing one); True if it is new.

        Raises ValueError naming what is wrong: an unknown kind, no `id`, a missing parent."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
        record_id = record.get("id")
        if not isinstance(record_id, str) or not record_id:
            raise ValueError("the record needs a non-empty string 'id'")
        existing = self.records[kind].get(record_id)
        merged = {**(existing or {}), **record}
        link = KINDS[kind]
        if link is not None:
            parent_field, parent_kind = link
            if merged.get(parent_field) not in self.records[parent_kind]:
                raise ValueError(f"{parent_field} must name an existing {parent_kind}")
        if kind == "element":
            if merged.get("type") not in ELEMENT_TYPES:
                raise ValueError(f"type must be one of {', '.join(sorted(ELEMENT_TYPES))}")
            merged.setdefault("parentId", None)
        merged.setdefault("name", record_id)
        self.records[kind][record_id] = merged
        return existing is None

    def delete(self, kind: str, record_id: str) -> int:
        """Delete a record and everything below it; how many records went (0: not found)."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
        if self.records[kind].pop(record_id, None) is None:
            return 0
        removed = 1
        for child_kind, link in KINDS.items():
            if link is not None and link[1] == kind:
                children = [
                    i for i, r in self.records[child_kind].items() if r[link[0]] == record_id
                ]
                removed += sum(self.delete(child_kind, child) for child in children)
        if kind == "element":  # spatial children hang off parentId within the same phase
            children = [i for i, r in self.records["element"].items() if r["parentId"] == record_id]
            removed += sum(self.delete("element", child) for child in children)
        return removed

    def grant(self, user_id: str, account_id: str, locations: frozenset[str] | None) -> None:
        """Let `user_id` see `account_id` (only `locations` of it, unless None)."""
        self.access.setdefault(user_id, {})[account_id] = locations

    # -- the API's views -------------------------------------------------------------------

    def domain_accounts(self, user_id: str) -> list[dict[str, Any]]:
        visible = self.access.get(user_id, {})
        return [
            {"id": a["id"], "name": a["name"]}
            for a in self.records["domainaccount"].values()
            if a["id"] in visible
        ]

    def _visible_locations(self, user_id: str, account_id: str) -> list[dict[str, Any]]:
        visible = self.access.get(user_id, {})
        if account_id not in visible or account_id not in self.records["domainaccount"]:
            raise Forbidden(account_id)
        allowed = visible[account_id]
        return [
            loc
            for loc in self.records["location"].values()
            if loc["domainAccountId"] == account_id and (allowed is None or loc["id"] in allowed)
        ]

    def locations(self, user_id: str, account_id: str) -> list[dict[str, Any]]:
        """The locations -> projects -> project phases tree the user may see."""
        projects, phases = self.records["project"].values(), self.records["phase"].values()
        return [
            {
                "id": loc["id"],
                "name": loc["name"],
                "address": loc.get("address"),
                "projects": [
                    {
                        "id": p["id"],
                        "name": p["name"],
                        "number": p.get("number"),
                        "projectPhases": [
                            {"id": ph["id"], "name": ph["name"]}
                            for ph in phases
                            if ph["projectId"] == p["id"]
                        ],
                    }
                    for p in projects
                    if p["locationId"] == loc["id"]
                ],
            }
            for loc in self._visible_locations(user_id, account_id)
        ]

    def elements(self, user_id: str, account_id: str, phase_id: str) -> list[dict[str, Any]]:
        """The spatial structure of one phase. Raises Forbidden / NotFound."""
        phase = self.records["phase"].get(phase_id)
        project = self.records["project"].get(phase["projectId"]) if phase else None
        location = self.records["location"].get(project["locationId"]) if project else None
        if location is None or location["domainAccountId"] != account_id:
            self._visible_locations(user_id, account_id)  # 403 first for an unseen account
            raise NotFound(phase_id)
        visible = {loc["id"] for loc in self._visible_locations(user_id, account_id)}
        if location["id"] not in visible:
            raise Forbidden(phase_id)
        return [
            {k: e.get(k) for k in ("id", "parentId", "name", "type", "elevation")}
            for e in self.records["element"].values()
            if e["projectPhaseId"] == phase_id
        ]


def demo_id(name: str) -> str:
    """Deterministic GUIDs, so the demo data reads the same every run."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://emulator.bimlink.invalid/{name}"))


def demo_store() -> DataStore:
    """Two domain accounts of the demo user (the second only partly visible) and one of
    another user; two locations with projects, phases, storeys and spaces."""
    store = DataStore(emails={DEMO_USER: "demo@example.com", OTHER_USER: "other@example.com"})
    for key, name in (("da-1", "Demo Vastgoed BV"), ("da-2", "Partner Account"),
                      ("da-3", "Somebody Else")):  # fmt: skip
        store.upsert("domainaccount", {"id": demo_id(key), "name": name})
    store.grant(DEMO_USER, demo_id("da-1"), None)
    store.grant(DEMO_USER, demo_id("da-2"), frozenset({demo_id("loc-3")}))
    store.grant(OTHER_USER, demo_id("da-3"), None)
    places = (
        ("loc-1", "da-1", "Campus Utrecht", ("Croeselaan", "1", "3521 BJ", "Utrecht", "NL")),
        ("loc-2", "da-1", "Zuidas Amsterdam", ("Gustav Mahlerlaan", "10", "1082 PP",
                                               "Amsterdam", "NL")),
        ("loc-3", "da-2", "Rotterdam Haven", ("Wilhelminakade", "5", "3072 AP", "Rotterdam",
                                              "NL")),
        ("loc-4", "da-2", "Hidden Place", ("Markt", "1", "5611 EB", "Eindhoven", "NL")),
        ("loc-5", "da-3", "Other User's Place", ("Dam", "1", "1012 JS", "Amsterdam", "NL")),
    )  # fmt: skip
    for key, account, name, (street, number, postal, city, country) in places:
        address = {"street": street, "houseNumber": number, "postalCode": postal,
                   "city": city, "country": country}  # fmt: skip
        store.upsert(
            "location",
            {
                "id": demo_id(key),
                "domainAccountId": demo_id(account),
                "name": name,
                "address": address,
            },
        )
    projects = (
        ("prj-1", "loc-1", "Kantoor A", "P-001", ("Ontwerp", "Beheer")),
        ("prj-2", "loc-1", "Parkeergarage", "P-002", ("Beheer",)),
        ("prj-3", "loc-2", "Toren Zuid", "P-003", ("Beheer",)),
        ("prj-4", "loc-3", "Loods 7", "P-004", ("Beheer",)),
        ("prj-5", "loc-4", "Hidden Hall", "P-005", ("Beheer",)),
        ("prj-6", "loc-5", "Other Tower", "P-006", ("Beheer",)),
    )
    for key, location, name, number, phase_names in projects:
        store.upsert(
            "project",
            {"id": demo_id(key), "locationId": demo_id(location), "name": name, "number": number},
        )
        for phase_name in phase_names:
            phase_key = f"{key}/{phase_name}"
            store.upsert(
                "phase", {"id": demo_id(phase_key), "projectId": demo_id(key), "name": phase_name}
            )
            _demo_structure(store, phase_key, storeys=3 if key == "prj-1" else 2, spaces=3)
    return store


def _demo_structure(store: DataStore, phase_key: str, *, storeys: int, spaces: int) -> None:
    phase_id = demo_id(phase_key)

    def add(key: str, parent: str | None, name: str, kind: str, **extra: Any) -> None:
        store.upsert(
            "element",
            {"id": demo_id(f"{phase_key}/{key}"), "projectPhaseId": phase_id,
             "parentId": demo_id(f"{phase_key}/{parent}") if parent else None, "name": name,
             "type": kind, **extra},
        )  # fmt: skip

    add("site", None, "Terrein", "Site")
    add("building", "site", "Gebouw", "Building")
    for level in range(storeys):
        storey = f"storey-{level}"
        add(storey, "building", f"{level:02d} Verdieping", "Storey", elevation=level * 3.5)
        for number in range(spaces):
            add(f"{storey}/space-{number}", storey, f"{level}.{number + 1:02d}", "Space")
    add("zone", "building", "Brandcompartiment", "Zone")
