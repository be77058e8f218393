"""Deterministic, fully populated sample events: every optional field set and
every array non-empty, so that fixtures and round-trip tests exercise each
branch of every schema."""

from __future__ import annotations

import enum
import types
import typing
from datetime import UTC, datetime
from typing import Any, Literal, get_args, get_origin
from uuid import UUID

from pydantic import BaseModel

from schemas.models import EVENT_TYPES, Envelope, Event

__all__ = ["sample_event", "sample_events"]

_WHEN = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def _value(name: str, annotation: Any, metadata: list[Any]) -> Any:
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        return _value(name, inner[0], metadata)
    if origin is typing.Annotated:
        base, *meta = get_args(annotation)
        # Field(...) inside a list item stays a FieldInfo: its constraints are in .metadata
        meta = [m for x in meta for m in (getattr(x, "metadata", None) or [x])]
        return _value(name, base, [*metadata, *meta])
    if origin is Literal:
        return get_args(annotation)[0]
    if origin is list:
        return [_value(name, get_args(annotation)[0], [])]
    if isinstance(annotation, type):
        if issubclass(annotation, enum.Enum):
            return next(iter(annotation))
        if issubclass(annotation, BaseModel):
            return _model_values(annotation)
        if annotation is bool:
            return True
        if annotation is int:
            return 7
        if annotation is float:
            return 1.5
        if annotation is bytes:
            return b"\x00sample body \xff"
        if annotation is UUID:
            return UUID("0190f1b2-7c3d-7e4f-8a5b-6c7d8e9f0a1b")
        if annotation is str:
            if any(getattr(m, "pattern", None) == r"^[0-9a-f]{64}$" for m in metadata):
                return "ab" * 32
            return f"sample-{name}"
    if annotation is datetime or getattr(annotation, "__name__", "") == "AwareDatetime":
        return _WHEN
    # pydantic's AwareDatetime is Annotated[datetime, ...] in some versions
    if str(annotation).endswith("AwareDatetime"):
        return _WHEN
    raise TypeError(f"no sample for field {name!r} of type {annotation!r}")


def _model_values(model: type[BaseModel]) -> dict[str, Any]:
    return {
        name: _value(name, field.annotation, list(field.metadata))
        for name, field in model.model_fields.items()
    }


def sample_event(cls: type[Event], *, session_id: str = "sample-session") -> Event:
    values = _model_values(cls)
    env = dict(values["envelope"])
    env.update(
        type=cls.avro_name,
        session_id=session_id,
        seq=0,
        stream_seq=0,
        prev_hash="0" * 64,
        occurred_at=_WHEN,
    )
    values["envelope"] = Envelope(**env)
    return cls(**values)


def sample_events() -> list[Event]:
    return [sample_event(cls) for cls in EVENT_TYPES.values()]
