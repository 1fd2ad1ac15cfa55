"""The sources' registry: each platform is one package named in `connector.sources`, which
builds it, gives the config its section and the command line its `auth` platforms; nothing
outside `connector/sources/` names a concrete source (the import contract in pyproject.toml
checks imports, `test_no_module_outside_the_packages_names_a_source` checks text too).

The platforms themselves are tested with their emulators in tests/bimlink and tests/bimplus."""

from __future__ import annotations

import importlib
import importlib.util
import io
import re
import typing
from pathlib import Path

import aiohttp
import pytest

from connector import sources
from connector.cli import main
from connector.sources.bimlink.settings import BimlinkSourceSettings
from connector.sources.bimplus.settings import BimplusSourceSettings
from connector.sources.settings import SourceSettings

ROOT = Path(__file__).parents[2]
SINK = "sink: {client_id: a, client_secret: b, scope: s}\n"


def test_each_package_gives_its_own_type_in_registry_order() -> None:
    models = sources.settings_models()
    assert [m.__name__ for m in models] == ["BimlinkSourceSettings", "BimplusSourceSettings"]
    for name, model in zip(sources.SOURCES, models, strict=True):
        assert issubclass(model, SourceSettings)
        literal = model.model_fields["type"].annotation
        assert typing.get_args(literal) == (name,), f"{model.__name__} is not type {name}"
        assert model.__module__ == f"{sources.SOURCES[name]}.settings"


def test_the_config_takes_exactly_the_registered_types(tmp_path: Path) -> None:
    from connector.config import load_settings  # noqa: PLC0415
    from connector.errors import ConfigError  # noqa: PLC0415

    path = tmp_path / "connector.yaml"
    path.write_text(SINK + "sources: [{type: bimplus, client_id: c, client_secret: s}]\n")
    (source,) = load_settings(path, {}).sources
    assert type(source) is BimplusSourceSettings
    path.write_text(SINK + "sources: [{type: sharepoint}]\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    expected = (
        "sources.0: Input tag 'sharepoint' found using 'type' does not match any of the "
        "expected tags: 'bimlink', 'bimplus'"
    )
    assert caught.value.problems == [expected]


@pytest.mark.anyio
async def test_build_source_goes_through_the_registry(tmp_path: Path) -> None:
    bimlink = BimlinkSourceSettings.model_validate(
        {"type": "bimlink", "name": "north", "client_id": "c",
         "refresh_token_file": str(tmp_path / "t.json")}
    )  # fmt: skip
    bimplus = BimplusSourceSettings.model_validate(
        {"type": "bimplus", "client_id": "c", "client_secret": "s"}
    )
    async with aiohttp.ClientSession() as session:
        built = [sources.build_source(s, session) for s in (bimlink, bimplus)]
    assert [type(s).__name__ for s in built] == ["BimlinkSource", "BimplusSource"]
    assert [s.name for s in built] == ["north", "bimplus"]
    assert [type(s).__module__ for s in built] == [
        "connector.sources.bimlink.client",
        "connector.sources.bimplus.client",
    ]


def test_every_login_source_has_an_auth_hook() -> None:
    assert sources.LOGINS == ("bimlink",)
    for name in sources.SOURCES:
        has_hook = importlib.util.find_spec(f"{sources.SOURCES[name]}.auth") is not None
        assert has_hook == (name in sources.LOGINS), name
        if has_hook:
            assert callable(importlib.import_module(f"{sources.SOURCES[name]}.auth").login)


@pytest.mark.anyio
async def test_login_refuses_a_source_without_one() -> None:
    bimplus = BimplusSourceSettings.model_validate(
        {"type": "bimplus", "client_id": "c", "client_secret": "s"}
    )
    with pytest.raises(ValueError, match="sources of type bimplus need no login"):
        await sources.login(bimplus, out=io.StringIO())


def test_auth_offers_only_the_login_sources(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["auth", "bimplus", "--config", "c.yaml"])
    assert exited.value.code == 2
    assert "invalid choice: 'bimplus' (choose from 'bimlink')" in capsys.readouterr().err


def test_auth_picks_sources_of_the_named_platform_only(tmp_path: Path) -> None:
    """A Bimplus source is no candidate for `auth bimlink`; two BIMlink ones need --source."""
    config = tmp_path / "connector.yaml"
    config.write_text(SINK + "sources: [{type: bimplus, client_id: c, client_secret: s}]\n")
    err = io.StringIO()
    assert main(["auth", "bimlink", "--config", str(config)], io.StringIO(), err) == 2
    assert err.getvalue() == (f"error: {config}: no bimlink source found; add one under sources:\n")
    two = "  - {type: bimlink, name: %s, client_id: c, refresh_token_file: t.json}\n"
    config.write_text(SINK + "sources:\n" + two % "a" + two % "b")
    err = io.StringIO()
    assert main(["auth", "bimlink", "--config", str(config)], io.StringIO(), err) == 2
    assert "more than one bimlink source found; pick one with --source NAME" in err.getvalue()


def test_no_module_outside_the_packages_names_a_source() -> None:
    """What the import contract cannot see: a concrete source named in text (an
    `importlib` path, a class name) outside its package and the registry."""
    named = re.compile(r"sources[./](bimlink|bimplus)|Bim(link|plus)Source")
    allowed = {ROOT / "connector/sources/__init__.py"}
    packages = [ROOT / "connector/sources" / name for name in sources.SOURCES]
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "connector").rglob("*.py"))
        if path not in allowed and not any(p in path.parents for p in packages)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if named.search(line)
    ]
    assert found == []
