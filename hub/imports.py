"""Share Telemetry import and export against the store: the import ledger, the admin HTTP paths and the CLI.

The file formats themselves live in `share.py`; this module decides what a file becomes in the store. An import
is all or nothing: the file is read and validated completely, every event goes through the device API's own
checks, and the events commit in one transaction together with the file's row in the `imports` ledger, so a
file imported twice (by sha256) adds nothing, and events that also came by the API are stored once (by `mid`).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import html
import json
import logging
import os
import sqlite3
import tempfile
import time
import unicodedata
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import orjson
from aiohttp import web
from aiohttp.multipart import BodyPartReader

from . import __version__
from .admin import AdminGate
from .config import Config
from .errors import HubError, ShareFileError, StoreClosed, StoreFull
from .ingest import answer_and_close, sunbird_error
from .schema import SchemaChecker
from .share import (
    FORMAT_ARCHIVE,
    FORMAT_ARRAY,
    FORMAT_ENVELOPE,
    FORMAT_GSA,
    FORMAT_NDJSON,
    ExportReport,
    ShareFile,
    ShareLimits,
    read_share_file,
    write_archive,
)
from .store import Store
from .telemetry import Checked, Quarantined, check_events

__all__ = [
    "EXPORT_PRODUCER",
    "ImportReport",
    "NothingToExport",
    "ShareService",
    "add_cli_commands",
    "export_archive",
    "parse_since",
]

T = TypeVar("T")
log = logging.getLogger(__name__)

EXPORT_PRODUCER = {"id": "telemetry-hub", "ver": __version__, "pid": "telemetry-hub"}

# Export batches: as many events as the mobile app puts in one batch, and about what upstream takes per request.
_EXPORT_BATCH_EVENTS = 200
_EXPORT_BATCH_BYTES = 1_000_000
_EXPORT_PAGE = 200  # rows read per query: the backlog is never loaded whole
_UPLOAD_CHUNK = 256 * 1024
_STREAM_CHUNK = 256 * 1024
_MAX_FILES_PER_UPLOAD = 20
_MAX_FIELD_BYTES = 4096  # the token and any other small form field
_MAX_REASONS = 20  # quarantine reasons kept in a report; the count is always exact
_MAX_NAME_CHARS = 120
_STALE_UPLOAD_S = 24 * 3600  # temp files a crash left behind are removed after this long

_FORMAT_NAMES = {
    FORMAT_ARCHIVE: "Sunbird telemetry archive (ZIP)",
    FORMAT_GSA: "legacy Sunbird .gsa export (SQLite)",
    FORMAT_ENVELOPE: "telemetry JSON (batch envelope)",
    FORMAT_ARRAY: "JSON array of events",
    FORMAT_NDJSON: "NDJSON (one event per line)",
}


class NothingToExport(HubError):
    """The export found no events matching what was asked; no file was written."""


# ---- the report ------------------------------------------------------------------------------------------------


def _iso(ms: int) -> str:
    """Epoch ms as local ISO 8601 with its offset (the Pi's clock and zone are what branch IT reads)."""
    return datetime.fromtimestamp(ms / 1000, timezone.utc).astimezone().isoformat(timespec="seconds")


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
        return (f"imported: {self.new} new event{'s' if self.new != 1 else ''}, "
                f"{self.duplicates} already in the hub, {self.quarantined} quarantined")

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
            out.append(f"schema warnings: {self.schema_warnings} events break the Sunbird v3 schema "
                       "(stored and forwarded anyway)")
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


# ---- the service (hub side) --------------------------------------------------------------------------------------


class _Refused(Exception):
    """An upload the hub will not take: HTTP status and a message for people."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ShareService:
    """Imports Share Telemetry files into the store and exports the backlog to an archive."""

    def __init__(self, store: Store, cfg: Config, *, admin: AdminGate, schema: SchemaChecker, hub_id: str) -> None:
        self.store = store
        self.cfg = cfg
        self.admin = admin
        self.schema = schema
        self.hub_id = hub_id
        self.limits: ShareLimits = cfg.share
        self.scratch = cfg.data_dir / "uploads"
        # One import at a time: a file's events sit in memory until committed, and a Pi has little of it.
        self._lock = asyncio.Lock()

    # ---- import ----------------------------------------------------------------------------------------------

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
        report.imported_at = _iso(now_ms)
        ledger = ("INSERT OR IGNORE INTO imports (sha256, name, imported_at, format, report) VALUES (?, ?, ?, ?, ?)",
                  (share.sha256, name, now_ms, share.format, json.dumps(report.to_json())))
        try:
            result = await self.store.add(checked, source=f"import:{name}", device=None, extra=[ledger])
        except (StoreFull, StoreClosed) as exc:
            return self._failed(report, f"{name}: the hub cannot store telemetry now: {exc}")
        except Exception as exc:  # the commit failed: nothing of the file is stored, say so rather than 500
            log.exception("import of %s failed in the store", name)
            return self._failed(report, f"{name}: the store refused the write ({type(exc).__name__}: {exc})")
        report.new, report.duplicates = result.new, result.duplicates
        await self._record_counts(report, now_ms)
        return report

    @staticmethod
    def _failed(report: ImportReport, error: str) -> ImportReport:
        return ImportReport(file=report.file, sha256=report.sha256, format=report.format, batches=report.batches,
                            manifest_events=report.manifest_events, found=report.found, problems=report.problems,
                            device=report.device, error=error)

    async def _seen(self, report: ImportReport, sha256: str | None = None) -> bool:
        """Fill the report from the ledger if this content was imported before."""
        rows = await self.store.fetchall("SELECT name, imported_at, format FROM imports WHERE sha256 = ?",
                                         (sha256 or report.sha256,))
        if not rows:
            return False
        first_name, at_ms, fmt = rows[0]
        report.already_imported = True
        report.imported_at = _iso(int(at_ms))
        report.imported_as = first_name
        report.format = fmt
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
            part = check_events(items, max_event_bytes=self.cfg.limits.max_event_bytes, schema=self.schema,
                                strict=self.cfg.store.strict_schema)
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
        body = json.dumps(report.to_json())

        async def job(db: aiosqlite.Connection) -> None:
            await db.execute("UPDATE imports SET report = ? WHERE sha256 = ? AND imported_at = ?",
                             (body, report.sha256, imported_ms))

        try:
            await self.store.write(job)
        except Exception as exc:  # the events are stored; only the ledger's copy of the counts is stale
            log.warning("import %s: could not record the final counts in the ledger: %s", report.file, exc)

    async def imports(self, limit: int = 200) -> list[dict[str, Any]]:
        """The ledger, newest first."""
        rows = await self.store.fetchall(
            "SELECT sha256, name, imported_at, format, report FROM imports ORDER BY imported_at DESC, rowid DESC "
            "LIMIT ?", (limit,))
        out = []
        for sha256, name, at_ms, fmt, body in rows:
            try:
                report = json.loads(body)
            except ValueError:
                report = None
            out.append({"sha256": sha256, "name": name, "imported_at": _iso(int(at_ms)), "imported_at_ms": at_ms,
                        "format": fmt, "report": report})
        return out

    # ---- HTTP ------------------------------------------------------------------------------------------------

    def routes(self) -> list[web.RouteDef]:
        """The admin import/export paths, for the composition root to mount."""
        return [
            web.get("/import", self.form_page),
            web.post("/import", self.upload_page),
            web.post("/admin/import", self.upload_json),
            web.get("/admin/imports", self.list_imports),
            web.get("/admin/export", self.export_http),
        ]

    async def form_page(self, request: web.Request) -> web.Response:
        """The upload form for a phone's browser."""
        return _html_response(200, "Import telemetry files", _FORM)

    async def upload_page(self, request: web.Request) -> web.Response:
        """The form's target: the per-file reports as a page (JSON if the client asks only for JSON)."""
        accept = request.headers.get("Accept", "")
        if "application/json" in accept and "text/html" not in accept:
            return await self.upload_json(request)
        try:
            reports = await self._upload(request)
        except _Refused as exc:
            response = _html_response(exc.status, "Import refused", _refused_html(exc.message))
            return await answer_and_close(request, response) if exc.status == 408 else response
        return _html_response(200, "Import report", _reports_html(reports))

    async def upload_json(self, request: web.Request) -> web.Response:
        """POST multipart files (admin token): a JSON list of per-file reports."""
        try:
            reports = await self._upload(request)
        except _Refused as exc:
            response = sunbird_error(exc.status, exc.message)
            return await answer_and_close(request, response) if exc.status == 408 else response
        return web.Response(body=orjson.dumps([r.to_json() for r in reports]), content_type="application/json")

    async def _upload(self, request: web.Request) -> list[ImportReport]:
        """Stream each uploaded file to a temp file (size-capped), then import them one by one; temp files go."""
        authorised = self.admin.check(request)
        if not request.content_type.startswith("multipart/"):
            raise _Refused(400, "send the files as multipart/form-data, one or more 'file' fields "
                                "(curl -F file=@archive.zip)")
        problem = self.store.space_problem()
        if problem:
            raise _Refused(503, f"the hub cannot store telemetry now: {problem}")
        saved: list[tuple[Path, str]] = []
        try:
            await asyncio.to_thread(self._prepare_scratch)
            try:
                reader = await request.multipart()
                while (part := await self._arrives(reader.next())) is not None:
                    if not isinstance(part, BodyPartReader):
                        raise _Refused(400, "nested multipart bodies are not supported")
                    if part.name == "file" and part.filename is not None:
                        if not part.filename:
                            await part.release()  # a file input left empty: browsers send filename=""
                            continue
                        if not authorised:
                            raise _Refused(401, "missing admin token: send it before the files, as the form field "
                                                "'token' or as 'Authorization: Bearer <token>'")
                        if len(saved) >= _MAX_FILES_PER_UPLOAD:
                            raise _Refused(413, f"more than {_MAX_FILES_PER_UPLOAD} files in one upload; "
                                                "send them in smaller groups")
                        name = clean_name(part.filename)
                        saved.append((await self._save(part, name), name))
                    else:
                        value = await _small_field(part, self._arrives)
                        if part.name == "token" and not authorised:
                            authorised = self.admin.allows(value.strip())
                            if not authorised:
                                raise _Refused(401, "wrong admin token: nothing was imported (the token is in "
                                                    "<data dir>/admin-token on the hub)")
            except (ValueError, AssertionError) as exc:  # aiohttp's words for a malformed multipart body
                raise _Refused(400, f"the upload is not valid multipart/form-data ({exc})") from None
            except OSError as exc:
                raise _Refused(507, f"cannot save the upload in {self.scratch}: {exc.strerror or exc}") from None
            if not authorised:
                raise _Refused(401, "missing admin token: send it as the form field 'token' "
                                    "or as 'Authorization: Bearer <token>'")
            if not saved:
                raise _Refused(400, "no file was sent: choose one or more files (form field 'file')")
            return [await self.import_file(path, name) for path, name in saved]
        finally:
            for path, _ in saved:
                path.unlink(missing_ok=True)

    async def _arrives(self, step: Awaitable[T]) -> T:
        """One step of reading an upload; a body that stops arriving is cut off, however large the file.

        A slow phone on the branch Wi-Fi may take minutes for a big archive, so there is no limit on
        the whole upload, only on silence: server.client_timeout without a byte.
        """
        idle = self.cfg.server.client_timeout
        try:
            return await asyncio.wait_for(step, idle)
        except TimeoutError:
            raise _Refused(408, f"the upload stopped arriving (nothing for {idle:g} s, server.client_timeout); "
                                "nothing was imported: send the file again") from None

    def _prepare_scratch(self) -> None:
        """Create the scratch folder and remove temp files a crash left behind."""
        self.scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        cutoff = time.time() - _STALE_UPLOAD_S
        for entry in self.scratch.iterdir():  # the folder is ours alone: uploads and exports in the making
            try:
                if entry.is_file() and entry.stat().st_mtime < cutoff:
                    entry.unlink()
            except OSError:
                pass

    async def _save(self, part: BodyPartReader, name: str) -> Path:
        limit = self.limits.max_file_bytes
        fd, tmp = tempfile.mkstemp(dir=self.scratch, prefix=".upload-", suffix=".part")
        path = Path(tmp)
        size = 0
        try:
            with os.fdopen(fd, "wb") as fh:
                while chunk := await self._arrives(part.read_chunk(_UPLOAD_CHUNK)):
                    size += len(chunk)
                    if size > limit:
                        raise _Refused(413, f"{name} is over the {limit // 2**20} MiB limit for one file "
                                            "(share.max_file_bytes); nothing was imported")
                    await asyncio.to_thread(fh.write, chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    async def list_imports(self, request: web.Request) -> web.Response:
        """GET the import ledger (admin token), newest first."""
        if not self.admin.check(request):
            return sunbird_error(401, "missing or wrong admin token: send 'Authorization: Bearer <token>'")
        try:
            limit = max(1, min(int(request.query.get("limit", "200")), 10_000))
        except ValueError:
            return sunbird_error(400, "limit must be a whole number")
        return web.Response(body=orjson.dumps(await self.imports(limit)), content_type="application/json")

    async def export_http(self, request: web.Request) -> web.StreamResponse:
        """GET a telemetry archive of the backlog (admin token); `pending=1` (default) or `all=1`, `since=`."""
        if not self.admin.check(request):
            return sunbird_error(401, "missing or wrong admin token: send 'Authorization: Bearer <token>'")
        q = request.query
        pending = not _flag(q.get("all")) and _flag(q.get("pending", "1"))
        try:
            since_ms = parse_since(q["since"]) if q.get("since") else None
        except ValueError as exc:
            return sunbird_error(400, str(exc))
        await asyncio.to_thread(self._prepare_scratch)
        fd, tmp = tempfile.mkstemp(dir=self.scratch, prefix=".export-", suffix=".zip")
        os.close(fd)
        out = Path(tmp)
        try:
            report = await asyncio.to_thread(export_archive, self.store.path, out, hub_id=self.hub_id,
                                             pending=pending, since_ms=since_ms)
            fh = await asyncio.to_thread(open, out, "rb")
        except NothingToExport as exc:
            return sunbird_error(404, str(exc))
        except OSError as exc:
            return sunbird_error(507, f"cannot write the export in {self.scratch}: {exc.strerror or exc}")
        finally:
            out.unlink(missing_ok=True)  # an open file outlives its name; nothing is left behind
        stamp = datetime.now().strftime("%Y%m%d-%H%M")
        response = web.StreamResponse(headers={
            "Content-Type": "application/zip",
            "Content-Disposition": f'attachment; filename="telemetry-{stamp}.zip"',
            "X-Export-Events": str(report.events),
            "X-Export-Batches": str(report.batches),
            "Cache-Control": "no-store",
        })
        response.content_length = report.size
        try:
            await response.prepare(request)
            while chunk := await asyncio.to_thread(fh.read, _STREAM_CHUNK):
                await response.write(chunk)
            await response.write_eof()
        finally:
            fh.close()
        log.info("export over HTTP: %d events in %d batches (marks nothing delivered)", report.events, report.batches)
        return response


async def _small_field(part: BodyPartReader, arrives: Callable[[Awaitable[T]], Awaitable[T]]) -> str:
    data = bytearray()
    while chunk := await arrives(part.read_chunk(_MAX_FIELD_BYTES)):
        data += chunk
        if len(data) > _MAX_FIELD_BYTES:
            raise _Refused(413, f"form field {part.name!r} is over {_MAX_FIELD_BYTES} bytes")
    return data.decode("utf-8", "replace")


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


# ---- HTML (no scripts, no external assets: a phone on the branch Wi-Fi) ------------------------------------------

_CSS = """
body{font:18px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;padding:16px;color:#1b1b1b;
background:#f6f6f4;max-width:40rem;margin:auto}
h1{font-size:1.4rem;margin:.3rem 0 1rem}
label{display:block;font-weight:600;margin:1.1rem 0 .35rem}
input,button{font:inherit;box-sizing:border-box;width:100%}
input[type=password]{min-height:3rem;padding:.5rem .7rem;border:2px solid #888;border-radius:8px;background:#fff}
input[type=file]{min-height:3rem;padding:.6rem;border:2px dashed #888;border-radius:8px;background:#fff}
button,.button{display:block;min-height:3.2rem;margin-top:1.4rem;border:0;border-radius:8px;background:#0b5cad;
color:#fff;font-weight:700;text-align:center;text-decoration:none;line-height:3.2rem}
.hint{color:#555;font-size:.95rem}
.file{background:#fff;border-radius:10px;padding:.8rem 1rem;margin:1rem 0;border-left:8px solid #888;
overflow-wrap:anywhere}
.file.ok{border-color:#1e7d32}.file.seen{border-color:#8a6d00}.file.failed{border-color:#b3261e}
.file h2{font-size:1.1rem;margin:0 0 .3rem}
.status{font-weight:700}
.file ul{padding-left:1.1rem;margin:.4rem 0 0;font-size:.95rem}
"""

_FORM = """
<h1>Import telemetry files</h1>
<p class="hint">Choose the files students sent you (by WhatsApp, e-mail or USB): the <b>.zip</b> from the Sunbird
app's <i>Share Telemetry</i>, an old <b>.gsa</b> file, or telemetry JSON. Renamed files are fine: the hub looks
inside. A file imported before adds nothing.</p>
<form method="post" action="/import" enctype="multipart/form-data">
<label for="token">Admin token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required>
<label for="file">Telemetry files</label>
<input id="file" name="file" type="file" multiple required>
<button id="submit" type="submit">Import</button>
</form>
"""


def _html_response(status: int, title: str, body: str) -> web.Response:
    page = (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)} - telemetry-hub</title><style>{_CSS}</style></head>"
        f"<body>{body}<p><a href=\"/\">&larr; Back to the hub's status</a></p></body></html>\n"
    )
    return web.Response(status=status, text=page, content_type="text/html", headers={
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
                                   "frame-ancestors 'none'",
    })


