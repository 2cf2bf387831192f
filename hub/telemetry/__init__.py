"""The Sunbird wire format: the raw-JSON splitter, envelopes, the hub's own event checks, Sunbird answers.

model: Event, Quarantined, Checked. rawjson: the one splitter. envelope: device bodies split, upstream batches
built. events: check_events. answers: success and error bodies.
"""

from __future__ import annotations

from .answers import error_body, refusal_words, success_body
from .envelope import batch_envelope, split_array, split_envelope
from .events import check_events, sqlite_text
from .model import Checked, Event, Quarantined
from .rawjson import Items, RawSplitter, Span, SplitError

__all__ = [
    "Checked",
    "Event",
    "Items",
    "Quarantined",
    "RawSplitter",
    "Span",
    "SplitError",
    "batch_envelope",
    "check_events",
    "error_body",
    "refusal_words",
    "split_array",
    "split_envelope",
    "sqlite_text",
    "success_body",
]
