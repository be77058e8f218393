"""Every event type round-trips through fastavro and, byte for byte, through the
independent ``avro`` implementation; both wire framings decode; bad input is
refused with the field's name."""

from __future__ import annotations

import io
import json
import struct
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import avro.io
import avro.schema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    DecodeError,
    EventCodec,
    InvalidEvent,
    default_codec,
    event_from_json,
    event_to_json,
)
from schemas.models import EVENT_TYPES, Envelope, Operation, RequestReceived
from schemas.registry import RegistryError, SchemaRegistryClient
from schemas.samples import sample_event

TYPES = sorted(EVENT_TYPES)


@pytest.fixture(scope="module")
def codec() -> EventCodec:
    return default_codec()


@pytest.mark.parametrize("name", TYPES)
def test_round_trip_fastavro(codec: EventCodec, name: str) -> None:
    event = sample_event(EVENT_TYPES[name])
    wire = codec.encode(event)
    assert wire[:2] == SINGLE_OBJECT_MAGIC
    decoded = codec.decode(wire)
    assert decoded.event == event
    assert decoded.canonical == wire
    assert decoded.fingerprint == codec.schemas.current[name].fingerprint_hex


@pytest.mark.parametrize("name", TYPES)
def test_round_trip_independent_avro_byte_for_byte(codec: EventCodec, name: str) -> None:
    es = codec.schemas.current[name]
    apache = avro.schema.parse(json.dumps(es.schema))
    # avro-python's canonical form keeps {"type": "long"} for logical types,
    # which the spec reduces to "long"; fastavro follows the spec, so only the
    # CRC itself is compared (test_crc64_avro_vector), not the two forms.
    event = sample_event(EVENT_TYPES[name])
    body = codec.body(event)

    # fastavro bytes -> avro reads -> avro writes: identical bytes
    datum = avro.io.DatumReader(apache).read(avro.io.BinaryDecoder(io.BytesIO(body)))
    buf = io.BytesIO()
    avro.io.DatumWriter(apache).write(datum, avro.io.BinaryEncoder(buf))
    assert buf.getvalue() == body

    # avro's bytes decode with our codec into the same event
    decoded = codec.decode(SINGLE_OBJECT_MAGIC + es.fingerprint + buf.getvalue())
    assert decoded.event == event


@settings(max_examples=60, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    path=st.text(min_size=1, max_size=80),
    body=st.one_of(st.none(), st.binary(max_size=300)),
    ids=st.lists(st.text(max_size=20), max_size=5),
    limit=st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
)
def test_request_received_property_round_trip(
    method: str, path: str, body: bytes | None, ids: list[str], limit: int | None
) -> None:
    base = sample_event(RequestReceived)
    assert isinstance(base, RequestReceived)
    event = base.model_copy(
        update={
            "method": method,
            "path": path,
            "body": body,
            "operations": [Operation(action="write", collection="docs", ids=ids, limit=limit)],
        }
    )
    codec = default_codec()
    assert codec.decode(codec.encode(event)).event == event


def test_json_round_trip_keeps_bytes_and_times(codec: EventCodec) -> None:
    event = sample_event(RequestReceived)
    assert event_from_json(json.loads(json.dumps(event_to_json(event)))) == event


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda o: o["envelope"].update(type="NoSuchEvent"), "unknown event type 'NoSuchEvent'"),
        (lambda o: o.pop("envelope"), "field envelope"),
        (lambda o: o.update(body_sha256="short"), "field body_sha256"),
        (lambda o: o["envelope"].update(seq=-1), "field envelope.seq"),
        (
            lambda o: o["envelope"].update(occurred_at="2026-01-01T00:00:00"),
            "field envelope.occurred_at",
        ),
        (lambda o: o.update(surprise=1), "field surprise"),
        (lambda o: o["operations"][0].update(action="teleport"), "field operations.0.action"),
        (lambda o: o.pop("method"), "field method"),
    ],
)
def test_bad_events_name_the_field(mutate: object, needle: str) -> None:
    obj = event_to_json(sample_event(RequestReceived))
    mutate(obj)  # type: ignore[operator]
    with pytest.raises(InvalidEvent) as info:
        event_from_json(obj)
    assert needle in str(info.value)


