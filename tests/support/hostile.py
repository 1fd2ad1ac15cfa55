"""A hostile API: a proxy in front of a platform emulator whose answers a test chooses.

`hostile_api(upstream)` runs two aiohttp `TestServer`s on loopback sockets for a block:

- the proxy (`HostileApi.url`), which forwards every request to `upstream` (any emulator: it
  knows no platform's paths or bodies) unless a rule set with `answer()` matches it;
- "elsewhere" (`HostileApi.elsewhere`), another host that redirects point at. It records every
  request it receives, headers and body, and answers like an eager platform would
  (`200 {"batchId": ...}`), so following a redirect there is visible twice: in what it saw,
  and in records that never reach the emulator.

A rule matches a method and a path (a regex, searched) and serves its answers in turn, for
`times` requests (None: until `pass_through()`). Answers are small factories:

    redirect(307, api.elsewhere)       3xx with a Location on the other host
    reply(200, {})                     any status, JSON or bytes, any content type
    huge(200, 256 * MIB, gzip=True)    a body that is large once decompressed (1 MiB sent)
    echo_credentials(401)              the request's Authorization header (and a form body's
                                       secrets) copied into the body and into X-Request-Id;
                                       echo_credentials(None) on the upstream's own answer
    trickle(200, body, 1.0)            the body, one byte per second
    forward()                          the default: what the upstream answers

A new behaviour is one more `Answer(name, respond)`: `respond(request, body, seen, ctx)`
returns the response, and may call `ctx.forward(request, body)` to start from the upstream's.
Another platform's tests use the same proxy in front of their emulator, with their own paths.

Every request the proxy sees is kept in `api.seen` (method, path, headers, body, which answer
served it, and whether its answer was written to the end), and every Authorization value in
`api.credentials()`, so a test can look for them where they must never be.

Must not: read the network beyond loopback, or know a platform: a platform's tests name their
own paths (`r"/building$"`, `r"/token$"`).
"""

from __future__ import annotations

import contextlib
import itertools
import re
import uuid
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import anyio
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer
from multidict import CIMultiDict

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

__all__ = [
    "MIB",
    "Answer",
    "Elsewhere",
    "HostileApi",
    "Rule",
    "Seen",
    "echo_credentials",
    "forward",
    "hostile_api",
    "huge",
    "redirect",
    "reply",
    "trickle",
]

MIB = 1024 * 1024

# hop-by-hop headers (RFC 9110 §7.6.1) and the ones aiohttp recomputes for the new message
_NOT_FORWARDED = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "transfer-encoding", "upgrade", "host", "content-length",
        "content-encoding", "date", "server",
    }
)  # fmt: skip


