"""replay/verify.py and `embedguard verify`: a clean bundle verifies offline with
pinned keys; each tamper makes it fail, naming the event (or the file)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from capture.signing_keys import load_signing_key
from embedguard.cli import app
from replay.bundle_sign import (
    MANIFEST,
    canonical_json,
    file_digests,
    read_manifest,
    sign_manifest,
)
from replay.verify import verify_bundle
from schemas.note import Signer
from tests.replay.conftest import Bundle, Scenario

runner = CliRunner()


def _verify(path: Path, scenario: Scenario, bundle: Bundle) -> tuple[int, str]:
    res = runner.invoke(
        app,
        ["verify", str(path), "--vkey", scenario.gateway_vkey, "--export-vkey", bundle.export_vkey],
    )
    assert "Traceback" not in res.output
    return res.exit_code, res.stdout


def test_clean_bundle_verifies(bundle: Bundle, scenario: Scenario) -> None:
    report = verify_bundle(bundle.path, [scenario.gateway_vkey], [bundle.export_vkey])
    assert report.ok, [str(f) for f in report.errors]
    m = read_manifest(bundle.path)
    assert report.events == m["row_counts"]["events"] == report.inclusion_verified
    assert report.checkpoints_verified >= 1
    code, out = _verify(bundle.path, scenario, bundle)
    assert code == 0 and ": OK:" in out
    # the gateway stopped cleanly: every user session ended, and ships whole
    assert report.sessions_open == 0 and report.sessions_whole >= len(scenario.sessions)
    assert not [f for f in report.findings if f.kind.startswith("session_")]
    assert f"({report.sessions_whole} whole, 0 without their end)" in out


def test_a_session_shipped_without_its_end_is_named(
    bundle: Bundle, scenario: Scenario, tmp_path: Path
) -> None:
    """An exporter that leaves out a session's tail (here its SessionEnded) and
    signs the rest: every shipped event still verifies, so the bundle is OK,
    but verify says the session is not shown whole and names its last event."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    sid = scenario.sessions["carol"]
    t = _events(copy)
    rows = _rows_of(t, sid)
    types = t.column("type").to_pylist()
    (end,) = [i for i in rows if types[i] == "SessionEnded"]
    assert end == rows[-1]
    gone, last = t.column("event_id")[end].as_py(), t.column("event_id")[rows[-2]].as_py()
    _write_events(copy, t.take([i for i in range(t.num_rows) if i != end]))
    index = json.loads((copy / "index.json").read_text())
    (copy / "index.json").write_text(json.dumps([e for e in index if e["event_id"] != gone]))
    m = read_manifest(copy)
    m["row_counts"]["events"] -= 1
    m["sessions"][sid].update(events=m["sessions"][sid]["events"] - 1, last_event=last)
    m["files"] = file_digests(copy)
    sign_manifest(copy, m, load_signing_key(bundle.export_key))

    report = verify_bundle(copy, [scenario.gateway_vkey], [bundle.export_vkey])
    assert report.ok, [str(f) for f in report.errors]
    (warn,) = [f for f in report.findings if f.kind == "session_open"]
    assert warn.severity == "warning" and warn.session_id == sid and warn.event_id == last
    assert "left out" in warn.detail and "export it again" in warn.detail
    assert report.sessions_open == 1
    assert report.sessions_whole == bundle_whole(bundle, scenario) - 1
    code, out = _verify(copy, scenario, bundle)
    assert code == 0 and "1 without their end" in out and last in out


def bundle_whole(bundle: Bundle, scenario: Scenario) -> int:
    return verify_bundle(bundle.path, [scenario.gateway_vkey], [bundle.export_vkey]).sessions_whole


def test_clean_zip_verifies_and_wrong_gateway_key_fails(
    bundle: Bundle, scenario: Scenario, tmp_path: Path
) -> None:
    z = shutil.make_archive(str(tmp_path / "b"), "zip", bundle.path)
    assert verify_bundle(Path(z), [scenario.gateway_vkey], [bundle.export_vkey]).ok
    other = Signer.generate("embedguard-gateway-other").verifier.vkey
    report = verify_bundle(Path(z), [other], [bundle.export_vkey])
    assert not report.ok
    assert {f.kind for f in report.errors} >= {"checkpoint_signature"}


def _events(path: Path) -> pa.Table:
    return pq.read_table(path / "events.parquet")


