"""pipeline/warehouse/parallel.py: a batch projected across worker processes
gives the serial projection's tables, row for row; a failing worker costs
nothing but time; workers never outlive their parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.transport.base import LogRecord
from pipeline.warehouse import parallel
from pipeline.warehouse.base import LoadBatch
from pipeline.warehouse.parallel import ParallelProjector, project_workers
from pipeline.warehouse.projection import project_batch_columnar
from schemas.codec import FIXTURES_DIR, default_codec
from tests.pipeline.warehouse.scenario import build_scenario, renumber

LOADED = datetime(2026, 3, 2, 12, 30, 0, 654321, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def fresh_pool() -> Iterator[None]:
    parallel.shutdown()
    yield
    parallel.shutdown()


def _mixed_batch() -> LoadBatch:
    """The gateway mix with v1 fixtures and poison in the middle of chunks."""
    good = build_scenario(sessions=4).records()
    v1 = [
        LogRecord(0, 0, b"old", f.read_bytes(), 7) for f in sorted(FIXTURES_DIR.glob("v1/*.avro"))
    ]
    poison = [LogRecord(0, 0, b"bad", b"\xc3\x01garbage", 9), LogRecord(0, 0, b"", b"", 0)]
    recs = [*good[:40], poison[0], *v1, *good[40:], poison[1], *good[:25]]
    return LoadBatch("kafka:par", 2, renumber(recs, partition=2, start=1_000))


def _assert_same(got: dict[str, pa.Table], want: dict[str, pa.Table]) -> None:
    assert set(got) == set(want)
    for table in want:
        assert got[table].schema == want[table].schema, table
        assert got[table].to_pylist() == want[table].to_pylist(), table


@pytest.mark.parametrize("workers", [1, 2])
def test_parallel_projection_equals_the_serial_one(workers: int) -> None:
    batch = _mixed_batch()
    codec = default_codec()
    serial = project_batch_columnar(batch, codec, LOADED)
    assert serial["dead_letters"].num_rows == 2 and serial["events"].num_rows > 100
    projector = ParallelProjector(workers, min_chunk=20)
    _assert_same(projector(batch, codec, LOADED), serial)
    assert parallel._POOL._idle, "the batch should have gone through a worker"


def test_small_batches_and_other_codecs_stay_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    from schemas.codec import EventCodec

    def no_workers(n: int) -> list[object]:
        raise AssertionError("no worker should be asked for")

    monkeypatch.setattr(parallel._POOL, "take", no_workers)
    batch = _mixed_batch()
    projector = ParallelProjector(1, min_chunk=len(batch.records))
    _assert_same(
        projector(batch, default_codec(), LOADED),
        project_batch_columnar(batch, default_codec(), LOADED),
    )
    other = EventCodec()
    small = ParallelProjector(1, min_chunk=20)
    _assert_same(small(batch, other, LOADED), project_batch_columnar(batch, other, LOADED))
    assert ParallelProjector(0, min_chunk=1).workers == 0


def test_a_worker_that_dies_costs_nothing_but_time() -> None:
    batch = _mixed_batch()
    codec = default_codec()
    serial = project_batch_columnar(batch, codec, LOADED)
    projector = ParallelProjector(1, min_chunk=20)
    projector(batch, codec, LOADED)
    [worker] = parallel._POOL._idle
    # killed between batches: noticed when taken, and replaced
    worker.proc.kill()
    worker.proc.wait()
    _assert_same(projector(batch, codec, LOADED), serial)
    [fresh] = parallel._POOL._idle
    assert fresh.proc.pid != worker.proc.pid
    # dies while it holds a chunk (it exits without answering): projected here
    fresh.close()
    broken = parallel._Worker.__new__(parallel._Worker)
    broken.proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.buffer.read(8)"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    parallel._POOL._idle[:] = [broken]
    _assert_same(projector(batch, codec, LOADED), serial)
    assert broken.proc.poll() is not None
    assert broken not in parallel._POOL._idle


def test_what_a_worker_prints_never_reaches_its_frames() -> None:
    """Results travel on a private copy of the worker's stdout: text a library
    prints while projecting (Python's print, or a C write to fd 1) goes to
    stderr and cannot break a frame."""
    batch = _mixed_batch()
    serial = project_batch_columnar(batch, default_codec(), LOADED)
    noisy = (
        "import os, pipeline.warehouse.parallel as p\n"
        "real = p.project_batch_columnar\n"
        "def loud(*a):\n"
        "    print('progress: 42%', flush=True)\n"
        "    os.write(1, b'\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x09c-level!!')\n"
        "    return real(*a)\n"
        "p.project_batch_columnar = loud\n"
        "p._main()\n"
    )
    worker = parallel._Worker.__new__(parallel._Worker)
    worker.proc = subprocess.Popen(
        [sys.executable, "-c", noisy],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert worker.send(batch.source, batch.partition, batch.records, LOADED)
        got = worker.receive()
        assert got is not None
        _assert_same(got, serial)
    finally:
        worker.close()
    assert worker.proc.stderr is not None
    with worker.proc.stderr as err:
        assert b"progress: 42%" in err.read()


def test_workers_leave_with_a_parent_killed_by_sigkill(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from datetime import UTC, datetime\n"
        "from pipeline.warehouse import parallel\n"
        "from pipeline.warehouse.base import LoadBatch\n"
        "from schemas.codec import default_codec\n"
        "from tests.pipeline.warehouse.scenario import build_scenario\n"
        "batch = LoadBatch('sqlite:x', 0, build_scenario(sessions=2).records())\n"
        "parallel.ParallelProjector(1, min_chunk=10)(batch, default_codec(), datetime.now(UTC))\n"
        "print(parallel._POOL._idle[0].proc.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert parent.stdout is not None
        worker_pid = int(parent.stdout.readline())
        assert _running(worker_pid)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        if parent.stdout is not None:
            parent.stdout.close()
    deadline = time.monotonic() + 60
    while _running(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(worker_pid), "the worker outlived its killed parent"


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_worker_count_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(parallel.WORKERS_ENV, "0")
    assert project_workers() == 0 and ParallelProjector().workers == 0
    monkeypatch.setenv(parallel.WORKERS_ENV, "2")
    assert project_workers() == 2
    monkeypatch.setenv(parallel.WORKERS_ENV, "many")
    with pytest.raises(ValueError, match="EMBEDGUARD_PROJECT_WORKERS"):
        project_workers()
    monkeypatch.delenv(parallel.WORKERS_ENV)
    assert project_workers() == max(0, min(3, (os.cpu_count() or 1) - 1))


def test_warm_starts_the_workers_a_batch_then_uses(tmp_path: Path) -> None:
    from pipeline.warehouse.lake import LakeWarehouse

    wh = LakeWarehouse(tmp_path / "lake")
    assert isinstance(wh._project, ParallelProjector)
    wh._project = ParallelProjector(1, min_chunk=20)
    wh.start_loading()  # what the loader calls before its first batch
    [worker] = parallel._POOL._idle
    assert worker.alive()
    batch = _mixed_batch()
    codec = default_codec()
    _assert_same(wh._project(batch, codec, LOADED), project_batch_columnar(batch, codec, LOADED))
    assert [w.proc.pid for w in parallel._POOL._idle] == [worker.proc.pid]
    ParallelProjector(0).warm()  # no workers: nothing starts
    assert len(parallel._POOL._idle) == 1
