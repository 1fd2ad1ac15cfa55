"""What the sinks of OAuth2 client-credentials platforms share: the authenticated session on
the context's pool, the token's metrics, the token step of `probe`.

Must not: know any platform; each sink package passes its own grant and its own fixes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import aiohttp

from connector.auth import BearerAuth, TokenProvider
from connector.errors import AuthError, CredentialsRejected
from connector.logs import get_logger
from connector.ratelimit import RollingWindowLimiter
from connector.sinks.base import Sink

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TextIO

    from connector.auth import ClientCredentials
    from connector.config import RateLimitSettings
    from connector.sinks.base import SinkContext

__all__ = ["TokenSink", "authed_session", "budget_limiter"]

log = get_logger(__name__)


def budget_limiter(rate: RateLimitSettings) -> RollingWindowLimiter:
    """A limiter for one request budget, pacing from the start.

    A request starts here a little before the platform counts it, and network and host jitter
    can bring two starts closer there than here: the window is widened by a guard sized from
    the measured spread of request times (`ratelimit.JitterGuard`; 1% + 50 ms until measured).
    A restart takes over its predecessor's last window from the final commit's metadata
    (`RollingWindowLimiter.take_over`); after a crash it keeps the starts of the newest
    periodic mark and counts the rest of the budget as used at the take-over; with no mark
    it assumes the last window was used evenly.
    """
    return RollingWindowLimiter.for_budget(rate.requests, rate.per_seconds)


def authed_session(
    context: SinkContext, grant: ClientCredentials
) -> tuple[aiohttp.ClientSession, TokenProvider]:
    """A session on the context's pool whose requests carry the grant's token, renewed before
    expiry and once on `sink.token_renew_statuses`; its refreshes are counted."""
    s, metrics = context.settings.sink, context.metrics

    def refreshed(outcome: str) -> None:
        metrics.token_refreshed(outcome)
        if outcome == "success" and provider.current is not None:
            metrics.set_token_expiry(provider.current.expires_at_wall)

    provider = TokenProvider(
        context.session, grant, skew_seconds=s.token_skew_seconds, on_refresh=refreshed
    )
    auth = BearerAuth(provider, renew_on=frozenset(s.token_renew_statuses))
    session = aiohttp.ClientSession(
        timeout=context.session.timeout, connector=context.session.connector,
        connector_owner=False, middlewares=(auth,),
    )  # fmt: skip
    return session, provider


class TokenSink(Sink):
    """A sink whose requests carry a client-credentials token (`provider`) on `session`."""

    session: aiohttp.ClientSession
    provider: TokenProvider | None = None

    def has_token(self) -> bool:
        return self.provider is None or self.provider.current is not None

    async def warm_up(self) -> None:
        """Get a token at start so /readyz can say "holds a token" before the first request.

        Failures are only logged: the pipeline retries with backoff on its first request."""
        if self.provider is None:
            return
        try:
            await self.provider.token()
        except AuthError as exc:
            log.error("no token at start: %s", exc)  # noqa: TRY400 - the message carries the fix

    async def aclose(self) -> None:
        await self.session.close()

    async def probe_token(
        self, out: TextIO, err: TextIO, rejected_fix: Callable[[CredentialsRejected], str] | None
    ) -> bool:
        """The token step of `probe`: `token: ok (expires in N min)`, or `FAILED:` with a fix
        (`rejected_fix` for credentials the identity provider refused)."""
        assert self.provider is not None  # noqa: S101 - built with a provider
        try:
            token = await self.provider.token()
        except CredentialsRejected as exc:
            # the message names the endpoint and the client ID, and says the fix
            print(f"FAILED: {exc}", file=err)
            if rejected_fix is not None:
                print(f"  fix: {rejected_fix(exc)}", file=err)
            return False
        except AuthError as exc:
            # unreachable, throttling or failing: the message names the endpoint already
            print(
                f"FAILED: {exc}\n  fix: check sink.token_url and the network; a transient "
                "failure passes on a retry",
                file=err,
            )
            return False
        minutes = (token.expires_at_wall - time.time()) / 60
        print(f"token: ok (expires in {minutes:.0f} min)", file=out)
        return True
