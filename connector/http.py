"""The one HTTP exchange every platform call goes through (sinks, sources, token endpoints).

Owns every decision about a request that is not the platform's own:

    send(session, method, url, ...) -> Answer
      ├── map_transport_errors   aiohttp and timeout errors -> the connector's tree, once:
      │                          a certificate or an https:// URL to a plain-HTTP port is
      │                          `EndpointMisconfigured` (with the fix), the rest `ServerError`
      ├── allow_redirects=False  a 3xx raises `RedirectRefused` naming the target host only;
      │                          nothing (no token, no body) goes anywhere not configured
      └── read_body              at most `max_body` bytes on the wire and once decompressed:
                                 gzip/deflate are inflated here, chunk by chunk and bounded,
                                 so a compression bomb never inflates in memory; over the cap
                                 is `ResponseTooLarge` (retriable, like a 5xx)
    StatusTable.error(answer, message) -> ApiError | None
                                 one platform's status -> exception class, as data; 429
                                 reads `Retry-After` with `connector.ratelimit`'s one parser,
                                 and every platform message is passed through `redact`

Callers turn an `Answer` into records and build the message text; they never catch aiohttp
errors nor compare status numbers to choose an exception.

Must not: follow a redirect, let aiohttp decompress a body, read a body whole without the cap,
or touch the Authorization header (the `BearerAuth` middleware owns it).
"""

from __future__ import annotations

import contextlib
import ssl
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import orjson
from aiohttp import hdrs
from yarl import URL

from connector.errors import (
    TLS_HINT,
    ApiError,
    EndpointMisconfigured,
    RateLimited,
    RedirectRefused,
    ResponseTooLarge,
    ServerError,
)
from connector.logs import redact
from connector.ratelimit import retry_after_seconds

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence

    from multidict import CIMultiDictProxy

__all__ = [
    "ACCEPT_ENCODING",
    "DEFAULT_MAX_BODY",
    "PLAIN_HTTP_HINT",
    "Answer",
    "StatusTable",
    "host_of",
    "map_transport_errors",
    "read_body",
    "send",
]

DEFAULT_MAX_BODY: Final = 16 * 1024 * 1024
"""16 MiB, compressed and decompressed: far above the largest legitimate answer (a `GET
/batch` page of 1000 batches is well under 1 MiB), far below what hurts the process."""

ACCEPT_ENCODING: Final = "gzip, deflate"
"""What `read_body` can decode; sent on every request, so no other coding comes back."""

PLAIN_HTTP_HINT: Final = "the server speaks plain HTTP; use http:// or check the port"

_CHUNK: Final = 64 * 1024
_STEP: Final = 1024 * 1024  # inflated bytes per decompress call: bounds each temporary
_WBITS: Final = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 47}
# 47 = 32 + MAX_WBITS: a zlib (RFC 1950) or a gzip header, detected; HTTP's "deflate" is zlib.
_REQUEST_ID_HEADERS: Final = ("x-request-id", "x-ms-request-id", "request-id", "x-correlation-id")


@dataclass(frozen=True, slots=True)
class Answer:
    """A response that was not a redirect, its body read (decompressed) within the cap."""

    status: int
    reason: str
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def request_id(self) -> str | None:
        """The platform's request ID, from the first of the usual headers that is set
        (redacted)."""
        return _request_id(self.headers)

    def json(self) -> Any:
        """The body as JSON; None when it is empty or not JSON."""
        try:
            return orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            return None


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    what: str | None = None,
    params: Mapping[str, str] | None = None,
    data: Any = None,
    json: Any = None,
    headers: Mapping[str, str] | None = None,
    middlewares: Sequence[aiohttp.ClientMiddlewareType] | None = None,
    max_body: int = DEFAULT_MAX_BODY,
) -> Answer:
    """One request, never redirected, its body read within `max_body`.

    `what` names the request in messages (default `METHOD scheme://host/path`); `middlewares`
    replaces the session's for this request (`()` for a token endpoint). Returns every answer
    that is not a 3xx, whatever its status. Raises `RedirectRefused` for a 3xx,
    `ResponseTooLarge` for a body over the cap, `EndpointMisconfigured` for a TLS or URL
    problem a human must fix, `ServerError` for every other transport failure.
    """
    label = what or f"{method} {_safe(URL(url))}"
    extra: dict[str, Any] = {} if middlewares is None else {"middlewares": middlewares}
    request_headers = {hdrs.ACCEPT_ENCODING: ACCEPT_ENCODING, **(headers or {})}
    with map_transport_errors(label):
        async with session.request(
            method, url, params=params, data=data, json=json, headers=request_headers,
            allow_redirects=False, auto_decompress=False, **extra,
        ) as response:  # fmt: skip
            if 300 <= response.status < 400:
                raise _redirect(response, label)
            body = await read_body(response, max_body, label)
            return Answer(response.status, response.reason or "", response.headers, body)


