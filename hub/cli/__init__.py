"""Every telemetry-hub command, talking to a running hub through one client or to a data directory."""

from .main import main

__all__ = ["main"]
