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

import copy
import dataclasses
import enum
import io
import json
import re
import struct
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from uuid import UUID

import fastavro
import fastavro.schema
import fastavro.validation
from pydantic import AwareDatetime, BaseModel, ValidationError
from pydantic.fields import FieldInfo

from schemas.models import EVENT_TYPES, Envelope, Event
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
    "RawEvent",
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


def _schemaless(es: EventSchema, datum: Mapping[str, Any], parsed: Any = None) -> bytes:
    """Schemaless Avro bytes of ``datum`` under ``es`` (a parsed event schema),
    or under ``parsed`` (a part of it); InvalidEvent naming the offending field
    if it does not fit."""
    schema = es.parsed if parsed is None else parsed
    buf = io.BytesIO()
    try:
        fastavro.schemaless_writer(buf, schema, datum)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
        # Name the field: the validator walks the datum and reports its path.
        try:
            fastavro.validation.validate(datum, schema, raise_errors=True)
        except fastavro.validation.ValidationError as verr:
            raise InvalidEvent(_avro_error(verr, es.type_name)) from None
        raise InvalidEvent(_avro_error(exc, es.type_name)) from None
    return buf.getvalue()


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
        #: (type, caller's body key) -> the checked Avro bytes of every field
        #: but the envelope (``record_bytes(body_key=...)``)
        self._bodies: dict[tuple[str, Hashable], bytes] = {}
        self._parts: dict[str, tuple[Any, Any]] = {}

    # -- encoding -----------------------------------------------------------
    def _schema_for(self, event: Event) -> EventSchema:
        try:
            return self.schemas.current[event.avro_name]
        except KeyError:
            raise InvalidEvent(f"unknown event type {event.avro_name!r}") from None

    def body(self, event: Event) -> bytes:
        """Schemaless Avro bytes of the event under the current schema."""
        es = self._schema_for(event)
        return _schemaless(es, event.model_dump(mode="python"))

    def _split(self, es: EventSchema) -> tuple[Any, Any]:
        """(envelope, rest) as two parsed schemas: an Avro record is its fields'
        encodings one after the other, so the envelope's bytes followed by a
        record of the remaining fields are the event's bytes (fastavro writes
        both; the rest's writer takes only its own fields from the record)."""
        parts = self._parts.get(es.type_name)
        if parts is None:
            fields = copy.deepcopy(es.schema["fields"])  # expanded: named types inline
            if fields[0]["name"] != "envelope":
                raise InvalidEvent(f"{es.type_name}: the first field is not the envelope")
            envelope = fastavro.parse_schema(fields[0]["type"], named_schemas={})
            rest = fastavro.parse_schema(
                {"type": "record", "name": f"{NAMESPACE}._{es.type_name}Body",
                 "fields": fields[1:]},
                named_schemas={},
            )
            parts = self._parts[es.type_name] = (envelope, rest)
        return parts

    def record_bytes(
        self, type_name: str, record: dict[str, Any], *, body_key: Hashable | None = None
    ) -> tuple[bytes, bytes]:
        """(canonical, wire) bytes of an event given as a plain record in its
        schema's shape: every field present, nested records as dicts,
        ``event_id`` a UUID or its string, times aware datetimes (what
        ``decode_raw`` returns). The gateway's hot path builds its events this way, without a
        pydantic model; the record is held to every constraint of its model
        (the same predicates ``decode_raw`` applies), and a record that fails
        one, or has a field too many or too few, is refused with the model's
        own message (InvalidEvent). The bytes equal ``canonical(event)`` and
        ``encode(event)`` for the model of the same values.

        ``body_key``, if given, must determine every field but the envelope
        exactly (equal keys, equal values of the same types): the checked
        bytes of those fields are then kept under it, and a record with a key
        seen before has only its envelope checked and encoded (the gateway's
        per-request events repeat their bodies). Bounded; cleared when full.
        """
        es = self.schemas.current.get(type_name)
        check = _RECORD_CHECKS.get(type_name)
        if es is None or check is None:
            raise InvalidEvent(f"unknown event type {type_name!r}")
        if body_key is not None:
            rest = self._bodies.get((type_name, body_key))
            env = record.get("envelope")
            if (
                rest is not None
                and record.keys() == _FIELD_NAMES[type_name]
                and isinstance(env, dict)
                and env.get("type") == type_name
                and _ENVELOPE_CHECK(env)
            ):
                body = _schemaless(es, env, self._split(es)[0]) + rest
                return self._framed(es, body)
        if record.keys() != _FIELD_NAMES[type_name]:
            record = _with_defaults(type_name, record)
        env = record.get("envelope")
        if not (
            record.keys() == _FIELD_NAMES[type_name]
            and isinstance(env, dict)
            and env.get("type") == type_name
            and check(record)
        ):
            try:
                EVENT_TYPES[type_name].model_validate(record)
            except ValidationError as exc:
                raise InvalidEvent(f"{type_name}: {_pydantic_error(exc)}") from None
            raise InvalidEvent(  # the model accepts what the record check does not
                f"{type_name}: the record does not have the schema's shape (fields "
                f"{sorted(record)}; expected {sorted(_FIELD_NAMES[type_name])})"
            )
        if body_key is None:
            body = _schemaless(es, record)
        else:
            envelope, rest_schema = self._split(es)
            rest = _schemaless(es, record, rest_schema)
            if len(self._bodies) >= 1024:
                self._bodies.clear()
            self._bodies[(type_name, body_key)] = rest
            body = _schemaless(es, record["envelope"], envelope) + rest
        return self._framed(es, body)

    def _framed(self, es: EventSchema, body: bytes) -> tuple[bytes, bytes]:
        canonical = SINGLE_OBJECT_MAGIC + es.fingerprint + body
        if self.registry is None:
            return canonical, canonical
        return canonical, CONFLUENT_MAGIC + struct.pack(">I", self._registry_id(es)) + body

    def _registry_id(self, es: EventSchema) -> int:
        assert self.registry is not None
        schema_id = self._registry_ids.get(es.type_name)
        if schema_id is None:
            schema_id = self.registry.register(es.full_name, json.dumps(es.schema))
            self._registry_ids[es.type_name] = schema_id
            self._registry_writers[schema_id] = es
        return schema_id

    def canonical(self, event: Event) -> bytes:
        """Single-object encoding: the form the hash chain covers."""
        es = self._schema_for(event)
        return SINGLE_OBJECT_MAGIC + es.fingerprint + self.body(event)

    def encode(self, event: Event) -> bytes:
        """Wire bytes: Confluent framing with a registry, single-object without."""
        if self.registry is None:
            return self.canonical(event)
        es = self._schema_for(event)
        return CONFLUENT_MAGIC + struct.pack(">I", self._registry_id(es)) + self.body(event)

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

    def _frame(self, data: bytes) -> tuple[EventSchema, EventSchema, bytes]:
        """(writer schema, reader schema, Avro body) of wire bytes."""
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
        return writer, reader, payload

    @staticmethod
    def _read(
        writer: EventSchema,
        reader: EventSchema,
        payload: bytes,
        named: EventSchema | None = None,
    ) -> dict[str, Any]:
        """Read ``payload`` written with ``writer`` as ``reader``; errors name
        ``named`` (the wire's writer schema), by default ``writer``."""
        named = named or writer
        buf = io.BytesIO(payload)
        try:
            # Same schema text: nothing to resolve, and fastavro reads faster.
            record: dict[str, Any] = fastavro.schemaless_reader(  # type: ignore[assignment]
                buf,
                writer.parsed,
                None if writer.fingerprint == reader.fingerprint else reader.parsed,
            )
        except Exception as exc:  # noqa: BLE001 - fastavro raises many types on bad bytes
            raise DecodeError(
                f"{named.type_name} ({named.fingerprint_hex}) body does not decode: {exc!r}"
            ) from None
        if buf.tell() != len(payload):
            raise DecodeError(
                f"{named.type_name}: {len(payload) - buf.tell()} trailing bytes after the record"
            )
        return record

    def decode(self, data: bytes) -> DecodedEvent:
        writer, reader, payload = self._frame(data)
        record = self._read(writer, reader, payload)
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

    def decode_raw(self, data: bytes) -> RawEvent:
        """Decode to the plain record (dicts, as fastavro reads it under the
        current reader schema) without building a pydantic model: the loader's
        fast path. The record is checked against every constraint of its model
        (``record_check``), so what ``decode`` refuses is refused here too, with
        the same message.

        ``envelope.event_id`` comes back as its canonical string, not a UUID:
        it is read as the plain Avro string it is on the wire (building a UUID
        and printing it again was a tenth of the decode) and only a string not
        in canonical form goes through ``UUID``, as fastavro would have, with
        the same error if it is none."""
        writer, reader, payload = self._frame(data)
        record = self._read(_plain(writer), _plain(reader), payload, writer)
        env = record.get("envelope")
        if isinstance(env, dict):
            eid = env.get("event_id")
            if type(eid) is str and _CANONICAL_UUID.fullmatch(eid) is None:
                try:
                    env["event_id"] = str(UUID(eid))
                except ValueError as exc:
                    raise DecodeError(
                        f"{writer.type_name} ({writer.fingerprint_hex}) body does not decode: "
                        f"{exc!r}"
                    ) from None
        if not (
            isinstance(env, dict)
            and env.get("type") == writer.type_name
            and _RECORD_CHECKS[writer.type_name](record)
        ):
            # Let the model name what is wrong (it is the reference); a record it
            # accepts after all is kept.
            try:
                EVENT_TYPES[writer.type_name].model_validate(record)
            except ValidationError as exc:
                raise DecodeError(f"{writer.type_name}: {_pydantic_error(exc)}") from None
        return RawEvent(
            type_name=writer.type_name,
            record=record,
            fingerprint=writer.fingerprint_hex,
            writer_version=writer.version,
            canonical=SINGLE_OBJECT_MAGIC + writer.fingerprint + payload,
        )


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PLAIN: dict[bytes, EventSchema] = {}


