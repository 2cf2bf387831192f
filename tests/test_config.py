"""Config: defaults in one place, the example file in step with them, bad settings named."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from hub.config import Config, from_dict, load, normalise_upstream_url, parse_size
from hub.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.toml"


def test_no_file_means_embedded_defaults():
    assert load(None) == Config()


def test_example_file_lists_every_setting_at_its_default():
    data = tomllib.loads(EXAMPLE.read_text())
    assert load(EXAMPLE) == Config()
    for section in dataclasses.fields(Config):
        names = {f.name for f in dataclasses.fields(section.default_factory())}
        assert set(data.get(section.name, {})) == names, f"[{section.name}] in config.example.toml"


@pytest.mark.parametrize(
    "data,fragment",
    [
        ({"server": {"prot": 1}}, "server.prot: unknown setting"),
        ({"serve": {}}, "[serve]: unknown section"),
        ({"server": {"port": "80"}}, "server.port: expected a whole number"),
        ({"server": {"port": 70000}}, "server.port: 70000 is not a TCP port"),
        ({"store": {"strict_schema": "yes"}}, "store.strict_schema: expected true or false"),
        ({"limits": {"max_body_bytes": "lots"}}, "limits.max_body_bytes: 'lots' is not a size"),
        ({"upstream": {"url": "ftp://x"}}, "upstream.url"),
        ({"upstream": {"upload_windows": ["night"]}}, "upstream.upload_windows"),
        ({"store": {"retention_days": -1}}, "store.retention_days: must not be negative"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(data, fragment):
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    assert fragment in str(info.value)


def test_sizes_and_upstream_paths():
    assert parse_size("5 MiB") == 5 * 2**20 and parse_size("200MB") == 200_000_000 and parse_size(42) == 42
    assert from_dict({"limits": {"max_body_bytes": "1 KiB"}}).limits.max_body_bytes == 1024
    assert normalise_upstream_url("https://example.org") == "https://example.org/api/data/v1/telemetry"
    assert normalise_upstream_url("http://hub-b:9001/") == "http://hub-b:9001/api/data/v1/telemetry"
    assert normalise_upstream_url("https://x.org/v1/telemetry") == "https://x.org/v1/telemetry"


def test_cli_exits_2_and_names_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[store]\nmax_byte = 5\n")
    r = subprocess.run(
        [sys.executable, "-m", "hub", "--config", str(bad), "run"], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2
    assert "store.max_byte: unknown setting" in r.stderr