def _write_events(path: Path, table: pa.Table) -> None:
    pq.write_table(table, path / "events.parquet")


def _rows_of(table: pa.Table, session_id: str) -> list[int]:
    return [i for i, s in enumerate(table.column("session_id").to_pylist()) if s == session_id]


def delete_one_event(path: Path, sc: Scenario) -> str:
    t = _events(path)
    i = _rows_of(t, sc.sessions["carol"])[2]
    victim = t.column("event_id")[i].as_py()
    _write_events(path, pa.concat_tables([t.slice(0, i), t.slice(i + 1)]))
    return str(victim)


def flip_body_byte(path: Path, sc: Scenario) -> str:
    t = _events(path)
    carol = _rows_of(t, sc.sessions["carol"])
    types = t.column("type").to_pylist()
    resp = next(i for i in carol if types[i] == "ResponseRecorded")
    sha = t.column("body_sha256")[resp].as_py()
    bodies = pq.read_table(path / "bodies.parquet")
    shas = bodies.column("sha256").to_pylist()
    k = shas.index(sha)
    data = bytearray(bodies.column("body")[k].as_py())
    data[len(data) // 2] ^= 0x01
    col = bodies.column("body").to_pylist()
    col[k] = bytes(data)
    idx = bodies.schema.get_field_index("body")
    pq.write_table(
        bodies.set_column(idx, "body", pa.array(col, pa.binary())), path / "bodies.parquet"
    )
    return str(t.column("event_id")[resp].as_py())


def reorder_two_events(path: Path, sc: Scenario) -> str:
    t = _events(path)
    i, j = _rows_of(t, sc.sessions["carol"])[3:5]
    order = list(range(t.num_rows))
    order[i], order[j] = order[j], order[i]
    _write_events(path, t.take(order))
    return str(t.column("event_id")[i].as_py())  # the later event now comes first


def drop_a_session(path: Path, sc: Scenario) -> str:
    t = _events(path)
    gone = set(_rows_of(t, sc.sessions["dave"]))
    _write_events(path, t.take([i for i in range(t.num_rows) if i not in gone]))
    return sc.sessions["dave"]


def replace_manifest(path: Path, sc: Scenario) -> str:
    m = read_manifest(path)
    m["row_counts"]["events"] -= 1
    (path / MANIFEST).write_bytes(canonical_json(m))
    return MANIFEST


def sign_with_wrong_key(path: Path, sc: Scenario) -> str:
    m = read_manifest(path)
    sign_manifest(path, m, Signer.generate("embedguard-export"))
    return "manifest.sig"


@pytest.mark.parametrize(
    ("tamper", "kinds"),
    [
        (delete_one_event, {"event_missing", "file_altered"}),
        (flip_body_byte, {"body_altered", "file_altered"}),
        (reorder_two_events, {"reordered", "file_altered"}),
        (drop_a_session, {"session_missing", "file_altered"}),
        (replace_manifest, {"manifest_replaced"}),
        (sign_with_wrong_key, {"manifest_signature"}),
    ],
    ids=lambda v: v.__name__ if callable(v) else "",
)
def test_tampering_is_found_and_named(
    tamper: Callable[[Path, Scenario], str],
    kinds: set[str],
    bundle: Bundle,
    scenario: Scenario,
    tmp_path: Path,
) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    named = tamper(copy, scenario)
    report = verify_bundle(copy, [scenario.gateway_vkey], [bundle.export_vkey])
    assert not report.ok
    found = {f.kind for f in report.errors}
    assert kinds <= found, [str(f) for f in report.errors]
    named_in = [
        f for f in report.errors if named in (f.event_id, f.session_id, f.where) and f.kind in kinds
    ]
    assert named_in, (named, [str(f) for f in report.errors])
    code, out = _verify(copy, scenario, bundle)
    assert code == 1 and named in out and "FAILED" in out


def test_expired_body_is_reported_as_such_not_as_tampering(
    bundle: Bundle, scenario: Scenario, tmp_path: Path
) -> None:
    """A body that expired before the export: listed as unavailable in the
    signed manifest, absent from bodies.parquet; the bundle still verifies."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    bodies = pq.read_table(copy / "bodies.parquet")
    expired = bodies.column("sha256")[0].as_py()
    pq.write_table(bodies.slice(1), copy / "bodies.parquet")
    m = read_manifest(copy)
    m["bodies_unavailable"] = [*m["bodies_unavailable"], expired]
    m["files"] = file_digests(copy)
    sign_manifest(copy, m, load_signing_key(bundle.export_key))
    report = verify_bundle(copy, [scenario.gateway_vkey], [bundle.export_vkey])
    assert report.ok, [str(f) for f in report.errors]
    notices = [f for f in report.findings if f.kind == "body_unavailable"]
    assert notices and all(f.severity == "warning" for f in notices)
    assert expired in notices[0].detail and "not tampering" in notices[0].detail


def test_verify_the_live_warehouse(scenario: Scenario) -> None:
    res = runner.invoke(
        app,
        ["verify", "--warehouse", scenario.lake_url, "--vkey", scenario.gateway_vkey, "--json"],
    )
    out = json.loads(res.stdout)
    assert res.exit_code == 0, res.output
    assert out["ok"] and out["checkpoints_verified"] >= 1 and out["events"] > 0
    other = Signer.generate("embedguard-gateway-other").verifier.vkey
    bad = runner.invoke(app, ["verify", "--warehouse", scenario.lake_url, "--vkey", other])
    assert bad.exit_code == 1 and "checkpoint" in bad.stdout


def test_verify_needs_pinned_keys(bundle: Bundle, scenario: Scenario) -> None:
    res = runner.invoke(app, ["verify", str(bundle.path), "--vkey", scenario.gateway_vkey])
    assert res.exit_code == 2 and "--export-vkey" in res.stderr
    res = runner.invoke(app, ["verify", str(bundle.path)])
    assert res.exit_code == 2 and "--vkey" in res.stderr


def test_warehouse_body_altered_is_named(scenario: Scenario, tmp_path: Path) -> None:
    """The scenario's log loaded into a fresh lake, then one stored response
    body overwritten in its Delta table: verify --warehouse names its event."""
    import asyncio

    import deltalake

    from pipeline.transport import open_log
    from pipeline.transport.base import LogRecord
    from pipeline.warehouse import LoadBatch
    from pipeline.warehouse.lake import LakeWarehouse
    from replay.verify import verify_warehouse

    async def read() -> list[LogRecord]:
        async with open_log(scenario.log_url) as lg:
            reader = lg.tail_reader()
            async with reader:
                out: list[LogRecord] = []
                while batch := await reader.poll(max_records=5000, timeout=0.3):
                    out.extend(batch)
                return out

    records = asyncio.run(read())
    root = tmp_path / "lake"
    with LakeWarehouse(root) as wh:
        wh.migrate()
        wh.write_batch(
            LoadBatch(
                "sqlite:copy",
                0,
                [LogRecord(0, i, r.key, r.value, r.timestamp_ms) for i, r in enumerate(records)],
            )
        )
        assert verify_warehouse(wh, [scenario.gateway_vkey]).ok
        victim = wh.query(
            "SELECT sha256, event_id FROM {bodies} WHERE kind = 'response' "
            "ORDER BY event_id LIMIT 1",
            {},
        )[0]
    deltalake.DeltaTable(str(root / "bodies")).update(
        updates={"body": "CAST('tampered' AS BYTEA)"},
        predicate=f"sha256 = '{victim['sha256']}'",
    )
    with LakeWarehouse(root) as wh:
        report = verify_warehouse(wh, [scenario.gateway_vkey])
    assert not report.ok
    (f,) = report.errors
    assert f.kind == "body_altered" and f.event_id == victim["event_id"]


# -- events no signed checkpoint vouches for -------------------------------------------------


def _stream_with_checkpoint_then_tail(tmp_path: Path, *, tail: bool, checkpoint: bool
                                      ) -> tuple[str, Signer]:
    """A lake of one gateway stream: alice's write, then (``checkpoint``) a
    checkpoint signed by the returned gateway key over it, then (``tail``)
    bob's write, which no checkpoint covers (recorded after the last one, or
    forged by whoever can write the log: a hash chain has no key)."""
    from datetime import UTC, datetime, timedelta

    from replay.verify_core import leaf_hash
    from schemas.chain import EventStamper
    from schemas.codec import default_codec
    from schemas.merkle import root_of
    from schemas.models import Checkpoint
    from schemas.note import CheckpointBody, checkpoint_origin
    from tests.embedguard.hostile import lake_of, write_request

    t0 = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
    gw_key = Signer.generate("embedguard-gateway-gw-t")
    stamper = EventStamper("gw-t")
    stamped = write_request(stamper, "s-alice", "r-alice", "alice", "kb", t0)
    if checkpoint:
        leaves = [default_codec().decode(s.wire) for s in stamped]
        body = CheckpointBody(checkpoint_origin("gw-t", str(leaves[0].event.envelope.event_id)),
                              len(leaves), root_of([leaf_hash(d) for d in leaves]))
        stamped.append(stamper.stamp(
            Checkpoint, session_id="gateway:gw-t", origin=body.origin, tree_size=body.tree_size,
            root_hash=body.root_hash.hex(), signed_note=body.sign(gw_key),
            key_id=gw_key.verifier.id_text, occurred_at=t0 + timedelta(minutes=1)))
    if tail:
        stamped += write_request(stamper, "s-bob", "r-bob", "bob", "kb",
                                 t0 + timedelta(minutes=2))
    return lake_of(tmp_path / "lake", stamped, "sqlite:unproven-test"), gw_key


@pytest.mark.parametrize(("tail", "checkpoint"), [(True, True), (False, False)])
def test_events_no_checkpoint_covers_fail_unless_allowed(
    tmp_path: Path, tail: bool, checkpoint: bool
) -> None:
    """A tail after the last checkpoint, or a history with no checkpoint at all
    (re-recorded by someone who can write the log): nothing signed vouches for
    those events, so the bundle fails, naming them NOT PROVEN, until the
    auditor reads them knowingly with --allow-unproven."""
    lake, gw_key = _stream_with_checkpoint_then_tail(tmp_path, tail=tail, checkpoint=checkpoint)
    export_key = Signer.generate("embedguard-export")
    out = tmp_path / "bundle.zip"
    from pipeline.warehouse import open_warehouse
    from replay.export import ExportFilters, export_bundle

    with open_warehouse(lake) as wh:
        result = export_bundle(wh, out, filters=ExportFilters(), signer=export_key,
                               tool_version="test")
    assert result.unproven > 0
    report = verify_bundle(out, [gw_key.verifier.vkey], [export_key.verifier.vkey])
    assert not report.ok and {f.kind for f in report.errors} == {"not_proven"}
    assert {f.session_id for f in report.errors} == ({"s-bob"} if tail else {"s-alice"})
    args = ["verify", str(out), "--vkey", gw_key.verifier.vkey,
            "--export-vkey", export_key.verifier.vkey]
    failed = runner.invoke(app, args)
    assert failed.exit_code == 1 and "NOT PROVEN" in failed.stdout
    allowed = runner.invoke(app, [*args, "--allow-unproven"])
    assert allowed.exit_code == 0, allowed.stdout
    assert f"OK, but {result.unproven} event(s) NOT PROVEN" in " ".join(allowed.stdout.split())


@pytest.mark.parametrize(
    ("name", "content", "kind"),
    [
        ("events.parquet", b"not parquet at all", "file_malformed"),
        ("bodies.parquet", b"PAR1 garbage PAR1", "file_malformed"),
        ("index.json", b"[1]", "file_malformed"),
        ("checkpoints.json", b"{}", "file_malformed"),
        ("proofs/inclusion.json", b"[1]", "proofs_malformed"),
    ],
)
def test_a_malformed_file_is_a_finding_not_a_crash(
    name: str, content: bytes, kind: str, bundle: Bundle, scenario: Scenario, tmp_path: Path
) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    (copy / name).write_bytes(content)
    report = verify_bundle(copy, [scenario.gateway_vkey], [bundle.export_vkey])
    assert not report.ok
    assert {"file_altered", kind} <= {f.kind for f in report.errors}, report.errors
    code, out = _verify(copy, scenario, bundle)  # no traceback (checked there)
    assert code == 1 and "FAILED" in out


def test_an_altered_parquet_that_declares_a_huge_size_is_not_read(
    bundle: Bundle, scenario: Scenario, tmp_path: Path
) -> None:
    """A few kB that decompress to hundreds of MB: after its sha256 failed, the
    file is not decompressed to be diagnosed."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    n = 200_000
    table = pa.table({"event_id": pa.array(["x" * 1000] * n), "session_id": ["s"] * n,
                      "seq": pa.array([0] * n, pa.int64()), "raw": pa.array([b""] * n)})
    pq.write_table(table, copy / "events.parquet", compression="zstd",
                   use_dictionary=False)
    assert (copy / "events.parquet").stat().st_size < 2_000_000
    report = verify_bundle(copy, [scenario.gateway_vkey], [bundle.export_vkey])
    malformed = [f for f in report.errors if f.kind == "file_malformed"]
    assert malformed and "not read" in malformed[0].detail


