"""Helpers the tests have in common (importable as ``support.*``: pyproject puts tests/ on sys.path).

- ``hubs``: configs, the in-process hub (``InProcessHubs`` behind the ``start_hub`` fixture), TOML config files
- ``hubproc``: the hub as a subprocess (``HubProcess``), for kill -9, fuzzing and exit codes
- ``upstream``: the fault-injecting fake Sunbird upstream (``FakeUpstream``; also runnable as a script)
- ``stores``: a ``hub.store.Store`` opened on a file (behind the ``store`` / ``open_store`` fixtures)
- ``events``: real sample events (``tests/fixtures/``) and the three client envelopes
- ``drive``: send events to a hub, wait for a condition, fast upstream timings
- ``sharefiles``: Share Telemetry files built per the contract
- ``netns``, ``cdp``: network namespaces for mDNS, a real browser over CDP
"""
