"""The connector's exception tree.

Every error the connector raises on purpose derives from `ConnectorError`. Each class says
whether retrying the same operation can succeed (`retriable`); retry, dead-letter and commit
logic branch on these types and flags, never on message text.

    ConnectorError
    ├── ConfigError                 bad configuration; every problem listed at once  (fatal)
    ├── BrokerUnavailable           no Kafka broker could be found or started         (fatal)
    ├── AuthError                   the token endpoint refused or failed
    │   ├── CredentialsRejected     AADSTS codes that need a human fix               (fatal)
    │   └── TokenEndpointUnavailable  network, 5xx, 429 at the token endpoint      (retriable)
    └── ApiError                    the platform answered a request with a failure
        ├── RateLimited             429; carries `retry_after` seconds             (retriable)
        ├── ServerError             5xx, timeouts, connection resets               (retriable)
        │   ├── InvalidResponse     a 2xx that is not the answer the API promises  (retriable)
        │   └── ResponseTooLarge    a body over the cap, on the wire or decoded    (retriable)
        ├── Unauthorized            401 that survived one token renewal            (retriable)
        ├── EndpointMisconfigured   403 / 404 / 405: hold the data, alert           (fatal)
        │   └── RedirectRefused     a 3xx: redirects are never followed              (fatal)
        └── RequestRejected         400 / 413: the records themselves are at fault  (fatal)

A failure at a token endpoint (or OIDC discovery) is raised as the `AuthError` with the same
`retriable` flag: `CredentialsRejected` for a fatal one, `TokenEndpointUnavailable` otherwise.
"""

from __future__ import annotations

TLS_HINT = (
    "if the endpoint uses a private CA, set sink.ca_file to its bundle; "
    "keep sink.tls_verify on outside local tests"
)

__all__ = [
    "TLS_HINT",
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
    "ResponseTooLarge",
    "ServerError",
    "TokenEndpointUnavailable",
    "Unauthorized",
]


class ConnectorError(Exception):
    """Root of every error the connector raises on purpose."""

    retriable: bool = False


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


class TokenEndpointUnavailable(AuthError):
    """The token endpoint failed transiently (network, 5xx, throttled); try again later."""

    retriable = True


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


class InvalidResponse(ServerError):
    """A 2xx whose body is not what the API promises (e.g. no `batchId`): nothing proves the
    platform took the records, so the request counts as failed and is sent again."""


class ResponseTooLarge(ServerError):
    """The answer's body is over the cap, compressed or decompressed; it was not read whole."""


class Unauthorized(ApiError):
    """401 even with a freshly renewed token: pause and alert, keep the data."""

    retriable = True


class EndpointMisconfigured(ApiError):
    """403, 404 or 405: the endpoint or the credential's permissions are wrong. Hold the data."""


class RedirectRefused(EndpointMisconfigured):
    """A 3xx. Redirects are never followed: one would carry the request (and its bearer token)
    to a URL nobody configured, and a 302 turns a POST into a bodiless GET whose 200 proves
    nothing. The message names the target host; the configured URL needs fixing."""


class RequestRejected(ApiError):
    """400 or 413: the request body itself was refused."""