def test_a_referenced_body_neither_shipped_nor_declared_unavailable_fails(
    bundle: Bundle, scenario: Scenario, tmp_path: Path
) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    bodies = pq.read_table(copy / "bodies.parquet")
    gone = bodies.column("sha256")[0].as_py()
    pq.write_table(bodies.slice(1), copy / "bodies.parquet")
    report = verify_bundle(copy, [scenario.gateway_vkey], [bundle.export_vkey])
    missing = [f for f in report.errors if f.kind == "body_missing"]
    assert missing and gone in missing[0].detail and missing[0].event_id


def test_export_ships_every_body_its_events_reference_even_if_a_derived_row_lost_it(
    tmp_path: Path,
) -> None:
    """The bodies come from the events' own bytes, not only from the derived
    requests table: nulling a row's body columns there drops nothing."""
    import io
    import zipfile

    import deltalake

    from pipeline.warehouse import open_warehouse
    from replay.export import ExportFilters, export_bundle

    lake, gw_key = _stream_with_checkpoint_then_tail(tmp_path, tail=False, checkpoint=True)
    lake_dir = Path(lake.split(":", 1)[1])
    deltalake.DeltaTable(str(lake_dir / "requests")).update(
        updates={"request_body_size": "CAST(NULL AS BIGINT)",
                 "response_body_size": "CAST(NULL AS BIGINT)"},
        predicate="request_id = 'r-alice'")
    export_key = Signer.generate("embedguard-export")
    out = tmp_path / "b.zip"
    with open_warehouse(lake) as wh:
        export_bundle(wh, out, filters=ExportFilters(), signer=export_key, tool_version="test")
    from schemas.codec import default_codec

    with zipfile.ZipFile(out) as z:
        events = pq.read_table(io.BytesIO(z.read("events.parquet"))).column("raw").to_pylist()
        held = set(pq.read_table(io.BytesIO(z.read("bodies.parquet"))).column("sha256")
                   .to_pylist())
    referenced = {e.body_sha256 for e in (default_codec().decode(r).event for r in events)
                  if getattr(e, "body_sha256", None) and getattr(e, "body_size", 0)}
    assert referenced and referenced <= held
    assert verify_bundle(out, [gw_key.verifier.vkey], [export_key.verifier.vkey]).ok


