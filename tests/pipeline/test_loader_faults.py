"""Exactly once under faults: kill -9 the loader at random points while it loads
100,000 events from an SQLite log into the lake, restart it until it drains,
then check the warehouse holds each event once, every session's seqs are
gap-free and every hash chain verifies (on the events read back from it).

The loader runs as the real command, ``embedguard loader --once``, in its own
process, so a kill can land anywhere: in a Delta commit, between the tables of a
batch, between the warehouse write and the offset commit.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.loader_status import read_statuses
from pipeline.warehouse.lake import LakeWarehouse
from schemas.chain import verify_chains
from tests.pipeline.loader_helpers import append_records, chained_records, decode_raw

EVENTS = 100_000
SESSIONS = 40
KILLS = 6


def loader_command(log_url: str, lake_url: str, status_dir: Path) -> list[str]:
    exe = Path(sys.executable).with_name("embedguard")
    return [
        str(exe),
        "loader",
        "--log",
        log_url,
        "--warehouse",
        lake_url,
        "--once",
        "--json",
        "--compact-every",
        "0",
        "--status-dir",
        str(status_dir),
    ]


def _kill_at_a_random_point(
    proc: subprocess.Popen[bytes], status_dir: Path, rng: random.Random
) -> bool:
    """SIGKILL ``proc`` at a random point; False if it finished first.

    A third of the kills land at a random time after the start (often while it
    starts: migrations, anchoring, the first batch); the others at a random
    moment shortly after its status first shows it loading (``running``: a batch
    is written), so that they land mid-load however fast the loader is: in a
    Delta commit, between a batch's tables, between the write and the offset
    commit, while the next batch is prepared. Each run thus loads at most a few
    batches, and every kill lands before the log is drained."""
    if rng.random() < 1 / 3:
        delay = rng.uniform(0.3, 2.5)
    else:
        deadline = time.monotonic() + 120
        while not any(
            s.pid == proc.pid and s.state == "running" for s, _ in read_statuses(status_dir)
        ):
            if proc.poll() is not None:
                return False
            assert time.monotonic() < deadline, "the loader never started loading"
            time.sleep(0.02)
        delay = rng.uniform(0.0, 0.6)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        return True
    return False


@pytest.mark.slow
async def test_kill_9_at_random_points_loads_every_event_exactly_once(tmp_path: Path) -> None:
    log_url = f"sqlite:{tmp_path / 'events.db'}"
    await append_records(log_url, list(chained_records(EVENTS, sessions=SESSIONS, seed=11)))
    lake_dir = tmp_path / "lake"
    cmd = loader_command(log_url, f"lake:{lake_dir}", tmp_path / "status")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    rng = random.Random(int(os.environ.get("EMBEDGUARD_TEST_SEED", "0")) or None)

    killed = 0
    runs = 0
    summary: dict[str, object] | None = None
    deadline = time.monotonic() + 600
    while summary is None:
        assert time.monotonic() < deadline, "the loader never drained the log"
        runs += 1
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True
        )
        if killed < KILLS and _kill_at_a_random_point(proc, tmp_path / "status", rng):
            proc.communicate(timeout=30)  # reaps it and closes the pipes
            killed += 1
            continue
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
        summary = json.loads(out.decode().strip().splitlines()[-1])
    assert killed >= 3, f"only {killed} kill(s) landed before the loader finished"

    warehouse = LakeWarehouse(lake_dir)
    try:
        count = warehouse.query(
            "SELECT count() AS n, uniqExact(event_id) AS u, uniqExact(src_offset) AS o "
            "FROM {events}",
            {},
        )[0]
        assert count == {"n": EVENTS, "u": EVENTS, "o": EVENTS}, count
        rows = warehouse.query(
            "SELECT session_id, seq, hex(raw) AS raw FROM {events} ORDER BY src_offset", {}
        )
        loads = warehouse.query("SELECT max(last_offset) AS last FROM {loads}", {})[0]
        dead = warehouse.query("SELECT count() AS n FROM {dead_letters}", {})[0]
        requests = warehouse.query(
            "SELECT count() AS n, uniqExact(event_id) AS u FROM {requests}", {}
        )[0]
    finally:
        warehouse.close()
    assert loads["last"] == EVENTS - 1
    assert dead["n"] == 0
    seqs: dict[str, list[int]] = {}
    for row in rows:
        seqs.setdefault(row["session_id"], []).append(int(row["seq"]))
    assert len(seqs) == SESSIONS
    for sid, got in seqs.items():
        assert got == list(range(len(got))), f"session {sid}: seqs have a gap or repeat"
    problems = verify_chains(decode_raw(row["raw"]) for row in rows)
    assert problems == [], [str(p) for p in problems[:3]]
    # the derived tables hold no duplicate either: one requests row per request
    # event (every event but each session's SessionStarted)
    assert requests == {"n": EVENTS - SESSIONS, "u": EVENTS - SESSIONS}
