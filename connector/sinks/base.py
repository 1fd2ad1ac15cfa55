"""The sink contract: what the pipeline needs from a platform client."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["Sink", "SubmitResult"]


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """The platform took the request: `failed` maps record indexes to the platform's message."""

    status: int
    batch_id: str | None
    failed: dict[int, str] = field(default_factory=dict)
    request_id: str | None = None


class Sink(Protocol):
    async def submit(
        self, endpoint: str, body: bytes, ids: list[str], id_field: str
    ) -> SubmitResult:
        """POST one JSON array. Raises `RateLimited`, `ServerError` (among them
        `InvalidResponse`, a 2xx that proves no delivery, and `ResponseTooLarge`),
        `Unauthorized`, `EndpointMisconfigured` (among them `RedirectRefused`: a 3xx is never
        followed), `RequestRejected` (400 naming no record, 413), or the auth errors of the
        token provider. A result is returned only for an answer that shows the platform
        took the records; anything else raises, so nothing is committed on its strength."""
        ...