@pytest.mark.parametrize("tables", [("events",), ("requests",), ("requests", "events", "sessions")])
def test_a_derived_column_that_contradicts_the_signed_bytes_fails(
    tmp_path: Path, tables: tuple[str, ...]
) -> None:
    """Whoever can write the warehouse can rewrite its convenience columns
    (the subject, here) while every event's raw bytes, chain and proof stay
    intact; the bundle's tables must then not verify."""
    import deltalake

    from pipeline.warehouse import open_warehouse
    from replay.export import ExportFilters, export_bundle

    lake, gw_key = _stream_with_checkpoint_then_tail(tmp_path, tail=False, checkpoint=True)
    lake_dir = Path(lake.split(":", 1)[1])
    for table in tables:
        deltalake.DeltaTable(str(lake_dir / table)).update(
            updates={"subject": "'mallory'"}, predicate="subject = 'alice'")
    export_key = Signer.generate("embedguard-export")
    out = tmp_path / "b.zip"
    with open_warehouse(lake) as wh:
        export_bundle(wh, out, filters=ExportFilters(), signer=export_key, tool_version="test")
    report = verify_bundle(out, [gw_key.verifier.vkey], [export_key.verifier.vkey])
    import io
    import zipfile

    with zipfile.ZipFile(out) as z:
        shown = {n: pq.read_table(io.BytesIO(z.read(n))).drop_columns(
                     [c for c in ("raw",) if c in pq.read_table(io.BytesIO(z.read(n))).column_names]
                 ).to_pylist()
                 for n in ("events.parquet", "requests.parquet", "lineage.parquet")}
    if "mallory" not in repr(shown):  # the rewritten column is not one the bundle copies
        assert report.ok
        return
    wrong = [f for f in report.errors if f.kind == "projection_mismatch"]
    assert wrong and all("mallory" in f.detail and "alice" in f.detail for f in wrong)
    assert {f.kind for f in report.errors} == {"projection_mismatch"}
    assert report.inclusion_verified > 0  # the raw events themselves are intact


