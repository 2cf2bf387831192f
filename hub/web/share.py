"""Share Telemetry over HTTP: the upload form, the admin import and export paths (admin token required)."""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import orjson
from aiohttp import web
from aiohttp.multipart import BodyPartReader

from ..config import Config
from ..share import Importer, ImportReport, NothingToExport, clean_name, export_archive, parse_since
from . import pages
from .admin import AdminGate, BadParameter, query_number, token_refused
from .responses import answer_and_close, sunbird_error

__all__ = ["ShareHandlers"]

T = TypeVar("T")
log = logging.getLogger(__name__)

_UPLOAD_CHUNK = 256 * 1024
_STREAM_CHUNK = 256 * 1024
_MAX_FILES_PER_UPLOAD = 20
_MAX_FIELD_BYTES = 4096  # the token and any other small form field
_STALE_UPLOAD_S = 24 * 3600  # temp files a crash left behind are removed after this long


class _Refused(Exception):
    """An upload the hub will not take: HTTP status and a message for people."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ShareHandlers:
    """Uploads stream to a scratch folder in the data dir, then go through the one Importer."""

    def __init__(self, importer: Importer, cfg: Config, *, admin: AdminGate, db_path: Path, hub_id: str) -> None:
        self.importer = importer
        self.cfg = cfg
        self.admin = admin
        self.db_path = db_path
        self.hub_id = hub_id
        self.scratch = cfg.data_dir / "uploads"

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
        """The upload form for a phone's browser (signed in: no token field, the session's CSRF token instead)."""
        session = self.admin.session(request)
        return pages.import_form_page(session.csrf if session is not None else "")

    async def upload_page(self, request: web.Request) -> web.Response:
        """The form's target: the per-file reports as a page (JSON if the client asks only for JSON)."""
        accept = request.headers.get("Accept", "")
        if "application/json" in accept and "text/html" not in accept:
            return await self.upload_json(request)
        try:
            reports = await self._upload(request)
        except _Refused as exc:
            response = pages.import_refused_page(exc.status, exc.message)
            return await answer_and_close(request, response) if exc.status == 408 else response
        return pages.import_report_page(reports)

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
            raise _Refused(
                400, "send the files as multipart/form-data, one or more 'file' fields (curl -F file=@archive.zip)"
            )
        problem = self.importer.store.space_problem()
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
                            raise _Refused(
                                401,
                                "missing admin token: send it before the files, as the form field "
                                "'token' or as 'Authorization: Bearer <token>'",
                            )
                        if len(saved) >= _MAX_FILES_PER_UPLOAD:
                            raise _Refused(
                                413,
                                f"more than {_MAX_FILES_PER_UPLOAD} files in one upload; send them in smaller groups",
                            )
                        name = clean_name(part.filename)
                        saved.append((await self._save(part, name), name))
                    else:
                        value = await _small_field(part, self._arrives)
                        if part.name == "csrf" and not authorised:
                            authorised = self.admin.form_allows(request, value)
                            if not authorised:
                                raise _Refused(
                                    401,
                                    "this form is from an old or ended sign-in: nothing was imported. Open the "
                                    "import page again (sign in on the status page first)",
                                )
                        if part.name == "token" and not authorised:
                            authorised = self.admin.allows(value.strip())
                            if not authorised:
                                raise _Refused(
                                    401,
                                    "wrong admin token: nothing was imported (the token is in "
                                    "<data dir>/admin-token on the hub)",
                                )
            except (ValueError, AssertionError) as exc:  # aiohttp's words for a malformed multipart body
                raise _Refused(400, f"the upload is not valid multipart/form-data ({exc})") from None
            except OSError as exc:
                raise _Refused(507, f"cannot save the upload in {self.scratch}: {exc.strerror or exc}") from None
            if not authorised:
                raise _Refused(
                    401, "missing admin token: send it as the form field 'token' or as 'Authorization: Bearer <token>'"
                )
            if not saved:
                raise _Refused(400, "no file was sent: choose one or more files (form field 'file')")
            return [await self.importer.import_file(path, name) for path, name in saved]
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
            raise _Refused(
                408,
                f"the upload stopped arriving (nothing for {idle:g} s, server.client_timeout); "
                "nothing was imported: send the file again",
            ) from None

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
        limit = self.cfg.share.max_file_bytes
        fd, tmp = tempfile.mkstemp(dir=self.scratch, prefix=".upload-", suffix=".part")
        path = Path(tmp)
        size = 0
        try:
            with os.fdopen(fd, "wb") as fh:
                while chunk := await self._arrives(part.read_chunk(_UPLOAD_CHUNK)):
                    size += len(chunk)
                    if size > limit:
                        raise _Refused(
                            413,
                            f"{name} is over the {limit // 2**20} MiB limit for one file "
                            "(share.max_file_bytes); nothing was imported",
                        )
                    await asyncio.to_thread(fh.write, chunk)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    async def list_imports(self, request: web.Request) -> web.Response:
        """GET the import ledger (admin token), newest first."""
        if not self.admin.check(request):
            return token_refused(request)
        try:
            limit = int(query_number(request, "limit", 200, 1, 10_000))
        except BadParameter as exc:
            return sunbird_error(400, str(exc))
        return web.Response(body=orjson.dumps(await self.importer.imports(limit)), content_type="application/json")

    async def export_http(self, request: web.Request) -> web.StreamResponse:
        """GET a telemetry archive of the backlog (admin token); `pending=1` (default) or `all=1`, `since=`."""
        if not self.admin.check(request):
            return token_refused(request)
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
            report = await asyncio.to_thread(
                export_archive, self.db_path, out, hub_id=self.hub_id, pending=pending, since_ms=since_ms
            )
            fh = await asyncio.to_thread(open, out, "rb")
        except NothingToExport as exc:
            return sunbird_error(404, str(exc))
        except OSError as exc:
            return sunbird_error(507, f"cannot write the export in {self.scratch}: {exc.strerror or exc}")
        finally:
            out.unlink(missing_ok=True)  # an open file outlives its name; nothing is left behind
        stamp = datetime.now().strftime("%Y%m%d-%H%M")
        response = web.StreamResponse(
            headers={
                "Content-Type": "application/zip",
                "Content-Disposition": f'attachment; filename="telemetry-{stamp}.zip"',
                "X-Export-Events": str(report.events),
                "X-Export-Batches": str(report.batches),
                "Cache-Control": "no-store",
            }
        )
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


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


async def _small_field(part: BodyPartReader, arrives: Callable[[Awaitable[bytes]], Awaitable[bytes]]) -> str:
    data = bytearray()
    while chunk := await arrives(part.read_chunk(_MAX_FIELD_BYTES)):
        data += chunk
        if len(data) > _MAX_FIELD_BYTES:
            raise _Refused(413, f"form field {part.name!r} is over {_MAX_FIELD_BYTES} bytes")
    return data.decode("utf-8", "replace")
