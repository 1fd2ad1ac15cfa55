"""The I/O of the one-shot commands: `check` and `produce-sample`.

`check` proves a configuration end to end without sending data: the sink's token from the
token endpoint, then its read-only `GET /batch` (Building X: the partition's locations); then
every configured source's `probe()` (a token and one read-only request, nothing published, no
Kafka). Each failure prints what to fix; a failed part does not stop the others being checked.

Must not: write to the platform, publish to Kafka, or print a secret or a token (only masked
summaries and the platforms' own error text, which the token requests scrub of our secrets).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TextIO

import anyio
from aiokafka import AIOKafkaProducer

from connector.app import build_sink, client_session, kafka_options, source_session
from connector.errors import (
    ApiError,
    AuthError,
    ConnectorError,
    CredentialsRejected,
    EndpointMisconfigured,
    Unauthorized,
)
from connector.metrics import Metrics
from connector.samples import sample_events
from connector.sinks.buildingminds import BuildingMindsSink
from connector.sinks.buildingx import BuildingXSink
from connector.sources import build_source
from connector.tracker import FAILED

if TYPE_CHECKING:
    from connector.config import Settings

__all__ = ["list_batches", "produce_sample", "run_check"]


def _fix_for(exc: ApiError) -> str:
    if isinstance(exc, EndpointMisconfigured) and exc.status == 404:
        return "check sink.base_url: the API answered 404 (no such endpoint)"
    if isinstance(exc, EndpointMisconfigured) and exc.status == 403:
        return (
            "the credential is not permitted for GET /batch: ask your BuildingMinds representative"
        )
    if isinstance(exc, EndpointMisconfigured):
        return f"check sink.base_url: the API answered {exc.status}"
    if isinstance(exc, Unauthorized):
        return "the token was refused: check that sink.scope belongs to this API (sink.base_url)"
    return "the API is unreachable or failing; check sink.base_url and the network, then retry"


async def run_check(settings: Settings, out: TextIO, err: TextIO) -> bool:
    """True when the sink and every configured source passed; each is checked regardless."""
    sink_ok = await _check_sink(settings, out, err)
    sources_ok = await _check_sources(settings, out, err)
    return sink_ok and sources_ok


async def _check_sources(settings: Settings, out: TextIO, err: TextIO) -> bool:
    """One line per source: `source NAME: ok (summary)` or `source NAME: FAILED: why and fix`.

    `probe` gets a token the way a poll does (for BIMlink this rotates the refresh token and
    stores the new one) and makes one read-only request."""
    passed = True
    for source_settings in settings.sources:
        async with source_session(source_settings) as session:
            source = build_source(source_settings, session)
            try:
                summary = await source.probe()
            except ConnectorError as exc:
                passed = False
                print(f"source {source.name}: FAILED: {exc}", file=err)
                if exc.retriable:
                    print(
                        "  fix: this may pass on a retry; if it persists, check the source's "
                        "URLs and the network",
                        file=err,
                    )
            else:
                print(f"source {source.name}: ok ({summary})", file=out)
    return passed


async def _check_sink(settings: Settings, out: TextIO, err: TextIO) -> bool:
    """True when a token was obtained and GET /batch answered 200."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    s = settings.sink
    if s.type == "buildingminds" and not (s.scope or "").endswith("/.default"):
        print(f"note: sink.scope has no /.default; sending {s.token_scope!r}", file=out)
    session = client_session(settings)
    sink, provider = await build_sink(settings, Metrics(CollectorRegistry()), session)
    try:
        try:
            token = await provider.token()
        except CredentialsRejected as exc:
            print(f"FAILED: token endpoint refused the credentials: {exc}", file=err)
            if s.type == "buildingx":
                print(f"  fix: {_buildingx_token_fix(exc)}", file=err)
            return False
        except AuthError as exc:
            print(f"FAILED: token endpoint {s.token_url} is not reachable: {exc}", file=err)
            return False
        minutes = (token.expires_at_wall - time.time()) / 60
        print(f"token: ok (expires in {minutes:.0f} min)", file=out)
        if isinstance(sink, BuildingXSink):
            return await _check_buildingx(sink, out, err)
        try:
            listing = await sink.list_batches(limit=5)
        except ApiError as exc:
            print(f"FAILED: GET /batch: {exc}\n  fix: {_fix_for(exc)}", file=err)
            return False
        except AuthError as exc:
            print(f"FAILED: GET /batch: {exc}", file=err)
            return False
        total = listing.get("totalCount", len(listing.get("data") or []))
        print(f"GET /batch: ok ({total} batches visible)", file=out)
        return True
    finally:
        await sink.session.close()
        await session.close()


