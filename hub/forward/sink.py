"""The seam between the delivery loop and a kind of upstream: what every sink must do.

The loop (loop.py) decides when to send, what to do with each outcome and how to retry; a sink
only turns a batch into a request, sends it and says what happened. So a second kind of upstream
(Kafka for a regional tier, say) is one new class here, not a copy of the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ..store import Batch

__all__ = ["Encoded", "Outcome", "Sink"]

# The kinds of outcome, and what the loop does with each:
#   ok          upstream has the batch: record it delivered
#   auth        the key is refused: wait for a new key, keep everything
#   too-large   halve the batch (one event: dead letter)
#   bad-request split the batch until the refused events stand alone, then dead-letter them
#               (also a request the hub could not even build from the batch: status None)
#   throttled   wait (Retry-After if given), then the same batch again
#   server      back off, then the same batch again
#   network     the link is down: wait for the probe or the backoff, then the same batch again
#   intercepted a 2xx that is not upstream's acknowledgement (captive portal, data-pack page, proxy):
#               nothing is delivered; back off, then the same batch again
#   moved       a 3xx: not followed (the key must not go elsewhere); back off long, the same batch again
#   error       the request failed in the hub in an unexpected way: back off, the same batch again
OUTCOME_KINDS = (
    "ok", "auth", "too-large", "bad-request", "throttled", "server", "network", "intercepted", "moved", "error",
)  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    """The result of one upstream request, classified."""

    kind: str  # one of OUTCOME_KINDS
    status: int | None = None
    message: str = ""
    retry_after: float | None = None


@dataclass(frozen=True)
class Encoded:
    """A batch encoded for one sink, ready to send (credentials are added at send time)."""

    batch: Batch
    rows: Sequence[tuple[int, str, bytes]]
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Sink(Protocol):
    """One kind of upstream. Implementations: sunbird_http.SunbirdHttpSink."""

    name: str
    # Largest encoded request upstream takes, and largest batch of event JSON to put in one.
    max_request_bytes: int
    max_json_bytes: int

    def describe(self) -> str:
        """Where this sink delivers, fit for logs and the status page (no credentials)."""
        ...

    def credentials_stamp(self) -> object:
        """Changes whenever the credentials do (the loop retries at once after an auth refusal)."""
        ...

    async def start(self) -> None:
        """Open connections or sessions."""
        ...

    async def close(self) -> None:
        """Close them; a batch in flight has been answered or abandoned by then."""
        ...

    async def encode(self, batch: Batch, rows: Sequence[tuple[int, str, bytes]]) -> Encoded:
        """The request for this batch; the same batch must always carry the same msgid."""
        ...

    async def send(self, encoded: Encoded) -> tuple[Outcome, int]:
        """Send one batch; the classified outcome and the bytes that went on the wire."""
        ...

    async def probe(self) -> bool:
        """Whether upstream answers at all (any answer: the link works)."""
        ...
