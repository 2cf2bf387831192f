"""One identity per hub: a data directory moved to another machine (a cloned SD card) gets its own."""

from __future__ import annotations

import logging

from support.drive import send
from support.events import make_events

from hub.identity import MACHINE_ENV, machine_fingerprint


async def test_a_card_cloned_to_another_machine_gets_its_own_id_token_and_certificate(
    start_hub, http, monkeypatch, caplog
):
    monkeypatch.setenv(MACHINE_ENV, "pi-serial-0001")
    tls = {"enabled": True, "port": 0}
    first = await start_hub(tls=tls)
    events = make_events(5)
    await send(http, first, events)
    before = (first.hub.hub_id, first.hub.admin_token, first.hub.tls.fingerprint)
    await first.hub.stop()

    # The same machine again: the same identity.
    again = await start_hub(tls=tls)
    assert (again.hub.hub_id, again.hub.admin_token, again.hub.tls.fingerprint) == before
    await again.hub.stop()

    # The card in another Pi: a new id, token and certificate; the events are still here.
    monkeypatch.setenv(MACHINE_ENV, "pi-serial-0002")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hub.identity"):
        moved = await start_hub(tls=tls)
    after = (moved.hub.hub_id, moved.hub.admin_token, moved.hub.tls.fingerprint)
    assert all(a != b for a, b in zip(after, before, strict=True)) and all(after)
    lines = [r.getMessage() for r in caplog.records if r.name == "hub.identity"]
    assert len(lines) == 1 and "another machine" in lines[0] and before[0][:8] in lines[0]
    assert before[1] not in lines[0]  # never the token
    assert moved.rows("SELECT count(*) FROM events") == [(5,)] and moved.hub.store.stats.backlog == 5
    (moved.hub.data_dir / "machine").read_text()  # recorded: the next start keeps the new identity
    await moved.hub.stop()
    last = await start_hub(tls=tls)
    assert (last.hub.hub_id, last.hub.admin_token) == after[:2]


def test_the_fingerprint_comes_from_the_machine_unless_overridden(monkeypatch):
    monkeypatch.delenv(MACHINE_ENV, raising=False)
    real = machine_fingerprint()
    assert real == "" or real.split(":", 1)[0] in ("cpu-serial", "machine-id", "mac")
    monkeypatch.setenv(MACHINE_ENV, "x")
    assert machine_fingerprint() == "env:x"
