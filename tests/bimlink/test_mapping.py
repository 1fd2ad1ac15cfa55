"""The BIMlink -> BuildingMinds mapping, as pure functions: external IDs, the phase choice,
and records that pass the platform's own validation with correct parent links."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connector.errors import ConfigError
from connector.sources.bimlink.client import choose_phase, external_id, map_locations
from connector.sources.bimlink.settings import BimlinkSourceSettings
from twin_emulators.buildingminds_model import ENTITIES as SPECS
from twin_emulators.buildingminds_model import validate_record

SETTINGS = BimlinkSourceSettings(
    type="bimlink", client_id="c", refresh_token_file=Path("/nonexistent/token.json")
)
GUID = "0f8fad5b-d9cb-469f-a165-70867728950e"

LOCATIONS: list[dict[str, Any]] = [
    {
        "id": "L1",
        "name": "A location name that is much longer than the fifty characters a site may have",
        "address": {"street": "Croeselaan", "houseNumber": "1", "postalCode": "3521 BJ",
                    "city": "Utrecht", "country": "nl"},
        "projects": [
            {"id": "P1", "name": "Kantoor", "number": "P-001",
             "projectPhases": [{"id": "PH-old", "name": "Ontwerp"},
                               {"id": "PH1", "name": "Beheer"}]},
            {"id": "P2", "name": "", "projectPhases": []},
        ],
    },
    {"id": "L2", "name": "No address", "address": None, "projects": []},
]  # fmt: skip
ELEMENTS: dict[str, list[dict[str, Any]]] = {
    "PH1": [
        {"id": "E-site", "parentId": None, "name": "Terrein", "type": "Site"},
        {"id": "E-bld", "parentId": "E-site", "name": "Gebouw", "type": "Building"},
        {"id": "E-00", "parentId": "E-bld", "name": "00", "type": "Storey", "elevation": 0.0},
        {"id": "E-zone", "parentId": "E-00", "name": "Zone", "type": "Zone"},
        {"id": "E-r1", "parentId": "E-00", "name": "0.01", "type": "Space"},
        {"id": "E-r2", "parentId": "E-zone", "name": "0.02", "type": "Space"},
        {"id": "E-lost", "parentId": "E-bld", "name": "outside", "type": "Space"},
    ]
}


def test_external_ids_are_prefixed_stable_and_at_most_50_characters() -> None:
    assert external_id("loc", GUID) == f"bimlink:loc:{GUID}"
    long_id = "x" * 60
    hashed = external_id("sse", long_id)
    assert hashed.startswith("bimlink:sse:#")
    assert len(hashed) <= 50
    assert hashed == external_id("sse", long_id) != external_id("sse", long_id + "y")
    assert external_id("prj", 42) == "bimlink:prj:42"


def test_phase_choice_prefers_configured_names_then_the_last_phase() -> None:
    project = LOCATIONS[0]["projects"][0]
    assert choose_phase(project, ())["id"] == "PH1"  # type: ignore[index]
    assert choose_phase(project, ("ontwerp", "beheer"))["id"] == "PH-old"  # type: ignore[index]
    assert choose_phase(project, ("as built",))["id"] == "PH1"  # type: ignore[index]
    assert choose_phase({"projectPhases": []}, ()) is None


def test_every_record_passes_the_platforms_validation_with_parent_links() -> None:
    items = map_locations("DA", LOCATIONS, ELEMENTS, SETTINGS)
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for item in items:
        assert len(item.external_id) <= 50
        assert item.external_id.startswith("bimlink:")
        assert item.record[item.entity.id_field] == item.external_id
        spec = SPECS[item.entity.endpoint]
        event = {**item.record, "eventType": f"{item.entity.name}Added"}
        assert validate_record(spec, event) is None, (item, validate_record(spec, event))
        by_kind.setdefault(item.entity.name, {})[item.external_id] = item.record

    addresses, sites = by_kind["Address"], by_kind["Site"]
    buildings, floors, spaces = by_kind["Building"], by_kind["Floor"], by_kind["Space"]
    assert addresses["bimlink:adr:L1"]["country"] == "NL"
    assert addresses["bimlink:adr:L2"] == {
        "addressId": "bimlink:adr:L2", "city": "Unknown", "country": "NL"
    }  # fmt: skip
    site = sites["bimlink:loc:L1"]
    assert len(site["name"]) == 50
    assert site["addressIds"] == ["bimlink:adr:L1"]
    assert (site["type"], site["validFrom"]) == ("Other", "1900-01-01T00:00:00Z")
    assert buildings["bimlink:prj:P1"]["siteId"] == "bimlink:loc:L1"
    assert buildings["bimlink:prj:P2"]["name"] == "P2"  # a blank name falls back to the ID
    assert buildings["bimlink:prj:P1"]["extensionData"]["bimlink"]["projectPhaseId"] == "PH1"
    assert set(floors) == {"bimlink:sse:E-00"}
    assert floors["bimlink:sse:E-00"]["buildingId"] == "bimlink:prj:P1"
    assert {k: v["floorId"] for k, v in spaces.items()} == {
        "bimlink:sse:E-r1": "bimlink:sse:E-00",
        "bimlink:sse:E-r2": "bimlink:sse:E-00",  # through the zone to the nearest storey
    }  # the space outside any storey is left out


def test_mapping_is_deterministic() -> None:
    first = map_locations("DA", LOCATIONS, ELEMENTS, SETTINGS)
    second = map_locations("DA", LOCATIONS, ELEMENTS, SETTINGS)
    assert [i.digest() for i in first] == [i.digest() for i in second]


def test_settings_are_validated_with_clear_messages(tmp_path: Path) -> None:
    from connector.config import load_settings  # noqa: PLC0415

    config = tmp_path / "c.yaml"
    config.write_text(
        "sink: {client_id: a, client_secret: b, scope: s}\n"
        "sources:\n"
        "  - type: bimlink\n"
        "    base_url: ftp://x\n"
        "    scope: bimlink_publicapi\n"
        "    site_type: Castle\n"
        "    default_country: Netherlands\n"
        "    valid_from: yesterday\n"
        "    page_limit: 0\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    text = str(caught.value)
    for expected in (
        "sources.0.client_id: required", "sources.0.refresh_token_file: required",
        "sources.0.base_url: must be an http", "sources.0.scope: must include offline_access",
        "sources.0.site_type: must be a BuildingMinds site type",
        "sources.0.default_country: must be an ISO 3166", "sources.0.valid_from: must be a UTC",
        "sources.0.page_limit",
    ):  # fmt: skip
        assert expected in text, text


def test_client_secret_file_and_defaults(tmp_path: Path) -> None:
    from connector.config import load_settings  # noqa: PLC0415

    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    config = tmp_path / "c.yaml"
    config.write_text(
        "sink: {client_id: a, client_secret: b, scope: s}\n"
        "sources:\n"
        f"  - {{type: bimlink, client_id: c, client_secret_file: {secret}, "
        f"refresh_token_file: {tmp_path / 't.json'}}}\n"
    )
    source = load_settings(config, environ={}).sources[0]
    assert isinstance(source, BimlinkSourceSettings)
    assert source.client_secret is not None
    assert source.client_secret.get_secret_value() == "s3cret"
    assert source.token_url == "https://api.bimlink.nl/connect/token"
    assert source.redirect_uri == "http://127.0.0.1:8765/callback"
    assert "s3cret" not in repr(source)
