"""Client construction: the Kafka connection options and the HTTP sessions, in one place.

`kafka_options` is what the consumer, the dead-letter producer, the admin client and the
one-shot commands connect with; `client_session` is the sink's plain session (its token
endpoint is called through it; each sink adds its authenticated session on the same pool);
`source_session` one polling source's.

Must not: make a request or open a connection (aiohttp and aiokafka connect lazily).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from pathlib import Path

    from connector.config import Settings, SourceSettings

__all__ = ["client_session", "http_session", "kafka_options", "source_session"]


def kafka_options(settings: Settings) -> dict[str, Any]:
    """Connection options shared by the consumer and the dead-letter producer."""
    k = settings.kafka
    options: dict[str, Any] = {
        "bootstrap_servers": k.bootstrap_servers,
        "client_id": k.client_id,
        "security_protocol": k.security_protocol,
    }
    if k.security_protocol in ("SSL", "SASL_SSL"):
        # verification is on by default; the CA bundle, when given, replaces the system store
        context = ssl.create_default_context(cafile=str(k.ssl_cafile) if k.ssl_cafile else None)
        if k.ssl_certfile:
            context.load_cert_chain(
                str(k.ssl_certfile), str(k.ssl_keyfile) if k.ssl_keyfile else None
            )
        options["ssl_context"] = context
    if k.security_protocol.startswith("SASL"):
        options["sasl_mechanism"] = k.sasl_mechanism
        options["sasl_plain_username"] = k.sasl_username
        options["sasl_plain_password"] = (
            k.sasl_password.get_secret_value() if k.sasl_password else None
        )
    return options


def client_session(settings: Settings) -> aiohttp.ClientSession:
    """The sink's plain session (TLS, timeouts, pool); the token endpoint is called through it."""
    sink = settings.sink
    return http_session(
        verify=sink.tls_verify, ca_file=sink.ca_file, timeout=sink.request_timeout_seconds
    )


def source_session(source: SourceSettings) -> aiohttp.ClientSession:
    """One source's plain session (its TLS and timeout); its token is added per request."""
    return http_session(
        verify=source.tls_verify, ca_file=source.ca_file, timeout=source.request_timeout_seconds
    )


def http_session(*, verify: bool, ca_file: Path | None, timeout: float) -> aiohttp.ClientSession:
    """A session that verifies certificates (against `ca_file` when given) unless told not to.

    Requests go through `connector.http.send`, which decompresses bodies itself within its
    cap; the session never does (`auto_decompress=False`)."""
    context: ssl.SSLContext | bool = True
    if not verify:
        context = False
    elif ca_file:
        context = ssl.create_default_context(cafile=str(ca_file))
    connector = aiohttp.TCPConnector(ssl=context, limit=32)
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout), connector=connector, auto_decompress=False
    )
