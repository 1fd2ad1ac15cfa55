"""The connector's exception tree.

Every error the connector raises on purpose derives from `ConnectorError`. Each class says
whether retrying the same operation can succeed (`retriable`); retry, dead-letter and commit
logic branch on these types and flags, never on message text.

Each class also carries what delivery does about it (`action`, one of `Action`, and for a
retry its metrics label `retry_label`), the way arq's `Retry(defer=...)` carries its own
decision: `connector.delivery.disposition` reads these attributes and nothing else, so a
sink chooses the behaviour by the class it raises.

    ConnectorError                                                              action
    ├── ConfigError                 bad configuration; every problem listed at once   stop
    ├── BrokerUnavailable           no Kafka broker could be found or started         stop
    ├── AuthError                   the token endpoint refused or failed              stop
    │   ├── CredentialsRejected     AADSTS codes that need a human fix                hold
    │   └── TokenEndpointUnavailable  network, 5xx, 429 at the token endpoint     back off
    └── ApiError                    the platform answered a request with a failure    stop
        ├── RateLimited             429; carries `retry_after` seconds                wait
        ├── ServerError             5xx, timeouts, connection resets              back off
        │   ├── InvalidResponse     a 2xx that is not the answer the API promises back off
        │   └── ResponseTooLarge    a body over the cap, on the wire or decoded   back off
        ├── Unauthorized            401 that survived one token renewal           back off
        ├── EndpointMisconfigured   403 / 404 / 405: hold the data, alert             hold
        │   └── RedirectRefused     a 3xx: redirects are never followed               hold
        └── RequestRejected         400: the records themselves are at fault         split
            └── RequestTooLarge     413: the request body is over the API's limit    split

`retriable` says whether the same operation can succeed later (back off, wait); a `split`
error that reaches a single record dead-letters it (`dead_letter_reason`).

A failure at a token endpoint (or OIDC discovery) is raised as the `AuthError` with the same
`retriable` flag: `CredentialsRejected` for a fatal one, `TokenEndpointUnavailable` otherwise.
"""

from __future__ import annotations

import enum
from typing import ClassVar

TLS_HINT = (
    "if the endpoint uses a private CA, set sink.ca_file to its bundle; "
    "keep sink.tls_verify on outside local tests"
)

__all__ = [
    "TLS_HINT",
    "Action",
    "ApiError",
    "AuthError",
    "BrokerUnavailable",
    "ConfigError",
    "ConnectorError",
    "CredentialsRejected",
    "EndpointMisconfigured",
    "InvalidResponse",
    "RateLimited",
    "RedirectRefused",
    "RequestRejected",
    "RequestTooLarge",
    "ResponseTooLarge",
    "ServerError",
    "TokenEndpointUnavailable",
    "Unauthorized",
]


class Action(enum.Enum):
    """What delivery does about an error a sink raised (`connector.delivery.disposition`)."""

    WAIT = "wait"  # wait for the platform's Retry-After (bounded), then send again
    BACK_OFF = "back_off"  # exponential backoff with full jitter, then send again
    HOLD = "hold"  # stop sending to that endpoint for a pause, keep the data, alert
    SPLIT = "split"  # halve the request; a single record is dead-lettered
    STOP = "stop"  # not delivery's to handle: raised, the pipeline stops


class ConnectorError(Exception):
    """Root of every error the connector raises on purpose."""

    retriable: bool = False
    action: ClassVar[Action] = Action.STOP
    retry_label: ClassVar[str] = "other"  # connector_api_retries_total{reason}, a fixed set


class ConfigError(ConnectorError):
    """The configuration is invalid. `problems` holds one line per problem, key path first."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        count = len(problems)
        header = f"configuration has {count} problem{'s' if count != 1 else ''}:"
        super().__init__("\n".join([header, *(f"  - {p}" for p in problems)]))


class BrokerUnavailable(ConnectorError):
    """No Kafka broker could be reached or started; the message says what to install or set."""


class AuthError(ConnectorError):
    """The token endpoint did not give us a token."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


class CredentialsRejected(AuthError):
    """The identity provider rejected the credentials; a human has to fix the config."""

    action = Action.HOLD


class TokenEndpointUnavailable(AuthError):
    """The token endpoint failed transiently (network, 5xx, throttled); try again later."""

    retriable = True
    action = Action.BACK_OFF
    retry_label = "token_unavailable"


class ApiError(ConnectorError):
    """The platform API answered with a failure status."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.request_id = request_id


class RateLimited(ApiError):
    """HTTP 429. `retry_after` is the wait the server asked for, in seconds (None if absent)."""

    retriable = True
    action = Action.WAIT
    retry_label = "rate_limited"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None,
        status: int | None = 429,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message, status=status, request_id=request_id)
        self.retry_after = retry_after


class ServerError(ApiError):
    """5xx, a timeout or a dropped connection: the request may succeed later."""

    retriable = True
    action = Action.BACK_OFF
    retry_label = "server_error"


class InvalidResponse(ServerError):
    """A 2xx whose body is not what the API promises (e.g. no `batchId`): nothing proves the
    platform took the records, so the request counts as failed and is sent again."""

    retry_label = "invalid_response"


class ResponseTooLarge(ServerError):
    """The answer's body is over the cap, compressed or decompressed; it was not read whole."""

    retry_label = "response_too_large"


class Unauthorized(ApiError):
    """401 even with a freshly renewed token: pause and alert, keep the data."""

    retriable = True
    action = Action.BACK_OFF
    retry_label = "unauthorized"


class EndpointMisconfigured(ApiError):
    """403, 404 or 405: the endpoint or the credential's permissions are wrong. Hold the data."""

    action = Action.HOLD


class RedirectRefused(EndpointMisconfigured):
    """A 3xx. Redirects are never followed: one would carry the request (and its bearer token)
    to a URL nobody configured, and a 302 turns a POST into a bodiless GET whose 200 proves
    nothing. The message names the target host; the configured URL needs fixing."""


class RequestRejected(ApiError):
    """400 naming no record: the request body itself was refused. Split to isolate the
    records at fault; a single record is dead-lettered with `dead_letter_reason`."""

    action = Action.SPLIT
    dead_letter_reason: ClassVar[str] = "api_rejected"


class RequestTooLarge(RequestRejected):
    """413: the request is over the API's size limit; a single record over it is too large."""

    dead_letter_reason = "record_too_large"