def _reports_html(reports: Sequence[ImportReport]) -> str:
    e = html.escape
    failed = sum(1 for r in reports if not r.ok)
    parts = [f"<h1>Import report: {len(reports)} file{'s' if len(reports) != 1 else ''}"
             f"{f', {failed} failed' if failed else ''}</h1>"]
    for r in reports:
        kind = "failed" if r.error else "seen" if r.already_imported else "ok"
        items = "".join(f"<li>{e(line)}</li>" for line in r.details())
        parts.append(f'<section class="file {kind}"><h2>{e(r.file)}</h2>'
                     f'<div class="status">{e(r.headline())}</div><ul>{items}</ul></section>')
    parts.append('<a class="button" href="/import">Import more files</a>')
    return "".join(parts)


def _refused_html(message: str) -> str:
    return (f"<h1>Nothing was imported</h1><section class=\"file failed\"><div class=\"status\">"
            f"{html.escape(message)}</div></section><a class=\"button\" href=\"/import\">Back</a>")


# ---- export (shared by the hub and the CLI) ---------------------------------------------------------------------


def parse_since(value: str) -> int:
    """`--since` as epoch ms: digits are epoch ms; else an ISO date or time (local time when no zone is given)."""
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"since: {value!r} is neither an ISO date/time (2024-05-01, 2024-05-01T08:00) "
                         "nor epoch milliseconds") from None
    if when.tzinfo is None:
        when = when.astimezone()  # naive means the hub's local time
    return int(when.timestamp() * 1000)


