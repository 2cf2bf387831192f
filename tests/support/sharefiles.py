"""Build realistic Share Telemetry files (archive ZIP, legacy .gsa, plain JSON) per the contract, and hostile ones."""

from __future__ import annotations

import gzip
import json
import sqlite3
import struct
import time
import uuid
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.events import SAMPLE_ZIP, make_events

SAMPLE_ARCHIVE = SAMPLE_ZIP
SAMPLE_COUNTS = (22, 71)
DID = "7f3c1e0b5a9d4c2e8f6a1b3d5c7e9f0a2b4c6d8e"
PRODUCER = {"id": "prod.diksha.app", "ver": "4.10.2", "pid": "sunbird.app"}
MiB = 1024 * 1024


def event_bytes(n: int, *, did: str = DID, prefix: str = "") -> list[bytes]:
    """n realistic v3 events as compact JSON bytes (what a device sent)."""
    return [json.dumps(e, separators=(",", ":")).encode() for e in make_events(n, did=did, prefix=prefix)]


def odd_events() -> list[bytes]:
    """Valid events whose bytes no serialiser would reproduce: spacing, escapes, key order, float spellings."""
    return [
        b'{ "eid" : "START",\n  "mid":"START:odd-1", "ets" : 1.0e3, "ver":"3.0" }',
        b'{"mid":"IMPRESSION:odd-2","eid":"IMPRESSION","edata":{"pageid":"\\u0068ome","t":"\\ud83d\\ude00 \\/x"}}',
        '{"eid":"INTERACT","mid":"INTERACT:odd-3","edata":{"id":"नमस्ते","v":-0.0,"w":1E-7,"z":[ ]}}'.encode(),
        b'{"eid":"LOG","mid":"LOG:odd-4","a":{"b":{"c":[1,2,{"d":null}]}},"n":123456789012345678901234567890}',
        b'{\t"eid":"END","mid":"END:odd-5",\r\n"e":true\t}',
    ]


def mobile_envelope(events: Sequence[bytes], mid: str, did: str = DID, *, sep: bytes = b",") -> bytes:
    """The mobile SDK batch envelope (contract 1.4) around raw event bytes."""
    head = json.dumps(
        {
            "id": "ekstep.telemetry",
            "ver": "1.0",
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "params": {"did": did, "msgid": mid, "key": "", "requesterId": ""},
        },
        separators=(",", ":"),
    ).encode()
    return head[:-1] + b',"events":[' + sep.join(events) + b"]}"


def desktop_envelope(events: Sequence[bytes]) -> bytes:
    """The desktop/OpenRAP batch envelope: no params, events first (as in the real sample)."""
    return (
        b'{"ts":'
        + str(int(time.time() * 1000)).encode()
        + b',"events":['
        + b",".join(events)
        + b'],"id":"api.telemetry","ver":"1.0"}'
    )


def utf8_mangle(gz: bytes) -> bytes:
    """What Cordova FileWriter writes for a JS binary string: the UTF-8 encoding of the latin-1 chars."""
    return gz.decode("latin-1").encode("utf-8")


@dataclass
class Archive:
    """A telemetry archive before zipping: manifest dict plus entry name -> bytes (manifest.json not included)."""

    manifest: dict[str, Any]
    files: dict[str, bytes]
    mids: list[str]

    def entries(self) -> dict[str, bytes]:
        return {"manifest.json": json.dumps(self.manifest).encode(), **self.files}


def make_archive(
    batches: Sequence[Sequence[bytes]],
    *,
    style: str = "mobile",
    mangled: bool = False,
    did: str = DID,
    producer: dict[str, Any] | None = None,
) -> Archive:
    """An archive as the mobile app (files named <mid>, size 1) or desktop app (<mid>.gz, real sizes) writes it."""
    items, files, mids = [], {}, []
    for events in batches:
        mid = str(uuid.uuid4())
        if style == "mobile":
            body = gzip.compress(mobile_envelope(events, mid, did))
            name, size, exploded = mid, 1, -1
        else:
            body = gzip.compress(desktop_envelope(events))
            name, size, exploded = f"{mid}.gz", len(body), len(body)
        files[name] = utf8_mangle(body) if mangled else body
        mids.append(mid)
        items.append(
            {
                "file": name,
                "mid": mid,
                "eventsCount": len(events),
                "size": size,
                "objectType": "telemetry",
                "contentEncoding": "gzip",
                "explodedSize": exploded,
            }
        )
    manifest = {
        "id": "sunbird.data.archive",
        "ver": "1.0",
        "ts": "2024-05-01T10:20:30.123Z",
        "producer": producer or PRODUCER,
        "archive": {"count": len(items), "items": items},
    }
    return Archive(manifest, files, mids)


