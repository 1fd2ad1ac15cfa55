"""config/connector.bimlink.yaml: it loads, and it shows every key of a BIMlink source."""

from __future__ import annotations

from pathlib import Path

import yaml

from connector.config import load_settings
from connector.sources.bimlink.settings import BimlinkSourceSettings

EXAMPLE = Path(__file__).parents[2] / "config" / "connector.bimlink.yaml"


def test_the_example_config_loads_and_documents_every_key() -> None:
    settings = load_settings(EXAMPLE, environ={})
    source = settings.sources[0]
    assert isinstance(source, BimlinkSourceSettings)
    assert source.topic in settings.kafka.topics, "the sink must consume what the source writes"
    raw = yaml.safe_load(EXAMPLE.read_text())["sources"][0]
    assert set(BimlinkSourceSettings.model_fields) - set(raw) == set()


def test_environment_overrides_reach_the_source(tmp_path: Path) -> None:
    settings = load_settings(
        EXAMPLE,
        environ={
            "CONNECTOR_SOURCES__0__REFRESH_TOKEN_FILE": str(tmp_path / "t.json"),
            "CONNECTOR_SOURCES__0__DOMAIN_ACCOUNT_IDS": "[a, b]",
        },
    )
    source = settings.sources[0]
    assert isinstance(source, BimlinkSourceSettings)
    assert source.refresh_token_file == tmp_path / "t.json"
    assert source.domain_account_ids == ("a", "b")
