"""Compatibility shim for bench/ (which puts tests/ on sys.path): the code is in tests/support/hubproc.py.

Tests import `support.hubproc`; remove this file once bench/ does too.
"""

from support.hubproc import *  # noqa: F401,F403
