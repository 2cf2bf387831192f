"""Compatibility shim for bench/ (which puts tests/ on sys.path): the code is in tests/support/events.py.

Tests import `support.events`; remove this file once bench/ does too.
"""

from support.events import *  # noqa: F401,F403
