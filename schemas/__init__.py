"""The event contract: Avro schemas (``avsc/``), the pydantic models that mirror
them, the codec, and the per-session hash chain."""

from schemas.chain import EventStamper, StampedEvent, hash_event, verify_chains
from schemas.codec import DecodedEvent, DecodeError, EventCodec, InvalidEvent, default_codec
from schemas.models import EVENT_TYPES, GENESIS_HASH, Event

__all__ = [
    "EVENT_TYPES",
    "GENESIS_HASH",
    "DecodeError",
    "DecodedEvent",
    "Event",
    "EventCodec",
    "EventStamper",
    "InvalidEvent",
    "StampedEvent",
    "default_codec",
    "hash_event",
    "verify_chains",
]
