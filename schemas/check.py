"""``embedguard schemas check`` and ``embedguard schemas freeze``.

check fails when
* a schema file does not parse, or an event type has no schema;
* a pydantic model and its schema disagree (field names and order, types,
  optionality, defaults, enum symbols);
* the current schemas cannot read what an earlier version wrote (backward), or
  an earlier version cannot read what the current one writes (forward); every
  version frozen under ``schemas/fixtures/<version>/`` is checked;
* a new field has no default, or an optional field is not ``["null", T]`` with
  a null default.

freeze writes the current schemas, one encoded sample per type and its JSON
under ``schemas/fixtures/<version>/`` so later versions are checked against it.
"""

from __future__ import annotations

import enum
import io
import json
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, get_args, get_origin
from uuid import UUID

import fastavro
import fastavro.schema
from pydantic import AwareDatetime, BaseModel

from schemas.codec import (
    AVSC_DIR,
    FIXTURES_DIR,
    SINGLE_OBJECT_MAGIC,
    EventCodec,
    EventSchema,
    SchemaSet,
    event_to_json,
    load_event_schemas,
)
from schemas.models import EVENT_TYPES
from schemas.samples import sample_event

__all__ = ["CheckReport", "check_schemas", "compare_model", "freeze"]


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


# -- model ↔ schema ---------------------------------------------------------


def _strip(annotation: Any) -> tuple[Any, bool]:
    """(inner annotation, optional?) with Annotated and Optional removed."""
    optional = False
    while True:
        origin = get_origin(annotation)
        if origin is typing.Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            optional = optional or len(args) < len(get_args(annotation))
            if len(args) != 1:
                return annotation, optional
            annotation = args[0]
        else:
            return annotation, optional


def _type_name(avro: Any) -> str:
    if isinstance(avro, dict):
        return str(avro.get("logicalType") or avro["type"])
    return str(avro)


def _compare_type(where: str, annotation: Any, avro: Any, errors: list[str]) -> None:
    if annotation is AwareDatetime:
        annotation = datetime
    origin = get_origin(annotation)
    if isinstance(avro, dict) and avro.get("type") == "array":
        if origin is not list:
            errors.append(f"{where}: schema has an array, model has {annotation!r}")
            return
        inner, opt = _strip(get_args(annotation)[0])
        _compare_type(f"{where}[]", inner, avro["items"], errors)
        return
    if isinstance(avro, dict) and avro.get("type") == "record":
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            errors.append(f"{where}: schema has record {avro['name']}, model has {annotation!r}")
            return
        _compare_record(where, annotation, avro, errors)
        return
    if isinstance(avro, dict) and avro.get("type") == "enum":
        if not (isinstance(annotation, type) and issubclass(annotation, enum.Enum)):
            errors.append(f"{where}: schema has enum {avro['name']}, model has {annotation!r}")
            return
        model_symbols = [str(m.value) for m in annotation]
        if model_symbols != list(avro["symbols"]):
            errors.append(
                f"{where}: enum symbols differ: model {model_symbols}, schema {avro['symbols']}"
            )
        return
    expected: dict[str, tuple[Any, ...]] = {
        "string": (str,),
        "uuid": (UUID,),
        "long": (int,),
        "int": (int,),
        "boolean": (bool,),
        "bytes": (bytes,),
        "double": (float,),
        "float": (float,),
        "timestamp-micros": (datetime,),
    }
    name = _type_name(avro)
    if name not in expected:
        errors.append(f"{where}: schema type {name!r} is not supported by the model checker")
        return
    if origin is Literal:
        if name != "string" or not all(isinstance(a, str) for a in get_args(annotation)):
            errors.append(
                f"{where}: model Literal{list(get_args(annotation))} needs a string schema"
            )
        return
    ok = isinstance(annotation, type) and issubclass(annotation, expected[name])
    if ok and name in ("long", "int") and annotation is bool:
        ok = False
    if not ok:
        errors.append(
            f"{where}: schema type {name}, model type {getattr(annotation, '__name__', annotation)}"
        )


