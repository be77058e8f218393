"""pipeline/warehouse/columnar.py: the load path's projection by row shape.

test_fast_decode.py holds it to the model path for every event type, old
writer schemas and poison; here: shuffled mixes (the multi-shape tables are
put back in offset order), a poison record amid them, and the shape table
checked against the DDL."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.transport.base import LogRecord
from pipeline.warehouse import columnar
from pipeline.warehouse.base import LoadBatch
from pipeline.warehouse.projection import TABLES, project_tables_reference
from schemas.codec import default_codec
from schemas.samples import sample_events
from tests.pipeline.warehouse.scenario import build_scenario

LOADED = datetime(2026, 5, 1, 8, 0, 0, 654321, tzinfo=UTC)
_MIX = [r.value for r in build_scenario(sessions=2).records()]
#: one sample of every event type too (approvals, grants, checkpoints, evidence
#: holds, audit views...), so shuffles interleave every shape of every table
_ALL = [*_MIX, *(default_codec().encode(e) for e in sample_events())]


def _assert_same_as_reference(values: list[bytes], start: int = 0) -> dict[str, pa.Table]:
    records = [
        LogRecord(1, start + i, f"k{i}".encode(), v, 1_700_000_000_000 + i)
        for i, v in enumerate(values)
    ]
    batch = LoadBatch("sqlite:shapes", 1, records)
    codec = default_codec()
    ref = project_tables_reference(batch, codec, LOADED)
    fast = columnar.project_shapes(batch, codec, LOADED)
    assert set(fast) == set(TABLES) - {"loads"}
    for table in ref:
        assert fast[table].schema == ref[table].schema, table
        assert fast[table].to_pylist() == ref[table].to_pylist(), table
    return fast


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(1, len(_ALL)), start=st.integers(0, 10**9))
def test_any_mix_in_any_order_projects_like_the_models(seed: int, size: int, start: int) -> None:
    values = random.Random(seed).sample(_ALL, size)
    _assert_same_as_reference(values, start)


def test_a_poison_record_amid_the_mix_costs_only_itself() -> None:
    poison = _MIX[5][:-9]  # truncated: Avro cannot read it
    values = [*_MIX[:10], poison, *_MIX[10:20]]
    fast = _assert_same_as_reference(values, start=100)
    [dead] = fast["dead_letters"].to_pylist()
    assert dead["src_offset"] == 110 and dead["raw"] == poison
    assert fast["events"].num_rows == 20
    assert 110 not in fast["requests"].column("src_offset").to_pylist()


def test_multi_shape_tables_come_back_in_offset_order() -> None:
    fast = _assert_same_as_reference(_MIX)
    for table in ("requests", "sessions"):
        offsets = fast[table].column("src_offset").to_pylist()
        assert len(offsets) > 1 and offsets == sorted(offsets), table


def test_a_shape_naming_a_column_the_ddl_lacks_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shapes = {**columnar.SHAPES, "sessions": {"SessionEnded": (("ended_because",), {})}}
    monkeypatch.setattr(columnar, "SHAPES", shapes)
    columnar._shape_columns.cache_clear()
    try:
        with pytest.raises(RuntimeError, match=r"sessions\.SessionEnded.*ended_because"):
            columnar._shape_columns()
    finally:
        monkeypatch.undo()
        columnar._shape_columns.cache_clear()