def write_zip(
    path: Path, entries: Mapping[str, bytes] | Iterable[tuple[str, bytes]], *, method: int = zipfile.ZIP_DEFLATED
) -> Path:
    """Zip entries verbatim (names are not sanitised, duplicates allowed) so hostile archives can be built."""
    pairs = entries.items() if isinstance(entries, Mapping) else entries
    with zipfile.ZipFile(path, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name" is the point of some hostile archives
        for name, data in pairs:
            info = zipfile.ZipInfo(name, date_time=(2024, 5, 1, 10, 20, 30))
            info.compress_type = method
            zf.writestr(info, data)
    return path


def build_archive(
    path: Path, batches: Sequence[Sequence[bytes]], *, method: int = zipfile.ZIP_DEFLATED, **kw: Any
) -> Archive:
    """make_archive + write_zip in one step."""
    arch = make_archive(batches, **kw)
    write_zip(path, arch.entries(), method=method)
    return arch


def gsa_data(envelope: bytes) -> str:
    """pako gzip(..., {to: 'string'}): one char U+0000-U+00FF per gzip byte, stored as SQLite TEXT."""
    return gzip.compress(envelope).decode("latin-1")


def build_gsa(
    path: Path,
    batches: Sequence[Sequence[bytes]],
    *,
    did: str = DID,
    export_id: str | None = None,
    meta: Mapping[str, Any] | None = None,
    counts: Sequence[int] | None = None,
    tables: Sequence[str] = ("meta_data", "processed_telemetry"),
) -> list[str]:
    """A legacy .gsa export per contract 4.2; returns the batch msgids. meta/counts override what it says."""
    mids = [str(uuid.uuid4()) for _ in batches]
    total = sum(len(b) for b in batches)
    values: dict[str, Any] = {
        "version": "1",
        "types": '["telemetry"]',
        "did": did,
        "export_id": export_id or str(uuid.uuid4()),
        "events_count": str(total),
    }
    values.update(meta or {})
    con = sqlite3.connect(path)
    try:
        if "processed_telemetry" in tables:
            con.execute(
                "CREATE TABLE processed_telemetry (_id INTEGER PRIMARY KEY, msg_id TEXT, data TEXT, "
                "event_count INTEGER, priority INTEGER)"
            )
            for i, (mid, events) in enumerate(zip(mids, batches)):
                n = counts[i] if counts is not None else len(events)
                con.execute(
                    "INSERT INTO processed_telemetry (msg_id, data, event_count, priority) VALUES (?,?,?,1)",
                    (mid, gsa_data(mobile_envelope(events, mid, did)), n),
                )
        if "meta_data" in tables:
            con.execute("CREATE TABLE meta_data (_id INTEGER PRIMARY KEY, key TEXT, value TEXT)")
            con.executemany(
                "INSERT INTO meta_data (key, value) VALUES (?, ?)", [(k, v) for k, v in values.items() if v is not None]
            )
            con.execute("INSERT INTO meta_data (key, value) VALUES ('FILE_SIZE', '4096')")
        con.execute("CREATE TABLE IF NOT EXISTS other (x)")
        con.commit()
    finally:
        con.close()
    return mids


def plain_bytes(events: Sequence[bytes], kind: str, *, mid: str | None = None) -> bytes:
    """A plain export: 'envelope' (mobile), 'array' or 'ndjson' (one event per line)."""
    if kind == "envelope":
        return mobile_envelope(events, mid or str(uuid.uuid4()))
    if kind == "array":
        return b"[" + b",".join(events) + b"]"
    if kind == "ndjson":
        return b"".join(e + b"\n" for e in events)
    raise ValueError(kind)


def build_plain(path: Path, events: Sequence[bytes], kind: str, *, gzipped: bool = False) -> Path:
    """Write a plain export, optionally gzipped."""
    data = plain_bytes(events, kind)
    path.write_bytes(gzip.compress(data) if gzipped else data)
    return path


def zeros_deflate(size: int) -> bytes:
    """Raw deflate of `size` zero bytes (a multiple of 1 MiB) in milliseconds: one full-flushed block repeated."""
    assert size % MiB == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)
    return block * (size // MiB) + c.flush()


def gzip_zeros(size: int) -> bytes:
    """A gzip bomb: gzip of `size` zeros; the CRC is bogus on purpose, a reader must stop long before it."""
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + zeros_deflate(size) + struct.pack("<II", 0, size & 0xFFFFFFFF)


@dataclass
class RawEntry:
    """One hand-made ZIP entry whose header fields may lie."""

    name: bytes
    data: bytes  # as stored (already compressed for method 8)
    method: int = zipfile.ZIP_DEFLATED
    crc: int = 0
    file_size: int = 0  # declared uncompressed size
    flags: int = 0


def raw_zip(path: Path, entries: Sequence[RawEntry]) -> Path:
    """Write a ZIP by hand (local headers, central directory, end record) so sizes/flags can lie."""
    out, central = bytearray(), bytearray()
    for e in entries:
        offset = len(out)
        out += (
            struct.pack(
                "<IHHHHHIIIHH",
                0x04034B50,
                20,
                e.flags,
                e.method,
                0,
                33,
                e.crc,
                len(e.data),
                e.file_size,
                len(e.name),
                0,
            )
            + e.name
            + e.data
        )
        central += (
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                e.flags,
                e.method,
                0,
                33,
                e.crc,
                len(e.data),
                e.file_size,
                len(e.name),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + e.name
        )
    out += central + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central), len(out), 0)
    path.write_bytes(bytes(out))
    return path


def stored_entry(name: str, data: bytes) -> RawEntry:
    """An honest stored (uncompressed) entry."""
    return RawEntry(name.encode(), data, zipfile.ZIP_STORED, zlib.crc32(data), len(data))


def deflated_entry(name: str, data: bytes) -> RawEntry:
    """An honest deflated entry."""
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    return RawEntry(name.encode(), c.compress(data) + c.flush(), zipfile.ZIP_DEFLATED, zlib.crc32(data), len(data))


def zip_bomb(path: Path, size: int = 1024 * MiB, declared: int | None = None) -> Path:
    """A telemetry archive whose batch entry inflates to `size` zeros; by default the header claims only 2x."""
    body = zeros_deflate(size)
    mid = str(uuid.uuid4())
    manifest = make_archive([]).manifest
    manifest["archive"] = {
        "count": 1,
        "items": [
            {"file": mid, "mid": mid, "eventsCount": 1, "size": 1, "objectType": "telemetry", "contentEncoding": "gzip"}
        ],
    }
    return raw_zip(
        path,
        [
            deflated_entry("manifest.json", json.dumps(manifest).encode()),
            RawEntry(mid.encode(), body, zipfile.ZIP_DEFLATED, 0, declared if declared is not None else 2 * len(body)),
        ],
    )
