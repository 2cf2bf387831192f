"""The hub's small error hierarchy: one base, one class per way things go wrong."""

from __future__ import annotations

__all__ = ["BadRequest", "ConfigError", "HubError", "ShareFileError", "StoreClosed", "StoreFull", "StoreUnavailable"]


class HubError(Exception):
    """Base class for every error the hub raises on purpose."""


class ConfigError(HubError):
    """The configuration cannot be used; the message names the key and what to write."""


class StoreFull(HubError):
    """The store is at its size cap or the disk is nearly full; new data must wait."""


class StoreUnavailable(HubError):
    """The store cannot commit right now (the disk fails, the file system turned read-only, the file is damaged).

    The message is a sentence for people: what is wrong and what to check. Nothing was acknowledged;
    devices are told to keep their events and retry, and the hub takes them again by itself once a
    commit works.
    """


class StoreClosed(HubError):
    """The store is shutting down and takes no more writes."""


class BadRequest(HubError):
    """A device sent something the hub cannot accept; the message says what."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ShareFileError(HubError):
    """A Share Telemetry file is corrupt, truncated or hostile; the message names the file and the fault."""
