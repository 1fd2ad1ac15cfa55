"""The delivery policy: one pure function from a sink's error to what the pipeline does, and
the lifecycle's deadline and change signal it keeps to."""

from __future__ import annotations

import inspect

import anyio
import pytest

from connector import errors
from connector.decode import Reason
from connector.delivery import (
    DEFAULT_WAIT,
    BackOff,
    DeadLetter,
    Hold,
    Split,
    Stop,
    Wait,
    disposition,
)
from connector.errors import (
    ApiError,
    AuthError,
    ConfigError,
    ConnectorError,
    CredentialsRejected,
    EndpointMisconfigured,
    InvalidResponse,
    RateLimited,
    RedirectRefused,
    RequestRejected,
    RequestTooLarge,
    ResponseTooLarge,
    ServerError,
    TokenEndpointUnavailable,
    Unauthorized,
)
from connector.lifecycle import Changed, Deadline
from connector.sinks.buildingx import ParentPending


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (RateLimited("429", retry_after=7.5), Wait(7.5, "rate_limited")),
        (RateLimited("429", retry_after=None), Wait(DEFAULT_WAIT, "rate_limited")),
        (ServerError("503", status=503), BackOff("server_error")),
        (InvalidResponse("200 without batchId", status=200), BackOff("invalid_response")),
        (ResponseTooLarge("huge"), BackOff("response_too_large")),
        (ParentPending("parent not there"), BackOff("server_error")),
        (Unauthorized("401", status=401), BackOff("unauthorized")),
        (TokenEndpointUnavailable("down"), BackOff("token_unavailable")),
        (EndpointMisconfigured("404", status=404), Hold("misconfigured")),
        (RedirectRefused("302", status=302), Hold("misconfigured")),
        (CredentialsRejected("AADSTS7000215"), Hold("auth")),
        (RequestRejected("400", status=400), Split()),
        (RequestTooLarge("413", status=413), Split()),
        (AuthError("odd"), Stop()),
        (ApiError("odd"), Stop()),
        (ConfigError(["x"]), Stop()),
        (ValueError("not ours"), Stop()),
    ],
)
def test_each_error_carries_its_disposition(error: BaseException, expected: object) -> None:
    assert disposition(error, records=10) == expected


def test_a_refused_single_record_is_dead_lettered_with_the_reason_of_its_class() -> None:
    assert disposition(RequestRejected("400", status=400), 1) == DeadLetter(Reason.API_REJECTED)
    assert disposition(RequestTooLarge("413", status=413), 1) == DeadLetter(Reason.RECORD_TOO_LARGE)
    # the class decides, never the status number the error happens to carry
    assert disposition(RequestRejected("?", status=413), 1) == DeadLetter(Reason.API_REJECTED)
    assert disposition(ServerError("?", status=429), 5) == BackOff("server_error")


def test_every_error_class_has_a_disposition_consistent_with_retriable() -> None:
    classes = [
        c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, ConnectorError)
    ]
    assert len(classes) >= 15
    for cls in classes:
        if cls.retriable:  # a retriable error is sent again: waited for or backed off
            assert cls.action in (errors.Action.WAIT, errors.Action.BACK_OFF), cls
        assert cls.retry_label == "other" or cls.retriable, cls


def test_the_deadline_is_set_once_and_bounds_what_is_asked_of_it() -> None:
    now = [100.0]
    deadline = Deadline(lambda: now[0])
    assert deadline.within(10.0) == 10.0, "unset: no bound"
    deadline.start(30.0)
    now[0] = 125.0
    deadline.start(30.0)  # a second drain request keeps the first deadline
    assert deadline.remaining() == 5.0
    assert deadline.within(10.0) == 5.0, "a revoke keeps to what is left of the drain"
    now[0] = 200.0
    assert deadline.within(10.0) == 0.0


@pytest.mark.anyio
async def test_a_change_wakes_every_waiter_to_recheck_its_own_condition() -> None:
    changed = Changed()
    busy = {"a": True, "b": True}
    done: list[str] = []

    async def wait_for(name: str) -> None:
        await changed.until(lambda: not busy[name])
        done.append(name)

    with anyio.fail_after(2):
        async with anyio.create_task_group() as tg:
            tg.start_soon(wait_for, "a")
            tg.start_soon(wait_for, "b")
            await anyio.sleep(0.01)
            busy["b"] = False
            changed.notify()
            await anyio.sleep(0.01)
            assert done == ["b"], "a still busy: it waits on"
            busy["a"] = False
            changed.notify()
    assert done == ["b", "a"]
