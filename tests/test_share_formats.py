"""hub.share: every Share Telemetry format read byte-exactly, written as the app does, hostile files refused."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sqlite3
import tempfile
import time
import tracemalloc
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.sharefiles import (
    DID,
    PRODUCER,
    SAMPLE_ARCHIVE,
    SAMPLE_COUNTS,
    MiB,
    RawEntry,
    build_archive,
    build_gsa,
    build_plain,
    deflated_entry,
    desktop_envelope,
    event_bytes,
    gzip_zeros,
    make_archive,
    mobile_envelope,
    odd_events,
    plain_bytes,
    raw_zip,
    stored_entry,
    write_zip,
    zip_bomb,
)

from hub.config import ShareConfig
from hub.errors import ShareFileError
from hub.share import (
    FORMAT_ARCHIVE,
    FORMAT_GSA,
    ShareLimits,
    read_share_file,
    write_archive,
)

LIMITS = ShareLimits()


def all_events(share) -> list[bytes]:
    return [e for b in share.batches for e in b.events]


# ---- real sample ---------------------------------------------------------------------------------------------


def test_real_sample_archive() -> None:
    share = read_share_file(SAMPLE_ARCHIVE, LIMITS)
    assert share.format == FORMAT_ARCHIVE
    assert share.sha256 == hashlib.sha256(SAMPLE_ARCHIVE.read_bytes()).hexdigest()
    assert [len(b.events) for b in share.batches] == list(SAMPLE_COUNTS)
    assert [b.expected_count for b in share.batches] == list(SAMPLE_COUNTS)
    assert share.manifest_events == sum(SAMPLE_COUNTS)
    assert share.problems == []
    with zipfile.ZipFile(SAMPLE_ARCHIVE) as z:
        items = json.loads(z.read("manifest.json"))["archive"]["items"]
        assert [b.mid for b in share.batches] == [i["mid"] for i in items]
        for batch, item in zip(share.batches, items):
            text = gzip.decompress(z.read(item["file"]))
            assert b'"events":[' + b",".join(batch.events) + b"]" in text  # byte-exact slices
    for ev in all_events(share):
        obj = json.loads(ev)
        assert isinstance(obj, dict) and obj["mid"]


def test_limits_are_the_share_config_section() -> None:
    # One set of defaults: the file layer takes the [share] section as it is.
    assert ShareLimits is ShareConfig
    assert ShareLimits().max_events == 1_000_000


# ---- archives built from the contract ------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["mobile", "desktop"])
@pytest.mark.parametrize("mangled", [False, True], ids=["gzip", "utf8-mangled"])
def test_built_archives(tmp_path: Path, style: str, mangled: bool) -> None:
    batches = [event_bytes(200), event_bytes(37), event_bytes(1)]
    arch = build_archive(tmp_path / "a.zip", batches, style=style, mangled=mangled)
    if mangled:
        assert next(iter(arch.files.values()))[:4] == b"\x1f\xc2\x8b\x08"
    names = list(arch.files)
    assert all(n.endswith(".gz") == (style == "desktop") for n in names)
    share = read_share_file(tmp_path / "a.zip", LIMITS)
    assert share.format == FORMAT_ARCHIVE
    assert [b.mid for b in share.batches] == arch.mids
    assert [b.events for b in share.batches] == batches
    assert share.manifest_events == 238
    assert share.device_id == (DID if style == "mobile" else None)
    assert share.problems == []


def test_archive_stored_entries_and_nested_folder(tmp_path: Path) -> None:
    arch = make_archive([event_bytes(3)])
    write_zip(
        tmp_path / "a.zip", {f"archive-2024/{k}": v for k, v in arch.entries().items()}, method=zipfile.ZIP_STORED
    )
    share = read_share_file(tmp_path / "a.zip", LIMITS)
    assert share.batches[0].mid == arch.mids[0] and len(share.batches[0].events) == 3
    assert any("inside folder" in p for p in share.problems)


def test_archive_soft_problems(tmp_path: Path) -> None:
    arch = make_archive([event_bytes(2), event_bytes(2)])
    arch.manifest["archive"]["count"] = 5
    arch.manifest["archive"]["items"].append({"file": "x.ecar", "objectType": "content", "contentEncoding": "none"})
    first = arch.manifest["archive"]["items"][0]
    del first["eventsCount"]
    entries = arch.entries() | {"stray.txt": b"hello"}
    write_zip(tmp_path / "a.zip", entries)
    share = read_share_file(tmp_path / "a.zip", LIMITS)
    assert len(share.batches) == 2 and share.manifest_events is None
    text = "\n".join(share.problems)
    for needle in ("archive.count", "type 'content'", "no eventsCount", "stray.txt"):
        assert needle in text


def test_gsa_per_contract(tmp_path: Path) -> None:
    path = tmp_path / "tm_device_1582808084950.gsa"
    batches = [event_bytes(200), event_bytes(5)]
    export_id = str(uuid.uuid4())
    mids = build_gsa(path, batches, export_id=export_id)
    con = sqlite3.connect(path)
    assert {r[0] for r in con.execute("SELECT typeof(data) FROM processed_telemetry")} == {"text"}
    con.close()
    before = (path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(tmp_path)))
    share = read_share_file(path, LIMITS)
    assert share.format == FORMAT_GSA
    assert [b.mid for b in share.batches] == mids
    assert [b.events for b in share.batches] == batches
    assert [b.expected_count for b in share.batches] == [200, 5]
    assert (share.device_id, share.export_id, share.manifest_events) == (DID, export_id, 205)
    assert share.problems == []
    assert before == (path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(tmp_path)))  # read-only


@pytest.mark.parametrize("kind", ["envelope", "array", "ndjson"])
@pytest.mark.parametrize("gzipped", [False, True])
def test_plain_formats(tmp_path: Path, kind: str, gzipped: bool) -> None:
    events = event_bytes(7)
    path = build_plain(tmp_path / "export.json", events, kind, gzipped=gzipped)
    share = read_share_file(path, LIMITS)
    expected = {"envelope": "envelope-json", "array": "event-array-json", "ndjson": "ndjson"}[kind]
    assert share.format == expected + ("+gzip" if gzipped else "")
    assert all_events(share) == events
    assert (share.batches[0].mid is not None) == (kind == "envelope")


def test_single_event_object_and_non_objects(tmp_path: Path) -> None:
    (tmp_path / "one.json").write_bytes(b'  {"eid":"LOG","mid":"m1"}\n')
    share = read_share_file(tmp_path / "one.json", LIMITS)
    assert (share.format, all_events(share)) == ("ndjson", [b'{"eid":"LOG","mid":"m1"}'])
    (tmp_path / "mixed.json").write_bytes(b'[1, "x", null, {"eid":"LOG"}, [2]]')
    assert all_events(read_share_file(tmp_path / "mixed.json", LIMITS)) == [
        b"1",
        b'"x"',
        b"null",
        b'{"eid":"LOG"}',
        b"[2]",
    ]


def test_format_detection_ignores_name(tmp_path: Path) -> None:
    build_archive(tmp_path / "notes.txt", [event_bytes(2)])
    build_gsa(tmp_path / "photo.zip", [event_bytes(2)])
    build_plain(tmp_path / "archive.zip", event_bytes(2), "ndjson", gzipped=True)
    build_plain(tmp_path / "legacy.gsa", event_bytes(2), "array")
    got = {
        p: read_share_file(tmp_path / p, LIMITS).format for p in ("notes.txt", "photo.zip", "archive.zip", "legacy.gsa")
    }
    assert got == {
        "notes.txt": FORMAT_ARCHIVE,
        "photo.zip": FORMAT_GSA,
        "archive.zip": "ndjson+gzip",
        "legacy.gsa": "event-array-json",
    }


# ---- byte exactness ------------------------------------------------------------------------------------------


def test_byte_exact_in_archive_and_gsa(tmp_path: Path) -> None:
    odd = odd_events()
    arch = make_archive([odd], mangled=True)
    mid = arch.mids[0]
    arch.files[mid] = gzip.compress(mobile_envelope(odd, mid, sep=b" ,\n\t ")).decode("latin-1").encode()
    write_zip(tmp_path / "a.zip", arch.entries())
    assert all_events(read_share_file(tmp_path / "a.zip", LIMITS)) == odd
    build_gsa(tmp_path / "a.gsa", [odd])
    assert all_events(read_share_file(tmp_path / "a.gsa", LIMITS)) == odd


@pytest.mark.parametrize("kind", ["envelope", "array", "ndjson"])
def test_byte_exact_plain(tmp_path: Path, kind: str) -> None:
    odd = odd_events()
    data = b"\r\n".join(odd) + b"\r\n" if kind == "ndjson" else plain_bytes(odd, kind)
    (tmp_path / "x").write_bytes(b"\xef\xbb\xbf" + data)  # with a BOM, as Windows editors save
    assert all_events(read_share_file(tmp_path / "x", LIMITS)) == odd


# ---- export --------------------------------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    batches = [event_bytes(200), odd_events(), event_bytes(3)]
    seen: list[int] = []

    def stream() -> Iterator[list[bytes]]:
        for b in batches:
            seen.append(len(b))
            yield b

    out = tmp_path / "archive-export.zip"
    report = write_archive(out, stream(), producer=PRODUCER, device_id="hub-1")
    assert (report.out, report.batches, report.events, report.size) == (out, 3, 208, out.stat().st_size)
    assert os.listdir(tmp_path) == ["archive-export.zip"]
    share = read_share_file(out, LIMITS)
    assert share.problems == [] and share.device_id == "hub-1" and share.manifest_events == 208
    assert [b.events for b in share.batches] == batches
    assert [b.mid for b in share.batches] == report.mids
    with zipfile.ZipFile(out) as z:
        manifest = json.loads(z.read("manifest.json"))
        assert (manifest["id"], manifest["ver"], manifest["producer"]) == ("sunbird.data.archive", "1.0", PRODUCER)
        assert manifest["archive"]["count"] == 3
        for item, mid, n in zip(manifest["archive"]["items"], report.mids, (200, 5, 3)):
            raw = z.read(item["file"])
            assert item["file"] == item["mid"] == mid and item["eventsCount"] == n
            assert item["size"] == len(raw) and item["objectType"] == "telemetry"
            assert item["contentEncoding"] == "gzip"
            env = json.loads(gzip.decompress(raw))
            assert env["params"] == {"did": "hub-1", "msgid": mid, "key": "", "requesterId": ""}
            assert (env["id"], env["ver"], env["mid"], len(env["events"])) == ("ekstep.telemetry", "1.0", mid, n)
    uuid.UUID(report.mids[0], version=4)


def test_export_failure_leaves_nothing(tmp_path: Path) -> None:
    def broken() -> Iterator[list[bytes]]:
        yield event_bytes(2)
        raise RuntimeError("store went away")

    with pytest.raises(RuntimeError):
        write_archive(tmp_path / "x.zip", broken(), producer=PRODUCER, device_id="hub-1")
    with pytest.raises(ValueError, match="nothing to export"):
        write_archive(tmp_path / "x.zip", [[], []], producer=PRODUCER, device_id="hub-1")
    with pytest.raises(ValueError, match="not a JSON object"):
        write_archive(tmp_path / "x.zip", [[b"[1]"]], producer=PRODUCER, device_id="hub-1")
    assert os.listdir(tmp_path) == []


# ---- hostile and corrupt files -------------------------------------------------------------------------------

Case = Callable[[Path], tuple[Path, ShareLimits]]


def _archive_with(tmp: Path, edit: Callable[[dict, dict], None], batches=None) -> Path:
    arch = make_archive(batches or [event_bytes(22)])
    edit(arch.manifest, arch.files)
    return write_zip(tmp / "bad-archive.zip", arch.entries())


def _first(m: dict) -> dict:
    return m["archive"]["items"][0]


def _truncated(tmp: Path) -> tuple[Path, ShareLimits]:
    build_archive(tmp / "full.zip", [event_bytes(50)])
    data = (tmp / "full.zip").read_bytes()
    (tmp / "cut.zip").write_bytes(data[: len(data) // 2])
    return tmp / "cut.zip", LIMITS


def _gzip_bomb_batch(tmp: Path) -> tuple[Path, ShareLimits]:
    arch = make_archive([event_bytes(1)])
    entries = [(k, v) for k, v in arch.entries().items() if k == "manifest.json"]
    return raw_zip(
        tmp / "gzbomb.zip", [deflated_entry(*entries[0]), stored_entry(arch.mids[0], gzip_zeros(1024 * MiB))]
    ), LIMITS


def _gsa_variant(**kw) -> Case:
    def make(tmp: Path) -> tuple[Path, ShareLimits]:
        build_gsa(tmp / "tm_x.gsa", [event_bytes(5), event_bytes(3)], **kw)
        return tmp / "tm_x.gsa", LIMITS

    return make


def _file(name: str, data: bytes, limits: ShareLimits = LIMITS) -> Case:
    def make(tmp: Path) -> tuple[Path, ShareLimits]:
        (tmp / name).write_bytes(data)
        return tmp / name, limits

    return make


def _zip_of(entries, name: str = "bad-archive.zip", limits: ShareLimits = LIMITS) -> Case:
    def make(tmp: Path) -> tuple[Path, ShareLimits]:
        return write_zip(tmp / name, entries() if callable(entries) else entries), limits

    return make


def _set(key, value):
    def edit(m: dict, files: dict) -> None:
        _first(m)[key] = value

    return lambda tmp: (_archive_with(tmp, edit), LIMITS)


def _batch_content(data: bytes) -> Case:
    def edit(m: dict, files: dict) -> None:
        files[_first(m)["file"]] = data

    return lambda tmp: (_archive_with(tmp, edit), LIMITS)


def _manifest(data: bytes) -> Case:
    def make(tmp: Path) -> tuple[Path, ShareLimits]:
        arch = make_archive([event_bytes(2)])
        return write_zip(tmp / "bad-archive.zip", {"manifest.json": data, **arch.files}), LIMITS

    return make


def _built(batches: list[list[bytes]], limits: ShareLimits) -> Case:
    def make(tmp: Path) -> tuple[Path, ShareLimits]:
        build_archive(tmp / "big.zip", batches)
        return tmp / "big.zip", limits

    return make


def _missing_file(tmp: Path) -> tuple[Path, ShareLimits]:
    return _archive_with(tmp, lambda m, files: files.clear()), LIMITS


DEEP = b'{"events":[' + b"[" * 100_000 + b"]" * 100_000 + b"]}"

HOSTILE: dict[str, tuple[Case, str]] = {
    "truncated-zip": (_truncated, "truncated or corrupt"),
    "zip-bomb-lying-size": (lambda tmp: (zip_bomb(tmp / "bomb.zip"), LIMITS), "zip bomb"),
    "zip-bomb-declared": (lambda tmp: (zip_bomb(tmp / "bomb.zip", declared=1024 * MiB), LIMITS), "declares"),
    "gzip-bomb-in-batch": (_gzip_bomb_batch, "zip bomb"),
    "gzip-bomb-plain": (_file("bomb.json.gz", gzip_zeros(1024 * MiB)), "zip bomb"),
    "over-uncompressed-limit": (
        _built([event_bytes(200)] * 3, ShareLimits(max_uncompressed_bytes=300_000)),
        "share.max_uncompressed_bytes",
    ),
    "dotdot-name": (_zip_of({"manifest.json": b"{}", "../evil": b"x"}), "'..'"),
    "absolute-name": (_zip_of({"/etc/cron.d/x": b"x", "manifest.json": b"{}"}), "absolute path"),
    "backslash-name": (_zip_of({"manifest.json": b"{}", "..\\evil": b"x"}), "backslash"),
    "duplicate-names": (_zip_of([("manifest.json", b"{}"), ("manifest.json", b"{}")]), "two entries"),
    "encrypted-entry": (
        lambda tmp: (raw_zip(tmp / "enc.zip", [RawEntry(b"manifest.json", b"xx", 0, 0, 2, 1)]), LIMITS),
        "encrypted",
    ),
    "too-many-entries": (_built([event_bytes(1)] * 6, ShareLimits(max_entries=5)), "share.max_entries"),
    "empty-zip": (_zip_of({}), "empty"),
    "no-manifest": (_zip_of({"abc": gzip.compress(b'{"events":[]}')}), "manifest.json is missing"),
    "manifest-not-json": (_manifest(b'{"id": "sunbird.data.archive", '), "manifest.json is not valid JSON"),
    "manifest-wrong-id": (_manifest(b'{"id": "ekstep.content.archive", "archive": {}}'), "expected 'sunbird.data"),
    "manifest-no-items": (_manifest(b'{"id": "sunbird.data.archive", "archive": {"count": 0}}'), "archive.items"),
    "manifest-no-telemetry": (_set("objectType", "content"), "nothing to import"),
    "manifest-not-gzip": (_set("contentEncoding", "identity"), "contentEncoding 'identity'"),
    "manifest-file-missing": (_missing_file, "missing from the ZIP"),
    "manifest-unsafe-file": (_set("file", "../../etc/passwd"), "contains '..'"),
    "manifest-count-lies": (_set("eventsCount", 23), "says 23 events but the batch holds 22"),
    "batch-not-gzip": (_batch_content(b'{"events":[]}'), "is not gzip data"),
    "batch-corrupt-gzip": (_batch_content(gzip.compress(b'{"events":[]}')[:-6] + b"garbage"), "corrupt gzip"),
    "batch-truncated-gzip": (_batch_content(gzip.compress(mobile_envelope(event_bytes(20), "m"))[:300]), "truncated"),
    "batch-bad-json": (_batch_content(gzip.compress(b'{"events":[{"eid":"LOG"},')), "not valid JSON"),
    "batch-not-utf8": (_batch_content(gzip.compress(b'{"events":[{"x":"\xff"}]}')), "not UTF-8"),
    "batch-not-envelope": (_batch_content(gzip.compress(b'{"eid":"LOG"}')), "not a telemetry envelope"),
    "batch-events-not-array": (
        _batch_content(gzip.compress(b'{"events":{"a":1}}')),
        "'events' field that is not an array",
    ),
    "batch-deep-json": (_batch_content(gzip.compress(DEEP)), "nested too deeply"),
    "batch-nan": (_batch_content(gzip.compress(b'{"events":[{"x":NaN}]}')), "NaN is not allowed"),
    "gsa-garbage": (_file("tm_x.gsa", b"SQLite format 3\x00" + os.urandom(3000)), "corrupt"),
    "gsa-no-tables": (_gsa_variant(tables=()), "table 'meta_data' is missing"),
    "gsa-no-telemetry-table": (_gsa_variant(tables=("meta_data",)), "table 'processed_telemetry' is missing"),
    "gsa-not-telemetry": (_gsa_variant(meta={"types": '["content"]'}), "holds no telemetry"),
    "gsa-meta-without-types": (
        _gsa_variant(meta={k: None for k in ("version", "types", "did", "export_id", "events_count")}),
        "holds no telemetry",
    ),
    "gsa-row-count-lies": (_gsa_variant(counts=[5, 4]), "event_count says 4 events but the batch holds 3"),
    "gsa-total-lies": (_gsa_variant(meta={"events_count": "9"}), "events_count 9 but its batches hold 8"),
    "too-large-file": (
        _file("big.json", b"[" + b"1," * 1000 + b"1]", ShareLimits(max_file_bytes=1000)),
        "share.max_file_bytes",
    ),
    "too-many-events": (
        _file("many.json", b"[" + b"1," * 1000 + b"1]", ShareLimits(max_events=100)),
        "share.max_events",
    ),
    "deep-json": (_file("deep.json", DEEP), "nested too deeply"),
    "nan": (_file("nan.json", b'[{"eid":"LOG","x":NaN}]'), "NaN is not allowed"),
    "infinity-ndjson": (_file("inf.ndjson", b'{"a":1}\n{"x":-Infinity}\n'), "-Infinity is not allowed"),
    "huge-int": (_file("int.json", b'[{"x":' + b"9" * 5000 + b"}]"), "not valid JSON"),
    "trailing-data": (_file("t.json", b'{"events":[{"a":1}]} {"b":2}'), "unexpected data after the JSON envelope"),
    "random-bytes": (_file("r.bin", b"\x00\x01garbage" + os.urandom(100)), "not a recognised Share Telemetry"),
    "empty-file": (_file("e.zip", b""), "empty"),
    "plain-not-utf8": (_file("p.json", b'[{"x":"\xc3\x28"}]'), "not UTF-8"),
    "missing-file": (lambda tmp: (tmp / "nope.zip", LIMITS), "cannot read the file"),
    "directory": (lambda tmp: (tmp, LIMITS), "cannot read the file"),
    "fifo": (lambda tmp: (os.mkfifo(tmp / "pipe.zip") or tmp / "pipe.zip", LIMITS), "not a regular file"),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_files_are_refused(tmp_path: Path, case: str) -> None:
    make, reason = HOSTILE[case]
    path, limits = make(tmp_path)
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(ShareFileError) as info:
            read_share_file(path, limits)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(info.value)
    assert msg.startswith(f"{path.name}: "), msg
    assert reason in msg, msg
    assert "internal error" not in msg
    assert info.value.reason in msg
    assert peak < 48 * MiB, f"{case} used {peak / MiB:.0f} MiB"
    assert time.monotonic() - started < 5


def test_count_error_names_the_batch(tmp_path: Path) -> None:
    arch = make_archive([event_bytes(22), event_bytes(3)])
    arch.manifest["archive"]["items"][1]["eventsCount"] = 4
    write_zip(tmp_path / "a.zip", arch.entries())
    with pytest.raises(ShareFileError, match=f"batch {arch.mids[1]}: manifest.json says 4 events"):
        read_share_file(tmp_path / "a.zip", LIMITS)


# ---- fuzz: nothing but ShareFileError escapes -----------------------------------------------------------------


def _bases() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        build_archive(tmp / "deflated.zip", [event_bytes(4), event_bytes(2)], mangled=True)
        build_archive(tmp / "stored.zip", [event_bytes(3)], style="desktop", method=zipfile.ZIP_STORED)
        build_gsa(tmp / "x.gsa", [event_bytes(3)])
        build_plain(tmp / "x.ndjson.gz", event_bytes(3), "ndjson", gzipped=True)
        (tmp / "env.json").write_bytes(desktop_envelope(odd_events()))
        return {p.name: p.read_bytes() for p in tmp.iterdir()}


BASES = _bases()
INNER = make_archive([odd_events(), event_bytes(2)])
INNER_PARTS = {
    "manifest": json.dumps(INNER.manifest, indent=1).encode(),
    "batch": gzip.decompress(INNER.files[INNER.mids[0]]),
}
FUZZ_LIMITS = ShareLimits(max_uncompressed_bytes=4 * MiB, max_events=10_000, max_entries=50)
OPS = ["flip", "set", "insert", "delete", "delete", "duplicate", "truncate"]


def _check_fuzz(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "fuzz.bin"
        path.write_bytes(data)
        try:
            share = read_share_file(path, FUZZ_LIMITS)
        except ShareFileError as exc:
            assert str(exc).startswith("fuzz.bin: ") and "internal error" not in str(exc), str(exc)
            return
        for ev in all_events(share):
            json.loads(ev)


def _mutate(data: bytearray, draw: st.DrawFn) -> bytes:
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        op = draw(st.sampled_from(OPS))
        i = draw(st.integers(0, len(data) - 1))
        n = draw(st.integers(1, 16))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[i] = draw(st.sampled_from(b'\x00\xff{}[]",:\\ 0e-N.'))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=n))
        elif op == "delete":
            del data[i : i + n]
        elif op == "duplicate":
            data[i:i] = data[i : i + n]
        else:
            del data[i:]
    return bytes(data)


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    return _mutate(bytearray(BASES[draw(st.sampled_from(sorted(BASES)))]), draw)


@st.composite
def mutated_contents(draw: st.DrawFn) -> bytes:
    """Valid ZIP and gzip layers around a mutated manifest or envelope, to reach the JSON checks."""
    part = draw(st.sampled_from(sorted(INNER_PARTS)))
    data = _mutate(bytearray(INNER_PARTS[part]), draw)
    entries = INNER.entries()
    if part == "manifest":
        entries["manifest.json"] = data
    else:
        entries[INNER.mids[0]] = gzip.compress(data)
    with tempfile.TemporaryDirectory() as d:
        return write_zip(Path(d) / "x.zip", entries).read_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(mutated_files(), mutated_contents()))
def test_fuzz_mutations(data: bytes) -> None:
    _check_fuzz(data)


@settings(max_examples=150, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=400),
        st.sampled_from(
            [b"PK\x03\x04", b"PK\x05\x06", b"SQLite format 3\x00", b"\x1f\x8b", b"{", b"[", b"\xef\xbb\xbf"]
        ).flatmap(lambda head: st.binary(max_size=300).map(lambda tail: head + tail)),
    )
)
def test_fuzz_random_bytes(data: bytes) -> None:
    _check_fuzz(data)
