"""The Share Telemetry archive ZIP: read it (manifest.json, one gzip envelope per batch) with the bomb guards, write it."""

from __future__ import annotations

import gzip
import json
import os
import re
import struct
import tempfile
import uuid
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..secrets import fsync_dir
from ..telemetry import batch_envelope
from .formats import _RATIO_FLOOR, ARCHIVE_ID, ExportReport, ShareBatch, _as_int, _fail, _loads, _size, log

if TYPE_CHECKING:
    from .reader import Reader

__all__ = ["read_archive", "write_archive"]

_ZIP_READ = 4096  # = zipfile MIN_READ_SIZE: keeps the compressed-bytes count close to what inflate consumed
_DRIVE = re.compile(r"^[A-Za-z]:")


class _CountingFile:
    """Read-only file wrapper that counts bytes read, so ZIP ratios use real input instead of header claims."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.count += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def seekable(self) -> bool:
        return True


_LOW_LEVEL = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    struct.error,
    ValueError,
    OverflowError,
    NotImplementedError,
    IndexError,
    KeyError,
    RuntimeError,
    OSError,
)


# ---- reading ----------------------------------------------------------------------------------------------


def _check_directory_size(r: Reader, f: BinaryIO) -> None:
    """Refuse a huge central directory before zipfile builds one object per entry (a memory attack)."""
    end_rec = getattr(zipfile, "_EndRecData", None)  # zipfile's own end-record parser (handles ZIP64)
    try:
        rec = end_rec(f) if end_rec else None
    except (OSError, ValueError, struct.error, zipfile.BadZipFile):
        rec = None  # ZipFile itself will say what is wrong
    finally:
        f.seek(0)
    if not rec:
        return
    entries, cd_size = rec[zipfile._ECD_ENTRIES_TOTAL], rec[zipfile._ECD_SIZE]  # type: ignore[attr-defined]  # zipfile's record offsets
    if entries > r.limits.max_entries or cd_size > r.limits.max_entries * 512:
        _fail(f"the ZIP has {entries} entries, more than the {r.limits.max_entries} limit (share.max_entries)")


def read_archive(r: Reader, f: BinaryIO) -> list[ShareBatch]:
    """The telemetry batches of a Share Telemetry archive ZIP, as listed by its manifest.json."""
    _check_directory_size(r, f)
    cf = _CountingFile(f)
    try:
        zf = zipfile.ZipFile(cf)
    except _LOW_LEVEL as exc:
        _fail(f"not a readable ZIP archive: it is truncated or corrupt ({exc})")
    with zf:
        try:
            infos = zf.infolist()
        except _LOW_LEVEL as exc:
            _fail(f"not a readable ZIP archive: it is truncated or corrupt ({exc})")
        if len(infos) > r.limits.max_entries:
            _fail(f"the ZIP has {len(infos)} entries, more than the {r.limits.max_entries} limit (share.max_entries)")
        by_name: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            _check_entry(info)
            if info.filename in by_name:
                _fail(f"the ZIP has two entries named {info.filename!r}; refusing an ambiguous archive")
            by_name[info.filename] = info
        if not by_name:
            _fail("the ZIP archive is empty")
        prefix = _manifest_prefix(r, by_name)
        manifest_name = prefix + "manifest.json"
        items = _manifest_items(r, _entry(r, zf, by_name[manifest_name], cf))
        used: set[str] = {manifest_name}
        batches: list[ShareBatch] = []
        expected_total: int | None = 0
        for n, item in items:
            mid = item.get("mid") if isinstance(item.get("mid"), str) and item.get("mid") else None
            file = item.get("file")
            if file is not None and not isinstance(file, str):
                _fail(f"manifest.json item {n}: 'file' is not a string")
            if file:
                _check_name(file, f"manifest.json item {n} names file {file!r}, which")
            label = f"batch {mid or file}"
            names = [nm for nm in (file, mid, f"{mid}.gz" if mid else None) if nm]
            if not names:
                _fail(f"manifest.json item {n} names neither a file nor a mid")
            entry = next((by_name[prefix + nm] for nm in names if prefix + nm in by_name), None)
            if entry is None or entry.is_dir():
                _fail(f"{label}: file {names[0]!r} listed in manifest.json is missing from the ZIP")
            if entry.filename in used:
                r.problems.append(f"manifest.json lists file {entry.filename!r} twice; read it once")
                continue
            used.add(entry.filename)
            expected = _as_int(item.get("eventsCount"))
            if expected is None:
                r.problems.append(f"{label}: manifest.json gives no eventsCount")
                expected_total = None
            elif expected_total is not None:
                expected_total += expected
            batches.append(r.batch(_entry(r, zf, entry, cf), label, mid, expected, "manifest.json"))
        r.manifest_events = expected_total
        extra = [nm for nm, i in by_name.items() if nm not in used and not i.is_dir()]
        if extra:
            r.problems.append(f"ignored {len(extra)} ZIP entries not listed in manifest.json (e.g. {extra[0]!r})")
        return batches


def _check_name(name: str, what: str) -> None:
    """Refuse names that could escape a directory if anyone ever extracted them (we never do)."""
    if "\x00" in name:
        _fail(f"{what} contains a NUL byte; refusing a hostile archive")
    if "\\" in name:
        _fail(f"{what} contains a backslash; refusing a possible path-traversal archive")
    if name.startswith("/") or _DRIVE.match(name):
        _fail(f"{what} is an absolute path; refusing a possible path-traversal archive")
    if ".." in name.split("/"):
        _fail(f"{what} contains '..'; refusing a path-traversal archive")


def _check_entry(info: zipfile.ZipInfo) -> None:
    what = f"ZIP entry {info.orig_filename!r}"
    _check_name(info.orig_filename, what)
    if info.flag_bits & 0x1:
        _fail(f"{what} is encrypted; Share Telemetry archives are never encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        _fail(
            f"{what} uses compression method {info.compress_type}; only stored and deflate are supported "
            "(re-create the ZIP with a standard tool)"
        )


def _manifest_prefix(r: Reader, by_name: dict[str, zipfile.ZipInfo]) -> str:
    if "manifest.json" in by_name:
        return ""
    nested = [nm for nm in by_name if nm.endswith("/manifest.json") and nm.count("/") == 1]
    if len(nested) == 1:
        prefix = nested[0][: -len("manifest.json")]
        r.problems.append(f"the archive's files are inside folder {prefix!r} (re-zipped?); read from there")
        return prefix
    _fail(
        "manifest.json is missing: this ZIP is not a Sunbird telemetry archive "
        "(expected manifest.json plus one gzip file per batch)"
    )


def _entry(r: Reader, zf: zipfile.ZipFile, info: zipfile.ZipInfo, cf: _CountingFile) -> bytes:
    """Read one entry in small streamed pieces, counting real input and output against the limits."""
    what = f"ZIP entry {info.filename!r}"
    lim = r.limits
    if info.file_size > lim.max_uncompressed_bytes - r.total_out:
        _fail(
            f"{what} declares {_size(info.file_size)} unpacked, over the "
            f"{_size(lim.max_uncompressed_bytes)} limit (share.max_uncompressed_bytes); refusing a zip bomb"
        )
    if info.file_size > _RATIO_FLOOR and info.file_size > lim.max_ratio * max(info.compress_size, 1):
        _fail(f"{what} declares a compression ratio over {lim.max_ratio} (share.max_ratio); refusing a zip bomb")
    out = bytearray()
    start = cf.count
    try:
        with zf.open(info) as fh:
            while chunk := fh.read(_ZIP_READ):
                out += chunk
                r.charge(len(chunk), cf.count - start, len(out), what)
    except _LOW_LEVEL as exc:
        _fail(f"{what} is corrupt or the ZIP is truncated ({exc})")
    return bytes(out)


def _manifest_items(r: Reader, data: bytes) -> list[tuple[int, dict[str, Any]]]:
    """Validate manifest.json and return its telemetry items (with their positions)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        _fail("manifest.json is not UTF-8 text")
    manifest = _loads(text, "manifest.json")
    if not isinstance(manifest, dict):
        _fail("manifest.json is not a JSON object")
    if manifest.get("id") != ARCHIVE_ID:
        _fail(f"manifest.json id is {manifest.get('id')!r}, expected {ARCHIVE_ID!r}: not a Sunbird telemetry archive")
    archive = manifest.get("archive")
    items = archive.get("items") if isinstance(archive, dict) else None
    if not isinstance(items, list):
        _fail("manifest.json has no archive.items list")
    assert isinstance(archive, dict)
    if len(items) > r.limits.max_entries:
        _fail(f"manifest.json lists {len(items)} items, more than the {r.limits.max_entries} limit (share.max_entries)")
    if _as_int(archive.get("count")) != len(items):
        r.problems.append(f"manifest.json archive.count is {archive.get('count')!r} but it lists {len(items)} items")
    out: list[tuple[int, dict[str, Any]]] = []
    for n, item in enumerate(items):
        if not isinstance(item, dict):
            _fail(f"manifest.json item {n} is not a JSON object")
        kind = item.get("objectType")
        if kind != "telemetry":
            r.problems.append(f"skipped manifest.json item {n} of type {kind!r}; only telemetry is imported")
            continue
        if item.get("contentEncoding") != "gzip":
            _fail(
                f"manifest.json item {n} ({item.get('mid') or item.get('file')!r}) has contentEncoding "
                f"{item.get('contentEncoding')!r}; only gzip is supported"
            )
        out.append((n, item))
    if not out:
        _fail("manifest.json lists no telemetry batches: nothing to import")
    return out