def _compare_record(
    where: str, model: type[BaseModel], avro: dict[str, Any], errors: list[str]
) -> None:
    schema_fields = [f["name"] for f in avro["fields"]]
    model_fields = list(model.model_fields)
    if schema_fields != model_fields:
        missing = [f for f in schema_fields if f not in model_fields]
        extra = [f for f in model_fields if f not in schema_fields]
        errors.append(
            f"{where}: fields differ (missing in model: {missing}, not in schema: {extra}"
            + (", or order differs" if not missing and not extra else "")
            + ")"
        )
        return
    for f in avro["fields"]:
        name = f["name"]
        mf = model.model_fields[name]
        inner, optional = _strip(mf.annotation)
        ftype = f["type"]
        fwhere = f"{where}.{name}"
        schema_optional = isinstance(ftype, list)
        if schema_optional:
            if len(ftype) != 2 or ftype[0] != "null":
                errors.append(f'{fwhere}: optional fields must be ["null", T], got {ftype}')
                continue
            if f.get("default", "<none>") is not None:
                errors.append(f"{fwhere}: optional field must default to null")
            ftype = ftype[1]
        if schema_optional != optional:
            errors.append(
                f"{fwhere}: schema {'is' if schema_optional else 'is not'} optional, "
                f"model {'is' if optional else 'is not'}"
            )
            continue
        model_has_default = not mf.is_required()
        if "default" in f and not model_has_default:
            errors.append(f"{fwhere}: schema has default {f['default']!r}, model field is required")
        elif model_has_default and "default" not in f:
            errors.append(f"{fwhere}: model has default {mf.default!r}, schema has none")
        elif model_has_default and "default" in f:
            mdef = mf.default
            mdef = mdef.value if isinstance(mdef, enum.Enum) else mdef
            if mdef != f["default"]:
                errors.append(f"{fwhere}: default differs: model {mdef!r}, schema {f['default']!r}")
        _compare_type(fwhere, inner, ftype, errors)


def compare_model(model: type[BaseModel], es: EventSchema) -> list[str]:
    errors: list[str] = []
    _compare_record(es.type_name, model, es.schema, errors)
    return errors


# -- compatibility --------------------------------------------------------------


def _new_fields_have_defaults(
    old: dict[str, Any], new: dict[str, Any], where: str, errors: list[str]
) -> None:
    old_fields = {f["name"]: f for f in old.get("fields", [])}
    for f in new.get("fields", []):
        if f["name"] not in old_fields:
            if "default" not in f:
                errors.append(
                    f"{where}.{f['name']}: new field has no default; "
                    "readers of old events cannot fill it"
                )
            continue
        o, n = old_fields[f["name"]]["type"], f["type"]
        if (
            isinstance(o, dict)
            and isinstance(n, dict)
            and o.get("type") == n.get("type") == "record"
        ):
            _new_fields_have_defaults(o, n, f"{where}.{f['name']}", errors)


def _read(payload: bytes, writer: EventSchema, reader: EventSchema) -> Any:
    return fastavro.schemaless_reader(io.BytesIO(payload), writer.parsed, reader.parsed)