def test_a_rewritten_payload_json_fails_key_by_key(tmp_path: Path) -> None:
    import deltalake

    from pipeline.warehouse import open_warehouse
    from replay.export import ExportFilters, export_bundle

    lake, gw_key = _stream_with_checkpoint_then_tail(tmp_path, tail=False, checkpoint=True)
    lake_dir = Path(lake.split(":", 1)[1])
    deltalake.DeltaTable(str(lake_dir / "events")).update(
        updates={"payload_json": "'{\"path\": \"/collections/other/points\"}'"},
        predicate="type = 'RequestReceived'")
    export_key = Signer.generate("embedguard-export")
    out = tmp_path / "b.zip"
    with open_warehouse(lake) as wh:
        export_bundle(wh, out, filters=ExportFilters(), signer=export_key, tool_version="test")
    report = verify_bundle(out, [gw_key.verifier.vkey], [export_key.verifier.vkey])
    assert [f.kind for f in report.errors] == ["projection_mismatch"]
    assert "payload_json says path='/collections/other/points'" in report.errors[0].detail


@pytest.mark.parametrize(("column", "value", "shown"), [
    ("path", "'/collections/other/points'", "path says '/collections/other/points'"),
    ("status", "CAST(500 AS INT)", "status says 500"),
    ("method", "'DELETE'", "method says 'DELETE'"),
])
def test_a_rewritten_request_column_fails(
    tmp_path: Path, column: str, value: str, shown: str
) -> None:
    import deltalake

    from pipeline.warehouse import open_warehouse
    from replay.export import ExportFilters, export_bundle

    lake, gw_key = _stream_with_checkpoint_then_tail(tmp_path, tail=False, checkpoint=True)
    lake_dir = Path(lake.split(":", 1)[1])
    deltalake.DeltaTable(str(lake_dir / "requests")).update(
        updates={column: value}, predicate=f"{column} IS NOT NULL")
    export_key = Signer.generate("embedguard-export")
    out = tmp_path / "b.zip"
    with open_warehouse(lake) as wh:
        export_bundle(wh, out, filters=ExportFilters(), signer=export_key, tool_version="test")
    report = verify_bundle(out, [gw_key.verifier.vkey], [export_key.verifier.vkey])
    assert report.errors and {f.kind for f in report.errors} == {"projection_mismatch"}
    assert any(shown in f.detail for f in report.errors), [f.detail for f in report.errors]


