"""Prometheus metrics: live figures read from the store at scrape time, latencies observed as they happen.

Counts that the store keeps (received, duplicates, delivered, backlog, ...) are *read* at scrape
time by a custom collector, never counted a second time here, so `/metrics` always agrees with
the database. Only what exists nowhere else (latency and size distributions) is observed through
the parts' hooks: `Store.on_group_commit`, `Forwarder.observers`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from .clock import ClockCheck
from .facts import RequestCounts
from .forward import Forwarder, Outcome
from .store import Store

__all__ = ["LINK_STATES", "STATE_VALUES", "Metrics"]

# health.state_of's states as one number, so one alert rule (>= 1, >= 2) covers every cause.
STATE_VALUES = {"ok": 0, "attention": 1, "failing": 2}

log = logging.getLogger(__name__)

# Every state ForwardState.link takes; each gets a 0/1 series so dashboards can graph outages.
LINK_STATES = ("unknown", "up", "down", "auth-failed", "intercepted", "moved", "disabled")

_PREFIX = "telemetry_hub"
# Upstream round trips on a poor WAN: from LAN-fast to the 60 s default timeout.
_BATCH_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
# One group commit with synchronous=FULL on an SD card: about 2 ms to a second when the card stalls.
_COMMIT_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# Events per group commit (one request up to many requests' worth).
_COMMIT_EVENTS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


@dataclass
class _Snapshot:
    """Figures read from the database just before a scrape (the collector itself cannot await)."""

    counters: dict[str, int] = field(default_factory=dict)
    devices: int = 0
    state: str = "ok"


class _LiveCollector(Collector):
    """Reads the store's, the forwarder's and the device API's own figures at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        s = m.store.stats
        snap = m.snapshot
        info = InfoMetricFamily(f"{_PREFIX}_build", "The hub's version and id")
        info.add_metric([], {"version": m.version, "hub": m.hub_id})
        yield info

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"{_PREFIX}_{name}", doc, value=value)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{_PREFIX}_{name}", doc, value=value)

        def by(name: str, doc: str, label: str, counts: Mapping[Any, float]) -> CounterMetricFamily:
            family = CounterMetricFamily(f"{_PREFIX}_{name}", doc, labels=[label])
            for key, n in sorted(counts.items()):
                family.add_metric([str(key)], n)
            return family

        yield gauge(
            "state",
            "The hub's state as the status page says it: 0 ok, 1 needs attention, 2 failing (new telemetry refused)",
            STATE_VALUES.get(snap.state, 2),
        )
        synced = m.clock.state().synchronised if m.clock is not None else None
        if synced is not None:
            yield gauge(
                "clock_synchronised",
                "1 when the kernel says the clock is NTP-synchronised, 0 when not (device answers then carry no ets)",
                1 if synced else 0,
            )
        yield counter(
            "events_received",
            "Events devices and imports sent (new, duplicate and quarantined)",
            snap.counters.get("received", 0),
        )
        yield counter(
            "events_duplicates", "Events received again (same mid), stored once", snap.counters.get("duplicates", 0)
        )
        yield counter("events_quarantined", "Events kept aside as malformed, never forwarded", s.quarantined)
        yield counter("events_delivered", "Events upstream accepted", snap.counters.get("delivered", 0))
        yield gauge("backlog_events", "Events stored and waiting for upstream", s.backlog)
        yield gauge("dead_letter_events", "Events upstream refused, kept for inspection or re-queueing", s.dead_letters)
        yield gauge("devices", "Devices that ever sent telemetry", snap.devices)
        yield gauge("store_bytes", "Size of the database files (db, WAL, shm)", s.db_bytes)
        yield gauge("store_max_bytes", "store.max_bytes: the size at which new data is refused", m.store.cfg.max_bytes)
        yield gauge("disk_free_bytes", "Free space on the disk holding the database", s.free_bytes)
        yield gauge(
            "store_accepting",
            "1 when the store takes new data, 0 when full or at its cap",
            0 if m.store.space_problem() else 1,
        )
        yield gauge(
            "store_last_commit_timestamp_seconds", "When the store last committed (0: not yet)", s.last_commit_at
        )
        yield by("schema_warnings", "Events breaking the Sunbird v3 schema, by check", "check", s.schema_warnings)

        st = m.forwarder.state
        link = GaugeMetricFamily(
            f"{_PREFIX}_upstream_link", "Upstream link state (1 for the current state)", labels=["state"]
        )
        for state in LINK_STATES if st.link in LINK_STATES else (*LINK_STATES, st.link):
            link.add_metric([state], 1 if st.link == state else 0)
        yield link
        yield by("upstream_errors", "Failed upstream requests since start, by kind", "kind", st.errors)
        yield gauge(
            "upstream_last_success_timestamp_seconds",
            "When upstream last accepted a batch (0: not since start)",
            st.last_success_at or 0,
        )
        yield gauge("upstream_batch_limit_events", "Events per batch upstream currently accepts", st.batch_limit)
        yield gauge(
            "oldest_waiting_age_seconds",
            "How long the oldest event waiting for upstream has waited (0: nothing waits)",
            s.oldest_waiting_age(time.time()) or 0.0,
        )

        c = m.counts
        yield by("http_requests", "Device telemetry requests answered, by HTTP status", "status", c.by_status)
        yield by("http_client_errors", "Device requests refused, by reason", "reason", c.client_errors)


