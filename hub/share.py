"""Share Telemetry files (archive ZIP, legacy .gsa, plain JSON): read them without trusting them, write the app's ZIP."""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
import re
import sqlite3
import stat
import struct
import tempfile
import time
import uuid
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from json.decoder import scanstring
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from .config import ShareConfig
from .errors import ShareFileError

__all__ = [
    "ARCHIVE_ID",
    "FORMAT_ARCHIVE",
    "FORMAT_ARRAY",
    "FORMAT_ENVELOPE",
    "FORMAT_GSA",
    "FORMAT_NDJSON",
    "ExportReport",
    "ShareBatch",
    "ShareFile",
    "ShareLimits",
    "read_share_file",
    "write_archive",
]

log = logging.getLogger(__name__)

MiB = 1024 * 1024
ARCHIVE_ID = "sunbird.data.archive"
FORMAT_ARCHIVE = "sunbird-archive-zip"
FORMAT_GSA = "gsa"
FORMAT_ENVELOPE = "envelope-json"
FORMAT_ARRAY = "event-array-json"
FORMAT_NDJSON = "ndjson"

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_GZIP_MAGIC = b"\x1f\x8b"
_RATIO_FLOOR = 1 * MiB  # ratios are judged only past this much output: tiny inputs compress absurdly well
_ZIP_READ = 4096  # = zipfile MIN_READ_SIZE: keeps the compressed-bytes count close to what inflate consumed
_GZ_IN = 16 * 1024
_GZ_OUT = 256 * 1024
_HASH_READ = 1 * MiB
_SQLITE_SECONDS = 120.0  # a hostile schema (views, huge overflow chains) must not hang the import
_WS = re.compile(r"[ \t\n\r]*")
_DRIVE = re.compile(r"^[A-Za-z]:")


# The limits are the [share] config section itself: one set of defaults, in config.py.
ShareLimits = ShareConfig


@dataclass
class ShareBatch:
    """One batch of a share file; events are the original JSON bytes so nothing is lost in re-serialising."""

    mid: str | None
    events: list[bytes]
    expected_count: int | None = None


@dataclass
class ShareFile:
    """A fully validated share file: the caller may commit all of it or nothing."""

    path: Path
    sha256: str
    format: str
    batches: list[ShareBatch]
    manifest_events: int | None = None
    device_id: str | None = None
    export_id: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def event_count(self) -> int:
        """Total events found, for reports."""
        return sum(len(b.events) for b in self.batches)


@dataclass
class ExportReport:
    """What write_archive produced, for the audit log and the admin page."""

    out: Path
    batches: int
    events: int
    mids: list[str]
    size: int


class _Bad(Exception):
    """Internal: the file is unusable; the reason becomes the ShareFileError message."""


def _fail(reason: str) -> NoReturn:
    raise _Bad(reason)


