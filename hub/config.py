"""Typed configuration: every setting and its default live here, nowhere else."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "AuthConfig",
    "Config",
    "DiscoveryConfig",
    "LimitsConfig",
    "ServerConfig",
    "ShareConfig",
    "StoreConfig",
    "TlsConfig",
    "UpstreamConfig",
    "load",
    "parse_size",
]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

SUNBIRD_PATH = "/api/data/v1/telemetry"
# The sinks upstream.sink may name (hub.forward.SINKS holds their classes).
SINK_NAMES = ("sunbird-http",)


@dataclass(frozen=True)
class ServerConfig:
    """Where the device API listens and where the hub keeps its state."""

    host: str = ""  # "" = every IPv4 and IPv6 address
    port: int = 9001
    data_dir: str = ""  # "" = $STATE_DIRECTORY (systemd) or ./telemetry-hub-data
    branch_name: str = ""
    shutdown_timeout: float = 30.0
    client_timeout: float = 30.0  # a request (headers, body) must arrive within this; also the keep-alive idle time
    max_connections: int = 512
    log_level: str = "info"
    # Extra names the status page and admin paths answer to (a DNS name pointing at the hub); its own
    # addresses, host name, <host name>.local and localhost always work. Device paths answer to any name.
    host_names: tuple[str, ...] = ()
    # Whether device answers carry the hub's time (ets), which the mobile app sets its clock by:
    # kernel = only while the kernel says the clock is NTP-synchronised; always; never.
    clock_trust: str = "kernel"


@dataclass(frozen=True)
class AuthConfig:
    """Device keys and the admin token; values are read from files, never from this file."""

    device_keys_file: str = ""  # "" = devices need no key
    admin_token_file: str = ""  # "" = generated once into <data_dir>/admin-token
    status_page_requires_token: str = "auto"  # auto | yes | no
    session_days: float = 30.0  # a status-page sign-in lasts this long (then the browser signs in again)
    login_code_seconds: float = 600.0  # a short sign-in code (telemetry-hub login-code) works this long, once


@dataclass(frozen=True)
class LimitsConfig:
    """What one device request may carry."""

    max_body_bytes: int = 5 * MiB
    max_decompressed_bytes: int = 10 * MiB
    max_events_per_request: int = 1000
    max_event_bytes: int = 1 * MiB
    max_buffered_bytes: int = 32 * MiB  # request bodies held in memory at once; over it new ones get 503


@dataclass(frozen=True)
class StoreConfig:
    """The SQLite store's caps and retention."""

    max_bytes: int = 4 * GiB
    min_free_bytes: int = 200 * MiB
    retention_days: float = 7.0
    strict_schema: bool = False
    retry_after: int = 30  # seconds a refused device is told to wait
    quarantine_keep_bytes: int = 4 * KiB  # of a malformed event, only this much is kept (with its size and hash)


@dataclass(frozen=True)
class UpstreamConfig:
    """The Sunbird telemetry API the hub delivers to."""

    url: str = ""  # "" = no forwarding; a URL without a path gets /api/data/v1/telemetry
    sink: str = "sunbird-http"  # how to deliver: sunbird-http (the telemetry API over HTTP)
    api_key_file: str = ""  # relative paths are looked up in $CREDENTIALS_DIRECTORY first
    api_key_env: str = "TELEMETRY_HUB_UPSTREAM_KEY"
    device_id: str = ""  # "" = the hub id
    channel_id: str = ""  # X-Channel-Id when events carry no context.channel
    app_id: str = ""  # X-App-Id when events carry no context.pdata.id
    connect_timeout: float = 10.0
    timeout: float = 60.0
    batch_events: int = 200
    batch_bytes: int = 1000 * KiB
    gzip: bool = True
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    auth_retry_interval: float = 300.0
    probe_interval: float = 30.0
    daily_byte_budget: int = 0  # 0 = unlimited
    upload_windows: tuple[str, ...] = ()  # e.g. ("22:00-06:00",); empty = any time
    heartbeat_interval: float = 900.0  # seconds between the hub's own LOG events about its health; 0 = none

    @functools.cached_property
    def windows(self) -> list[tuple[int, int]]:
        """upload_windows as (start, end) minutes of the day, parsed once."""
        return parse_windows(self.upload_windows)


