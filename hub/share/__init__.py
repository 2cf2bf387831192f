"""Share Telemetry files (archive ZIP, legacy .gsa, plain JSON): read them without trusting them, write the app's ZIP.

formats: the format names, what a read yields (ShareFile, ShareBatch), the limits and the refusals in words.
reader:  read_share_file: format detection, the decompression guards, plain JSON/NDJSON.
archive: the archive ZIP (manifest.json plus a gzip envelope per batch), read and written.
gsa:     the legacy .gsa SQLite export.
importer: a file into the store, all or nothing, once (the import ledger); report: what it became, in words.
exporter: the store's events into an archive, marking nothing delivered.
Every format's JSON is split by hub.telemetry.RawSplitter, the device API's splitter, so events stay their original bytes.
"""

from __future__ import annotations

from .archive import write_archive
from .exporter import EXPORT_PRODUCER, NothingToExport, export_archive, parse_since
from .formats import (
    ARCHIVE_ID,
    FORMAT_ARCHIVE,
    FORMAT_ARRAY,
    FORMAT_ENVELOPE,
    FORMAT_GSA,
    FORMAT_NDJSON,
    ExportReport,
    ShareBatch,
    ShareFile,
    ShareLimits,
)
from .importer import Importer
from .reader import read_share_file
from .report import ImportReport, clean_name, format_name

__all__ = [
    "ARCHIVE_ID",
    "EXPORT_PRODUCER",
    "FORMAT_ARCHIVE",
    "FORMAT_ARRAY",
    "FORMAT_ENVELOPE",
    "FORMAT_GSA",
    "FORMAT_NDJSON",
    "ExportReport",
    "ImportReport",
    "Importer",
    "NothingToExport",
    "ShareBatch",
    "ShareFile",
    "ShareLimits",
    "clean_name",
    "export_archive",
    "format_name",
    "parse_since",
    "read_share_file",
    "write_archive",
]
