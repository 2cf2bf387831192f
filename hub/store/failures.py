"""What a failed write means, in words for people, and saying so once per cause rather than once per request.

When the SD card's controller dies or the kernel turns the file system read-only after errors,
every commit fails the same way, many times a second. Devices are answered 503 each time; the log
gets one line per cause (the rest at debug), and one line when writes work again.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import time
from pathlib import Path

from ..errors import StoreFull, StoreUnavailable
from .stats import StoreStats

__all__ = ["FailureLog", "WriteFailures", "describe", "is_storage_failure"]

# SQLite's primary result codes that mean the storage (or another process), not the data, is at fault.
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_NOMEM = 7
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_PROTOCOL = 15
_SQLITE_NOTADB = 26
_STORAGE_CODES = frozenset(
    {
        _SQLITE_BUSY,
        _SQLITE_LOCKED,
        _SQLITE_NOMEM,
        _SQLITE_READONLY,
        _SQLITE_IOERR,
        _SQLITE_CORRUPT,
        _SQLITE_FULL,
        _SQLITE_CANTOPEN,
        _SQLITE_PROTOCOL,
        _SQLITE_NOTADB,
    }
)
# The same cause logged again within this many seconds goes to debug, even after a short recovery.
QUIET_S = 300.0


def _code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def is_storage_failure(exc: BaseException) -> bool:
    """Whether the disk, the file system or the file failed (every request would fail alike), not one request's data."""
    if isinstance(exc, OSError):
        return True
    if not isinstance(exc, sqlite3.Error):
        return False
    code = _code(exc)
    if code is not None:
        return code in _STORAGE_CODES
    # Raised without a result code (a test, a wrapper): OperationalError and a bare DatabaseError
    # ("database disk image is malformed") are the storage's; IntegrityError and the like are the data's.
    return type(exc) in (sqlite3.OperationalError, sqlite3.DatabaseError)


def describe(exc: BaseException, path: Path) -> tuple[str, str]:
    """(cause, sentence for people) for a failed write; requests failing for the same cause share it."""
    where = path.parent
    detail = f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else f"SQLite: {exc}"
    code = _code(exc)
    text = str(exc).lower()
    err = exc.errno if isinstance(exc, OSError) else None
    if code == _SQLITE_FULL or err == errno.ENOSPC or (code is None and "full" in text and not err):
        return "full", f"the disk holding {where} is full ({detail}); free disk space"
    if code == _SQLITE_READONLY or err == errno.EROFS or "readonly" in text or "read-only" in text:
        return "read-only", (
            f"the database {path} cannot be written ({detail}): the file system was probably turned "
            "read-only after disk errors. Check the SD card or disk (dmesg), then restart the hub"
        )
    if code in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in text:
        return "locked", (
            f"another process holds the database {path} ({detail}); "
            "wait for it (an import or export with --data-dir?) to finish"
        )
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB) or "malformed" in text or "not a database" in text:
        # After a failed read SQLite often calls the file malformed: the same failing disk, so the same cause.
        return "disk", (
            f"the database {path} reads back damaged ({detail}): the disk is failing or the file was "
            "harmed. Check the SD card or disk (dmesg) and the log"
        )
    if code in (_SQLITE_IOERR, _SQLITE_CANTOPEN, _SQLITE_PROTOCOL) or err is not None or "i/o" in text:
        return "disk", (
            f"the disk holding {where} fails to read or write ({detail}). Check the SD card or disk (dmesg) and the log"
        )
    if is_storage_failure(exc):
        return "storage", f"the database {path} cannot be written ({detail}). Check the disk and the log"
    return f"bug:{type(exc).__name__}", (
        f"the store failed to commit ({type(exc).__name__}: {exc}); this is a bug, please report it"
    )


class FailureLog:
    """Logs a failure once per cause (repeats at debug), and once when things work again."""

    def __init__(self, log: logging.Logger, what: str, consequence: str = "") -> None:
        self.log = log
        self.what = what  # "store write", "store measurement"
        self.consequence = consequence  # what it means, said with the first line of each cause
        self.current: str | None = None  # the sentence of the failure now in force, or None
        self._logged: dict[str, float] = {}  # cause -> when it was last logged at error level
        self._unrecovered = False  # a failure was logged and no recovery since

    def failed(self, cause: str, sentence: str, detail: str = "", *, level: int = logging.ERROR) -> None:
        """Record a failure; log it unless the same cause was logged in the last QUIET_S seconds."""
        self.current = sentence
        now = time.monotonic()
        last = self._logged.get(cause)
        if last is not None and now - last < QUIET_S:
            self.log.debug("%s failed again (%s)%s", self.what, cause, f": {detail}" if detail else "")
            return
        self._logged[cause] = now
        self._unrecovered = True
        also = "".join(f"; {x}" for x in (detail, self.consequence) if x)
        self.log.log(level, "%s failed: %s%s", self.what, sentence, also)

    def worked(self) -> None:
        """Record a success; say once that things work again if a failure was logged."""
        if self.current is None:
            return
        self.current = None
        if self._unrecovered:
            self._unrecovered = False
            self.log.info("%s works again", self.what)


class WriteFailures:
    """What the store's callers get when a write fails, with the cause logged once and kept in StoreStats."""

    def __init__(self, path: Path, stats: StoreStats, log: logging.Logger) -> None:
        self.path = path
        self.stats = stats
        self.log = log
        self.failures = FailureLog(
            log, "store write", "new telemetry is refused (503, Retry-After) until a commit works again"
        )

    def translate(self, exc: BaseException) -> BaseException:
        """A full disk becomes StoreFull (and the space check refuses until there is room); the rest as raised.

        The forwarder and the admin paths get SQLite's own errors from their jobs; `add` gets a
        StoreUnavailable instead (see refusal).
        """
        if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
            self.stats.full_reason = (
                f"the disk is full (SQLite: {exc}); free disk space on the drive holding {self.path.parent}"
            )
            self.failures.failed("full", self.stats.full_reason)
            return StoreFull(self.stats.full_reason)
        if isinstance(exc, Exception) and is_storage_failure(exc):
            cause, sentence = describe(exc, self.path)
            self.failures.failed(cause, sentence)
            self.stats.unavailable = sentence
        return exc

    def refusal(self, exc: BaseException) -> BaseException:
        """What `add` raises when its commit failed: StoreFull, or StoreUnavailable with a sentence for people.

        Devices answer both with 503 + Retry-After; the cause is logged once (repeats at debug).
        Only a bug (not the disk, the file system or the file) is logged with its traceback, once.
        """
        err = self.translate(exc)
        if isinstance(err, StoreFull) or not isinstance(exc, Exception):
            return err
        cause, sentence = describe(exc, self.path)
        if not is_storage_failure(exc):
            if self.failures.current is None:
                self.log.error("store commit failed with an unexpected error; please report this", exc_info=exc)
            self.failures.failed(cause, sentence)
            self.stats.unavailable = sentence
        return StoreUnavailable(sentence)

    def worked(self) -> None:
        """A write committed: clear the failure in force, saying once that writes work again."""
        if self.failures.current is not None:
            self.failures.worked()
            self.stats.unavailable = None