def _batches(con: sqlite3.Connection, *, pending: bool, since_ms: int | None, counter: list[int],
             batch_events: int, batch_bytes: int) -> Iterator[list[bytes]]:
    """Events in store order, a page of rows at a time, cut into batches by count and size."""
    (upper,) = con.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()  # events arriving now wait
    where = ["seq > ?", "seq <= ?"]
    if pending:
        where.append("delivered_at IS NULL")
    if since_ms is not None:
        where.append("received_at >= ?")
    sql = f"SELECT seq, raw FROM stored_events WHERE {' AND '.join(where)} ORDER BY seq LIMIT {_EXPORT_PAGE}"
    last = 0
    batch: list[bytes] = []
    size = 0
    while True:
        params: list[Any] = [last, upper] + ([since_ms] if since_ms is not None else [])
        rows = con.execute(sql, params).fetchall()
        if not rows:
            break
        for seq, raw in rows:
            last = seq
            if batch and (len(batch) >= batch_events or size + len(raw) > batch_bytes):
                yield batch
                batch, size = [], 0
            batch.append(bytes(raw))
            size += len(raw)
            counter[0] += 1
    if batch:
        yield batch


def export_archive(db_path: Path, out: Path, *, hub_id: str, pending: bool = True, since_ms: int | None = None,
                   batch_events: int = _EXPORT_BATCH_EVENTS, batch_bytes: int = _EXPORT_BATCH_BYTES) -> ExportReport:
    """Write the store's events to a telemetry archive ZIP (blocking; run it in a thread). Marks nothing delivered.

    A read-only connection of its own, so the hub's writer and readers are never held up.
    """
    db_path = Path(db_path)
    if not db_path.exists():
        raise HubError(f"no hub database at {db_path}: give the data directory of a hub that has run (--data-dir)")
    con = sqlite3.connect(f"{db_path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        con.execute("PRAGMA busy_timeout=10000")
        counter = [0]
        batches = _batches(con, pending=pending, since_ms=since_ms, counter=counter,
                           batch_events=batch_events, batch_bytes=batch_bytes)
        try:
            return write_archive(Path(out), batches, producer=EXPORT_PRODUCER, device_id=hub_id)
        except ValueError:
            if counter[0]:
                raise
            what = "waiting for upstream" if pending else "kept"
            when = f" received since {_iso(since_ms)}" if since_ms is not None else ""
            raise NothingToExport(f"no events {what}{when}: nothing to export, no file written") from None
    except sqlite3.Error as exc:
        raise HubError(f"cannot read the hub database {db_path}: {exc}") from None
    finally:
        con.close()


# ---- CLI -------------------------------------------------------------------------------------------------------


def add_cli_commands(sub: Any) -> None:
    """Add `import` and `export` to the telemetry-hub command."""
    imp = sub.add_parser(
        "import", help="import Share Telemetry files (what students send) into the hub",
        description="Import Share Telemetry files: the app's .zip archive, a legacy .gsa, or telemetry JSON. "
                    "Straight into a data directory (default: the configured one), or through a running hub "
                    "(--url). A file imported before adds nothing.")
    _common(imp)
    imp.add_argument("files", nargs="+", metavar="FILE", help="files to import")
    imp.set_defaults(func=_cmd_import)

    exp = sub.add_parser(
        "export", help="write the backlog to a telemetry archive ZIP (to carry on a USB stick)",
        description="Write events to a telemetry archive ZIP that any telemetry-hub (or the Sunbird app) imports. "
                    "Marks nothing delivered: the events stay queued for upstream, which dedups by mid.")
    _common(exp)
    exp.add_argument("--out", "-o", required=True, metavar="FILE", help="the ZIP file to write")
    exp.add_argument("--since", metavar="WHEN",
                     help="only events received since then: ISO date/time (local time) or epoch ms")
    which = exp.add_mutually_exclusive_group()
    which.add_argument("--pending", dest="include", action="store_const", const="pending",
                       help="events not yet delivered upstream (the default)")
    which.add_argument("--all", dest="include", action="store_const", const="all",
                       help="also delivered events the hub still keeps")
    exp.set_defaults(func=_cmd_export, include="pending")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", default=argparse.SUPPRESS, help="TOML config file (optional)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--data-dir", help="the hub's data directory (default: from the config)")
    where.add_argument("--url", help="a running hub, e.g. http://192.168.1.10:9001")
    p.add_argument("--token", help="admin token for --url; write --token=VALUE if it starts with '-' "
                                   "(default: $TELEMETRY_HUB_ADMIN_TOKEN, else auth.admin_token_file, "
                                   "else <data dir>/admin-token)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def _cli_config(args: argparse.Namespace) -> Config:
    from .cli import _config, setup_logging

    cfg = _config(args)
    setup_logging("warning")  # stdout carries the report; only trouble goes to stderr
    return cfg


def _read_first_line(path: Path) -> str:
    try:
        return path.read_text("utf-8").strip()
    except OSError:
        return ""


def _admin_token(args: argparse.Namespace, cfg: Config) -> str:
    token = (args.token or os.environ.get("TELEMETRY_HUB_ADMIN_TOKEN", "")).strip()
    if not token and cfg.auth.admin_token_file:
        token = _read_first_line(Path(cfg.auth.admin_token_file))
    if not token:
        token = _read_first_line(cfg.data_dir / "admin-token")
    if not token:
        raise HubError("no admin token for --url: pass --token, set TELEMETRY_HUB_ADMIN_TOKEN, or run this on the "
                       f"hub (it reads {cfg.data_dir / 'admin-token'})")
    return token


def _hub_url(url: str, path: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url + path


def _http_error(url: str, status: int, body: bytes) -> HubError:
    try:
        doc = json.loads(body)
        message = doc["params"]["errmsg"] if isinstance(doc, dict) and isinstance(doc.get("params"), dict) else None
    except (ValueError, KeyError, TypeError):
        message = None
    return HubError(f"the hub at {url} answered {status}: {message or body[:200].decode('utf-8', 'replace')}")


def _cmd_import(args: argparse.Namespace) -> int:
    cfg = _cli_config(args)
    if args.url:
        reports = asyncio.run(_import_via_url(args.url, _admin_token(args, cfg), [Path(f) for f in args.files]))
    else:
        reports = asyncio.run(_import_local(cfg, [Path(f) for f in args.files]))
    if args.json:
        print(json.dumps([r.to_json() for r in reports], indent=2, ensure_ascii=False))
    else:
        for r in reports:
            print(f"{r.file}: {r.headline()}")
            for line in r.details():
                print(f"    {line}")
        failed = sum(1 for r in reports if not r.ok)
        print(f"{len(reports)} file{'s' if len(reports) != 1 else ''}, "
              f"{sum(r.new for r in reports)} new events, {failed} failed")
    return 1 if any(not r.ok for r in reports) else 0


async def _import_local(cfg: Config, files: list[Path]) -> list[ImportReport]:
    data_dir = cfg.data_dir
    db = data_dir / "hub.db"
    if not db.exists():
        raise HubError(f"no hub database at {db}: give the data directory of a hub that has run (--data-dir), "
                       "or a running hub (--url)")
    store = Store(db, cfg.store)
    await store.open()
    try:
        service = ShareService(store, cfg, admin=AdminGate(""), schema=SchemaChecker(),
                               hub_id=_read_first_line(data_dir / "hub-id"))
        return [await service.import_file(f, f.name) for f in files]
    finally:
        await store.close()


async def _import_via_url(url: str, token: str, files: list[Path]) -> list[ImportReport]:
    import aiohttp

    target = _hub_url(url, "/admin/import")
    reports: list[ImportReport | None] = []
    handles = []
    form = aiohttp.FormData()
    try:
        for f in files:
            try:
                fh = open(f, "rb")
            except OSError as exc:
                reports.append(ImportReport(file=clean_name(f.name),
                                            error=f"{f.name}: cannot read the file ({exc.strerror or exc})"))
                continue
            handles.append(fh)
            reports.append(None)
            form.add_field("file", fh, filename=f.name, content_type="application/octet-stream")
        if not handles:
            return [r for r in reports if r is not None]
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=600)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.post(target, data=form, headers={"Authorization": f"Bearer {token}"}) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise _http_error(url, resp.status, body)
        except aiohttp.ClientError as exc:
            raise HubError(f"cannot reach the hub at {url}: {exc}") from None
    finally:
        for fh in handles:
            fh.close()
    answered = iter(ImportReport.from_json(d) for d in json.loads(body))
    return [r if r is not None else next(answered) for r in reports]


def _cmd_export(args: argparse.Namespace) -> int:
    cfg = _cli_config(args)
    try:
        since_ms = parse_since(args.since) if args.since else None
    except ValueError as exc:
        raise HubError(str(exc)) from None
    out = Path(args.out)
    pending = args.include != "all"
    if args.url:
        events, batches, size = asyncio.run(_export_via_url(args.url, _admin_token(args, cfg), out, pending, since_ms))
    else:
        report = export_archive(cfg.data_dir / "hub.db", out, hub_id=_read_first_line(cfg.data_dir / "hub-id"),
                                pending=pending, since_ms=since_ms)
        events, batches, size = report.events, report.batches, report.size
    if args.json:
        print(json.dumps({"out": str(out), "events": events, "batches": batches, "bytes": size, "pending": pending}))
    else:
        print(f"wrote {out}: {events} events in {batches} batches ({size} bytes). Nothing was marked delivered: "
              "the hub still sends these events upstream, and duplicates are dropped by mid.")
    return 0


async def _export_via_url(url: str, token: str, out: Path, pending: bool,
                          since_ms: int | None) -> tuple[int, int, int]:
    import aiohttp

    query = {"pending": "1"} if pending else {"all": "1"}
    if since_ms is not None:
        query["since"] = str(since_ms)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=15, sock_read=600)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            try:
                async with aiohttp.ClientSession(timeout=timeout) as session:
                    async with session.get(_hub_url(url, "/admin/export"), params=query,
                                           headers={"Authorization": f"Bearer {token}"}) as resp:
                        if resp.status != 200:
                            raise _http_error(url, resp.status, await resp.read())
                        events = int(resp.headers.get("X-Export-Events", "0"))
                        batches = int(resp.headers.get("X-Export-Batches", "0"))
                        async for chunk in resp.content.iter_chunked(_STREAM_CHUNK):
                            fh.write(chunk)
            except aiohttp.ClientError as exc:
                raise HubError(f"cannot reach the hub at {url}: {exc}") from None
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return events, batches, out.stat().st_size
