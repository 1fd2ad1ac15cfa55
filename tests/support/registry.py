"""A stand-in Schema Registry following Confluent's documented REST API, and the producer side
of the wire format, for the Schema Registry tests.

Apicurio Registry (whose `/apis/ccompat/v7` is Confluent-compatible) cannot run here: its app
on Maven Central depends on `apicurio-registry-schema-util-provider`, which Maven Central does
not serve. So the tests run against this app, on a real loopback socket, which answers as
Confluent's API documents:

- `POST /subjects/{subject}/versions` `{"schema": "...", "schemaType": "JSON"}` -> `{"id": N}`
  (the same schema text and type again: the same ID, as the registry dedupes by content);
- `GET /schemas/ids/{id}` -> `{"schema": "...", "schemaType": "JSON"}` (`schemaType` left out
  for Avro), `404 {"error_code": 40403, "message": "Schema 7 not found"}` for an unknown ID;
- every answer `application/vnd.schemaregistry.v1+json`; with `auth` set, HTTP basic auth,
  `401 {"error_code": 401, ...}` without it.

Faults on cue, for the tests: `outage` (every request answers 503 with error_code 50003, as a
registry whose backend store is down does), `hidden` (IDs that answer 40403 although
registered: a replica that has not caught up), `hang` (a `GET /schemas/ids/{id}` is read,
counted and not answered while it is set: a registry that accepts connections and is stuck;
it answers once `hang` is cleared, unless the client gave up first). `fetches` counts the GETs
per ID.

`wire(schema_id, body)` and `avro_value(schema, datum)` build what Confluent's serializers
write: a zero byte, the 4-byte big-endian ID, then the Avro binary or the JSON text.
"""

from __future__ import annotations

import base64
import contextlib
import io
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
import anyio
import fastavro
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ["Registry", "StandInRegistry", "avro_value", "running_registry", "wire"]

_TYPE = "application/vnd.schemaregistry.v1+json"


def wire(schema_id: int, body: bytes) -> bytes:
    """A value in the Confluent wire format."""
    return b"\x00" + struct.pack(">I", schema_id) + body


def avro_value(schema: dict[str, Any], schema_id: int, datum: dict[str, Any]) -> bytes:
    """`datum` as Confluent's Avro serializer writes it with `schema` registered as `schema_id`."""
    out = io.BytesIO()
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), datum)
    return wire(schema_id, out.getvalue())


@dataclass
class StandInRegistry:
    """The registry's state and its faults (see the module docstring)."""

    auth: tuple[str, str] | None = None
    outage: bool = False
    hidden: set[int] = field(default_factory=set)
    fetches: dict[int, int] = field(default_factory=dict)
    _schemas: dict[int, tuple[str, str]] = field(default_factory=dict)  # id -> (text, type)
    _answer: anyio.Event | None = None  # `hang`: set once it is cleared

    @property
    def hang(self) -> bool:
        return self._answer is not None and not self._answer.is_set()

    @hang.setter
    def hang(self, on: bool) -> None:
        if on and not self.hang:
            self._answer = anyio.Event()
        elif not on and self._answer is not None:
            self._answer.set()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate])
        app.router.add_post("/subjects/{subject}/versions", self._register)
        app.router.add_get("/schemas/ids/{id}", self._by_id)
        return app

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.outage:
            return _error(503, 50003, "Error in the backend data store")
        if self.auth is not None and request.headers.get("Authorization") != _basic(*self.auth):
            return _error(401, 401, "Unauthorized")
        response: web.StreamResponse = await handler(request)
        return response

    async def _register(self, request: web.Request) -> web.Response:
        body = await request.json()
        text, kind = body.get("schema"), body.get("schemaType", "AVRO")
        if not isinstance(text, str):
            return _error(422, 42201, "Invalid schema")
        for ident, known in self._schemas.items():
            if known == (text, kind):
                return _json({"id": ident})
        ident = len(self._schemas) + 1
        self._schemas[ident] = (text, kind)
        return _json({"id": ident})

    async def _by_id(self, request: web.Request) -> web.Response:
        ident = int(request.match_info["id"])
        self.fetches[ident] = self.fetches.get(ident, 0) + 1
        if self._answer is not None:
            await self._answer.wait()
        if ident not in self._schemas or ident in self.hidden:
            return _error(404, 40403, f"Schema {ident} not found")
        text, kind = self._schemas[ident]
        answer: dict[str, Any] = {"schema": text}
        if kind != "AVRO":
            answer["schemaType"] = kind
        return _json(answer)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type=_TYPE)


def _error(status: int, code: int, message: str) -> web.Response:
    return _json({"error_code": code, "message": message}, status)


@dataclass
class Registry:
    """A running stand-in: its URL, its state, and registration as a producer does it."""

    url: str
    state: StandInRegistry

    async def register(self, subject: str, schema: dict[str, Any] | str, kind: str = "AVRO") -> int:
        """Register `schema` (its text, or the JSON of a dict) under `subject` through the REST
        API; its ID."""
        text = schema if isinstance(schema, str) else orjson.dumps(schema).decode()
        body: dict[str, Any] = {"schema": text}
        if kind != "AVRO":
            body["schemaType"] = kind
        headers = {"Authorization": _basic(*self.state.auth)} if self.state.auth else {}
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            http.post(f"{self.url}/subjects/{subject}/versions", json=body) as answer,
        ):
            assert answer.status == 200, await answer.text()
            ident: int = (await answer.json(content_type=None))["id"]
            return ident


@contextlib.asynccontextmanager
async def running_registry(state: StandInRegistry | None = None) -> AsyncIterator[Registry]:
    """The stand-in registry on a loopback socket for the block."""
    state = state or StandInRegistry()
    server = TestServer(state.app(), host="127.0.0.1")
    await server.start_server()
    try:
        yield Registry(str(server.make_url("")).rstrip("/"), state)
    finally:
        await server.close()
