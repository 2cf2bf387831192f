"""Unit tests: the hub's pure rules, in-process, no network, no subprocess, no sleeping; each test is fast."""
