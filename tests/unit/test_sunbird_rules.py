"""How an upstream HTTP answer is classified, how Retry-After is read, and how URLs lose their credentials."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hub.forward.sunbird_http import classify, retry_after_seconds, without_credentials

NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)  # a Monday


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_ok(status):
    outcome = classify(status, "whatever upstream said", None)
    assert (outcome.kind, outcome.status) == ("ok", status)


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_auth(status):
    outcome = classify(status, "bad key", None)
    assert (outcome.kind, outcome.status, outcome.message) == ("auth", status, "bad key")


def test_413_is_too_large():
    assert classify(413, "payload too large", None).kind == "too-large"


def test_429_is_throttled_with_or_without_retry_after():
    plain = classify(429, "slow down", None)
    assert (plain.kind, plain.retry_after) == ("throttled", None)
    timed = classify(429, "slow down", "30")
    assert (timed.kind, timed.retry_after) == ("throttled", 30.0)


def test_503_with_retry_after_is_throttled():
    outcome = classify(503, "maintenance", "120")
    assert (outcome.kind, outcome.status, outcome.retry_after) == ("throttled", 503, 120.0)


def test_503_with_unreadable_retry_after_is_still_throttled_without_a_delay():
    outcome = classify(503, "maintenance", "soon")
    assert (outcome.kind, outcome.retry_after) == ("throttled", None)


def test_503_without_retry_after_is_server():
    assert classify(503, "down", None).kind == "server"


@pytest.mark.parametrize("status", [400, 404, 405, 409, 422, 451, 499])
def test_other_4xx_are_bad_request(status):
    assert classify(status, "no", None).kind == "bad-request"


@pytest.mark.parametrize("status", [500, 501, 502, 504, 599])
def test_5xx_are_server(status):
    assert classify(status, "oops", None).kind == "server"


def test_message_is_trimmed_to_300_characters():
    outcome = classify(400, "x" * 5000, None)
    assert outcome.message == "x" * 300


def test_message_newlines_become_spaces_and_ends_are_stripped():
    assert classify(400, "\n  first line\nsecond line\n\n", None).message == "first line second line"


@pytest.mark.parametrize("body", ["", "   ", "\n\n"])
def test_empty_body_becomes_http_status(body):
    assert classify(502, body, None).message == "HTTP 502"
    assert classify(401, body, None).message == "HTTP 401"


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("1", 1.0),
        ("120", 120.0),
        ("1.5", 1.5),
        ("3600", 3600.0),
        ("3601", 3600.0),
        ("999999", 3600.0),
        ("-5", 0.0),
        ("  60 ", 60.0),
    ],
)
def test_retry_after_delta_seconds(value, seconds):
    assert retry_after_seconds(value, now=NOW) == seconds


def test_retry_after_http_date_is_seconds_from_now():
    assert retry_after_seconds("Mon, 01 Jan 2024 12:02:00 GMT", now=NOW) == 120.0


def test_retry_after_http_date_in_the_past_is_zero():
    assert retry_after_seconds("Sun, 31 Dec 2023 23:00:00 GMT", now=NOW) == 0.0


def test_retry_after_http_date_far_ahead_is_capped():
    assert retry_after_seconds("Tue, 02 Jan 2024 12:00:00 GMT", now=NOW) == 3600.0


def test_retry_after_http_date_defaults_now_to_the_clock():
    assert retry_after_seconds("Mon, 01 Jan 2001 00:00:00 GMT") == 0.0
    assert retry_after_seconds("Fri, 01 Jan 2100 00:00:00 GMT") == 3600.0


@pytest.mark.parametrize("value", [None, "", "soon", "tomorrow", "12:00", "Mon, 32 Jan 2024 12:00:00 GMT", "1e"])
def test_retry_after_absent_or_garbage_is_none(value):
    assert retry_after_seconds(value, now=NOW) is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:secret@example.org/api/data/v1/telemetry", "https://example.org/api/data/v1/telemetry"),
        ("https://token@example.org/", "https://example.org/"),
        ("http://u:p@10.0.0.1:8080/x?y=1", "http://10.0.0.1:8080/x?y=1"),
        ("https://example.org/api", "https://example.org/api"),
        ("", ""),
    ],
)
def test_without_credentials(url, shown):
    assert without_credentials(url) == shown


def test_without_credentials_leaves_an_unparsable_url_alone():
    assert without_credentials("http://[::1") == "http://[::1"