class Metrics:
    """The hub's Prometheus metrics in a private registry (several hubs may share one process)."""

    def __init__(
        self,
        store: Store,
        counts: RequestCounts,
        forwarder: Forwarder,
        *,
        version: str,
        hub_id: str,
        state: Callable[[], Awaitable[str]] | None = None,
        clock: ClockCheck | None = None,
    ) -> None:
        self.clock = clock
        self.store = store
        self.state = state  # the hub's state (ok | attention | failing), asked at each scrape
        self.counts = counts
        self.forwarder = forwarder
        self.version = version
        self.hub_id = hub_id
        self.snapshot = _Snapshot()
        self.registry = CollectorRegistry(auto_describe=True)
        self.batch_seconds = Histogram(
            f"{_PREFIX}_upstream_batch_seconds",
            "Time one upstream request took, by outcome",
            ["outcome"],
            buckets=_BATCH_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.batch_events = Histogram(
            f"{_PREFIX}_upstream_batch_events",
            "Events in one upstream request, by outcome",
            ["outcome"],
            buckets=_COMMIT_EVENTS_BUCKETS,
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            f"{_PREFIX}_store_commit_seconds",
            "Time one group commit took (fsync included)",
            buckets=_COMMIT_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.commit_events = Histogram(
            f"{_PREFIX}_store_commit_events",
            "Events in one group commit",
            buckets=_COMMIT_EVENTS_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_LiveCollector(self))

    def on_commit(self, seconds: float, n_events: int) -> None:
        """Observe one group commit (the composition root hooks this to the store)."""
        self.commit_seconds.observe(seconds)
        self.commit_events.observe(n_events)

    def on_batch(self, kind: str, outcome: Outcome, n_events: int, seconds: float) -> None:
        """Observe one upstream request (the composition root hooks this to the forwarder)."""
        self.batch_seconds.labels(kind).observe(seconds)
        self.batch_events.labels(kind).observe(n_events)

    async def refresh(self) -> None:
        """Read the figures only the database holds (persistent counters, device count)."""
        started = time.monotonic()
        state = await self.state() if self.state is not None else "ok"
        self.snapshot = _Snapshot(await self.store.read.counters(), await self.store.read.device_count(), state)
        log.debug("metrics: read the store's figures in %.1f ms", (time.monotonic() - started) * 1000)

    async def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition body and its content type, in the format the scraper asked for."""
        await self.refresh()
        encoder, content_type = choose_encoder(accept)
        # No await between refresh and encode: the snapshot is the one this scrape reads.
        return encoder(self.registry), content_type
