"""How an upstream HTTP answer is classified, how Retry-After is read, and how URLs lose their credentials."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from hub.forward.sunbird_http import (
    answer_says,
    classify,
    header_safe,
    redirect_target,
    retry_after_seconds,
    without_credentials,
)

NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)  # a Monday

# The answers sunbird-contract.md 1.6 lists as success: the telemetry service's, the standard Sunbird
# envelope (the desktop app, and this hub to another hub), and the legacy EkStep API's.
SERVICE_OK = '{"id":"api.telemetry","ver":"1.0","ets":1714558830123,"params":{},"responseCode":"SUCCESS"}'
ENVELOPE_OK = (
    '{"id":"api.telemetry","ver":"1.0","ts":"2024-05-01T10:20:30.123Z","params":{"resmsgid":"r","msgid":"m",'
    '"status":"successful","err":null,"errmsg":null},"responseCode":"OK","result":{}}'
)
EKSTEP_OK = (
    '{"id":"ekstep.telemetry","ver":"1.0","ts":"2017-06-21T08:20:46+00:00","params":{"resmsgid":"r",'
    '"msgid":"m","status":"successful","err":"","errmsg":""}}'
)
EKSTEP_INVALID = (
    '{"id":"ekstep.telemetry","ver":"1.0","ts":"2017-06-21T08:20:46+00:00","params":{"resmsgid":"r",'
    '"msgid":"m","status":"failed","err":"INVALID_DATA_ERROR","errmsg":"bad events"}}'
)
PORTAL = "<!DOCTYPE html><html><head><title>Recharge\n your data pack</title></head><body>Login</body></html>"


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
@pytest.mark.parametrize("body", [SERVICE_OK, ENVELOPE_OK, EKSTEP_OK], ids=["service", "envelope", "ekstep"])
def test_2xx_with_a_telemetry_api_answer_is_ok(status, body):
    outcome = classify(status, body, None)
    assert (outcome.kind, outcome.status) == ("ok", status)


@pytest.mark.parametrize(
    "body",
    [
        '{"responseCode":"success"}',
        '{"responseCode":"Ok"}',
        '{"params":{"status":"SUCCESSFUL"}}',
        '  {"responseCode":"SUCCESS"}\n',
    ],
)
def test_the_acknowledgement_is_read_case_insensitively(body):
    assert classify(200, body, None).kind == "ok"


def test_another_hubs_long_answer_cut_off_at_the_read_limit_still_counts():
    hub_answer = '{"id":"api.telemetry","params":{"status":"successful"},"responseCode":"SUCCESS","result":{"q":['
    assert classify(200, hub_answer + '{"index":1},' * 1000, None).kind == "ok"  # truncated: no closing brackets


@pytest.mark.parametrize(
    "body",
    [
        PORTAL,
        "",
        "   ",
        "OK",
        "whatever upstream said",
        '{"status":"ok","message":"request received"}',
        '{"params":{"status":"pending"}}',
        '["SUCCESS"]',
        '"SUCCESS"',
        "null",
        '<html><body>{"responseCode":"SUCCESS"}</body></html>',  # a page that quotes an answer is not one
        '{"params":"successful"}',
    ],
)
@pytest.mark.parametrize("status", [200, 204])
def test_2xx_without_a_telemetry_api_answer_is_intercepted(status, body):
    outcome = classify(status, body, None)
    assert (outcome.kind, outcome.status) == ("intercepted", status)
    assert f"HTTP {status}" in outcome.message


def test_intercepted_says_what_answered():
    assert "'Recharge your data pack'" in classify(200, PORTAL, None).message
    assert "an empty body" in classify(200, "", None).message
    assert "request received" in classify(200, '{"status":"ok","message":"request received"}', None).message
    assert len(classify(200, "x" * 100_000, None).message) < 300


def test_2xx_with_a_sunbird_failure_is_a_server_error():
    body = '{"id":"api.telemetry","params":{"err":"Request failed"},"responseCode":"SERVER_ERROR"}'
    assert classify(200, body, None).kind == "server"
    assert classify(200, '{"params":{"status":"failed","err":"ERR_INTERNAL_SERVER_ERROR"}}', None).kind == "server"


def test_2xx_with_ekstep_invalid_data_is_a_bad_request():
    outcome = classify(200, EKSTEP_INVALID, None)
    assert (outcome.kind, outcome.status) == ("bad-request", 200)


@pytest.mark.parametrize("body", [SERVICE_OK, ENVELOPE_OK, EKSTEP_OK, PORTAL, ""])
def test_answer_says_is_none_only_for_non_answers(body):
    assert (answer_says(body) is None) == (body in (PORTAL, ""))


@pytest.mark.parametrize("status", [300, 301, 302, 303, 304, 307, 308, 399])
def test_3xx_is_moved_with_the_location(status):
    outcome = classify(status, SERVICE_OK, None, "https://example.org/api/data/v1/telemetry")
    assert (outcome.kind, outcome.status) == ("moved", status)
    assert "https://example.org/api/data/v1/telemetry" in outcome.message and "upstream.url" in outcome.message


def test_3xx_without_a_location_is_still_moved():
    outcome = classify(302, "", None)
    assert outcome.kind == "moved" and "no Location" in outcome.message


@pytest.mark.parametrize(
    ("location", "shown"),
    [
        ("https://u:secret@other.example/t?token=abc#x", "https://other.example/t"),
        ("/moved/api/data/v1/telemetry", "http://10.0.0.1:8080/moved/api/data/v1/telemetry"),
        ("https://example.org/api/data/v1/telemetry", "https://example.org/api/data/v1/telemetry"),
        (None, "(no Location given)"),
        ("", "(no Location given)"),
    ],
)
def test_redirect_target_resolves_and_strips_credentials_and_query(location, shown):
    assert redirect_target("http://10.0.0.1:8080/api/data/v1/telemetry", location) == shown


def test_redirect_target_is_bounded():
    assert len(redirect_target("http://h/", "/" + "a" * 5000)) <= 303


@pytest.mark.parametrize("value", ["0126684405014528002", "prod.diksha.app", "a b", "x" * 256, "~!@#$%^&*()"])
def test_header_safe_values(value):
    assert header_safe(value)


@pytest.mark.parametrize(
    "value",
    [None, "", "x\r\nX-Injected: 1", "a\nb", "a\rb", "ctl\x01char", "tab\there", "del\x7f", "x" * 257,
     "x" * 9000, "caf\u00e9", "\u0926\u0940\u0915\u094d\u0937\u093e", " padded", "padded "],
)  # fmt: skip
def test_header_unsafe_values(value):
    assert not header_safe(value)


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
