"""Crash loop: devices keep syncing and upstream keeps flapping while the hub is killed -9 again and again.

The thorough version of tests/test_crash.py and tests/test_forward_crash.py. Each round starts the hub
(a subprocess), lets several devices sync through it (mixed batch sizes and envelopes; a device keeps
a batch until it gets a 200, so unanswered batches come back as duplicates after a restart) while the
fake upstream flaps and fails, resets or hangs at random, then kills the hub with SIGKILL at a random
moment (sometimes during start-up). At the end, with the link steady: every acknowledged event is in
the store and upstream has every one of them; nothing upstream was invented; the database is intact;
the store holds one row per mid and upstream got each mid in one batch msgid only (resent batches
and batches in flight at a kill come again with their msgid, which upstream discards).

The schedule (faults, kill moments, batch sizes) follows one random seed, printed at the start, in the
reliability summary and in every failure message; CRASH_SEED=<n> replays it (timing is real, so a
replay repeats the schedule, not every race).
"""

from __future__ import annotations

import asyncio
import os
import random
import time

import aiohttp
import pytest
from support.hubproc import HubProcess
from support.hubs import write_config
from support.upstream import FakeUpstream

from reliability import tally
from reliability.helpers import Ledger, db_check, device, duplicate_rows, upstream_duplicates

pytestmark = pytest.mark.slow  # kill -9 loop under load

ROUNDS = int(os.environ.get("CRASH_ROUNDS", "6"))
DEVICES = 6


async def _start(hub: HubProcess) -> None:
    await asyncio.to_thread(hub.start)


def _faults(fake: FakeUpstream, rng: random.Random) -> str:
    """A new mix of upstream faults for this round; returns a description for the failure message."""
    faults = {
        "fail_rate": rng.choice((0.0, 0.1, 0.3)),
        "reset_rate": rng.choice((0.0, 0.1, 0.25)),
        "reset_after_store": rng.random() < 0.6,  # stored upstream, but the hub never hears the 200
        "latency": rng.choice((0.0, 0.0, 0.05)),
        "hang_seconds": 0.0,
        "hang_after_store": False,
    }
    if rng.random() < 0.25:  # stored, then the answer hangs past the hub's upstream.timeout
        faults.update(hang_seconds=2.5, hang_after_store=True)
    fake.configure(**faults)
    if rng.random() < 0.3:
        fake.rate_limit(rng.randint(1, 5), retry_after=1, status=rng.choice((429, 503)))
    up, down = rng.uniform(0.3, 1.2), rng.uniform(0.1, 0.6)
    fake.flap(up, down)
    return f"{faults} flap up {up:.2f}s/down {down:.2f}s"


async def test_crash_loop_loses_nothing(tmp_path, upstream):
    seed = int(os.environ.get("CRASH_SEED", str(random.randrange(2**32))))
    # Shown with a failure (captured output), in the reliability summary and in every assertion message.
    print(f"crash loop seed {seed}: replay with CRASH_SEED={seed}")
    tally.crash_seeds.append(seed)
    rng = random.Random(seed)
    fake = upstream
    fake.random.seed(seed)  # the fake's random faults follow the crash seed too
    cfg = write_config(
        tmp_path / "hub.toml",
        upstream={
            "url": fake.url,
            "backoff_initial": 0.05,
            "backoff_max": 0.5,
            "probe_interval": 0.2,
            "timeout": 2.0,
            "connect_timeout": 0.5,
            "batch_events": 50,
        },
        store={"min_free_bytes": "1 MiB"},
    )
    hub = HubProcess(tmp_path / "data", config=cfg)
    ledger = Ledger()
    stop = asyncio.Event()
    history: list[str] = []
    try:
        async with aiohttp.ClientSession() as http:
            devices = [
                asyncio.create_task(
                    device(
                        http,
                        hub.url,
                        f"crash-dev-{i}",
                        ledger,
                        stop,
                        random.Random(rng.random()),
                        sizes=(1, 3, 20, 100, 200),
                    )
                )
                for i in range(DEVICES)
            ]
            for round_ in range(ROUNDS):
                faults = _faults(fake, rng)
                before = len(ledger.acked)
                if round_ and rng.random() < 0.25:
                    # Killed during start-up: the store may be opening, recovering the WAL or migrating.
                    starting = asyncio.create_task(_start(hub))
                    await asyncio.sleep(rng.uniform(0.05, 0.5))
                    hub.kill()
                    try:
                        await starting
                    except RuntimeError:
                        pass
                    hub.kill()  # in case start() won the race
                    history.append(f"round {round_}: killed during start-up; {faults}")
                    tally.add(crash_rounds=1)
                    continue
                await _start(hub)
                up_for = rng.uniform(0.4, 2.5)
                await asyncio.sleep(up_for)
                hub.kill()  # requests, commits and upstream batches are in flight
                history.append(f"round {round_}: up {up_for:.2f}s, {len(ledger.acked) - before} acked; {faults}")
                tally.add(crash_rounds=1)
                await asyncio.sleep(rng.uniform(0.0, 0.3))  # devices meet a dead hub for a moment
            # The link steadies; the hub comes back for good and the devices sync a little more.
            fake.reset_faults()
            await fake.up()
            await _start(hub)
            await asyncio.sleep(1.0)
            stop.set()
            await asyncio.gather(*devices)
            deadline = time.monotonic() + 90
            backlog = -1
            while time.monotonic() < deadline and not (ledger.acked <= fake.mids and backlog == 0):
                await asyncio.sleep(0.2)
                async with http.get(hub.url + "/health") as r:
                    backlog = (await r.json())["backlog"]
        assert hub.terminate() == 0, hub.log()
    finally:
        hub.kill()
        await fake.stop()

    integrity, stored, undelivered = db_check(tmp_path / "data" / "hub.db")
    lost_store = ledger.acked - stored
    lost_upstream = ledger.acked - fake.mids
    invented = fake.mids - ledger.sent
    tally.add(acked_checked=len(ledger.acked), lost_events=len(lost_store | lost_upstream))
    about = (
        f"seed {seed} (rerun with CRASH_SEED={seed}); {len(ledger.acked)} acked, statuses "
        f"{dict(ledger.statuses)}, {ledger.errors} connection errors\n" + "\n".join(history)
    )
    assert integrity == "ok", about
    dupes = duplicate_rows(tmp_path / "data" / "hub.db")
    assert not dupes, f"the store holds these mids more than once: {dupes}; {about}"
    redelivered = upstream_duplicates(fake)
    assert not redelivered, f"{redelivered}; {about}"
    assert not lost_store, f"{len(lost_store)} acknowledged events not in the store; {about}"
    assert not lost_upstream, f"{len(lost_upstream)} acknowledged events never reached upstream; {about}"
    assert not invented, f"upstream got {len(invented)} mids no device sent; {about}"
    assert undelivered == 0, about
    assert not ledger.unexpected, f"unexpected answers {ledger.unexpected[:5]}; {about}"
    assert len(ledger.acked) > 1000, f"too little load to mean anything; {about}"
    assert ledger.resent > 10, f"too few batches sent twice to exercise dedup; {about}"
    print(
        f"crash loop: {ROUNDS} rounds, {len(ledger.acked)} acked, {len(fake.received_mids) - len(fake.mids)} "
        f"duplicate deliveries upstream, 0 lost; {about}"
    )