def _plain(es: EventSchema) -> EventSchema:
    """``es`` with the envelope's ``event_id`` read as a plain string (its
    ``uuid`` logical type dropped; the bytes on the wire are the same), so the
    same fingerprint: ``_read`` compares fingerprints to skip resolution."""
    plain = _PLAIN.get(es.fingerprint)
    if plain is not None:
        return plain
    schema = copy.deepcopy(es.schema)
    env = schema["fields"][0] if schema.get("fields") else None
    if isinstance(env, dict) and env.get("name") == "envelope" and isinstance(env["type"], dict):
        for field in env["type"].get("fields", []):
            if field.get("name") == "event_id" and isinstance(field.get("type"), dict):
                field["type"] = {k: v for k, v in field["type"].items() if k != "logicalType"}
    parsed = fastavro.parse_schema(schema, named_schemas={})
    plain = dataclasses.replace(es, schema=schema, parsed=parsed)
    _PLAIN[es.fingerprint] = plain
    return plain


@dataclass(frozen=True, slots=True)
class RawEvent:
    """An event decoded to its plain record (``EventCodec.decode_raw``)."""

    type_name: str
    #: the record under the current reader schema: envelope and body fields,
    #: timestamps as fastavro's logical type (aware datetime), the envelope's
    #: event_id as its canonical string
    record: dict[str, Any]
    fingerprint: str
    writer_version: str
    canonical: bytes

    def to_decoded(self) -> DecodedEvent:
        """The model form (what ``EventCodec.decode`` returns)."""
        return DecodedEvent(
            event=EVENT_TYPES[self.type_name].model_validate(self.record),
            fingerprint=self.fingerprint,
            writer_version=self.writer_version,
            canonical=self.canonical,
        )


