"""The real change-data-capture upstream for the CDC tests: PostgreSQL, Kafka Connect
(standalone) and Debezium.

One copy serves the tests and `make demo-cdc`: it lives in `twin_devtools.cdc` (the dev tools'
distribution); this module only names it for the tests.
"""

from __future__ import annotations

from twin_devtools.cdc import (
    CdcUnavailable,
    ConnectWorker,
    Postgres,
    debezium_connector,
    postgres,
    resolve_connect_jars,
)

__all__ = [
    "CdcUnavailable",
    "ConnectWorker",
    "Postgres",
    "debezium_connector",
    "postgres",
    "resolve_connect_jars",
]
