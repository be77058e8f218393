"""Avro codec for events.

Wire formats, told apart by the first byte:

* ``C3 01`` + 8-byte CRC-64-AVRO fingerprint + body: Avro single-object
  encoding, used when no schema registry is configured. It is also the
  *canonical* form that the hash chain covers, whatever the wire framing.
* ``00`` + 4-byte big-endian schema id + body: Confluent framing, used with a
  schema registry.

Readers resolve the writer's schema (the current one, one frozen under
``schemas/fixtures/``, or the registry's) against the current reader schema, so
events written by every earlier version still decode.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import fastavro.schema
import fastavro.validation
from pydantic import ValidationError

from schemas.models import EVENT_TYPES, Event
from schemas.registry import SchemaRegistryClient

__all__ = [
    "AVSC_DIR",
    "CONFLUENT_MAGIC",
    "FIXTURES_DIR",
    "SINGLE_OBJECT_MAGIC",
    "DecodeError",
    "DecodedEvent",
    "EventCodec",
    "EventSchema",
    "InvalidEvent",
    "SchemaSet",
    "default_codec",
    "event_from_json",
    "event_to_json",
    "load_event_schemas",
]

AVSC_DIR = Path(__file__).parent / "avsc"
FIXTURES_DIR = Path(__file__).parent / "fixtures"
NAMESPACE = "embedguard"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = b"\x00"
CURRENT = "current"


class InvalidEvent(ValueError):
    """An event that does not fit its schema. The message names the field."""


class DecodeError(ValueError):
    """Bytes that are not a decodable embedguard event."""


@dataclass(frozen=True)
class EventSchema:
    type_name: str
    version: str
    schema: dict[str, Any]
    canonical: str
    fingerprint: bytes
    parsed: Any

    @property
    def full_name(self) -> str:
        return f"{NAMESPACE}.{self.type_name}"

    @property
    def fingerprint_hex(self) -> str:
        return self.fingerprint.hex()

    @classmethod
    def from_schema(cls, schema: dict[str, Any], version: str) -> EventSchema:
        parsed: dict[str, Any] = fastavro.parse_schema(schema, named_schemas={})  # type: ignore[assignment]
        canonical = fastavro.schema.to_parsing_canonical_form(parsed)
        fp = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
        full = str(parsed["name"])
        return cls(full.rsplit(".", 1)[-1], version, schema, canonical, fp, parsed)


def _is_event_schema(schema: Mapping[str, Any]) -> bool:
    fields = schema.get("fields") or []
    return bool(fields) and fields[0].get("name") == "envelope"


def load_event_schemas(avsc_dir: Path = AVSC_DIR, version: str = CURRENT) -> dict[str, EventSchema]:
    """Parse every event schema in ``avsc_dir`` (named types resolved from their
    ``embedguard.<Name>.avsc`` files) and return them by type name."""
    out: dict[str, EventSchema] = {}
    for path in sorted(avsc_dir.glob(f"{NAMESPACE}.*.avsc")):
        raw = json.loads(path.read_text())
        if not _is_event_schema(raw):
            continue
        expanded = fastavro.schema.load_schema(str(path), _write_hint=False)
        full = fastavro.schema.expand_schema(expanded)
        if not isinstance(full, dict):
            raise InvalidEvent(f"{path}: an event schema must be a record")
        es = EventSchema.from_schema(full, version)
        out[es.type_name] = es
    return out


def load_fixture_schemas(fixtures_dir: Path = FIXTURES_DIR) -> list[EventSchema]:
    """Every frozen schema of every earlier version (``fixtures/<v>/<Type>.avsc``)."""
    out: list[EventSchema] = []
    if not fixtures_dir.is_dir():
        return out
    for vdir in sorted(p for p in fixtures_dir.iterdir() if p.is_dir()):
        for path in sorted(vdir.glob("*.avsc")):
            out.append(EventSchema.from_schema(json.loads(path.read_text()), vdir.name))
    return out


class SchemaSet:
    """Current reader schemas plus every known writer schema, by fingerprint."""

    def __init__(self, avsc_dir: Path = AVSC_DIR, fixtures_dir: Path = FIXTURES_DIR) -> None:
        self.current = load_event_schemas(avsc_dir)
        self.by_fingerprint: dict[bytes, EventSchema] = {}
        for es in load_fixture_schemas(fixtures_dir):
            self.by_fingerprint.setdefault(es.fingerprint, es)
        for es in self.current.values():
            self.by_fingerprint[es.fingerprint] = es  # current wins on identical text
        missing = set(EVENT_TYPES) - set(self.current)
        if missing:
            raise InvalidEvent(f"no schema in {avsc_dir} for event types: {sorted(missing)}")

    def writer(self, fingerprint: bytes) -> EventSchema:
        try:
            return self.by_fingerprint[fingerprint]
        except KeyError:
            raise DecodeError(
                f"unknown schema fingerprint {fingerprint.hex()}: the event was written with a "
                "schema this reader does not know (a newer embedguard, or a schema that was "
                "changed without `embedguard schemas freeze`); upgrade the reader"
            ) from None


@dataclass(frozen=True)
class DecodedEvent:
    event: Event
    #: hex CRC-64-AVRO fingerprint of the schema the event was written with
    fingerprint: str
    writer_version: str
    #: the single-object bytes as written: what the hash chain covers
    canonical: bytes


def _avro_error(exc: Exception, event_type: str) -> str:
    text = str(exc)
    return f"{event_type}: {text}" if text else f"{event_type}: {type(exc).__name__}"


class EventCodec:
    """Encode and decode events. Schemas are parsed once, at construction."""

    def __init__(
        self,
        *,
        registry: SchemaRegistryClient | None = None,
        schemas: SchemaSet | None = None,
    ) -> None:
        self.schemas = schemas or SchemaSet()
        self.registry = registry
        self._registry_ids: dict[str, int] = {}
        self._registry_writers: dict[int, EventSchema] = {}

    # -- encoding -----------------------------------------------------------
    def _schema_for(self, event: Event) -> EventSchema:
        try:
            return self.schemas.current[event.avro_name]
        except KeyError:
            raise InvalidEvent(f"unknown event type {event.avro_name!r}") from None

    def body(self, event: Event) -> bytes:
        """Schemaless Avro bytes of the event under the current schema."""
        es = self._schema_for(event)
        datum = event.model_dump(mode="python")
        buf = io.BytesIO()
        try:
            fastavro.schemaless_writer(buf, es.parsed, datum)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            # Name the field: the validator walks the datum and reports its path.
            try:
                fastavro.validation.validate(datum, es.parsed, raise_errors=True)
            except fastavro.validation.ValidationError as verr:
                raise InvalidEvent(_avro_error(verr, es.type_name)) from None
            raise InvalidEvent(_avro_error(exc, es.type_name)) from None
        return buf.getvalue()

    def canonical(self, event: Event) -> bytes:
        """Single-object encoding: the form the hash chain covers."""
        es = self._schema_for(event)
        return SINGLE_OBJECT_MAGIC + es.fingerprint + self.body(event)

    def encode(self, event: Event) -> bytes:
        """Wire bytes: Confluent framing with a registry, single-object without."""
        if self.registry is None:
            return self.canonical(event)
        es = self._schema_for(event)
        schema_id = self._registry_ids.get(es.type_name)
        if schema_id is None:
            schema_id = self.registry.register(es.full_name, json.dumps(es.schema))
            self._registry_ids[es.type_name] = schema_id
            self._registry_writers[schema_id] = es
        return CONFLUENT_MAGIC + struct.pack(">I", schema_id) + self.body(event)

    # -- decoding -----------------------------------------------------------
    def _confluent_writer(self, schema_id: int) -> EventSchema:
        if schema_id in self._registry_writers:
            return self._registry_writers[schema_id]
        if self.registry is None:
            raise DecodeError(
                f"event uses Confluent framing (schema id {schema_id}) but no schema registry "
                "is configured; set EMBEDGUARD_SCHEMA_REGISTRY"
            )
        text = self.registry.get_schema(schema_id)
        try:
            es = EventSchema.from_schema(json.loads(text), f"registry:{schema_id}")
        except (ValueError, fastavro.schema.SchemaParseException) as exc:
            raise DecodeError(f"registry schema {schema_id} does not parse: {exc}") from None
        known = self.schemas.by_fingerprint.get(es.fingerprint)
        es = known or es
        self._registry_writers[schema_id] = es
        return es

    def decode(self, data: bytes) -> DecodedEvent:
        if data[:2] == SINGLE_OBJECT_MAGIC and len(data) >= 10:
            writer = self.schemas.writer(data[2:10])
            payload = data[10:]
        elif data[:1] == CONFLUENT_MAGIC and len(data) >= 5:
            writer = self._confluent_writer(struct.unpack(">I", data[1:5])[0])
            payload = data[5:]
        else:
            raise DecodeError(
                f"not an embedguard event: first bytes {data[:2].hex() or '(empty)'} are neither "
                "Avro single-object (c301) nor Confluent framing (00)"
            )
        reader = self.schemas.current.get(writer.type_name)
        if reader is None:
            raise DecodeError(f"event type {writer.type_name!r} is no longer known to this reader")
        buf = io.BytesIO(payload)
        try:
            record = fastavro.schemaless_reader(buf, writer.parsed, reader.parsed)
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types on bad bytes
            raise DecodeError(
                f"{writer.type_name} ({writer.fingerprint_hex}) body does not decode: {exc!r}"
            ) from None
        if buf.tell() != len(payload):
            raise DecodeError(
                f"{writer.type_name}: {len(payload) - buf.tell()} trailing bytes after the record"
            )
        try:
            event = EVENT_TYPES[writer.type_name].model_validate(record)
        except ValidationError as exc:
            raise DecodeError(f"{writer.type_name}: {_pydantic_error(exc)}") from None
        return DecodedEvent(
            event=event,
            fingerprint=writer.fingerprint_hex,
            writer_version=writer.version,
            canonical=SINGLE_OBJECT_MAGIC + writer.fingerprint + payload,
        )


def _pydantic_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "(event)"
        parts.append(f"field {loc}: {err['msg']}")
    more = exc.error_count() - 5
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def event_from_json(obj: Mapping[str, Any]) -> Event:
    """Validate a JSON object (the shape ``event_to_json`` prints) into an event.

    Bytes are base64. Raises InvalidEvent naming the offending field, or the
    unknown type.
    """
    if not isinstance(obj, Mapping):
        raise InvalidEvent(f"an event must be a JSON object, not {type(obj).__name__}")
    env = obj.get("envelope")
    if not isinstance(env, Mapping):
        raise InvalidEvent("field envelope: missing; every event needs an envelope object")
    type_name = env.get("type")
    cls = EVENT_TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        raise InvalidEvent(
            f"field envelope.type: unknown event type {type_name!r}; "
            f"known types are {', '.join(sorted(EVENT_TYPES))}"
        )
    try:
        return cls.model_validate_json(json.dumps(obj))
    except ValidationError as exc:
        raise InvalidEvent(f"{type_name}: {_pydantic_error(exc)}") from None


def event_to_json(event: Event) -> dict[str, Any]:
    """The event as a JSON-ready dict (bytes as base64, times as ISO 8601)."""
    return event.model_dump(mode="json")


_DEFAULT: EventCodec | None = None


def default_codec() -> EventCodec:
    """The process-wide codec (schemas parsed once). With
    EMBEDGUARD_SCHEMA_REGISTRY set it writes Confluent framing through that
    registry; without it, single-object encoding. It reads both either way."""
    global _DEFAULT
    if _DEFAULT is None:
        import os

        url = os.environ.get("EMBEDGUARD_SCHEMA_REGISTRY")
        _DEFAULT = EventCodec(registry=SchemaRegistryClient(url) if url else None)
    return _DEFAULT

