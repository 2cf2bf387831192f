"""Reading one share file: find its format from its bytes, guard every decompression, read plain JSON/NDJSON."""

from __future__ import annotations

import hashlib
import os
import stat
import zlib
from pathlib import Path
from typing import BinaryIO

from ..telemetry import RawSplitter, Span, SplitError
from .archive import read_archive
from .formats import (
    _GZIP_MAGIC,
    _RATIO_FLOOR,
    _SQLITE_MAGIC,
    _ZIP_MAGIC,
    FORMAT_ARCHIVE,
    FORMAT_ARRAY,
    FORMAT_ENVELOPE,
    FORMAT_GSA,
    FORMAT_NDJSON,
    ShareBatch,
    ShareFile,
    ShareLimits,
    _Bad,
    _error,
    _fail,
    _size,
    _split_reason,
    log,
)
from .gsa import read_gsa

__all__ = ["read_share_file"]

_GZ_IN = 16 * 1024
_GZ_OUT = 256 * 1024
_HASH_READ = 1024 * 1024
_DEFAULTS = ShareLimits()


class Reader:
    """One read of one file: running totals for the bomb checks plus what the file says about itself.

    The archive and .gsa formats are read by hub.share.archive and hub.share.gsa, which share this
    state: the limits, the totals `charge` keeps, and `batch` for each gzip envelope they hold.
    """

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
                _fail(
                    f"the file is {_size(st.st_size)}, over the {_size(lim.max_file_bytes)} limit "
                    "(share.max_file_bytes); split the export or raise the limit"
                )
            sha256, head = self._hash(f)
            if self.file_size == 0:
                _fail("the file is empty")
            f.seek(0)
            if head.startswith(_ZIP_MAGIC):
                fmt, batches = FORMAT_ARCHIVE, read_archive(self, f)
            elif head.startswith(_SQLITE_MAGIC):
                fmt, batches = FORMAT_GSA, read_gsa(self)
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
        return ShareFile(
            path=self.path,
            sha256=sha256,
            format=fmt,
            batches=batches,
            manifest_events=self.manifest_events,
            device_id=self.device_id,
            export_id=self.export_id,
            problems=self.problems,
        )

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

    # ---- the bomb guards, for every decompression ---------------------------------------------------------

    def charge(self, n: int, consumed: int, produced: int, what: str) -> None:
        """Count decompressed bytes as they appear; stop at the first sign of a bomb, whatever headers claim."""
        lim = self.limits
        self.total_out += n
        if self.total_out > lim.max_uncompressed_bytes:
            _fail(
                f"{what}: the file unpacks to more than {_size(lim.max_uncompressed_bytes)} "
                "(share.max_uncompressed_bytes); refusing a possible zip bomb"
            )
        if produced > _RATIO_FLOOR and produced > lim.max_ratio * max(consumed, 1):
            _fail(f"{what} expands more than {lim.max_ratio} times (share.max_ratio); refusing a zip bomb")
        if self.total_out > _RATIO_FLOOR and self.total_out > lim.max_ratio * self.file_size:
            _fail(
                f"{what}: the file unpacks to more than {lim.max_ratio} times its size "
                "(share.max_ratio); refusing a zip bomb"
            )

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
                        self.charge(len(chunk), pos - len(buf), len(out), what)
                rest = gz[pos - len(d.unused_data) :]
                if not rest.strip(b"\x00"):
                    return bytes(out)
                if not rest.startswith(_GZIP_MAGIC):
                    _fail(f"{what} has unexpected data after the gzip stream")
                pos = n - len(rest)
        except zlib.error as exc:
            _fail(f"{what} is corrupt gzip data ({exc})")

    # ---- JSON text: one splitter (hub.telemetry.RawSplitter) for every format ----------------------------

    def _text(self, data: bytes, what: str) -> str:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            _fail(f"{what} is not UTF-8 text (bad byte at offset {exc.start})")
        return text[1:] if text.startswith("\ufeff") else text

    def _scan(self, text: str, what: str) -> tuple[RawSplitter, str, dict[str, Span], list[bytes]]:
        scan = RawSplitter(text, self.limits.max_events - self.total_events, keep_values=False, unique_events=True)
        try:
            kind, fields, items = scan.document()
        except SplitError as exc:
            _fail(f"{what} {_split_reason(exc)}")
        events = items.raws
        self.total_events += len(events)
        return scan, kind, fields, events

    def _envelope_ids(self, scan: RawSplitter, fields: dict[str, Span]) -> str | None:
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

    def batch(self, raw: bytes, what: str, mid: str | None, expected: int | None, source: str) -> ShareBatch:
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
            _fail(
                f"{what}: {source} says {expected} events but the batch holds {len(events)}; "
                "the file is inconsistent, so nothing was imported"
            )
        return ShareBatch(mid=mid or env_mid, events=events, expected_count=expected)

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
                _fail(
                    "not a recognised Share Telemetry file: it is not a ZIP archive, a .gsa SQLite database, "
                    f"gzip data or JSON (starts with {bytes(head[:8])!r})"
                )
        text = self._text(data, what)
        scan, kind, fields, events = self._scan(text, what)
        mid = self._envelope_ids(scan, fields) if kind == "envelope" else None
        fmt = {"envelope": FORMAT_ENVELOPE, "array": FORMAT_ARRAY, "ndjson": FORMAT_NDJSON}[kind]
        return fmt + suffix, [ShareBatch(mid=mid, events=events)]


def read_share_file(path: Path, limits: ShareLimits = _DEFAULTS) -> ShareFile:
    """Read and fully validate a share file (format found from its bytes), so the caller can commit all or nothing."""
    path = Path(path)
    try:
        result = Reader(path, limits).read()
    except _Bad as exc:
        raise _error(path, str(exc)) from None
    except OSError as exc:
        raise _error(path, f"cannot read the file ({exc.strerror or exc})") from None
    except MemoryError:
        raise _error(path, "not enough memory to read it; lower share.max_uncompressed_bytes") from None
    except Exception as exc:  # a file we failed to foresee must still come back as a clear refusal
        log.exception("unexpected error reading share file %s", path)
        raise _error(path, f"could not be read (internal error: {type(exc).__name__}: {exc})") from None
    log.info(
        "read share file %s: %s, %d batches, %d events, %d problems",
        path.name,
        result.format,
        len(result.batches),
        result.event_count,
        len(result.problems),
    )
    return result