def test_type_must_match_class() -> None:
    env = sample_event(RequestReceived).envelope.model_copy(update={"type": "PolicyDecided"})
    with pytest.raises(ValueError, match="envelope.type is 'PolicyDecided'"):
        RequestReceived(**{**sample_event(RequestReceived).__dict__, "envelope": env})


def test_out_of_range_long_is_refused_with_field_name(codec: EventCodec) -> None:
    event = sample_event(RequestReceived)
    bad = event.model_copy(update={"body_size": 2**70})  # bypasses validation like a bug would
    with pytest.raises(InvalidEvent, match="body_size"):
        codec.encode(bad)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "neither"),
        (b'{"json": true}', "neither"),
        (SINGLE_OBJECT_MAGIC + b"\x00" * 8 + b"\x02", "unknown schema fingerprint"),
        (CONFLUENT_MAGIC + struct.pack(">I", 7) + b"\x02", "no schema registry"),
    ],
)
def test_undecodable_bytes(codec: EventCodec, data: bytes, needle: str) -> None:
    with pytest.raises(DecodeError, match=needle):
        codec.decode(data)


def test_truncated_and_trailing_bodies_are_refused(codec: EventCodec) -> None:
    wire = codec.encode(sample_event(RequestReceived))
    with pytest.raises(DecodeError, match="does not decode"):
        codec.decode(wire[:-5])
    with pytest.raises(DecodeError, match="trailing bytes"):
        codec.decode(wire + b"\x00")


# -- Confluent framing through a schema registry ------------------------------------
# No Confluent/Karapace registry installs here (Karapace needs its own Kafka
# stack); this is a loopback HTTP server speaking the two REST calls the client
# uses, so the framing and the client's HTTP are exercised for real.


class _Registry(BaseHTTPRequestHandler):
    schemas: dict[int, str] = {}
    subjects: dict[tuple[str, str], int] = {}

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802
        subject = self.path.split("/")[2]
        schema = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["schema"]
        key = (subject, schema)
        if key not in self.subjects:
            self.subjects[key] = 100 + len(self.subjects)
            self.schemas[self.subjects[key]] = schema
        self._send(200, {"id": self.subjects[key]})

    def do_GET(self) -> None:  # noqa: N802
        schema_id = int(self.path.rsplit("/", 1)[1])
        if schema_id not in self.schemas:
            self._send(404, {"error_code": 40403, "message": "Schema not found"})
        else:
            self._send(200, {"schema": self.schemas[schema_id]})


@pytest.fixture
def registry_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_confluent_framing_round_trip(registry_url: str) -> None:
    writer = EventCodec(registry=SchemaRegistryClient(registry_url))
    event = sample_event(RequestReceived)
    wire = writer.encode(event)
    assert wire[:1] == CONFLUENT_MAGIC
    schema_id = struct.unpack(">I", wire[1:5])[0]
    assert schema_id >= 100
    # A fresh reader fetches the schema by id, and the stored fingerprint is the
    # same as with single-object encoding, so rows never depend on registry ids.
    reader = EventCodec(registry=SchemaRegistryClient(registry_url))
    decoded = reader.decode(wire)
    assert decoded.event == event
    assert decoded.canonical == default_codec().canonical(event)


def test_registry_errors_are_clear(registry_url: str) -> None:
    client = SchemaRegistryClient(registry_url)
    with pytest.raises(RegistryError, match="answered 404"):
        client.get_schema(99999)
    with pytest.raises(RegistryError, match="not http"):
        SchemaRegistryClient("ftp://x")
    dead = SchemaRegistryClient("http://user:hunter2@127.0.0.1:9/", timeout=1)
    with pytest.raises(RegistryError) as info:
        dead.get_schema(1)
    assert "unreachable" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_envelope_defaults() -> None:
    fields = Envelope.model_fields
    assert fields["request_id"].default is None


