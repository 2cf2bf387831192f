"""The event store: the one hand-over point between what comes in and what goes out.

This package is the only code that knows SQL or the schema. Everyone else uses the Store's
methods (add, take_batch, named queries) and the EventCursor for export.
"""

from .core import Store
from .delivery import Batch, Taken
from .devices import DeviceStory
from .export import EventCursor
from .migrations import SCHEMA_VERSION
from .queries import DeadLetter, DeviceSeen, LedgerEntry
from .receipts import Receipt
from .stats import AddResult, StoreStats
from .writes import LedgerRow

__all__ = [
    "SCHEMA_VERSION",
    "AddResult",
    "Batch",
    "DeadLetter",
    "DeviceSeen",
    "DeviceStory",
    "EventCursor",
    "LedgerEntry",
    "LedgerRow",
    "Receipt",
    "Store",
    "StoreStats",
    "Taken",
]
