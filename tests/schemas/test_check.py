"""`embedguard schemas check` catches every kind of contract break."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from embedguard.cli import app
from schemas.check import check_schemas, compare_model
from schemas.codec import AVSC_DIR, FIXTURES_DIR, default_codec
from schemas.models import EVENT_TYPES, RequestBlocked


@pytest.fixture
def contract(tmp_path: Path) -> tuple[Path, Path]:
    avsc = tmp_path / "avsc"
    fixtures = tmp_path / "fixtures"
    shutil.copytree(AVSC_DIR, avsc)
    shutil.copytree(FIXTURES_DIR, fixtures)
    return avsc, fixtures


def edit(avsc: Path, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    path = avsc / f"embedguard.{name}.avsc"
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema))


def test_the_shipped_contract_checks() -> None:
    report = check_schemas()
    assert report.errors == []


def test_every_event_type_has_a_frozen_fixture_from_its_first_version() -> None:
    versions = sorted(p for p in FIXTURES_DIR.iterdir() if p.is_dir())
    assert versions and versions[0].name == "v1"
    for name in EVENT_TYPES:
        # the first frozen version that has the type (later types start later)
        first = next((v for v in versions if (v / f"{name}.avro").exists()), None)
        if first is None:
            continue  # a type added since the last freeze (`schemas check` notes it)
        data = (first / f"{name}.avro").read_bytes()
        decoded = default_codec().decode(data)
        assert decoded.writer_version in (first.name, "current")
        assert decoded.event.avro_name == name
    # every type of v1 is still a type
    assert {p.stem for p in (FIXTURES_DIR / "v1").glob("*.avro")} <= set(EVENT_TYPES)


def test_compatible_change_passes(contract: tuple[Path, Path]) -> None:
    avsc, fixtures = contract

    def add_optional(s: dict[str, Any]) -> None:
        s["fields"].append({"name": "note", "type": ["null", "string"], "default": None})

    edit(avsc, "RequestBlocked", add_optional)
    report = check_schemas(avsc, fixtures)
    # The model lacks the field, so the model check fails, not compatibility.
    assert any("RequestBlocked: fields differ" in e for e in report.errors)


@pytest.mark.parametrize(
    ("name", "change", "needle"),
    [
        ("RequestBlocked", lambda s: s["fields"][1].update(type="string"), "RequestBlocked.status"),
        ("RequestBlocked", lambda s: s["fields"].pop(), "fields differ"),
        (
            "Envelope",
            lambda s: s["fields"].__setitem__(-1, {"name": "request_id", "type": "string"}),
            "request_id",
        ),
        ("ActionClass", lambda s: s["symbols"].remove("admin"), "enum symbols differ"),
    ],
)
def test_model_schema_disagreement_fails(
    contract: tuple[Path, Path], name: str, change: Callable[[dict[str, Any]], None], needle: str
) -> None:
    avsc, fixtures = contract
    edit(avsc, name, change)
    report = check_schemas(avsc, fixtures)
    assert not report.ok
    assert any(needle in e for e in report.errors), report.errors


def test_unparseable_schema_fails(contract: tuple[Path, Path]) -> None:
    avsc, fixtures = contract
    (avsc / "embedguard.RequestBlocked.avsc").write_text("{not json")
    report = check_schemas(avsc, fixtures)
    assert any("does not parse" in e for e in report.errors)


def _incompatible(fixtures: Path, name: str, change: Callable[[dict[str, Any]], None]) -> None:
    # Rewrite the *frozen* schema as if an earlier version had differed; the
    # sample keeps matching it so the fixture itself stays valid.
    import io

    import fastavro

    from schemas.codec import SINGLE_OBJECT_MAGIC, EventSchema

    path = fixtures / "v1" / f"{name}.avsc"
    schema = json.loads(path.read_text())
    change(schema)
    path.write_text(json.dumps(schema))
    es = EventSchema.from_schema(schema, "v1")
    record = json.loads((fixtures / "v1" / f"{name}.json").read_text())
    datum = EVENT_TYPES[name].model_validate_json(json.dumps(record)).model_dump(mode="python")
    for f in schema["fields"]:
        datum.setdefault(f["name"], "old")
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, es.parsed, datum)
    (fixtures / "v1" / f"{name}.avro").write_bytes(
        SINGLE_OBJECT_MAGIC + es.fingerprint + buf.getvalue()
    )


def test_field_added_without_default_is_incompatible(contract: tuple[Path, Path]) -> None:
    avsc, fixtures = contract
    # v1 lacked 'stage'; the current schema adds it with no default.
    _incompatible(fixtures, "RequestBlocked", lambda s: s["fields"].pop())
    report = check_schemas(avsc, fixtures)
    assert any("v1/RequestBlocked.stage: new field has no default" in e for e in report.errors), (
        report.errors
    )
    assert any("backward" in e for e in report.errors)


def test_field_removed_without_default_is_incompatible(contract: tuple[Path, Path]) -> None:
    avsc, fixtures = contract
    # v1 had a required field the current schema no longer writes.
    _incompatible(
        fixtures,
        "RequestBlocked",
        lambda s: s["fields"].append({"name": "severity", "type": "string"}),
    )
    report = check_schemas(avsc, fixtures)
    assert any("forward" in e and "RequestBlocked" in e for e in report.errors), report.errors


def test_type_change_is_incompatible(contract: tuple[Path, Path]) -> None:
    avsc, fixtures = contract
    _incompatible(fixtures, "RequestBlocked", lambda s: s["fields"][2].update(type="boolean"))
    # fix the sample: 'error' is a boolean in "v1"
    report = check_schemas(avsc, fixtures)
    assert not report.ok


def test_compare_model_reports_optional_mismatch() -> None:
    es = default_codec().schemas.current["RequestBlocked"]
    schema = json.loads(json.dumps(es.schema))
    schema["fields"][2]["type"] = ["null", "string"]
    schema["fields"][2]["default"] = None
    from schemas.codec import EventSchema

    errors = compare_model(RequestBlocked, EventSchema.from_schema(schema, "x"))
    assert any("RequestBlocked.error: schema is optional" in e for e in errors)


def test_cli_check_exit_codes() -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["schemas", "check", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["ok"] is True
