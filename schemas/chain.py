"""The per-session hash chain and the stamping of envelopes.

``hash_event(prev_hash, event)`` = sha256(prev_hash bytes || canonical bytes),
where the canonical bytes are the event's Avro single-object encoding (magic,
writer-schema fingerprint, body) *as written*. Hashing the bytes as written,
not a re-encoding, keeps old events verifiable after the schema evolves.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, get_args, get_origin
from uuid import UUID

# uuid-utils, not uuid6: under load uuid6's uuid7 keeps ids monotonic by
# adding a millisecond per id within the same millisecond, so at a few
# thousand events per second the ids' timestamps run minutes ahead of the
# clock. uuid-utils counts within the millisecond instead, and is faster.
import uuid_utils
from pydantic import BaseModel
from uuid_utils.compat import uuid7

from schemas.codec import DecodedEvent, EventCodec, default_codec
from schemas.models import EVENT_TYPES, GENESIS_HASH, Envelope, Event

__all__ = [
    "GENESIS_HASH",
    "ChainProblem",
    "EventStamper",
    "StampedEvent",
    "hash_event",
    "verify_chains",
]

E = TypeVar("E", bound=Event)


def hash_event(
    prev_hash: str, event: Event | DecodedEvent | bytes, codec: EventCodec | None = None
) -> str:
    """The chain hash of ``event`` following ``prev_hash`` (both hex).

    ``event`` may be a model (encoded with the current schema), a decoded event
    (its bytes as written) or canonical single-object bytes. A model whose
    envelope names another prev_hash is refused: it would break the chain.
    """
    if isinstance(event, DecodedEvent):
        env, canonical = event.event.envelope, event.canonical
    elif isinstance(event, Event):
        env, canonical = event.envelope, (codec or default_codec()).canonical(event)
    else:
        env, canonical = None, bytes(event)
    if env is not None and env.prev_hash != prev_hash:
        raise ValueError(
            f"event {env.event_id} says prev_hash={env.prev_hash[:12]}… but the chain is at "
            f"{prev_hash[:12]}…"
        )
    return hashlib.sha256(bytes.fromhex(prev_hash) + canonical).hexdigest()


class StampedEvent:
    """An event with its envelope filled in, encoded and chained.

    ``wire`` is what goes on the log, ``hash`` the event's chain hash (the
    next event's prev_hash). Events stamped from a plain record
    (``EventStamper.stamp_record``) build their pydantic model only when
    ``event`` is first read; the envelope fields the log and the Merkle tree
    need are plain attributes.
    """

    __slots__ = (
        "_event", "_record", "event_id", "gateway_id", "hash", "session_id", "stream_seq",
        "type_name", "wire",
    )

    def __init__(self, event: Event | None, wire: bytes, hash: str, *,
                 record: dict[str, Any] | None = None) -> None:
        if event is None and record is None:
            raise TypeError("StampedEvent needs an event or its record")
        self._event = event
        self._record = record
        self.wire = wire
        self.hash = hash
        if event is not None:
            env = event.envelope
            self.type_name = event.avro_name
            self.event_id, self.gateway_id = str(env.event_id), env.gateway_id
            self.session_id, self.stream_seq = env.session_id, env.stream_seq
        else:
            assert record is not None
            envelope = record["envelope"]
            self.type_name = envelope["type"]
            self.event_id, self.gateway_id = str(envelope["event_id"]), envelope["gateway_id"]
            self.session_id, self.stream_seq = envelope["session_id"], envelope["stream_seq"]

    @property
    def event(self) -> Event:
        """The event as its model (built on first use from the stamped record,
        whose values the codec already held to every constraint of the model)."""
        if self._event is None:
            assert self._record is not None
            self._event = _construct(self._record)
        return self._event

    def __repr__(self) -> str:
        return (f"StampedEvent({self.type_name}, session={self.session_id}, "
                f"stream_seq={self.stream_seq}, hash={self.hash[:12]}…)")


def _construct(record: dict[str, Any]) -> Event:
    """The model of a record that ``EventCodec.record_bytes`` accepted: built
    without validating again (nested records become their models)."""
    cls = EVENT_TYPES[record["envelope"]["type"]]
    fields: dict[str, Any] = {}
    for name, value in record.items():
        if name == "envelope":
            event_id = value["event_id"]
            value = Envelope.model_construct(
                **{**value, "event_id": UUID(event_id) if isinstance(event_id, str) else event_id}
            )
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            item = _ITEM_MODELS[(cls.avro_name, name)]
            value = [_item(item, v) for v in value]
        fields[name] = value
    return cls.model_construct(**fields)


#: nested models whose fields are all strings, shared between events: they are
#: frozen, and the same headers and masked fields recur on every request
_SHARED: dict[tuple[type[BaseModel], tuple[tuple[str, Any], ...]], BaseModel] = {}


def _item(model: type[BaseModel], values: dict[str, Any]) -> BaseModel:
    if model not in _ALL_STRINGS:
        return model.model_construct(**values)
    key = (model, tuple(values.items()))
    found = _SHARED.get(key)
    if found is None:
        if len(_SHARED) >= 4096:
            _SHARED.clear()
        found = _SHARED[key] = model.model_construct(**values)
    return found


def _item_models() -> dict[tuple[str, str], type[BaseModel]]:
    out: dict[tuple[str, str], type[BaseModel]] = {}
    for name, cls in EVENT_TYPES.items():
        for field_name, field in cls.model_fields.items():
            args = get_args(field.annotation)
            if get_origin(field.annotation) is list and args and isinstance(args[0], type) \
                    and issubclass(args[0], BaseModel):
                out[(name, field_name)] = args[0]
    return out


_ITEM_MODELS = _item_models()
_ALL_STRINGS = frozenset(
    m for m in _ITEM_MODELS.values()
    if m.model_config.get("frozen") and all(f.annotation is str for f in m.model_fields.values())
)


@dataclass
class _SessionState:
    seq: int = 0
    last_hash: str = GENESIS_HASH


class EventStamper:
    """Builds envelopes for one gateway stream: event id, time, the session's
    seq and prev_hash, and the stream's contiguous stream_seq.

    Thread-safe; one instance per gateway process (per stream).
    """

    def __init__(
        self, gateway_id: str, codec: EventCodec | None = None, *, stream_seq: int = 0
    ) -> None:
        self.gateway_id = gateway_id
        self.codec = codec or default_codec()
        self._sessions: dict[str, _SessionState] = {}
        self._stream_seq = stream_seq
        self._lock = threading.Lock()

    def resume_session(self, session_id: str, *, next_seq: int, last_hash: str) -> None:
        """Continue a session whose earlier events are already in the log."""
        with self._lock:
            self._sessions[session_id] = _SessionState(next_seq, last_hash)

    def end_session(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)

    def stamp(
        self,
        cls: type[E],
        *,
        session_id: str,
        request_id: str | None = None,
        occurred_at: datetime | None = None,
        **body: Any,
    ) -> StampedEvent:
        """Build, validate, encode and chain one event.

        Validation errors raise before any state changes, so a rejected event
        leaves no gap in the session or the stream.
        """
        with self._lock:
            state = self._sessions.setdefault(session_id, _SessionState())
            env = Envelope(
                event_id=uuid7(),
                type=cls.avro_name,
                occurred_at=occurred_at or datetime.now(UTC),
                gateway_id=self.gateway_id,
                session_id=session_id,
                seq=state.seq,
                stream_seq=self._stream_seq,
                prev_hash=state.last_hash,
                request_id=request_id,
            )
            event = cls(envelope=env, **body)
            canonical = self.codec.canonical(event)
            wire = canonical if self.codec.registry is None else self.codec.encode(event)
            digest = hash_event(state.last_hash, canonical)
            state.seq += 1
            state.last_hash = digest
            self._stream_seq += 1
        return StampedEvent(event, wire, digest)

    def stamp_record(
        self,
        cls: type[Event],
        *,
        session_id: str,
        request_id: str | None = None,
        occurred_at: datetime | None = None,
        body: dict[str, Any],
        body_key: Hashable | None = None,
    ) -> StampedEvent:
        """``stamp`` for a body the caller built in the schema's shape: every
        body field present, plain values, nested records as dicts (a model's
        ``__dict__``). No pydantic model is built on the way to the log; the
        codec holds the record to every constraint of the model instead
        (``EventCodec.record_bytes``) and raises InvalidEvent before any state
        changes, like ``stamp``. The gateway's per-request events take this path.
        ``body_key``: see ``EventCodec.record_bytes`` (a value that determines
        ``body`` exactly; its encoding is then kept and reused).
        """
        with self._lock:
            state = self._sessions.get(session_id)
            prev = GENESIS_HASH if state is None else state.last_hash
            record = dict(body)
            record["envelope"] = {
                # its text: what Avro writes for a uuid, without building a
                # stdlib UUID (and formatting it twice) per event; the model,
                # if anyone reads it, gets the UUID back (_construct)
                "event_id": str(uuid_utils.uuid7()),
                "type": cls.avro_name,
                "occurred_at": occurred_at or datetime.now(UTC),
                "gateway_id": self.gateway_id,
                "session_id": session_id,
                "seq": 0 if state is None else state.seq,
                "stream_seq": self._stream_seq,
                "prev_hash": prev,
                "request_id": request_id,
            }
            canonical, wire = self.codec.record_bytes(cls.avro_name, record, body_key=body_key)
            digest = hashlib.sha256(bytes.fromhex(prev) + canonical).hexdigest()
            if state is None:
                state = self._sessions[session_id] = _SessionState()
            state.seq += 1
            state.last_hash = digest
            self._stream_seq += 1
        return StampedEvent(None, wire, digest, record=record)


@dataclass(frozen=True)
class ChainProblem:
    session_id: str
    event_id: str | None
    seq: int | None
    kind: str  # gap, altered, reordered, duplicate, start
    detail: str

    def __str__(self) -> str:
        where = f"event {self.event_id} (seq {self.seq})" if self.event_id else "session"
        return f"session {self.session_id}: {where}: {self.kind}: {self.detail}"


def verify_chains(events: Iterable[DecodedEvent]) -> list[ChainProblem]:
    """Check every session's chain in the order given (the log's order).

    Reports the first problem of each session, naming the event: a missing
    event (gap), an altered one (hash mismatch), or one out of order.
    """
    state: dict[str, tuple[int, str]] = {}
    broken: dict[str, ChainProblem] = {}
    for dec in events:
        env = dec.event.envelope
        sid = env.session_id
        if sid in broken:
            continue
        expected_seq, last_hash = state.get(sid, (0, GENESIS_HASH))
        problem: ChainProblem | None = None
        if env.seq < expected_seq:
            problem = ChainProblem(
                sid,
                str(env.event_id),
                env.seq,
                "reordered",
                f"seq {env.seq} arrives after seq {expected_seq - 1}",
            )
        elif env.seq > expected_seq:
            problem = ChainProblem(
                sid,
                str(env.event_id),
                env.seq,
                "gap",
                f"expected seq {expected_seq}; {env.seq - expected_seq} event(s) missing before it",
            )
        elif env.prev_hash != last_hash:
            problem = ChainProblem(
                sid,
                str(env.event_id),
                env.seq,
                "altered",
                "prev_hash does not match the hash of the previous event; "
                "the previous event was changed or replaced",
            )
        if problem is not None:
            broken[sid] = problem
            continue
        state[sid] = (expected_seq + 1, hash_event(last_hash, dec.canonical))
    return list(broken.values())
