"""The HTTP retry rules both clients share (enrich._http): statuses, Retry-After, backoff."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

from enrich._http import (
    TRANSIENT_STATUSES,
    backoff,
    is_permanent,
    is_transient,
    retry_after,
)
from enrich.errors import ChatDashError, ChatDashLookupError

NOW = datetime(2026, 11, 1, 12, 0, 0, tzinfo=UTC).timestamp()


# -- the status classes --------------------------------------------------------------------------


def test_one_set_of_transient_statuses():
    assert TRANSIENT_STATUSES == {408, 409, 429, 500, 502, 503, 504}


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried_and_not_permanent(status):
    assert is_transient(status) and not is_permanent(status)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 410, 413, 422, 451])
def test_other_4xx_are_permanent(status):
    assert is_permanent(status) and not is_transient(status)


@pytest.mark.parametrize("status", [None, 200, 204, 301, 501, 505, 599])
def test_neither_transient_nor_permanent(status):
    assert not is_transient(status) and not is_permanent(status)


@pytest.mark.parametrize(
    ("status", "permanent"),
    [(400, True), (401, True), (404, True), (422, True), (408, False), (409, False)]
    + [(429, False), (500, False), (503, False), (None, False)],
)
def test_chatdash_error_says_whether_it_is_permanent(status, permanent):
    assert ChatDashError("x", status_code=status).permanent is permanent
    assert ChatDashLookupError("x", status_code=status).permanent is permanent


def test_permanent_is_read_only():
    with pytest.raises(AttributeError):
        ChatDashError("x", status_code=404).permanent = False  # type: ignore[misc]


# -- Retry-After ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "1500.5"}, 1.5005),
        ({"Retry-After": "3"}, 3.0),
        ({"retry-after": "0"}, 0.0),
        ({"Retry-After": "2.5"}, 2.5),
        ({"Retry-After": "-4"}, 0.0),  # never a negative wait
        ({"retry-after-ms": "100", "retry-after": "9"}, 0.1),  # the finer one first
        ({"retry-after-ms": "soon", "retry-after": "9"}, 9.0),  # an unreadable one is skipped
        ({"Retry-After": "Sun, 01 Nov 2026 12:00:30 GMT"}, 30.0),
        ({"Retry-After": "Sun, 01 Nov 2026 11:59:00 GMT"}, 0.0),  # already past
        ({"Retry-After": "Sun, 01 Nov 2026 12:00:30 -0000"}, 30.0),  # no zone: GMT
    ],
)
def test_retry_after_forms(headers, seconds):
    assert retry_after(headers, now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "headers",
    [None, {}, {"retry-after": ""}, {"Retry-After": "later"}, {"Retry-After": "nan"}]
    + [{"retry-after-ms": "inf"}, {"x-ratelimit-reset": "3"}],
)
def test_retry_after_unreadable_is_none(headers):
    assert retry_after(headers, now=NOW) is None


def test_retry_after_reads_httpx_headers_whatever_the_case():
    response = httpx.Response(429, headers={"RETRY-AFTER-MS": "20"})
    assert retry_after(response.headers) == pytest.approx(0.02)
    response = httpx.Response(503, headers={"rEtRy-AfTeR": "7"})
    assert retry_after(response.headers) == 7.0


def test_retry_after_date_from_the_clock():
    later = datetime.fromtimestamp(datetime.now(UTC).timestamp() + 60, UTC)
    wait = retry_after({"Retry-After": format_datetime(later, usegmt=True)})
    assert wait is not None and 55 <= wait <= 60


# -- backoff -------------------------------------------------------------------------------------


def test_backoff_doubles_with_equal_jitter_up_to_the_cap():
    random.seed(7)
    for retry, base in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (60, 8.0)]:
        waits = [backoff(retry) for _ in range(200)]
        assert all(base / 2 <= w <= base for w in waits)
        assert max(waits) - min(waits) > base / 4  # jittered, not one fixed value


def test_backoff_takes_the_first_wait_and_the_cap():
    for _ in range(50):
        assert 0.05 <= backoff(0, first=0.1, cap=30) <= 0.1
        assert 15 <= backoff(10, first=0.1, cap=30) <= 30
    assert backoff(10_000, first=1.0, cap=2.0) <= 2.0  # no overflow however many retries
    assert backoff(3, first=0.0, cap=30) == 0.0