@pytest.mark.parametrize(("updates", "shown"), [
    ({"action": "'delete'"}, "action says 'delete', the operation 'write'"),
    ({"bulk": "true"}, "bulk says True, the operation False"),
    ({"op_index": "CAST(3 AS INT)"}, "op_index 3 is not an operation"),
])
def test_a_rewritten_lineage_row_fails(
    tmp_path: Path, updates: dict[str, str], shown: str
) -> None:
    """"Who deleted this vector?" must not be answerable with a write turned
    into a delete in the warehouse's lineage table."""
    import deltalake

    from pipeline.warehouse import open_warehouse
    from replay.export import ExportFilters, export_bundle

    lake, gw_key = _stream_with_checkpoint_then_tail(tmp_path, tail=False, checkpoint=True)
    lake_dir = Path(lake.split(":", 1)[1])
    deltalake.DeltaTable(str(lake_dir / "vector_lineage")).update(
        updates=updates, predicate="request_id = 'r-alice'")
    export_key = Signer.generate("embedguard-export")
    out = tmp_path / "b.zip"
    with open_warehouse(lake) as wh:
        export_bundle(wh, out, filters=ExportFilters(), signer=export_key, tool_version="test")
    import io
    import zipfile

    with zipfile.ZipFile(out) as z:
        rows = pq.read_table(io.BytesIO(z.read("lineage.parquet"))).to_pylist()
    assert rows, "the export must carry the rewritten lineage row"
    report = verify_bundle(out, [gw_key.verifier.vkey], [export_key.verifier.vkey])
    assert report.errors and {f.kind for f in report.errors} == {"projection_mismatch"}
    assert any(shown in f.detail for f in report.errors), [f.detail for f in report.errors]