def check_schemas(avsc_dir: Path = AVSC_DIR, fixtures_dir: Path = FIXTURES_DIR) -> CheckReport:
    report = CheckReport()
    for path in sorted(avsc_dir.glob("*.avsc")):
        try:
            fastavro.schema.load_schema(str(path), _write_hint=False)
        except Exception as exc:  # noqa: BLE001 - report every failure, keep going
            report.errors.append(f"{path.name}: does not parse: {exc}")
    if report.errors:
        return report
    current = load_event_schemas(avsc_dir)
    for name, model in EVENT_TYPES.items():
        es = current.get(name)
        if es is None:
            report.errors.append(f"{name}: no schema file embedguard.{name}.avsc")
            continue
        report.errors.extend(compare_model(model, es))
    for name in set(current) - set(EVENT_TYPES):
        report.errors.append(f"{name}: schema has no pydantic model in schemas/models.py")
    if report.errors:
        return report

    codec = EventCodec(schemas=SchemaSet(avsc_dir, fixtures_dir))
    versions = (
        sorted(p for p in fixtures_dir.iterdir() if p.is_dir()) if fixtures_dir.is_dir() else []
    )
    if not versions:
        report.notes.append(
            "no frozen versions under schemas/fixtures/; run `embedguard schemas freeze v1`"
        )
    for vdir in versions:
        for avsc in sorted(vdir.glob("*.avsc")):
            name = avsc.stem
            where = f"{vdir.name}/{name}"
            old = EventSchema.from_schema(json.loads(avsc.read_text()), vdir.name)
            new = current.get(name)
            if new is None:
                report.errors.append(
                    f"{where}: event type was removed; old events could not be read"
                )
                continue
            _new_fields_have_defaults(old.schema, new.schema, where, report.errors)
            sample = vdir / f"{name}.avro"
            if not sample.exists():
                report.errors.append(f"{where}: fixture {sample.name} is missing")
                continue
            data = sample.read_bytes()
            if data[:2] != SINGLE_OBJECT_MAGIC or data[2:10] != old.fingerprint:
                report.errors.append(
                    f"{where}: fixture header does not carry the schema's fingerprint"
                )
                continue
            try:  # backward: new reader, old data
                decoded = codec.decode(data)
                expected_json = vdir / f"{name}.json"
                if expected_json.exists():
                    want = json.loads(expected_json.read_text())
                    got = event_to_json(decoded.event)
                    for key, value in want.items():
                        if key in got and got[key] != value and key != "envelope":
                            report.errors.append(
                                f"{where}: field {key} decodes as {got[key]!r}, "
                                f"was written as {value!r}"
                            )
            except Exception as exc:  # noqa: BLE001
                report.errors.append(
                    f"{where}: backward: current schema cannot read v{vdir.name} data: {exc}"
                )
            try:  # forward: old reader, new data
                _read(codec.body(sample_event(EVENT_TYPES[name])), new, old)
            except Exception as exc:  # noqa: BLE001
                report.errors.append(
                    f"{where}: forward: {vdir.name} readers cannot read current data: {exc}"
                )
        if versions and vdir == versions[-1]:
            changed = [
                n
                for n, es in current.items()
                if not (vdir / f"{n}.avsc").exists()
                or EventSchema.from_schema(
                    json.loads((vdir / f"{n}.avsc").read_text()), "x"
                ).fingerprint
                != es.fingerprint
            ]
            if changed:
                report.notes.append(
                    f"changed since {vdir.name}: {', '.join(sorted(changed))}; "
                    "freeze a new version before release"
                )
    return report


def freeze(version: str, avsc_dir: Path = AVSC_DIR, fixtures_dir: Path = FIXTURES_DIR) -> Path:
    """Write the current schemas and one sample per type under fixtures/<version>/."""
    if not version or "/" in version or version.startswith("."):
        raise ValueError(f"version {version!r} must be a plain name such as v2")
    out = fixtures_dir / version
    if out.exists():
        raise FileExistsError(f"{out} exists; frozen versions are never rewritten")
    out.mkdir(parents=True)
    codec = EventCodec(schemas=SchemaSet(avsc_dir, fixtures_dir))
    for name, es in load_event_schemas(avsc_dir).items():
        (out / f"{name}.avsc").write_text(json.dumps(es.schema, indent=1, sort_keys=True) + "\n")
        event = sample_event(EVENT_TYPES[name])
        (out / f"{name}.avro").write_bytes(codec.canonical(event))
        (out / f"{name}.json").write_text(
            json.dumps(event_to_json(event), indent=1, sort_keys=True) + "\n"
        )
    return out
