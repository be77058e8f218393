"""Decode and project a batch on several cores.

A large batch is cut into contiguous chunks: this process projects the first
while worker processes project the others (``project_batch_columnar`` on each),
and the chunks' Arrow tables are concatenated in offset order. Every row is the
one the serial projection gives, in the same order (each record's rows depend
on that record alone), so what a warehouse writes, its dedup tokens and its
app transactions do not change; only the CPU work is spread. Writing stays in
the warehouse, in this process, in offset order.

Workers are child processes running this module (``python -m
pipeline.warehouse.parallel``), started on first use and shared by every
warehouse of the process. Chunks go to them and tables come back as Arrow IPC
over their stdin/stdout, so nothing but plain bytes crosses, and the caller's
``__main__`` is never re-imported (as ``multiprocessing`` spawn would). A worker
exits when its stdin closes, so it never outlives its parent, even one killed
with ``kill -9``. A worker that fails is dropped and its chunk projected here;
the next large batch starts a new one.

``EMBEDGUARD_PROJECT_WORKERS`` sets how many worker processes (default: one
less than the CPU count, at most 3; 0 projects everything in this process).
"""

from __future__ import annotations

import atexit
import logging
import os
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import pyarrow as pa

from pipeline.transport.base import LogRecord
from pipeline.warehouse.base import LoadBatch
from pipeline.warehouse.projection import TABLES, project_batch_columnar
from schemas.codec import EventCodec, default_codec

__all__ = ["WORKERS_ENV", "ParallelProjector", "project_workers", "shutdown"]

log = logging.getLogger(__name__)

WORKERS_ENV = "EMBEDGUARD_PROJECT_WORKERS"
#: Below this many records per chunk, shipping the chunk costs more than it saves.
MIN_CHUNK = 1_000
_OUT_TABLES = tuple(t for t in TABLES if t != "loads")
_LEN = struct.Struct(">Q")
_CHUNK_SCHEMA = pa.schema([("key", pa.binary()), ("value", pa.binary()), ("ts", pa.int64())])
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def project_workers() -> int:
    """Worker processes to use: ``EMBEDGUARD_PROJECT_WORKERS`` or the CPU count - 1
    (at most 3)."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if raw:
        if not raw.isdigit():
            raise ValueError(
                f"{WORKERS_ENV} must be a whole number of worker processes (0 disables), "
                f"not {raw!r}"
            )
        return int(raw)
    return max(0, min(3, (os.cpu_count() or 1) - 1))


class ParallelProjector:
    """A ``Projector`` (see projection.py) that spreads large batches over
    worker processes. Batches under ``2 * min_chunk`` records, and codecs other
    than the process's default one (a worker builds its own default codec), are
    projected here."""

    def __init__(self, workers: int | None = None, *, min_chunk: int = MIN_CHUNK) -> None:
        self.workers = project_workers() if workers is None else workers
        self.min_chunk = min_chunk

    def warm(self) -> None:
        """Start the workers now (they import and parse schemas meanwhile)."""
        if self.workers > 0:
            _POOL.give_back(_POOL.take(self.workers))

    def __call__(
        self, batch: LoadBatch, codec: EventCodec, loaded_at: datetime
    ) -> dict[str, pa.Table]:
        records = batch.records
        parts = min(self.workers + 1, len(records) // self.min_chunk)
        if parts < 2 or codec is not default_codec():
            return project_batch_columnar(batch, codec, loaded_at)
        size = -(-len(records) // parts)
        chunks = [records[i : i + size] for i in range(0, len(records), size)]
        workers = _POOL.take(len(chunks) - 1)
        try:
            sent = [
                w.send(batch.source, batch.partition, c, loaded_at)
                for w, c in zip(workers, chunks[1:], strict=False)
            ]
            first = project_batch_columnar(
                LoadBatch(batch.source, batch.partition, chunks[0]), codec, loaded_at
            )
            results = [first]
            for worker, chunk, ok in zip(workers, chunks[1:], sent, strict=False):
                got = worker.receive() if ok else None
                if got is None:
                    _POOL.drop(worker)
                    got = project_batch_columnar(
                        LoadBatch(batch.source, batch.partition, chunk), codec, loaded_at
                    )
                results.append(got)
            # chunks without a worker (none could start) are projected here
            for chunk in chunks[1 + len(workers) :]:
                results.append(
                    project_batch_columnar(
                        LoadBatch(batch.source, batch.partition, chunk), codec, loaded_at
                    )
                )
        finally:
            _POOL.give_back(workers)
        return {t: pa.concat_tables([r[t] for r in results]) for t in first}


class _Worker:
    """One child process projecting chunks; used by one batch at a time."""

    def __init__(self) -> None:
        root = str(Path(__file__).resolve().parents[2])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.warehouse.parallel"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=root,
        )

    def send(
        self, source: str, partition: int, chunk: Sequence[LogRecord], loaded_at: datetime
    ) -> bool:
        table = pa.table(
            [
                pa.array([r.key for r in chunk], pa.binary()),
                pa.array([r.value for r in chunk], pa.binary()),
                pa.array([r.timestamp_ms for r in chunk], pa.int64()),
            ],
            schema=_CHUNK_SCHEMA.with_metadata(
                {
                    "source": source,
                    "partition": str(partition),
                    "first_offset": str(chunk[0].offset),
                    "loaded_at_us": str((loaded_at - _EPOCH) // timedelta(microseconds=1)),
                }
            ),
        )
        try:
            assert self.proc.stdin is not None
            _write_frame(self.proc.stdin, _ipc(table))
            self.proc.stdin.flush()
        except (OSError, ValueError) as exc:
            log.warning("projection worker %d cannot take a chunk: %s", self.proc.pid, exc)
            return False
        return True

    def receive(self) -> dict[str, pa.Table] | None:
        try:
            assert self.proc.stdout is not None
            out = {}
            for table in _OUT_TABLES:
                frame = _read_frame(self.proc.stdout)
                if frame is None:
                    raise EOFError("the worker closed its output")
                out[table] = pa.ipc.open_stream(frame).read_all()
            return out
        except (OSError, EOFError, ValueError, pa.ArrowException) as exc:
            log.warning(
                "projection worker %d failed (%s); its chunk is projected in-process",
                self.proc.pid,
                exc,
            )
            return None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()
            except OSError:
                pass  # a broken pipe: the worker is gone already
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self.proc.stdout.close()


class _Pool:
    """The process's idle workers; a batch takes some and gives them back."""

    def __init__(self) -> None:
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()

    def take(self, n: int) -> list[_Worker]:
        out: list[_Worker] = []
        dead: list[_Worker] = []
        with self._lock:
            while self._idle and len(out) < n:
                w = self._idle.pop()
                (out if w.alive() else dead).append(w)
        for w in dead:
            w.close()
        while len(out) < n:
            try:
                out.append(_Worker())
            except OSError as exc:
                log.warning("cannot start a projection worker: %s", exc)
                break
        return out

    def give_back(self, workers: list[_Worker]) -> None:
        for w in workers:
            if w.alive():
                with self._lock:
                    self._idle.append(w)
            else:
                w.close()

    def drop(self, worker: _Worker) -> None:
        worker.proc.kill()
        worker.close()

    def shutdown(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for w in idle:
            w.close()


_POOL = _Pool()


def shutdown() -> None:
    """Stop the idle worker processes (new ones start on the next large batch)."""
    _POOL.shutdown()


atexit.register(shutdown)


# -- framing ----------------------------------------------------------------------
def _ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue())


