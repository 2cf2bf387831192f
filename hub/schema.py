"""Sunbird v3 schema checks, compiled once, used to warn (or, in strict mode, quarantine)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import fastjsonschema

__all__ = ["SchemaChecker"]

log = logging.getLogger(__name__)

_PREFIX = "resource:/schemas/telemetry/3.0/"


def _load(name: str) -> dict[str, Any]:
    data = resources.files("hub").joinpath("schemas", name).read_text("utf-8")
    schema = json.loads(data)
    schema.pop("id", None)  # draft-04 ids are http URLs that would be fetched; refs use resource:
    return schema


def _resolve(uri: str) -> dict[str, Any]:
    if not uri.startswith(_PREFIX):
        raise ValueError(f"schema reference {uri} is outside the bundled Sunbird schemas")
    return _load(uri[len(_PREFIX) :])


# Warning-only checks per second: about 31 us each on the development machine (building the event's
# object, then validating it; measured on the sample events), so at most ~3% of one core on a busy hub.
_WARN_CHECKS_PER_S = 1000.0


class SchemaChecker:
    """Checks events against the Sunbird pipeline's own v3 schemas, one validator per eid."""

    def __init__(self, checks_per_s: float = _WARN_CHECKS_PER_S) -> None:
        self._validators: dict[str, Callable[[Any], Any] | None] = {}
        self._rate = checks_per_s
        self._tokens = checks_per_s
        self._stamp = time.monotonic()

    def take_budget(self, wanted: int = 1) -> int:
        """How many of `wanted` warning-only checks fit the CPU budget now (token bucket, one second deep)."""
        if self._tokens < wanted:
            now = time.monotonic()
            self._tokens = min(self._rate, self._tokens + (now - self._stamp) * self._rate)
            self._stamp = now
        granted = min(wanted, int(self._tokens))
        self._tokens -= granted
        return granted

    def _validator(self, eid: str) -> Callable[[Any], Any] | None:
        if eid not in self._validators:
            name = f"{eid.lower()}.json"
            try:
                schema = _load(name)
            except (FileNotFoundError, OSError, ValueError):
                self._validators[eid] = None
            else:
                self._validators[eid] = fastjsonschema.compile(schema, handlers={"resource": _resolve})
        return self._validators[eid]

    def violation(self, event: dict[str, Any]) -> str | None:
        """A short reason the upstream pipeline would reject this event, or None."""
        eid = event.get("eid")
        if not isinstance(eid, str) or not eid.isalnum():
            return "eid is not a known Sunbird event type"
        validate = self._validator(eid)
        if validate is None:
            return f"eid {eid} has no Sunbird v3 schema (the pipeline drops it)"
        try:
            validate(event)
        except fastjsonschema.JsonSchemaValueException as exc:
            return f"{eid}: {exc.message}"
        except (RecursionError, TypeError, ValueError) as exc:
            return f"{eid}: cannot be checked ({type(exc).__name__})"
        return None