@dataclass
class Seen:
    """One request received, and how it was answered."""

    method: str
    path_qs: str
    headers: CIMultiDict[str]
    body: bytes
    answer: str = "forward"
    status: int | None = None
    finished: bool = False
    """The answer was written to its end (False: the client went away first)."""

    def text(self) -> str:
        """Everything the request carried, as one string to search for a secret."""
        lines = [f"{self.method} {self.path_qs}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        lines.append(self.body.decode(errors="replace"))
        return "\n".join(lines)


class Context(Protocol):
    """What an answer may use of the proxy."""

    @property
    def closing(self) -> anyio.Event: ...

    async def forward(self, request: web.Request, body: bytes) -> web.StreamResponse: ...


@dataclass(frozen=True)
class Answer:
    """A named way to answer a request (the name shows in `Seen.answer`)."""

    name: str
    respond: Callable[[web.Request, bytes, Seen, Context], Awaitable[web.StreamResponse]]


@dataclass
class Rule:
    """Answers `method` requests whose path matches `path`, in turn, `times` times."""

    method: str | None
    path: re.Pattern[str]
    answers: tuple[Answer, ...]
    times: int | None = None
    served: int = 0
    _turn: Iterator[Answer] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._turn = itertools.cycle(self.answers)

    def matches(self, request: web.Request) -> bool:
        if self.times is not None and self.served >= self.times:
            return False
        if self.method is not None and request.method != self.method:
            return False
        return self.path.search(request.path) is not None

    def next_answer(self) -> Answer:
        self.served += 1
        return next(self._turn)

    @property
    def spent(self) -> bool:
        """Every one of its `times` answers has been served."""
        return self.times is not None and self.served >= self.times


# ------------------------------------------------------------------ answers
def forward() -> Answer:
    """Pass the request to the upstream and its answer back (what no rule also does)."""

    async def respond(
        request: web.Request, body: bytes, seen: Seen, ctx: Context
    ) -> web.StreamResponse:
        del seen
        return await ctx.forward(request, body)

    return Answer("forward", respond)


def reply(
    status: int,
    body: Any = b"",
    *,
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
    name: str | None = None,
) -> Answer:
    """A fixed answer. `body`: bytes or str as they are; anything else is sent as JSON."""
    raw = body if isinstance(body, bytes) else body.encode() if isinstance(body, str) else None
    data = raw if raw is not None else orjson.dumps(body)

    async def respond(
        request: web.Request, body_in: bytes, seen: Seen, ctx: Context
    ) -> web.StreamResponse:
        del request, body_in, seen, ctx
        out = web.Response(status=status, body=data, headers=headers)
        out.content_type = content_type
        return out

    return Answer(name or f"{status} {data[:40]!r} as {content_type}", respond)


def redirect(status: int, to: Elsewhere | str) -> Answer:
    """A 3xx whose Location is the same path and query on another host."""

    async def respond(
        request: web.Request, body: bytes, seen: Seen, ctx: Context
    ) -> web.StreamResponse:
        del body, seen, ctx
        base = to.url if isinstance(to, Elsewhere) else to
        return web.Response(status=status, headers={"Location": base + request.path_qs})

    return Answer(f"redirect {status}", respond)


def huge(
    status: int,
    size: int,
    *,
    gzip: bool = True,
    content_type: str = "application/json",
) -> Answer:
    """A JSON object with no field a platform would send, `size` bytes once decompressed."""
    head, tail, filler = b'{"padding": "', b'"}', max(size - 15, 0)
    headers = {}
    if gzip:  # compressed a MiB at a time: building the bomb must not cost its size
        packer = zlib.compressobj(1, zlib.DEFLATED, 31)  # 31: with a gzip header
        chunk = b"x" * min(MIB, filler)
        parts = [packer.compress(head)]
        parts += [packer.compress(chunk[: filler - at]) for at in range(0, filler, MIB)]
        parts += [packer.compress(tail), packer.flush()]
        data = b"".join(parts)
        headers["Content-Encoding"] = "gzip"
    else:
        data = head + b"x" * filler + tail

    async def respond(
        request: web.Request, body: bytes, seen: Seen, ctx: Context
    ) -> web.StreamResponse:
        del request, body, seen, ctx
        out = web.Response(status=status, body=data, headers=headers)
        out.content_type = content_type
        return out

    return Answer(f"huge {status} {size} bytes{' gzip' if gzip else ''}", respond)


def echo_credentials(status: int | None, *, into_request_id: bool = True) -> Answer:
    """An answer that repeats what the request authenticated with, as some gateways do.

    With a `status`, an error whose body's `error` holds the bare token (no `Bearer ` in front,
    so no pattern that looks for one finds it), `message` the whole Authorization header and
    `form` the raw request body (a token request's client secret). With None, the upstream's
    own answer, forwarded. Either way X-Request-Id carries the bare token (or the form) too,
    so it travels wherever the connector keeps request IDs: log fields, dead-letter headers.
    """

    async def respond(
        request: web.Request, body: bytes, seen: Seen, ctx: Context
    ) -> web.StreamResponse:
        del seen
        header = request.headers.get("Authorization", "")
        bare = header.partition(" ")[2] or header
        text = body.decode(errors="replace")
        if status is None:
            out = await ctx.forward(request, body)
        else:
            payload = {
                "error": f"token {bare} is not valid here" if bare else f"rejected: {text}",
                "error_description": f"rejected request {text}",
                "message": f"received Authorization: {header}",
                "form": text,
            }
            out = web.json_response(payload, status=status)
        if into_request_id:
            out.headers["X-Request-Id"] = bare or text[:200]
        return out

    return Answer(f"echo credentials {status or 'on the forwarded answer'}", respond)


def trickle(
    status: int,
    body: Any,
    seconds_per_byte: float = 1.0,
    *,
    content_type: str = "application/json",
) -> Answer:
    """The answer's headers at once, then its body one byte every `seconds_per_byte`.

    Each byte arrives well within any per-read timeout, so only a deadline on the whole
    exchange ends it. `Seen.finished` stays False when the client gave up first.
    """
    data = body if isinstance(body, bytes) else orjson.dumps(body)

    async def respond(
        request: web.Request, body_in: bytes, seen: Seen, ctx: Context
    ) -> web.StreamResponse:
        del body_in
        out = web.StreamResponse(
            status=status,
            headers={"Content-Type": content_type, "Content-Length": str(len(data))},
        )
        seen.status = status
        with contextlib.suppress(ConnectionError):
            await out.prepare(request)
            for i in range(len(data)):
                await out.write(data[i : i + 1])
                with anyio.move_on_after(seconds_per_byte):
                    await ctx.closing.wait()
                if ctx.closing.is_set() or request.transport is None:
                    return out
                if request.transport.is_closing():
                    return out
            await out.write_eof()
            seen.finished = True
        return out

    return Answer(f"trickle {status} {len(data)} bytes at {seconds_per_byte} s/byte", respond)


# ------------------------------------------------------------------ servers
class Elsewhere:
    """Another host: records every request, answers `200` with a batch ID and a token."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(request.method, request.path_qs, CIMultiDict(request.headers), b"")
        seen.body = await request.read()
        seen.status, seen.finished, seen.answer = 200, True, "elsewhere"
        self.seen.append(seen)
        return web.json_response(
            {
                "batchId": str(uuid.uuid4()),
                "access_token": f"elsewhere-{uuid.uuid4().hex}",
                "token_type": "Bearer",
                "expires_in": 3599,
            }
        )


class HostileApi:
    """The proxy. Build it with `hostile_api(upstream)`; set answers with `answer()`."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.rules: list[Rule] = []
        self.seen: list[Seen] = []
        self.elsewhere = Elsewhere()
        self._closing = anyio.Event()
        app = web.Application(client_max_size=64 * MIB)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.server = TestServer(app, host="127.0.0.1")
        self._client: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def closing(self) -> anyio.Event:
        return self._closing

    def answer(
        self, path: str, *answers: Answer, method: str | None = "POST", times: int | None = None
    ) -> Rule:
        """Answer requests whose path matches `path` (a regex) with `answers`, in turn.

        Rules are tried in the order they were added; a spent rule (`times` served) no longer
        matches, so the next rule for the path, or forwarding, takes over.
        """
        rule = Rule(method, re.compile(path), answers or (forward(),), times)
        self.rules.append(rule)
        return rule

    def pass_through(self) -> None:
        """Forget every rule: from now on every request reaches the upstream."""
        self.rules.clear()

    def credentials(self) -> set[str]:
        """Every Authorization value seen, whole and without its scheme."""
        found: set[str] = set()
        for seen in self.seen:
            for value in seen.headers.getall("Authorization", []):
                found.add(value)
                if " " in value:
                    found.add(value.partition(" ")[2])
        return found

    def served(self, name_prefix: str) -> list[Seen]:
        """The requests answered by an answer whose name starts with `name_prefix`."""
        return [s for s in self.seen if s.answer.startswith(name_prefix)]

    async def forward(self, request: web.Request, body: bytes) -> web.StreamResponse:
        assert self._client is not None, "start() first"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _NOT_FORWARDED}
        async with self._client.request(
            request.method,
            self.upstream + request.path_qs,
            data=body,
            headers=headers,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            back = {k: v for k, v in upstream.headers.items() if k.lower() not in _NOT_FORWARDED}
            return web.Response(status=upstream.status, body=payload, headers=back)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = Seen(request.method, request.path_qs, CIMultiDict(request.headers), b"")
        self.seen.append(seen)
        seen.body = await request.read()
        rule = next((r for r in self.rules if r.matches(request)), None)
        chosen = rule.next_answer() if rule is not None else forward()
        seen.answer = chosen.name
        response = await chosen.respond(request, seen.body, seen, self)
        if seen.status is None:  # streamed answers record their own progress
            seen.status, seen.finished = response.status, True
        return response

    async def start(self) -> None:
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        await self.elsewhere.server.start_server()
        await self.server.start_server()

    async def close(self) -> None:
        self._closing.set()
        with anyio.CancelScope(shield=True):
            await self.server.close()
            await self.elsewhere.server.close()
            if self._client is not None:
                await self._client.close()


@contextlib.asynccontextmanager
async def hostile_api(upstream: str) -> AsyncIterator[HostileApi]:
    """A hostile proxy in front of `upstream` (an emulator's root URL) for the block."""
    api = HostileApi(upstream)
    await api.start()
    try:
        yield api
    finally:
        await api.close()
