"""The `schema_registry` section: what a user sees for good and bad settings."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING

import pytest

from connector.config import load_settings
from connector.errors import ConfigError
from connector.schemaregistry import RegistryClient

if TYPE_CHECKING:
    from pathlib import Path

PASSWORD = "registry-Secret-that-must-never-print"

BASE = """
sink:
  client_id: my-client
  client_secret: sink-secret
  scope: api://bm
"""


def write(tmp_path: Path, section: str) -> Path:
    path = tmp_path / "connector.yaml"
    path.write_text(BASE + textwrap.dedent(section))
    return path


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env or {})
    return caught.value.problems


def test_off_by_default(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, ""), {}).schema_registry.url is None


def test_basic_auth_from_a_file_and_the_environment_never_printed(tmp_path: Path) -> None:
    secret = tmp_path / "registry-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    path = write(tmp_path, f"""
        schema_registry:
          url: https://registry.example:8081/
          password_file: {secret}
        """)  # fmt: skip

    settings = load_settings(path, {"CONNECTOR_SCHEMA_REGISTRY__USERNAME": "svc"})

    registry = settings.schema_registry
    assert registry.url == "https://registry.example:8081"
    assert registry.username == "svc"
    assert registry.password is not None
    assert registry.password.get_secret_value() == PASSWORD
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in str(settings.summary())
    assert PASSWORD not in repr(vars(RegistryClient(registry)))


def test_half_a_credential_or_two_are_refused_with_the_fix(tmp_path: Path) -> None:
    only_user = write(tmp_path, "schema_registry: {url: 'http://127.0.0.1:8081', username: svc}")
    assert any(
        "schema_registry: " in p and "set both username and password" in p
        for p in problems(only_user)
    ), problems(only_user)
    both = write(tmp_path, """
        schema_registry:
          url: http://127.0.0.1:8081
          username: svc
          password: pw
          token: tok
        """)  # fmt: skip
    assert any("either username/password or token" in p for p in problems(both))


def test_a_url_that_is_not_http_is_refused(tmp_path: Path) -> None:
    found = problems(write(tmp_path, "schema_registry: {url: 'registry:8081'}"))
    assert any("schema_registry.url" in p and "http:// or https://" in p for p in found), found


def test_a_missing_ca_file_is_refused(tmp_path: Path) -> None:
    found = problems(
        write(tmp_path, f"schema_registry: {{url: 'https://r', ca_file: '{tmp_path}/nope.pem'}}")
    )
    assert any("schema_registry.ca_file" in p and "does not exist" in p for p in found), found


def test_a_timeout_the_consume_loop_cannot_wait_for_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "schema_registry: {url: 'http://r', request_timeout_seconds: 90}")
    found = problems(path)
    assert any("schema_registry.request_timeout_seconds" in p for p in found), found


def test_plain_http_to_another_host_and_no_tls_verification_are_warned_about(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, """
        schema_registry:
          url: http://registry.example:8081
          tls_verify: false
        """)  # fmt: skip

    warnings = load_settings(path, {}).warnings

    assert any(w.startswith("schema_registry.url: ") and "https://" in w for w in warnings)
    assert any(w.startswith("schema_registry.tls_verify is false") for w in warnings)
    local = write(tmp_path, "schema_registry: {url: 'http://127.0.0.1:8081'}")
    assert not [w for w in load_settings(local, {}).warnings if "schema_registry" in w]
