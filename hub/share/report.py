"""What one imported file became, in words for branch IT and as JSON for scripts."""

from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .formats import FORMAT_ARCHIVE, FORMAT_ARRAY, FORMAT_ENVELOPE, FORMAT_GSA, FORMAT_NDJSON

__all__ = ["ImportReport", "clean_name", "format_name", "iso_time"]

_MAX_NAME_CHARS = 120

_FORMAT_NAMES = {
    FORMAT_ARCHIVE: "Sunbird telemetry archive (ZIP)",
    FORMAT_GSA: "legacy Sunbird .gsa export (SQLite)",
    FORMAT_ENVELOPE: "telemetry JSON (batch envelope)",
    FORMAT_ARRAY: "JSON array of events",
    FORMAT_NDJSON: "NDJSON (one event per line)",
}


def iso_time(ms: int) -> str:
    """Epoch ms as local ISO 8601 with its offset (the Pi's clock and zone are what branch IT reads)."""
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone().isoformat(timespec="seconds")


def _when(iso: str | None) -> str:
    if not iso:
        return "an earlier date"
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M %Z").strip()
    except ValueError:
        return iso


def format_name(fmt: str | None) -> str:
    """A share-file format in words, e.g. 'Sunbird telemetry archive (ZIP)'."""
    if not fmt:
        return "unknown format"
    base, gz, _ = fmt.partition("+gzip")
    name = _FORMAT_NAMES.get(base, base)
    return f"{name}, gzipped" if gz else name


@dataclass
class ImportReport:
    """What one file became: counts from the file, what the store made of them, or why nothing was imported."""

    file: str
    sha256: str | None = None
    format: str | None = None
    batches: int = 0
    manifest_events: int | None = None  # what the file says it holds (manifest / meta_data), if it says
    found: int = 0  # events actually in the file
    new: int = 0
    duplicates: int = 0
    quarantined: int = 0
    quarantine_reasons: list[str] = field(default_factory=list)  # the first few; `quarantined` is the count
    schema_warnings: int = 0
    problems: list[str] = field(default_factory=list)  # oddities that did not stop the import
    device: str | None = None
    already_imported: bool = False
    imported_at: str | None = None  # when this file was (first) imported
    imported_as: str | None = None  # the name it had then, for a file seen before
    error: str | None = None  # set when nothing was imported

    @property
    def ok(self) -> bool:
        """Whether the file is now in the store (imported now or before)."""
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        """The report as a JSON object."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImportReport:
        """A report read back from JSON (unknown keys ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def headline(self) -> str:
        """One line: what happened to the file."""
        if self.error:
            return f"FAILED, nothing was imported: {self.error}"
        if self.already_imported:
            named = f" as {self.imported_as!r}" if self.imported_as and self.imported_as != self.file else ""
            return f"already imported on {_when(self.imported_at)}{named}; nothing added"
        return (
            f"imported: {self.new} new event{'s' if self.new != 1 else ''}, "
            f"{self.duplicates} already in the hub, {self.quarantined} quarantined"
        )

    def details(self) -> list[str]:
        """The rest of the report, one fact per line, for people."""
        if self.error or self.already_imported:
            return [f"sha256: {self.sha256}"] if self.sha256 else []
        manifest = "not stated" if self.manifest_events is None else str(self.manifest_events)
        out = [
            f"format: {format_name(self.format)}, {self.batches} batch{'es' if self.batches != 1 else ''}",
            f"events: {self.found} found in the file; the file says {manifest}",
        ]
        if self.device:
            out.append(f"from device: {self.device}")
        if self.schema_warnings:
            out.append(
                f"schema warnings: {self.schema_warnings} events break the Sunbird v3 schema "
                "(stored and forwarded anyway)"
            )
        out += [f"problem: {p}" for p in self.problems]
        out += [f"quarantined: {r}" for r in self.quarantine_reasons]
        if self.quarantined > len(self.quarantine_reasons):
            out.append(f"quarantined: ... and {self.quarantined - len(self.quarantine_reasons)} more")
        out.append(f"sha256: {self.sha256}")
        return out


def clean_name(name: str | None) -> str:
    """A file name fit to show and to record: no folders, no control characters, not too long."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c)[0] != "C").strip()
    if len(base) > _MAX_NAME_CHARS:
        base = base[: _MAX_NAME_CHARS - 3] + "..."
    return base or "unnamed file"
