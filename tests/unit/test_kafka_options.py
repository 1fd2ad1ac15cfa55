"""Kafka connection options: TLS verifies by default, SASL credentials pass through."""

from __future__ import annotations

import ssl

import pytest

from connector.app import kafka_options
from connector.config import Settings, load_settings
from connector.errors import ConfigError

SINK = {"client_id": "c", "client_secret": "s", "scope": "x"}


def test_plaintext_has_no_tls_or_sasl() -> None:
    options = kafka_options(Settings.model_validate({"sink": SINK}))
    assert options["security_protocol"] == "PLAINTEXT"
    assert "ssl_context" not in options
    assert "sasl_mechanism" not in options


def test_ssl_verifies_certificates_and_host_names_by_default() -> None:
    options = kafka_options(
        Settings.model_validate({"sink": SINK, "kafka": {"security_protocol": "SSL"}})
    )
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname


def test_sasl_scram_passes_credentials() -> None:
    kafka = {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "svc",
        "sasl_password": "pw-123",
    }
    options = kafka_options(Settings.model_validate({"sink": SINK, "kafka": kafka}))
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "svc"
    assert options["sasl_plain_password"] == "pw-123"
    assert isinstance(options["ssl_context"], ssl.SSLContext)


def test_missing_certificate_files_are_config_errors_naming_the_key() -> None:
    env = {
        "CONNECTOR_SINK__CLIENT_ID": "c", "CONNECTOR_SINK__CLIENT_SECRET": "s",
        "CONNECTOR_SINK__SCOPE": "x", "CONNECTOR_KAFKA__SSL_CAFILE": "/nonexistent/ca.pem",
        "CONNECTOR_SINK__CA_FILE": "/nonexistent/api-ca.pem",
    }  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env)
    assert caught.value.problems == [
        (
            "CONNECTOR_KAFKA__SSL_CAFILE (kafka.ssl_cafile): file /nonexistent/ca.pem "
            "does not exist or is not a file"
        ),
        (
            "CONNECTOR_SINK__CA_FILE (sink.ca_file): file /nonexistent/api-ca.pem "
            "does not exist or is not a file"
        ),
    ]