# ---- export ------------------------------------------------------------------------------------------------


def _event_objects(events: Sequence[bytes]) -> list[bytes]:
    """The events' original bytes, trimmed; each must be a JSON object, as a batch envelope holds."""
    parts = []
    for ev in events:
        raw = bytes(ev).strip(b" \t\r\n")
        if not (raw.startswith(b"{") and raw.endswith(b"}")):
            raise ValueError(f"event is not a JSON object: {raw[:40]!r}")
        parts.append(raw)
    return parts


def write_archive(
    out: Path, batches: Iterable[Sequence[bytes]], *, producer: dict[str, Any], device_id: str
) -> ExportReport:
    """Write a telemetry archive ZIP as the mobile app does, one batch in memory at a time, renamed in atomically."""
    out = Path(out)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    tmp = Path(tmp_name)
    items: list[dict[str, Any]] = []
    total = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for batch in batches:
                    if not batch:
                        continue
                    mid = str(uuid.uuid4())
                    now = datetime.now(UTC)
                    body = batch_envelope(_event_objects(batch), mid, device_id, now.strftime("%Y-%m-%dT%H:%M:%SZ"))
                    gz = gzip.compress(body, compresslevel=6, mtime=0)
                    info = zipfile.ZipInfo(mid, date_time=now.timetuple()[:6])
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    zf.writestr(info, gz)
                    items.append(
                        {
                            "file": mid,
                            "mid": mid,
                            "eventsCount": len(batch),
                            "size": len(gz),
                            "explodedSize": len(body),
                            "objectType": "telemetry",
                            "contentEncoding": "gzip",
                        }
                    )
                    total += len(batch)
                    del body, gz
                if not items:
                    raise ValueError("nothing to export: no events")
                now = datetime.now(UTC)
                manifest = {
                    "id": ARCHIVE_ID,
                    "ver": "1.0",
                    "ts": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    "producer": producer,
                    "archive": {"count": len(items), "items": items},
                }
                info = zipfile.ZipInfo("manifest.json", date_time=now.timetuple()[:6])
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                zf.writestr(info, json.dumps(manifest, separators=(",", ":"), ensure_ascii=False).encode())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(out.parent)
    mids = [i["mid"] for i in items]
    log.info("wrote share archive %s: %d batches, %d events", out, len(items), total)
    return ExportReport(out=out, batches=len(items), events=total, mids=mids, size=out.stat().st_size)