def _write_frame(out: IO[bytes], data: bytes) -> None:
    out.write(_LEN.pack(len(data)))
    out.write(data)


def _read_exact(inp: IO[bytes], n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        part = inp.read(n - len(buf))
        if not part:
            return None
        buf += part
    return bytes(buf)


def _read_frame(inp: IO[bytes]) -> bytes | None:
    head = _read_exact(inp, _LEN.size)
    if head is None:
        return None
    return _read_exact(inp, _LEN.unpack(head)[0])


# -- the worker side ----------------------------------------------------------------
def _serve(inp: IO[bytes], out: IO[bytes]) -> None:
    """Project chunks from ``inp`` until it closes; write each result to ``out``."""
    codec = default_codec()
    while (frame := _read_frame(inp)) is not None:
        chunk = pa.ipc.open_stream(frame).read_all()
        meta = {k.decode(): v.decode() for k, v in (chunk.schema.metadata or {}).items()}
        partition, first = int(meta["partition"]), int(meta["first_offset"])
        records = [
            LogRecord(partition, first + i, k, v, t)
            for i, (k, v, t) in enumerate(
                zip(
                    chunk.column("key").to_pylist(),
                    chunk.column("value").to_pylist(),
                    chunk.column("ts").to_pylist(),
                    strict=True,
                )
            )
        ]
        loaded_at = _EPOCH + timedelta(microseconds=int(meta["loaded_at_us"]))
        tables = project_batch_columnar(
            LoadBatch(meta["source"], partition, records), codec, loaded_at
        )
        for table in _OUT_TABLES:
            _write_frame(out, _ipc(tables[table]))
        out.flush()


def _main() -> None:
    # Results go out on a private copy of stdout; fd 1 itself now points at
    # stderr, so nothing a library prints (Python or C) can slip into a frame.
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    with out:
        _serve(sys.stdin.buffer, out)


if __name__ == "__main__":
    _main()
