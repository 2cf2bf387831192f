"""Upstream delivery: one loop (loop.py) over a Sink (sink.py); the Sunbird HTTP sink is the first."""

from __future__ import annotations

from ..config import Config
from .loop import Forwarder, ForwardState
from .sink import Encoded, Outcome, Sink
from .sunbird_http import SINKS, SunbirdHttpSink

__all__ = ["SINKS", "Encoded", "ForwardState", "Forwarder", "Outcome", "Sink", "SunbirdHttpSink", "make_sink"]


def make_sink(cfg: Config, device_id: str) -> Sink | None:
    """The sink upstream.sink names, or None when there is no upstream (upstream.url is empty)."""
    url = cfg.upstream_url
    if not url:
        return None
    return SINKS[cfg.upstream.sink](cfg.upstream, url, cfg.upstream.device_id or device_id)
