"""Share Telemetry import into the store: what a file becomes, decided once for the HTTP upload and the CLI.

An import is all or nothing: the file is read and validated completely, every event goes through the
device API's own checks, and the events commit in one transaction together with the file's row in the
import ledger, so a file imported twice (by sha256) adds nothing, and events that also came by the API
are stored once (by `mid`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import orjson

from ..config import Config
from ..errors import ShareFileError, StoreClosed, StoreFull, StoreUnavailable
from ..schema import SchemaChecker
from ..store import Store
from ..telemetry import Checked, Quarantined, check_events
from .formats import ShareFile, ShareLimits
from .reader import read_share_file
from .report import ImportReport, clean_name, iso_time

__all__ = ["Importer"]

log = logging.getLogger(__name__)

_MAX_REASONS = 20  # quarantine reasons kept in a report; the count is always exact


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            h.update(chunk)
    return h.hexdigest()


def _parse(raw: bytes) -> tuple[Any, str | None]:
    """An event's JSON (orjson, else the stdlib for what orjson refuses, e.g. big integers), or why not."""
    try:
        return orjson.loads(raw), None
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(raw, parse_constant=_no_constant), None
    except (ValueError, RecursionError) as exc:
        return None, f"is not valid JSON ({exc})"


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


class Importer:
    """Imports Share Telemetry files into the store: all of a file in one commit with its ledger row, or nothing."""

    def __init__(self, store: Store, cfg: Config, *, schema: SchemaChecker) -> None:
        self.store = store
        self.cfg = cfg
        self.schema = schema
        self.limits: ShareLimits = cfg.share
        # One import at a time: a file's events sit in memory until committed, and a Pi has little of it.
        self._lock = asyncio.Lock()

    async def import_file(self, path: Path, name: str | None = None) -> ImportReport:
        """Import one file: all of its events in one commit with its ledger row, or nothing (report.error says why)."""
        path = Path(path)
        name = clean_name(name if name is not None else path.name)
        async with self._lock:
            report = await self._import(path, name)
        if report.error:
            log.warning("import refused: %s", report.error)
        else:
            log.info("import %s: %s", name, report.headline())
        return report

    async def _import(self, path: Path, name: str) -> ImportReport:
        report = ImportReport(file=name)
        try:
            report.sha256 = await asyncio.to_thread(_sha256, path)
        except OSError as exc:
            report.error = f"{name}: cannot read the file ({exc.strerror or exc})"
            return report
        if await self._seen(report):
            return report
        problem = self.store.space_problem()
        if problem:
            report.error = f"{name}: the hub cannot store telemetry now: {problem}"
            return report
        try:
            share, checked = await asyncio.to_thread(self._read_and_check, path)
        except ShareFileError as exc:
            report.error = f"{name}: {getattr(exc, 'reason', exc)}"  # the reader names our temp file; use theirs
            return report
        self._describe(report, share, checked)
        if share.sha256 != report.sha256 and await self._seen(report, share.sha256):
            return report  # the file changed while we read it, into one imported before
        report.sha256 = share.sha256
        now_ms = int(time.time() * 1000)
        report.imported_at = iso_time(now_ms)
        ledger = (share.sha256, name, now_ms, share.format, json.dumps(report.to_json()))
        try:
            result = await self.store.add(checked, source=f"import:{name}", device=None, ledger=ledger)
        except (StoreFull, StoreClosed, StoreUnavailable) as exc:  # the store logged the cause once
            return self._failed(report, f"{name}: the hub cannot store telemetry now: {exc}")
        except Exception as exc:  # the commit failed: nothing of the file is stored, say so rather than 500
            log.exception("import of %s failed in the store", name)
            return self._failed(report, f"{name}: the store refused the write ({type(exc).__name__}: {exc})")
        report.new, report.duplicates = result.new, result.duplicates
        await self._record_counts(report, now_ms)
        return report

    @staticmethod
    def _failed(report: ImportReport, error: str) -> ImportReport:
        return ImportReport(
            file=report.file,
            sha256=report.sha256,
            format=report.format,
            batches=report.batches,
            manifest_events=report.manifest_events,
            found=report.found,
            problems=report.problems,
            device=report.device,
            error=error,
        )

    async def _seen(self, report: ImportReport, sha256: str | None = None) -> bool:
        """Fill the report from the ledger if this content was imported before."""
        found = await self.store.read.find_import(sha256 or report.sha256 or "")
        if found is None:
            return False
        report.already_imported = True
        report.imported_at = iso_time(found.imported_at)
        report.imported_as = found.name
        report.format = found.format
        report.sha256 = sha256 or report.sha256
        return True

    def _read_and_check(self, path: Path) -> tuple[ShareFile, Checked]:
        """In a worker thread: read and validate the whole file, then run the device API's checks on each event."""
        share = read_share_file(path, self.limits)
        out = Checked()
        index = 0
        many = len(share.batches) > 1
        for n, batch in enumerate(share.batches):
            label = f"batch {batch.mid}: " if batch.mid else (f"batch {n + 1}: " if many else "")
            items, unparsed = [], {}
            for i, raw in enumerate(batch.events):
                obj, why = _parse(raw)
                if why is not None:
                    unparsed[i] = why
                items.append((obj, raw))
            part = check_events(
                items,
                max_event_bytes=self.cfg.limits.max_event_bytes,
                schema=self.schema,
                strict=self.cfg.store.strict_schema,
            )
            out.events.extend(part.events)
            for q in part.quarantined:
                reason = f"event {q.index} {unparsed[q.index]}" if q.index in unparsed else q.reason
                out.quarantined.append(Quarantined(index + q.index, label + reason, q.raw, q.mid))
            for k, v in part.warnings.items():
                out.warnings[k] = out.warnings.get(k, 0) + v
            out.unchecked += part.unchecked
            index += len(batch.events)
        if share.device_id:
            # The file's device stands in only where an event names none: a hub's export carries the hub's id,
            # while its events belong to the students' devices that sent them.
            out.events = [e if e.did else e._replace(did=share.device_id) for e in out.events]
        return share, out

    @staticmethod
    def _describe(report: ImportReport, share: ShareFile, checked: Checked) -> None:
        report.format = share.format
        report.batches = len(share.batches)
        report.manifest_events = share.manifest_events
        report.found = share.event_count
        report.device = share.device_id
        report.problems = list(share.problems)
        report.quarantined = len(checked.quarantined)
        report.quarantine_reasons = [q.reason for q in checked.quarantined[:_MAX_REASONS]]
        report.schema_warnings = sum(checked.warnings.values())

    async def _record_counts(self, report: ImportReport, imported_ms: int) -> None:
        """Put the committed counts into the ledger row (written before they were known, with the events)."""
        try:
            await self.store.update_import_report(report.sha256 or "", imported_ms, json.dumps(report.to_json()))
        except Exception as exc:  # the events are stored; only the ledger's copy of the counts is stale
            log.warning("import %s: could not record the final counts in the ledger: %s", report.file, exc)

    async def imports(self, limit: int = 200) -> list[dict[str, Any]]:
        """The ledger, newest first."""
        out = []
        for entry in await self.store.read.import_ledger(limit):
            try:
                report = json.loads(entry.report)
            except ValueError:
                report = None
            out.append(
                {
                    "sha256": entry.sha256,
                    "name": entry.name,
                    "imported_at": iso_time(entry.imported_at),
                    "imported_at_ms": entry.imported_at,
                    "format": entry.format,
                    "report": report,
                }
            )
        return out
