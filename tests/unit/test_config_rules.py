"""Config parsing rules: sizes, upload windows, and validation errors that name the key to fix."""

from __future__ import annotations

import pytest

from hub.config import GiB, KiB, MiB, from_dict, parse_size, parse_windows
from hub.errors import ConfigError


@pytest.mark.parametrize(
    ("value", "size"),
    [
        (5242880, 5242880),
        (0, 0),
        ("10", 10),
        ("10 b", 10),
        ("5 MiB", 5 * MiB),
        ("5MiB", 5 * MiB),
        ("5MB", 5_000_000),
        ("200 mb", 200_000_000),
        ("1.5 KiB", 1536),
        ("5 k", 5 * KiB),
        ("2 GiB", 2 * GiB),
        ("1 tb", 1000**4),
        ("  7 kb  ", 7000),
    ],
)
def test_parse_size(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize("value", [True, False, "five", "5 XB", "-5", "5 i", "", "5 MiB extra"])
def test_parse_size_refuses_what_is_not_a_size(value):
    with pytest.raises(ValueError):
        parse_size(value)


def test_parse_windows():
    assert parse_windows(()) == []
    assert parse_windows(("22:00-06:00",)) == [(1320, 360)]
    assert parse_windows(("00:00-23:59", "9:05-10:00")) == [(0, 1439), (545, 600)]


@pytest.mark.parametrize("window", ["25:00-06:00", "22:00-24:00", "10:60-11:00", "nonsense", "22:00", "1-2-3", ""])
def test_parse_windows_names_the_bad_window(window):
    with pytest.raises(ValueError) as info:
        parse_windows(("01:00-02:00", window))
    assert repr(window) in str(info.value)
    assert "22:00-06:00" in str(info.value)  # the example of what to write


def raises_config_error(data: dict, key: str) -> str:
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    message = str(info.value)
    assert message.startswith(f"{key}:"), message
    return message


def test_unknown_sink_names_upstream_sink():
    message = raises_config_error({"upstream": {"sink": "kafka"}}, "upstream.sink")
    assert "kafka" in message
    assert "sunbird-http" in message


@pytest.mark.parametrize("window", ["25:00-06:00", "nonsense", "22:00 - 06:00", "22-06"])
def test_bad_upload_window_names_upstream_upload_windows(window):
    message = raises_config_error({"upstream": {"upload_windows": [window]}}, "upstream.upload_windows")
    assert repr(window) in message


def test_upload_windows_must_be_a_list():
    raises_config_error({"upstream": {"upload_windows": "22:00-06:00"}}, "upstream.upload_windows")


def test_good_upload_windows_are_parsed_once():
    cfg = from_dict({"upstream": {"upload_windows": ["22:00-06:00", "12:00-13:00"]}})
    assert cfg.upstream.windows == [(1320, 360), (720, 780)]


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"upstream": {"bogus": 1}}, "upstream.bogus"),
        ({"upstream": {"batch_bytes": "lots"}}, "upstream.batch_bytes"),
        ({"upstream": {"batch_events": 0}}, "upstream.batch_events"),
        ({"upstream": {"gzip": "yes"}}, "upstream.gzip"),
        ({"upstream": {"timeout": -1}}, "upstream.timeout"),
        ({"upstream": {"backoff_initial": 10, "backoff_max": 5}}, "upstream.backoff_max"),
        ({"upstream": {"url": "ftp://example.org"}}, "upstream.url"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"port": "9001"}}, "server.port"),
        ({"server": {"log_level": "loud"}}, "server.log_level"),
        ({"auth": {"status_page_requires_token": "maybe"}}, "auth.status_page_requires_token"),
        ({"store": {"max_bytes": "4 parsecs"}}, "store.max_bytes"),
        ({"health": {"store_warn_fraction": 1.5}}, "health.store_warn_fraction"),
        ({"health": {"upstream_down_minutes": 0}}, "health.upstream_down_minutes"),
        ({"health": {"dead_letters": 0}}, "health.dead_letters"),
        ({"discovery": {"txt": {"a": 1}}}, "discovery.txt"),
    ],
)
def test_validation_errors_name_the_key(data, key):
    raises_config_error(data, key)


def test_unknown_section_is_named():
    raises_config_error({"upstrem": {}}, "[upstrem]")


def test_sizes_in_config_accept_units():
    cfg = from_dict({"store": {"max_bytes": "2 GiB"}, "upstream": {"batch_bytes": "500 KiB"}})
    assert cfg.store.max_bytes == 2 * GiB
    assert cfg.upstream.batch_bytes == 500 * KiB


def test_url_without_a_path_gets_the_sunbird_path():
    assert from_dict({"upstream": {"url": "https://example.org"}}).upstream_url == (
        "https://example.org/api/data/v1/telemetry"
    )