@contextlib.contextmanager
def map_transport_errors(what: str) -> Iterator[None]:
    """Turn aiohttp's and asyncio's transport errors into the connector's tree, once."""
    try:
        yield
    except aiohttp.ClientConnectorCertificateError as exc:
        # not transient: retrying cannot fix a certificate we do not trust
        raise EndpointMisconfigured(
            redact(f"TLS certificate verification failed for {what}: {_describe(exc)}; {TLS_HINT}")
        ) from exc
    except aiohttp.ClientSSLError as exc:
        if not _plain_http(exc):
            raise ServerError(redact(f"{what}: TLS failed: {_describe(exc)}")) from exc
        raise EndpointMisconfigured(
            redact(f"{what}: TLS handshake failed ({_describe(exc)}): {PLAIN_HTTP_HINT}")
        ) from exc
    except aiohttp.InvalidURL as exc:
        raise EndpointMisconfigured(redact(f"{what}: invalid URL: {_describe(exc)}")) from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ServerError(redact(f"{what} unreachable: {_describe(exc)}")) from exc


async def read_body(response: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The body, decompressed, if it is at most `limit` bytes on the wire and decoded.

    The response must come from a request with `auto_decompress=False`. Memory stays about
    `limit` plus one step: the declared length is checked first, then the bytes received and
    the bytes inflated are counted as they arrive. Raises `ResponseTooLarge` (the connection
    is closed, not reused) or `ServerError` for an unknown coding or corrupt compressed data.
    """
    declared = response.content_length
    coding = response.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower() or "identity"
    if declared is not None and declared > limit:
        response.close()
        raise _too_large(response, what, limit, f"Content-Length {declared}")
    if coding != "identity" and coding not in _WBITS:
        response.close()
        raise ServerError(f"{what} answered with Content-Encoding {coding!r}, not asked for")
    body = _Body(limit, coding)
    received = 0
    try:
        async for chunk in response.content.iter_chunked(_CHUNK):
            received += len(chunk)
            if received > limit:
                response.close()
                raise _too_large(response, what, limit, "on the wire")
            if not body.add(chunk):
                response.close()
                raise _too_large(response, what, limit, f"once {coding}-decoded")
        if received and not body.finish():
            raise _too_large(response, what, limit, f"once {coding}-decoded")
    except zlib.error as exc:
        response.close()
        raise ServerError(f"{what} answered a corrupt {coding} body: {exc}") from exc
    if received and not body.complete:
        raise ServerError(f"{what} answered a {coding} body that ends before its end")
    return bytes(body.out)


class _Body:
    """A body as it arrives, inflated in steps of at most `_STEP` bytes and never more than
    one byte past `limit`: what a step leaves waits in the inflater's `unconsumed_tail`."""

    def __init__(self, limit: int, coding: str) -> None:
        self.out = bytearray()
        self._limit = limit
        self._inflater = zlib.decompressobj(_WBITS[coding]) if coding in _WBITS else None

    @property
    def complete(self) -> bool:
        """The compressed stream reached its end (always true for an identity body)."""
        return self._inflater is None or self._inflater.eof

    def add(self, chunk: bytes) -> bool:
        """Take one chunk from the wire; False once the body is over the limit."""
        if self._inflater is None:
            self.out += chunk
            return len(self.out) <= self._limit
        pending = chunk
        # after the end of the compressed stream, trailing bytes are ignored
        while pending and not self._inflater.eof and len(self.out) <= self._limit:
            room = min(_STEP, self._limit + 1 - len(self.out))
            self.out += self._inflater.decompress(pending, room)
            pending = self._inflater.unconsumed_tail
        return len(self.out) <= self._limit

    def finish(self) -> bool:
        """After the last chunk: what the inflater still holds (at most a window's worth, the
        input being all consumed); False if that puts the body over the limit."""
        if self._inflater is not None:
            self.out += self._inflater.flush()
        return len(self.out) <= self._limit


@dataclass(frozen=True)
class StatusTable:
    """One platform's failure statuses as data: which exception each status raises.

    `errors` names statuses; other 4xx raise `client` (None: the caller reads the answer),
    other non-2xx raise `server`. A `RateLimited` class gets `retry_after` from the answer's
    `Retry-After` (`retry_after` when it is absent or unreadable, bounded by the caller's
    maximum).
    """

    errors: Mapping[int, type[ApiError]]
    client: type[ApiError] | None = ServerError
    server: type[ApiError] = ServerError
    retry_after: float | None = 60.0

    def kind(self, status: int) -> type[ApiError] | None:
        """The class a status raises; None for a 2xx and the answers the caller reads."""
        if 200 <= status < 300:
            return None
        if status in self.errors:
            return self.errors[status]
        return self.client if 400 <= status < 500 else self.server

    def error(self, answer: Answer, message: str, *, max_retry_after: float) -> ApiError | None:
        """The exception for `answer` with `message` (redacted), or None (see `kind`)."""
        kind = self.kind(answer.status)
        if kind is None:
            return None
        text, request_id = redact(message), answer.request_id
        if issubclass(kind, RateLimited):
            wait = retry_after_seconds(
                answer.headers.get(hdrs.RETRY_AFTER),
                default=self.retry_after,
                maximum=max_retry_after,
            )
            return kind(text, retry_after=wait, status=answer.status, request_id=request_id)
        return kind(text, status=answer.status, request_id=request_id)


def host_of(url: URL | str) -> str:
    """`scheme://host[:port]` of a URL: what messages may name (no userinfo, path or query)."""
    parsed = URL(url) if isinstance(url, str) else url
    if not parsed.host:
        return "a URL without a host"
    port = f":{parsed.explicit_port}" if parsed.explicit_port is not None else ""
    return f"{parsed.scheme}://{parsed.host}{port}"


def _safe(url: URL) -> str:
    return f"{host_of(url)}{url.path}"


def _redirect(response: aiohttp.ClientResponse, what: str) -> RedirectRefused:
    location = response.headers.get(hdrs.LOCATION)
    try:
        target = host_of(response.url.join(URL(location))) if location else None
    except ValueError:
        target = None
    where = f"to {target}" if target else "without a usable Location"
    return RedirectRefused(
        redact(
            f"{what} answered {response.status}, a redirect {where}; redirects are never "
            "followed (they would carry the request and its token elsewhere): configure the "
            "URL the redirect points at, or fix the proxy in between"
        ),
        status=response.status,
        request_id=_request_id(response.headers),
    )


def _request_id(headers: CIMultiDictProxy[str]) -> str | None:
    """The platform's request ID, redacted: it reaches log lines and dead letters, and a
    server may put anything there, an echoed token included."""
    for name in _REQUEST_ID_HEADERS:
        if value := headers.get(name):
            return redact(value)
    return None


def _too_large(
    response: aiohttp.ClientResponse, what: str, limit: int, how: str
) -> ResponseTooLarge:
    return ResponseTooLarge(
        f"{what} answered {response.status} with a body over the cap of {limit} bytes "
        f"({how}); it was not read",
        status=response.status,
    )


def _plain_http(exc: aiohttp.ClientSSLError) -> bool:
    """An https:// URL to a port that answers plain HTTP: OpenSSL reads "HTTP/1.1 ..." as a
    record of an unknown TLS version."""
    cause = exc.os_error if isinstance(exc.os_error, ssl.SSLError) else None
    reason = getattr(cause, "reason", None) or str(exc)
    return "WRONG_VERSION_NUMBER" in str(reason) or "record layer failure" in str(exc)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