@dataclass(frozen=True)
class DiscoveryConfig:
    """How the hub advertises itself over mDNS / DNS-SD."""

    enabled: bool = True
    instance: str = ""  # "" = derived from branch name and host name
    interfaces: tuple[str, ...] = ()  # empty = every non-loopback address
    txt: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ShareConfig:
    """Limits for Share Telemetry files, so a hostile file cannot exhaust the Pi."""

    max_file_bytes: int = 100 * MiB
    max_uncompressed_bytes: int = 500 * MiB
    max_ratio: int = 200
    max_entries: int = 10000
    max_events: int = 1_000_000  # events in one file (tiny events cost memory far beyond their bytes)


@dataclass(frozen=True)
class TlsConfig:
    """Optional HTTPS listener for devices on shared Wi-Fi."""

    enabled: bool = False
    port: int = 9443
    cert_file: str = ""  # "" = self-signed, generated into the data dir
    key_file: str = ""
    # Strict-Transport-Security max-age on HTTPS answers (s); 0 = no HSTS header.
    hsts_seconds: int = 31536000


@dataclass(frozen=True)
class HealthConfig:
    """When the status page and /health ask for someone's attention: thresholds, not limits."""

    upstream_down_minutes: float = 30.0  # unreachable this long with events waiting: a warning
    dead_letters: int = 50  # this many events refused by upstream: a warning (fewer: a note)
    store_warn_fraction: float = 0.8  # this full against store.max_bytes: a warning, before refusing
    stall_minutes: float = 15.0  # the oldest waiting event unmoved this long while the link is up: a warning


@dataclass(frozen=True)
class Config:
    """The whole hub configuration, one frozen section per concern."""

    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    share: ShareConfig = field(default_factory=ShareConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    health: HealthConfig = field(default_factory=HealthConfig)

    @functools.cached_property
    def data_dir(self) -> Path:
        """The state directory, derived once: explicit setting, else systemd's, else ./telemetry-hub-data."""
        if self.server.data_dir:
            return Path(self.server.data_dir)
        state = os.environ.get("STATE_DIRECTORY")
        if state:
            return Path(state.split(":")[0])
        return Path("telemetry-hub-data")

    @functools.cached_property
    def upstream_url(self) -> str:
        """The full URL to POST to, with the Sunbird path added when none was given."""
        return normalise_upstream_url(self.upstream.url)

    def replace(self, section: str, **changes: Any) -> Config:
        """A copy with some keys of one section changed (used for command-line overrides)."""
        current = getattr(self, section)
        return dataclasses.replace(self, **{section: _build(type(current), section, {**_as_dict(current), **changes})})


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": KiB,
    "kb": 1000,
    "kib": KiB,
    "m": MiB,
    "mb": 1000**2,
    "mib": MiB,
    "g": GiB,
    "gb": 1000**3,
    "gib": GiB,
    "t": 1024 * GiB,
    "tb": 1000**4,
    "tib": 1024 * GiB,
}
_SIZE_FIELDS = {
    "bytes",
    "max_bytes",
    "min_free_bytes",
    "max_body_bytes",
    "max_decompressed_bytes",
    "max_event_bytes",
    "max_buffered_bytes",
    "batch_bytes",
    "daily_byte_budget",
    "max_file_bytes",
    "max_uncompressed_bytes",
    "quarantine_keep_bytes",
}


def parse_size(value: int | str) -> int:
    """Turn 5242880, "5 MiB" or "5MB" into bytes."""
    if isinstance(value, bool):
        raise ValueError("expected a size")
    if isinstance(value, int):
        return value
    m = _SIZE_RE.match(str(value))
    if not m or (m.group(2) or "").lower() not in _UNITS:
        raise ValueError(f'{value!r} is not a size (write e.g. 5242880, "5 MiB" or "200 MB")')
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").lower()])


def parse_windows(windows: tuple[str, ...]) -> list[tuple[int, int]]:
    """Turn ("22:00-06:00",) into [(1320, 360)] minutes of the day; ValueError names a bad window."""
    out = []
    for w in windows:
        try:
            a, b = w.split("-")
            ha, ma = (int(x) for x in a.split(":"))
            hb, mb = (int(x) for x in b.split(":"))
        except ValueError:
            raise ValueError(f'{w!r} is not a window like "22:00-06:00"') from None
        if not (0 <= ha < 24 and 0 <= hb < 24 and 0 <= ma < 60 and 0 <= mb < 60):
            raise ValueError(f'{w!r} is not a window like "22:00-06:00" (hours 0-23, minutes 0-59)')
        out.append((ha * 60 + ma, hb * 60 + mb))
    return out


