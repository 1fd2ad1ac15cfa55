"""No secret reaches what `check` prints, whatever a user put where (URL userinfo included)."""

from __future__ import annotations

import io
import socket
import textwrap
from typing import TYPE_CHECKING

from connector.cli import main

if TYPE_CHECKING:
    from pathlib import Path

SECRETS = ("ApiPass-4e1d", "TokPass-77c2", "Client-Secret-9b3f", "Kafka-Pass-c0de", "srcPw-5a5a")


def closed_port() -> int:
    """A loopback port nothing listens on: every request fails at once, as an outage does."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_check_prints_no_secret_on_any_line(tmp_path: Path) -> None:
    """The probe found a URL's password 3 times in `check`, the settings summary included."""
    port = closed_port()
    config = tmp_path / "connector.yaml"
    config.write_text(
        textwrap.dedent(
            f"""
            kafka:
              bootstrap_servers: "127.0.0.1:{port}"
              security_protocol: SASL_PLAINTEXT
              sasl_mechanism: PLAIN
              sasl_username: svc
              sasl_password: {SECRETS[3]}
            sink:
              base_url: "https://apiuser:{SECRETS[0]}@127.0.0.1:{port}/api/digitaltwinintegration"
              token_url: "https://tokuser:{SECRETS[1]}@127.0.0.1:{port}/t/oauth2/v2.0/token"
              client_id: c
              client_secret: "{SECRETS[2]}"
              scope: api://x
              request_timeout_seconds: 2
            sources:
              - type: bimplus
                base_url: "https://u:{SECRETS[4]}@127.0.0.1:{port}/v2"
                client_id: c
                client_secret: "{SECRETS[4]}"
                request_timeout_seconds: 2
            """
        )
    )
    out, err = io.StringIO(), io.StringIO()
    code = main(["check", "--config", str(config)], out, err)
    lines = (out.getvalue() + err.getvalue()).splitlines()
    assert code == 1, lines
    assert any("sasl_password" in line for line in lines), "the summary was printed"
    assert any("https://***@127.0.0.1" in line for line in lines), lines
    leaks = [line for line in lines if any(s in line for s in SECRETS)]
    assert leaks == []