def test_crc64_avro_vector() -> None:
    # The single-object header carries the little-endian CRC-64-AVRO of the
    # Parsing Canonical Form; both implementations agree on the spec's vector.
    import fastavro.schema

    assert fastavro.schema.fingerprint('"int"', "CRC-64-AVRO") == "8f5c393f1ad57572"
    assert avro.schema.parse('"int"').fingerprint().hex() == "8f5c393f1ad57572"


def test_registry_setting_switches_the_default_codec(registry_url: str) -> None:
    import subprocess
    import sys

    code = (
        "from schemas.codec import default_codec, CONFLUENT_MAGIC;"
        "from schemas.samples import sample_event;from schemas.models import RequestBlocked;"
        "w=default_codec().encode(sample_event(RequestBlocked));"
        "assert w[:1]==CONFLUENT_MAGIC;"
        "assert default_codec().decode(w).event.avro_name=='RequestBlocked';"
        "print('ok')"
    )
    import os

    env = {**os.environ, "EMBEDGUARD_SCHEMA_REGISTRY": registry_url}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert res.stdout.strip() == "ok", res.stderr


# -- record_bytes(body_key=...): the body's bytes kept, the envelope's written --

_ENVELOPES = st.builds(
    dict,
    event_id=st.uuids().map(str),
    occurred_at=st.datetimes(
        min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    gateway_id=st.text(min_size=1, max_size=20),
    session_id=st.text(min_size=1, max_size=20),
    seq=st.integers(0, 2**63 - 1),
    stream_seq=st.integers(0, 2**63 - 1),
    prev_hash=st.text("0123456789abcdef", min_size=64, max_size=64),
    request_id=st.none() | st.text(max_size=20),
)


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(TYPES), envelopes=st.lists(_ENVELOPES, min_size=1, max_size=4))
def test_a_kept_body_writes_the_bytes_of_the_whole_record(
    name: str, envelopes: list[dict[str, object]]
) -> None:
    """The envelope's bytes and the kept bytes of the other fields are the
    record's bytes, under a fresh key and under one seen before, for every
    event type; and they are the model path's bytes."""
    codec = EventCodec(schemas=default_codec().schemas)
    body = sample_event(EVENT_TYPES[name]).model_dump(mode="python")
    for env in envelopes:
        record = {**body, "envelope": {**env, "type": name}}
        plain = codec.record_bytes(name, record)
        assert codec.record_bytes(name, record, body_key=("k", name)) == plain
        model = EVENT_TYPES[name].model_validate(record)
        assert plain == (codec.canonical(model), codec.encode(model))


def test_a_kept_body_still_has_its_envelope_checked() -> None:
    codec = EventCodec(schemas=default_codec().schemas)
    body = sample_event(RequestReceived).model_dump(mode="python")
    codec.record_bytes("RequestReceived", body, body_key="k")
    for change in ({"prev_hash": "nothex"}, {"seq": -1}, {"type": "PolicyDecided"},
                   {"occurred_at": datetime(2026, 1, 1)}):
        bad = {**body, "envelope": {**body["envelope"], **change}}
        with pytest.raises(InvalidEvent) as plain:
            codec.record_bytes("RequestReceived", bad)
        with pytest.raises(InvalidEvent) as kept:
            codec.record_bytes("RequestReceived", bad, body_key="k")
        assert str(kept.value) == str(plain.value)
    # a field too few or too many is not taken from the kept bytes either
    with pytest.raises(InvalidEvent):
        codec.record_bytes("RequestReceived", {**body, "extra": 1}, body_key="k")


def test_a_body_that_does_not_fit_is_not_kept() -> None:
    codec = EventCodec(schemas=default_codec().schemas)
    body = sample_event(RequestReceived).model_dump(mode="python")
    with pytest.raises(InvalidEvent):
        codec.record_bytes("RequestReceived", {**body, "body_size": -1}, body_key="k")
    assert codec._bodies == {}
    assert codec.record_bytes("RequestReceived", body, body_key="k") == codec.record_bytes(
        "RequestReceived", body)