def _size(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB else f"{n} bytes"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _json_reason(exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return "it is nested too deeply"
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return str(exc)


def _loads(text: str, what: str) -> Any:
    """Parse a small JSON document (manifest, envelope fields) with NaN/Infinity refused."""
    try:
        obj, end = _DECODER.raw_decode(text, _WS.match(text, 0).end())
        if _WS.match(text, end).end() != len(text):
            _fail(f"{what} is not valid JSON (extra data after the value at character {end})")
        return obj
    except (ValueError, RecursionError) as exc:
        _fail(f"{what} is not valid JSON ({_json_reason(exc)})")


def _as_int(value: Any) -> int | None:
    if type(value) is int:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def _txt(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class _JsonScan:
    """Walk a JSON document's top level to slice out each event's original text without re-serialising it."""

    def __init__(self, text: str, max_items: int) -> None:
        self.text = text
        self.max_items = max_items

    def ws(self, i: int) -> int:
        return _WS.match(self.text, i).end()

    def expect(self, i: int, what: str) -> NoReturn:
        got = self.text[i : i + 1] or "end of data"
        raise json.JSONDecodeError(f"Expecting {what}, found {got!r}", self.text, i)

    def array(self, i: int) -> tuple[list[bytes], int]:
        """Elements of the array at text[i] == '[' as raw bytes, and the index after ']'."""
        text = self.text
        items: list[bytes] = []
        i = self.ws(i + 1)
        if text.startswith("]", i):
            return items, i + 1
        while True:
            _, end = _DECODER.raw_decode(text, i)
            items.append(text[i:end].encode())
            if len(items) > self.max_items:
                _fail(f"holds more than {self.max_items} events (share.max_events)")
            i = self.ws(end)
            if text.startswith(",", i):
                i = self.ws(i + 1)
            elif text.startswith("]", i):
                return items, i + 1
            else:
                self.expect(i, "',' or ']'")

    def object(self, i: int) -> tuple[int, dict[str, tuple[int, int]], list[bytes] | None]:
        """Top-level fields of the object at text[i] == '{' as spans, plus the raw 'events' elements if an array."""
        text = self.text
        fields: dict[str, tuple[int, int]] = {}
        events: list[bytes] | None = None
        i = self.ws(i + 1)
        if text.startswith("}", i):
            return i + 1, fields, events
        while True:
            if not text.startswith('"', i):
                self.expect(i, "a property name in double quotes")
            key, i = scanstring(text, i + 1, True)
            i = self.ws(i)
            if not text.startswith(":", i):
                self.expect(i, "':'")
            i = self.ws(i + 1)
            if key == "events" and text.startswith("[", i):
                if events is not None:
                    _fail("has two 'events' arrays")
                events, end = self.array(i)
            else:
                _, end = _DECODER.raw_decode(text, i)
                fields[key] = (i, end)
            i = self.ws(end)
            if text.startswith(",", i):
                i = self.ws(i + 1)
            elif text.startswith("}", i):
                return i + 1, fields, events
            else:
                self.expect(i, "',' or '}'")

    def document(self) -> tuple[str, dict[str, tuple[int, int]], list[bytes]]:
        """Classify the text as envelope / array / ndjson and return its fields and raw events."""
        text = self.text
        i = self.ws(0)
        if i == len(text):
            _fail("holds no JSON (only whitespace)")
        if text.startswith("[", i):
            items, end = self.array(i)
            rest = self.ws(end)
            if rest != len(text):
                _fail(f"has unexpected data after the JSON array at character {rest}")
            return "array", {}, items
        if not text.startswith("{", i):
            _fail(f"is not JSON (starts with {text[i:i + 12]!r})")
        end, fields, events = self.object(i)
        rest = self.ws(end)
        if events is not None or "events" in fields:
            if events is None:
                _fail("has an 'events' field that is not an array")
            if rest != len(text):
                _fail(f"has unexpected data after the JSON envelope at character {rest}")
            return "envelope", fields, events
        items = [text[i:end].encode()]  # NDJSON: one JSON value per line, the first already scanned
        i = rest
        while i < len(text):
            _, end = _DECODER.raw_decode(text, i)
            items.append(text[i:end].encode())
            if len(items) > self.max_items:
                _fail(f"holds more than {self.max_items} events (share.max_events)")
            i = self.ws(end)
        return "ndjson", {}, items

    def field(self, fields: dict[str, tuple[int, int]], key: str) -> Any:
        if key not in fields:
            return None
        start, _ = fields[key]
        return _DECODER.raw_decode(self.text, start)[0]


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


class _Reader:
    """One read of one file: running totals for the bomb checks plus what the file says about itself."""

    def __init__(self, path: Path, limits: ShareLimits) -> None:
        self.path = path
        self.limits = limits
        self.file_size = 0
        self.total_out = 0
        self.total_events = 0
        self.problems: list[str] = []
        self.manifest_events: int | None = None
        self.device_ids: set[str] = set()
        self.device_id: str | None = None
        self.export_id: str | None = None

    def read(self) -> ShareFile:
        lim = self.limits
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not hang us
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                _fail("it is not a regular file")
            if st.st_size > lim.max_file_bytes:
                _fail(f"the file is {_size(st.st_size)}, over the {_size(lim.max_file_bytes)} limit "
                      "(share.max_file_bytes); split the export or raise the limit")
            sha256, head = self._hash(f)
            if self.file_size == 0:
                _fail("the file is empty")
            f.seek(0)
            if head.startswith(_ZIP_MAGIC):
                fmt, batches = FORMAT_ARCHIVE, self._read_zip(f)
            elif head.startswith(_SQLITE_MAGIC):
                fmt, batches = FORMAT_GSA, self._read_gsa()
            else:
                fmt, batches = self._read_plain(f.read(self.file_size + 1), head)
        if self.device_id is None and len(self.device_ids) == 1:
            self.device_id = next(iter(self.device_ids))
        if not any(b.events for b in batches):
            self.problems.append("the file holds no events")
        mids = [b.mid for b in batches if b.mid]
        if len(set(mids)) != len(mids):
            dup = next(m for m in mids if mids.count(m) > 1)
            self.problems.append(f"several batches share the batch id {dup}; dedup by event mid, not by batch id")
        return ShareFile(path=self.path, sha256=sha256, format=fmt, batches=batches,
                         manifest_events=self.manifest_events, device_id=self.device_id,
                         export_id=self.export_id, problems=self.problems)

    def _hash(self, f: BinaryIO) -> tuple[str, bytes]:
        h = hashlib.sha256()
        head = b""
        while chunk := f.read(_HASH_READ):
            if not head:
                head = chunk[:16]
            h.update(chunk)
            self.file_size += len(chunk)
            if self.file_size > self.limits.max_file_bytes:
                _fail(f"the file is over the {_size(self.limits.max_file_bytes)} limit (share.max_file_bytes)")
        return h.hexdigest(), head

    def _charge(self, n: int, consumed: int, produced: int, what: str) -> None:
        """Count decompressed bytes as they appear; stop at the first sign of a bomb, whatever headers claim."""
        lim = self.limits
        self.total_out += n
        if self.total_out > lim.max_uncompressed_bytes:
            _fail(f"{what}: the file unpacks to more than {_size(lim.max_uncompressed_bytes)} "
                  "(share.max_uncompressed_bytes); refusing a possible zip bomb")
        if produced > _RATIO_FLOOR and produced > lim.max_ratio * max(consumed, 1):
            _fail(f"{what} expands more than {lim.max_ratio} times (share.max_ratio); refusing a zip bomb")
        if self.total_out > _RATIO_FLOOR and self.total_out > lim.max_ratio * self.file_size:
            _fail(f"{what}: the file unpacks to more than {lim.max_ratio} times its size "
                  "(share.max_ratio); refusing a zip bomb")

    def _gunzip(self, gz: bytes, what: str) -> bytes:
        """Streaming gunzip with the bomb checks; accepts multi-member gzip and trailing NUL padding."""
        out = bytearray()
        pos, n = 0, len(gz)
        try:
            while True:
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                buf = b""
                while not d.eof:
                    if not buf:
                        if pos >= n:
                            _fail(f"{what} is truncated (the gzip data ends early)")
                        buf = gz[pos : pos + _GZ_IN]
                        pos += len(buf)
                    chunk = d.decompress(buf, _GZ_OUT)
                    buf = d.unconsumed_tail
                    if chunk:
                        out += chunk
                        self._charge(len(chunk), pos - len(buf), len(out), what)
                rest = gz[pos - len(d.unused_data) :]
                if not rest.strip(b"\x00"):
                    return bytes(out)
                if not rest.startswith(_GZIP_MAGIC):
                    _fail(f"{what} has unexpected data after the gzip stream")
                pos = n - len(rest)
        except zlib.error as exc:
            _fail(f"{what} is corrupt gzip data ({exc})")

    def _text(self, data: bytes, what: str) -> str:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            _fail(f"{what} is not UTF-8 text (bad byte at offset {exc.start})")
        return text[1:] if text.startswith("\ufeff") else text

    def _scan(self, text: str, what: str) -> tuple[_JsonScan, str, dict[str, tuple[int, int]], list[bytes]]:
        scan = _JsonScan(text, self.limits.max_events - self.total_events)
        try:
            kind, fields, events = scan.document()
        except _Bad as exc:
            _fail(f"{what} {exc}")
        except (ValueError, RecursionError) as exc:
            _fail(f"{what} is not valid JSON ({_json_reason(exc)})")
        self.total_events += len(events)
        return scan, kind, fields, events

    def _envelope_ids(self, scan: _JsonScan, fields: dict[str, tuple[int, int]]) -> str | None:
        """The envelope's batch msgid (params.msgid, else top-level mid); also notes params.did."""
        params = scan.field(fields, "params")
        msgid = did = None
        if isinstance(params, dict):
            msgid, did = params.get("msgid"), params.get("did")
        if isinstance(did, str) and did:
            self.device_ids.add(did)
        if not (isinstance(msgid, str) and msgid):
            msgid = scan.field(fields, "mid")
        return msgid if isinstance(msgid, str) and msgid else None

    def _batch(self, raw: bytes, what: str, mid: str | None, expected: int | None, source: str) -> ShareBatch:
        """Decode one archive/.gsa batch: gzip (maybe UTF-8-mangled) of an envelope; counts must match."""
        if raw[:2] == _GZIP_MAGIC:
            gz = raw
        else:
            try:
                gz = raw.decode("utf-8").encode("latin-1")
            except UnicodeError:
                gz = b""
            if gz[:2] != _GZIP_MAGIC:
                _fail(f"{what} is not gzip data (starts with {bytes(raw[:8])!r})")
        text = self._text(self._gunzip(gz, what), f"{what} (after gunzip)")
        scan, kind, fields, events = self._scan(text, what)
        if kind == "ndjson":
            _fail(f"{what} is not a telemetry envelope (a JSON object with an 'events' array)")
        if kind == "array":
            self.problems.append(f"{what} is a bare JSON array, not an envelope; read its elements as events")
        env_mid = self._envelope_ids(scan, fields)
        if mid and env_mid and env_mid != mid:
            self.problems.append(f"{what}: {source} says batch id {mid}, the batch itself says {env_mid}")
        if expected is not None and expected != len(events):
            _fail(f"{what}: {source} says {expected} events but the batch holds {len(events)}; "
                  "the file is inconsistent, so nothing was imported")
        return ShareBatch(mid=mid or env_mid, events=events, expected_count=expected)

    # ---- telemetry archive ZIP -------------------------------------------------------------------------

    def _check_directory_size(self, f: BinaryIO) -> None:
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
        entries, cd_size = rec[zipfile._ECD_ENTRIES_TOTAL], rec[zipfile._ECD_SIZE]  # type: ignore[attr-defined]
        if entries > self.limits.max_entries or cd_size > self.limits.max_entries * 512:
            _fail(f"the ZIP has {entries} entries, more than the {self.limits.max_entries} limit "
                  "(share.max_entries)")

    def _read_zip(self, f: BinaryIO) -> list[ShareBatch]:
        self._check_directory_size(f)
        cf = _CountingFile(f)
        try:
            zf = zipfile.ZipFile(cf)  # type: ignore[arg-type]
        except _LOW_LEVEL as exc:
            _fail(f"not a readable ZIP archive: it is truncated or corrupt ({exc})")
        with zf:
            try:
                infos = zf.infolist()
            except _LOW_LEVEL as exc:
                _fail(f"not a readable ZIP archive: it is truncated or corrupt ({exc})")
            if len(infos) > self.limits.max_entries:
                _fail(f"the ZIP has {len(infos)} entries, more than the {self.limits.max_entries} limit "
                      "(share.max_entries)")
            by_name: dict[str, zipfile.ZipInfo] = {}
            for info in infos:
                self._check_entry(info)
                if info.filename in by_name:
                    _fail(f"the ZIP has two entries named {info.filename!r}; refusing an ambiguous archive")
                by_name[info.filename] = info
            if not by_name:
                _fail("the ZIP archive is empty")
            prefix = self._manifest_prefix(by_name)
            manifest_name = prefix + "manifest.json"
            items = self._manifest_items(self._entry(zf, by_name[manifest_name], cf))
            used: set[str] = {manifest_name}
            batches: list[ShareBatch] = []
            expected_total: int | None = 0
            for n, item in items:
                mid = item.get("mid") if isinstance(item.get("mid"), str) and item.get("mid") else None
                file = item.get("file")
                if file is not None and not isinstance(file, str):
                    _fail(f"manifest.json item {n}: 'file' is not a string")
                if file:
                    self._check_name(file, f"manifest.json item {n} names file {file!r}, which")
                label = f"batch {mid or file}"
                names = [nm for nm in (file, mid, f"{mid}.gz" if mid else None) if nm]
                if not names:
                    _fail(f"manifest.json item {n} names neither a file nor a mid")
                info = next((by_name[prefix + nm] for nm in names if prefix + nm in by_name), None)
                if info is None or info.is_dir():
                    _fail(f"{label}: file {names[0]!r} listed in manifest.json is missing from the ZIP")
                if info.filename in used:
                    self.problems.append(f"manifest.json lists file {info.filename!r} twice; read it once")
                    continue
                used.add(info.filename)
                expected = _as_int(item.get("eventsCount"))
                if expected is None:
                    self.problems.append(f"{label}: manifest.json gives no eventsCount")
                    expected_total = None
                elif expected_total is not None:
                    expected_total += expected
                batches.append(self._batch(self._entry(zf, info, cf), label, mid, expected, "manifest.json"))
            self.manifest_events = expected_total
            extra = [nm for nm, i in by_name.items() if nm not in used and not i.is_dir()]
            if extra:
                self.problems.append(f"ignored {len(extra)} ZIP entries not listed in manifest.json "
                                     f"(e.g. {extra[0]!r})")
            return batches

    def _check_name(self, name: str, what: str) -> None:
        """Refuse names that could escape a directory if anyone ever extracted them (we never do)."""
        if "\x00" in name:
            _fail(f"{what} contains a NUL byte; refusing a hostile archive")
        if "\\" in name:
            _fail(f"{what} contains a backslash; refusing a possible path-traversal archive")
        if name.startswith("/") or _DRIVE.match(name):
            _fail(f"{what} is an absolute path; refusing a possible path-traversal archive")
        if ".." in name.split("/"):
            _fail(f"{what} contains '..'; refusing a path-traversal archive")

    def _check_entry(self, info: zipfile.ZipInfo) -> None:
        what = f"ZIP entry {info.orig_filename!r}"
        self._check_name(info.orig_filename, what)
        if info.flag_bits & 0x1:
            _fail(f"{what} is encrypted; Share Telemetry archives are never encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            _fail(f"{what} uses compression method {info.compress_type}; only stored and deflate are supported "
                  "(re-create the ZIP with a standard tool)")

    def _manifest_prefix(self, by_name: dict[str, zipfile.ZipInfo]) -> str:
        if "manifest.json" in by_name:
            return ""
        nested = [nm for nm in by_name if nm.endswith("/manifest.json") and nm.count("/") == 1]
        if len(nested) == 1:
            prefix = nested[0][: -len("manifest.json")]
            self.problems.append(f"the archive's files are inside folder {prefix!r} (re-zipped?); read from there")
            return prefix
        _fail("manifest.json is missing: this ZIP is not a Sunbird telemetry archive "
              "(expected manifest.json plus one gzip file per batch)")

    def _entry(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, cf: _CountingFile) -> bytes:
        """Read one entry in small streamed pieces, counting real input and output against the limits."""
        what = f"ZIP entry {info.filename!r}"
        lim = self.limits
        if info.file_size > lim.max_uncompressed_bytes - self.total_out:
            _fail(f"{what} declares {_size(info.file_size)} unpacked, over the "
                  f"{_size(lim.max_uncompressed_bytes)} limit (share.max_uncompressed_bytes); refusing a zip bomb")
        if info.file_size > _RATIO_FLOOR and info.file_size > lim.max_ratio * max(info.compress_size, 1):
            _fail(f"{what} declares a compression ratio over {lim.max_ratio} (share.max_ratio); refusing a zip bomb")
        out = bytearray()
        start = cf.count
        try:
            with zf.open(info) as fh:
                while chunk := fh.read(_ZIP_READ):
                    out += chunk
                    self._charge(len(chunk), cf.count - start, len(out), what)
        except _LOW_LEVEL as exc:
            _fail(f"{what} is corrupt or the ZIP is truncated ({exc})")
        return bytes(out)

    def _manifest_items(self, data: bytes) -> list[tuple[int, dict[str, Any]]]:
        """Validate manifest.json and return its telemetry items (with their positions)."""
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            _fail("manifest.json is not UTF-8 text")
        manifest = _loads(text, "manifest.json")
        if not isinstance(manifest, dict):
            _fail("manifest.json is not a JSON object")
        if manifest.get("id") != ARCHIVE_ID:
            _fail(f"manifest.json id is {manifest.get('id')!r}, expected {ARCHIVE_ID!r}: "
                  "not a Sunbird telemetry archive")
        archive = manifest.get("archive")
        items = archive.get("items") if isinstance(archive, dict) else None
        if not isinstance(items, list):
            _fail("manifest.json has no archive.items list")
        assert isinstance(archive, dict)
        if len(items) > self.limits.max_entries:
            _fail(f"manifest.json lists {len(items)} items, more than the {self.limits.max_entries} limit "
                  "(share.max_entries)")
        if _as_int(archive.get("count")) != len(items):
            self.problems.append(f"manifest.json archive.count is {archive.get('count')!r} "
                                 f"but it lists {len(items)} items")
        out: list[tuple[int, dict[str, Any]]] = []
        for n, item in enumerate(items):
            if not isinstance(item, dict):
                _fail(f"manifest.json item {n} is not a JSON object")
            kind = item.get("objectType")
            if kind != "telemetry":
                self.problems.append(f"skipped manifest.json item {n} of type {kind!r}; only telemetry is imported")
                continue
            if item.get("contentEncoding") != "gzip":
                _fail(f"manifest.json item {n} ({item.get('mid') or item.get('file')!r}) has contentEncoding "
                      f"{item.get('contentEncoding')!r}; only gzip is supported")
            out.append((n, item))
        if not out:
            _fail("manifest.json lists no telemetry batches: nothing to import")
        return out

    # ---- legacy .gsa (SQLite) ----------------------------------------------------------------------------

    def _read_gsa(self) -> list[ShareBatch]:
        uri = self.path.resolve().as_uri() + "?mode=ro&immutable=1"  # never writes, locks or journals the user's file
        try:
            con = sqlite3.connect(uri, uri=True)
        except sqlite3.Error as exc:
            _fail(f"the .gsa file cannot be opened as SQLite ({exc})")
        try:
            deadline = time.monotonic() + _SQLITE_SECONDS
            con.set_progress_handler(lambda: int(time.monotonic() > deadline), 10_000)
            con.text_factory = bytes
            con.execute("PRAGMA trusted_schema = OFF")
            con.execute("PRAGMA query_only = ON")
            return self._gsa_batches(con)
        except sqlite3.OperationalError as exc:
            if "interrupt" in str(exc):
                _fail(f"reading the .gsa database took over {_SQLITE_SECONDS:.0f} s; refusing a hostile file")
            _fail(f"the .gsa SQLite database is corrupt or unreadable ({exc})")
        except sqlite3.Error as exc:
            _fail(f"the .gsa SQLite database is corrupt or unreadable ({exc})")
        finally:
            con.close()

    def _gsa_batches(self, con: sqlite3.Connection) -> list[ShareBatch]:
        kinds = {_txt(n): _txt(t) for n, t in con.execute(
            "SELECT name, type FROM sqlite_master WHERE name IN ('meta_data', 'processed_telemetry')")}
        for table in ("meta_data", "processed_telemetry"):
            if kinds.get(table) != "table":
                _fail(f"this SQLite file is not a Sunbird .gsa telemetry export: table {table!r} is missing")
        cols = {_txt(r[1]) for r in con.execute("PRAGMA table_info(processed_telemetry)")}
        missing = sorted({"msg_id", "data", "event_count"} - cols)
        if missing:
            _fail(f"table processed_telemetry lacks column(s) {', '.join(missing)}: not a Sunbird .gsa export")
        mcols = {_txt(r[1]) for r in con.execute("PRAGMA table_info(meta_data)")}
        if not {"key", "value"} <= mcols:
            _fail("table meta_data lacks its key/value columns: not a Sunbird .gsa export")
        meta: dict[str, str | None] = {}
        for k, v in con.execute("SELECT key, value FROM meta_data LIMIT ?", (self.limits.max_entries,)):
            if (key := _txt(k)) is not None:
                meta[key] = _txt(v)
        if not meta:
            _fail("the .gsa meta_data table is empty: not a telemetry export")
        types = meta.get("types") or ""
        if "telemetry" not in types:
            _fail(f"the .gsa meta_data says types {types!r}: this file holds no telemetry")
        if meta.get("version") != "1":
            self.problems.append(f".gsa meta_data version is {meta.get('version')!r}, expected '1'")
        self.device_id = meta.get("did") or None
        self.export_id = meta.get("export_id") or None
        declared = meta.get("events_count")
        self.manifest_events = _as_int(declared)
        if declared is not None and self.manifest_events is None:
            self.problems.append(f".gsa meta_data events_count {declared!r} is not a number")
        order = " ORDER BY _id" if "_id" in cols else ""
        batches: list[ShareBatch] = []
        for n, (msg_id, data, count) in enumerate(
                con.execute(f"SELECT msg_id, data, event_count FROM processed_telemetry{order}")):
            if n >= self.limits.max_entries:
                _fail(f"the .gsa holds more than {self.limits.max_entries} batches (share.max_entries)")
            mid = _txt(msg_id) or None
            label = f"batch {mid}" if mid else f"batch row {n + 1}"
            if not isinstance(data, bytes) or not data:
                _fail(f"{label} has no data")
            expected = _as_int(_txt(count))
            batches.append(self._batch(data, label, mid, expected, "processed_telemetry.event_count"))
        found = sum(len(b.events) for b in batches)
        if self.manifest_events is not None and self.manifest_events != found:
            _fail(f"the .gsa meta_data says events_count {self.manifest_events} but its batches hold {found}; "
                  "the file is inconsistent, so nothing was imported")
        if not batches:
            _fail("the .gsa file holds no telemetry batches: nothing to import")
        return batches

    # ---- plain JSON / NDJSON, maybe gzipped --------------------------------------------------------------

    def _read_plain(self, data: bytes, head: bytes) -> tuple[str, list[ShareBatch]]:
        suffix = ""
        if head.startswith(_GZIP_MAGIC):
            data = self._gunzip(data, "the gzip data")
            suffix = "+gzip"
            what = "the gzip data"
        else:
            what = "the file"
            first = data.lstrip(b" \t\r\n")
            first = first[3:].lstrip(b" \t\r\n") if first.startswith(b"\xef\xbb\xbf") else first
            if not first.startswith((b"{", b"[")):
                _fail("not a recognised Share Telemetry file: it is not a ZIP archive, a .gsa SQLite database, "
                      f"gzip data or JSON (starts with {bytes(head[:8])!r})")
        text = self._text(data, what)
        scan, kind, fields, events = self._scan(text, what)
        mid = self._envelope_ids(scan, fields) if kind == "envelope" else None
        fmt = {"envelope": FORMAT_ENVELOPE, "array": FORMAT_ARRAY, "ndjson": FORMAT_NDJSON}[kind]
        return fmt + suffix, [ShareBatch(mid=mid, events=events)]


def _error(path: Path, reason: str) -> ShareFileError:
    err = ShareFileError(f"{path.name}: {reason}")
    err.path = path  # type: ignore[attr-defined]
    err.reason = reason  # type: ignore[attr-defined]
    return err


def read_share_file(path: Path, limits: ShareLimits = ShareLimits()) -> ShareFile:
    """Read and fully validate a share file (format found from its bytes), so the caller can commit all or nothing."""
    path = Path(path)
    try:
        result = _Reader(path, limits).read()
    except _Bad as exc:
        raise _error(path, str(exc)) from None
    except OSError as exc:
        raise _error(path, f"cannot read the file ({exc.strerror or exc})") from None
    except MemoryError:
        raise _error(path, "not enough memory to read it; lower share.max_uncompressed_bytes") from None
    except Exception as exc:  # a file we failed to foresee must still come back as a clear refusal
        log.exception("unexpected error reading share file %s", path)
        raise _error(path, f"could not be read (internal error: {type(exc).__name__}: {exc})") from None
    log.info("read share file %s: %s, %d batches, %d events, %d problems", path.name, result.format,
             len(result.batches), result.event_count, len(result.problems))
    return result


# ---- export ------------------------------------------------------------------------------------------------


def _mobile_envelope(events: Sequence[bytes], mid: str, device_id: str, ts: str) -> bytes:
    """The mobile SDK's batch envelope around the events' original bytes (not re-serialised)."""
    head = json.dumps({"id": "ekstep.telemetry", "ver": "1.0", "ts": ts,
                       "params": {"did": device_id, "msgid": mid, "key": "", "requesterId": ""}, "mid": mid},
                      separators=(",", ":"), ensure_ascii=False).encode()
    parts = []
    for ev in events:
        raw = bytes(ev).strip(b" \t\r\n")
        if not (raw.startswith(b"{") and raw.endswith(b"}")):
            raise ValueError(f"event is not a JSON object: {raw[:40]!r}")
        parts.append(raw)
    return head[:-1] + b',"events":[' + b",".join(parts) + b"]}"


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_archive(out: Path, batches: Iterable[Sequence[bytes]], *, producer: dict[str, Any],
                  device_id: str) -> ExportReport:
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
                    now = datetime.now(timezone.utc)
                    body = _mobile_envelope(batch, mid, device_id, now.strftime("%Y-%m-%dT%H:%M:%SZ"))
                    gz = gzip.compress(body, compresslevel=6, mtime=0)
                    info = zipfile.ZipInfo(mid, date_time=now.timetuple()[:6])
                    info.compress_type = zipfile.ZIP_DEFLATED
                    info.external_attr = 0o644 << 16
                    zf.writestr(info, gz)
                    items.append({"file": mid, "mid": mid, "eventsCount": len(batch), "size": len(gz),
                                  "explodedSize": len(body), "objectType": "telemetry", "contentEncoding": "gzip"})
                    total += len(batch)
                    del body, gz
                if not items:
                    raise ValueError("nothing to export: no events")
                now = datetime.now(timezone.utc)
                manifest = {"id": ARCHIVE_ID, "ver": "1.0",
                            "ts": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                            "producer": producer, "archive": {"count": len(items), "items": items}}
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
    _fsync_dir(out.parent)
    mids = [i["mid"] for i in items]
    log.info("wrote share archive %s: %d batches, %d events", out, len(items), total)
    return ExportReport(out=out, batches=len(items), events=total, mids=mids, size=out.stat().st_size)