def normalise_upstream_url(url: str) -> str:
    """Add the Sunbird telemetry path to a URL given as just scheme://host[:port]."""
    url = url.strip()
    if not url:
        return ""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https") or not rest:
        shown = re.sub(r"//[^/@]*@", "//***@", url)  # never repeat credentials, even in an error
        raise ConfigError(f"upstream.url: {shown!r} is not an http(s) URL (write e.g. https://example.org)")
    host, slash, path = rest.partition("/")
    if not slash or not path.strip("/"):
        return f"{scheme}://{host}{SUNBIRD_PATH}"
    return url


def _as_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def _check(section: str, name: str, hint: Any, value: Any) -> Any:
    """Coerce one value to its field's type or explain, naming the key, why it cannot be."""
    key = f"{section}.{name}"
    origin = typing.get_origin(hint)
    if name in _SIZE_FIELDS:
        try:
            size = parse_size(value)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
        if size < 0:
            raise ConfigError(f"{key}: must not be negative")
        return size
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if value < 0:
            raise ConfigError(f"{key}: must not be negative")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{key}: expected a table of strings, got {value!r}")
        return dict(value)
    raise ConfigError(f"{key}: unsupported setting type {hint!r}")  # pragma: no cover


def _build(cls: type, section: str, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{section}.{unknown[0]}: unknown setting (known in [{section}]: {', '.join(sorted(known))})")
    return cls(**{k: _check(section, k, hints[k], v) for k, v in values.items()})


def _validate(cfg: Config) -> None:
    """Cross-field rules that types alone cannot express."""
    if not 0 < cfg.server.port < 65536 and cfg.server.port != 0:
        raise ConfigError(f"server.port: {cfg.server.port} is not a TCP port (1-65535)")
    if cfg.server.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError("server.log_level: use one of debug, info, warning, error")
    if cfg.server.clock_trust not in ("kernel", "always", "never"):
        raise ConfigError("server.clock_trust: use kernel, always or never")
    if cfg.auth.status_page_requires_token not in ("auto", "yes", "no"):
        raise ConfigError("auth.status_page_requires_token: use auto, yes or no")
    if cfg.auth.session_days <= 0:
        raise ConfigError("auth.session_days: must be more than 0 (fractions are fine: 0.5 = 12 hours)")
    if not 10 <= cfg.auth.login_code_seconds <= 86400:
        raise ConfigError("auth.login_code_seconds: must be from 10 to 86400 (a code should expire within a day)")
    if cfg.upstream.batch_events < 1:
        raise ConfigError("upstream.batch_events: must be at least 1")
    if cfg.limits.max_events_per_request < 1:
        raise ConfigError("limits.max_events_per_request: must be at least 1")
    if cfg.upstream.backoff_max < cfg.upstream.backoff_initial:
        raise ConfigError("upstream.backoff_max: must not be smaller than upstream.backoff_initial")
    if cfg.upstream.sink not in SINK_NAMES:
        raise ConfigError(f"upstream.sink: {cfg.upstream.sink!r} is not a sink (known: {', '.join(SINK_NAMES)})")
    for w in cfg.upstream.upload_windows:
        if not re.fullmatch(r"\d{1,2}:\d{2}-\d{1,2}:\d{2}", w):
            raise ConfigError(f'upstream.upload_windows: {w!r} is not a window like "22:00-06:00"')
    try:
        _ = cfg.upstream.windows  # parsed once here, so a bad window is a config error at start
    except ValueError as exc:
        raise ConfigError(f"upstream.upload_windows: {exc}") from None
    if cfg.health.upstream_down_minutes <= 0:
        raise ConfigError("health.upstream_down_minutes: must be more than 0")
    if cfg.health.dead_letters < 1:
        raise ConfigError("health.dead_letters: must be at least 1")
    if cfg.health.stall_minutes <= 0:
        raise ConfigError("health.stall_minutes: must be more than 0 (fractions are fine: 0.5 = 30 s)")
    if not 0 < cfg.health.store_warn_fraction <= 1:
        raise ConfigError("health.store_warn_fraction: must be more than 0 and at most 1 (0.8 = 80%)")
    normalise_upstream_url(cfg.upstream.url)


def from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from parsed TOML, refusing unknown sections and keys."""
    hints = typing.get_type_hints(Config)
    sections = {f.name for f in dataclasses.fields(Config)}
    for name in data:
        if name not in sections:
            raise ConfigError(f"[{name}]: unknown section (known: {', '.join(sorted(sections))})")
    built = {}
    for name, value in data.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a [{name}] table")
        built[name] = _build(hints[name], name, value)
    cfg = Config(**built)
    _validate(cfg)
    return cfg


def load(path: str | os.PathLike[str] | None) -> Config:
    """Read the TOML file at path (or nothing, for the embedded defaults) and validate it."""
    if path is None:
        return from_dict({})
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    return from_dict(data)