def _buildingx_token_fix(exc: CredentialsRejected) -> str:
    if exc.status == 403:
        return (
            "Auth0 refused the audience (or the client has no grant for it): set sink.audience "
            "to the Building X API audience, https://horizon.siemens.com (the default)"
        )
    if exc.status == 401:
        return (
            "re-copy sink.client_id and sink.client_secret of the machine user from the "
            "Building X API Manager"
        )
    return "check sink.token_url (the Auth0 /oauth/token URL) and the credentials"


async def _check_buildingx(sink: BuildingXSink, out: TextIO, err: TextIO) -> bool:
    """The read-only `GET …/locations?page[limit]=1` of the configured partition."""
    what = f"GET /structure/partitions/{sink.partition_id}/locations"
    try:
        document = await sink.list_locations(limit=1)
    except EndpointMisconfigured as exc:
        fix = {
            403: f"the machine user may not use partition {sink.partition_id!r}: check "
            "sink.partition_id (the API Manager shows the machine user's partition) and its "
            "user groups",
            404: "check sink.base_url: it must end in /api/openness "
            "(e.g. https://eu.buildingx.siemens.com/api/openness)",
        }.get(exc.status or 0, f"check sink.base_url: the API answered {exc.status}")
        print(f"FAILED: {what}: {exc}\n  fix: {fix}", file=err)
        return False
    except Unauthorized as exc:
        fix = "the token was refused: check that sink.audience belongs to sink.base_url's API"
        print(f"FAILED: {what}: {exc}\n  fix: {fix}", file=err)
        return False
    except (ApiError, AuthError) as exc:
        print(f"FAILED: {what}: {exc}", file=err)
        return False
    found = len(document.get("data") or [])
    more = " and more" if (document.get("links") or {}).get("next") else ""
    print(f"{what}: ok ({found}{more} location(s) visible)", file=out)
    return True


async def list_batches(
    settings: Settings, limit: int, batch_id: str | None, out: TextIO, err: TextIO
) -> bool:
    """`batches`: recent batches with their status counts; one batch's failed records."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    session = client_session(settings)
    sink, _ = await build_sink(settings, Metrics(CollectorRegistry()), session)
    try:
        if not isinstance(sink, BuildingMindsSink):
            print("FAILED: batches: Building X has no batches (it answers synchronously)", file=err)
            return False
        listing = await sink.list_batches(limit=limit, batch_id=batch_id)
        rows = listing.get("data") or []
        print(f"{'batch':36}  {'endpoint':26}  {'created':24}  {'records':>7}  statuses", file=out)
        for item in rows:
            counts = item.get("statusCounts") or {}
            statuses = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
            endpoint = item.get("endpoint", item.get("entity", ""))
            print(
                f"{item.get('batchId', '')!s:36}  {endpoint!s:26}  "
                f"{item.get('createdAt', '')!s:24}  {item.get('recordCount', '')!s:>7}  "
                f"{statuses or item.get('status', '')}",
                file=out,
            )
        if batch_id is not None:
            for status in sorted(FAILED):
                for record in await sink.inbound(batch_id, status=status):
                    print(
                        f"  {status}: {record.get('externalId')}: {record.get('message')}",
                        file=out,
                    )
        print(f"{len(rows)} of {listing.get('totalCount', len(rows))} batches", file=out)
    except (ApiError, AuthError) as exc:
        print(f"FAILED: {exc}", file=err)
        return False
    else:
        return True
    finally:
        await sink.session.close()
        await session.close()


async def produce_sample(
    settings: Settings,
    count: int,
    *,
    ids: int,
    invalid_share: float,
    rate: float,
    seed: int,
    out: TextIO,
) -> None:
    """Write `count` sample events to the first two configured topics (or the one)."""
    topics = settings.kafka.topics
    building_topic, meter_topic = topics[0], topics[1] if len(topics) > 1 else topics[0]
    producer = AIOKafkaProducer(linger_ms=10, acks="all", **kafka_options(settings))
    await producer.start()
    started = time.monotonic()
    sent = invalid = 0
    try:
        for event in sample_events(
            count, building_topic=building_topic, meter_topic=meter_topic, ids=ids,
            invalid_share=invalid_share, seed=seed,
        ):  # fmt: skip
            await producer.send(event.topic, key=event.key, value=event.value)
            sent += 1
            invalid += event.invalid
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    await anyio.sleep(ahead)
            if sent % 10_000 == 0:
                print(f"  {sent}/{count} events", file=out)
        await producer.flush()
    finally:
        await producer.stop()
    print(
        f"produced {sent} events ({invalid} invalid on purpose) to {building_topic}, {meter_topic} "
        f"in {time.monotonic() - started:.1f} s",
        file=out,
    )
