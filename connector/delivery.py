"""Delivery policy: what the pipeline does about a failed submission, decided by one pure
function of the error.

`disposition(error, records)` reads only the error's class attributes (`action`,
`retry_label`, `dead_letter_reason`, see `connector.errors`) and its `retry_after`; delivery
then branches with one `match` on the returned type, never on a status number or a message:

| disposition    | from                                   | what delivery does                   |
|----------------|----------------------------------------|--------------------------------------|
| `Wait`         | `RateLimited`                          | waits for Retry-After (bounded by    |
|                |                                        | the sink) or `default_wait`, resends |
| `BackOff`      | `ServerError`, `Unauthorized`, a       | exponential backoff with full jitter,|
|                | transient token endpoint failure       | resends, never gives up on data      |
| `Hold`         | `EndpointMisconfigured`,               | holds the endpoint for a pause, keeps|
|                | `CredentialsRejected`                  | the data, alerts                     |
| `Split`        | `RequestRejected` of several records   | halves the request                   |
| `DeadLetter`   | `RequestRejected` of one record        | dead-letters it with its reason      |
| `Stop`         | anything else                          | raises: the pipeline stops           |

Must not: do I/O, sleep, or look at anything but the error and the record count; the tests
in `tests/unit/test_delivery.py` call it without a broker or a platform.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from connector.decode import Reason
from connector.errors import Action, AuthError, ConnectorError, RateLimited, RequestRejected

__all__ = [
    "DEFAULT_WAIT",
    "BackOff",
    "DeadLetter",
    "Disposition",
    "Hold",
    "Split",
    "Stop",
    "Wait",
    "disposition",
]

DEFAULT_WAIT: Final = 60.0  # a 429 without Retry-After: the platform's window (seed 000)


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait `seconds` (the platform asked), then send again."""

    seconds: float
    label: str


@dataclass(frozen=True, slots=True)
class BackOff:
    """Send again after the next backoff delay; `label` is the retry's metrics label."""

    label: str


@dataclass(frozen=True, slots=True)
class Hold:
    """Stop sending to the endpoint for a pause; `outcome` labels the request metric."""

    outcome: str


@dataclass(frozen=True, slots=True)
class Split:
    """Send the two halves of the request, each on its own."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Dead-letter the one record of the request."""

    reason: Reason


@dataclass(frozen=True, slots=True)
class Stop:
    """Not delivery's to handle: raise it."""


Disposition = Wait | BackOff | Hold | Split | DeadLetter | Stop


def disposition(error: BaseException, records: int) -> Disposition:
    """What to do about `error`, raised by a sink for a request of `records` records."""
    action = error.action if isinstance(error, ConnectorError) else Action.STOP
    result: Disposition
    match action:
        case Action.WAIT:
            after = error.retry_after if isinstance(error, RateLimited) else None
            result = Wait(DEFAULT_WAIT if after is None else after, _label(error))
        case Action.BACK_OFF:
            result = BackOff(_label(error))
        case Action.HOLD:
            result = Hold("auth" if isinstance(error, AuthError) else "misconfigured")
        case Action.SPLIT if records > 1:
            result = Split()
        case Action.SPLIT:
            reason = error.dead_letter_reason if isinstance(error, RequestRejected) else None
            result = DeadLetter(Reason(reason or Reason.API_REJECTED))
        case _:
            result = Stop()
    return result


def _label(error: BaseException) -> str:
    return error.retry_label if isinstance(error, ConnectorError) else "other"