# -- record checks: every constraint of the models, as plain predicates --------
_Check = Callable[[Any], bool]
_KNOWN_METADATA = {"pattern", "ge", "min_length"}


def _pattern_check(pattern: re.Pattern[str]) -> _Check:
    return lambda v: pattern.match(v) is not None


def _ge_check(bound: Any) -> _Check:
    return lambda v: bool(v >= bound)


def _min_length_check(n: int) -> _Check:
    return lambda v: len(v) >= n


def _optional(inner: _Check) -> _Check:
    return lambda v: v is None or inner(v)


def _each(inner: _Check) -> _Check:
    return lambda v: all(inner(x) for x in v)


def _constraint_check(metadata: list[Any], where: str) -> _Check | None:
    checks: list[_Check] = []
    for meta in metadata:
        if isinstance(meta, FieldInfo):
            inner = _constraint_check(list(meta.metadata), where)
            if inner is not None:
                checks.append(inner)
            continue
        names = {
            k
            for k in ("pattern", "ge", "gt", "le", "lt", "min_length", "max_length", "multiple_of")
            if getattr(meta, k, None) is not None
        }
        if names - _KNOWN_METADATA or not names:
            # A constraint this fast path does not check: refuse to build it
            # rather than accept what the model would refuse.
            raise TypeError(f"{where}: record_check cannot check {meta!r}")
        if (pattern := getattr(meta, "pattern", None)) is not None:
            checks.append(_pattern_check(re.compile(pattern)))
        if (ge := getattr(meta, "ge", None)) is not None:
            checks.append(_ge_check(ge))
        if (min_length := getattr(meta, "min_length", None)) is not None:
            checks.append(_min_length_check(min_length))
    if not checks:
        return None
    if len(checks) == 1:
        return checks[0]
    return lambda v: all(c(v) for c in checks)


def _type_check(annotation: Any, metadata: list[Any], where: str) -> _Check | None:
    """A predicate for one field's value, or None when any value Avro can
    deliver for it is valid."""
    origin = get_origin(annotation)
    if origin in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"{where}: record_check cannot check {annotation!r}")
        inner = _type_check(args[0], metadata, where)
        return None if inner is None else _optional(inner)
    if origin is Annotated:
        base, *meta = get_args(annotation)
        return _type_check(base, [*metadata, *meta], where)
    if origin is Literal:
        allowed = frozenset(get_args(annotation))
        return lambda v: v in allowed
    if origin is list:
        inner = _type_check(get_args(annotation)[0], [], where)
        return None if inner is None else _each(inner)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        values = frozenset(m.value for m in annotation)
        return lambda v: v in values
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return _model_check(annotation)
    if annotation is AwareDatetime:
        return lambda v: isinstance(v, datetime) and v.tzinfo is not None
    if annotation in (str, int, bool, bytes, UUID):
        # Avro delivers these types (uuid as UUID, or str from decode_raw's
        # plain envelope); only constraints remain.
        return _constraint_check(metadata, where)
    raise TypeError(f"{where}: record_check cannot check {annotation!r}")


def _model_check(model: type[BaseModel]) -> _Check:
    checks: list[tuple[str, _Check]] = []
    for name, field in model.model_fields.items():
        check = _type_check(field.annotation, list(field.metadata), f"{model.__name__}.{name}")
        if check is not None:
            checks.append((name, check))

    def check_record(record: Any) -> bool:
        try:
            for name, check in checks:
                if not check(record[name]):
                    return False
        except (KeyError, TypeError):
            return False
        return True

    return check_record


#: Per event type: does a decoded record satisfy every constraint of its model?
_RECORD_CHECKS: dict[str, _Check] = {name: _model_check(cls) for name, cls in EVENT_TYPES.items()}
#: Does an envelope record satisfy every constraint of Envelope?
_ENVELOPE_CHECK: _Check = _model_check(Envelope)
#: Per event type: the record's field names (``EventCodec.record_bytes`` wants all of them).
_FIELD_NAMES: dict[str, frozenset[str]] = {
    name: frozenset(cls.model_fields) for name, cls in EVENT_TYPES.items()
}


def _with_defaults(type_name: str, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with every missing field that has a default filled in (a
    field added to a schema later, with its default, does not break a caller
    that builds records); a missing required field stays missing."""
    fields = EVENT_TYPES[type_name].model_fields
    out = dict(record)
    for name in _FIELD_NAMES[type_name] - record.keys():
        if not fields[name].is_required():
            out[name] = fields[name].get_default(call_default_factory=True)
    return out


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
