"""``embedguard loader`` and ``embedguard warehouse rebuild`` as a user runs them:
real processes, a real SQLite log, real lake warehouses."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.transport import AppendRecord
from pipeline.warehouse.lake import LakeWarehouse
from tests.pipeline.loader_helpers import append_records, chained_records

EMBEDGUARD = [sys.executable, "-m", "embedguard.cli"]
SECRET = "hunter2-Sup3rSecret"


def run(*args: str, timeout: float = 180, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EMBEDGUARD, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


def counts(lake_dir: Path) -> dict[str, int]:
    wh = LakeWarehouse(lake_dir)
    try:
        tables: dict[str, int] = wh.stats()["tables"]
        return tables
    finally:
        wh.close()


@pytest.fixture
def loaded(tmp_path: Path) -> dict[str, Any]:
    """A log of 2,000 chained events and one poison record, loaded with --once."""
    log = f"sqlite:{tmp_path / 'events.db'}"
    records = list(chained_records(2_000, sessions=8))
    records.insert(1_000, AppendRecord(b"s-x", b"\x00\x01 not an event"))
    asyncio.run(append_records(log, records))
    lake = tmp_path / "lake"
    status = tmp_path / "status"
    done = run(
        "loader", "--log", log, "--warehouse", f"lake:{lake}", "--once", "--json",
        "--status-dir", str(status),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return {
        "log": log,
        "lake": lake,
        "status": status,
        "summary": json.loads(done.stdout),
        "stderr": done.stderr,
    }


def test_loader_once_loads_everything_and_reports_a_summary(loaded: dict[str, Any]) -> None:
    summary = loaded["summary"]
    assert summary["events"] == 2_000 and summary["dead_letters"] == 1
    assert summary["positions"] == {"0": 2_001}
    assert counts(loaded["lake"])["events"] == 2_000
    # a second --once finds nothing new
    again = run(
        "loader", "--log", loaded["log"], "--warehouse", f"lake:{loaded['lake']}", "--once",
        "--json", "--status-dir", str(loaded["status"]),
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["events"] == 0


def test_loader_into_chdb_merge_tree_loads_once(tmp_path: Path) -> None:
    """ClickHouse-format inserts (MergeTree tables in chDB): a re-run adds nothing."""
    log = f"sqlite:{tmp_path / 'events.db'}"
    records = list(chained_records(1_500, sessions=5))
    records.insert(700, AppendRecord(b"s-x", b"\xc3\x01 truncated"))
    asyncio.run(append_records(log, records))
    url = f"chdb:{tmp_path / 'chdb'}"
    # --pipeline-depth 3 prepares ahead (MergeTreeWarehouse.prepare_batch), 1 is serial
    for expected, depth in ((1_500, "3"), (0, "1")):
        done = run(
            "loader", "--log", log, "--warehouse", url, "--once", "--json",
            "--status-dir", str(tmp_path / "status"), "--max-batch", "400",
            "--pipeline-depth", depth,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["events"] == expected
    stats = run("warehouse", "stats", "--warehouse", url, "--json")
    assert stats.returncode == 0, stats.stderr
    tables = json.loads(stats.stdout)["tables"]
    assert (tables["events"], tables["dead_letters"]) == (1_500, 1)


def test_loader_once_shows_progress_and_a_summary_on_stderr(tmp_path: Path) -> None:
    log = f"sqlite:{tmp_path / 'events.db'}"
    asyncio.run(append_records(log, list(chained_records(500, sessions=3))))
    done = run(
        "loader", "--log", log, "--warehouse", f"lake:{tmp_path / 'lake'}", "--once",
        "--status-dir", str(tmp_path / "status"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "loading" in done.stderr  # the progress bar's label
    assert "loaded 500 event(s) and 0 dead letter(s)" in done.stderr
    assert done.stdout == ""


def test_loader_status_shows_lag_rate_dead_letters_and_errors(loaded: dict[str, Any]) -> None:
    status = run(
        "loader", "status", "--log", loaded["log"], "--warehouse", f"lake:{loaded['lake']}",
        "--status-dir", str(loaded["status"]), "--json",
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["live"] is True
    assert report["partitions"] == {"0": {"end": 2_001, "loaded": 2_001, "lag": 0}}
    assert report["lag_total"] == 0
    assert report["dead_letters"] == 1
    assert report["running"] == 0 and report["events_per_s_1m"] == 0
    assert report["last_error"] is None
    (loader,) = report["loaders"]
    assert loader["state"] == "stopped" and loader["events_loaded"] == 2_000

    # more events arrive while no loader runs: the lag shows them
    asyncio.run(append_records(loaded["log"], list(chained_records(30, sessions=2, seed=9))))
    status = run(
        "loader", "status", "--log", loaded["log"], "--warehouse", f"lake:{loaded['lake']}",
        "--status-dir", str(loaded["status"]), "--json",
    )  # fmt: skip
    assert json.loads(status.stdout)["partitions"]["0"]["lag"] == 30

    text = run(
        "loader", "status", "--log", loaded["log"], "--warehouse", f"lake:{loaded['lake']}",
        "--status-dir", str(loaded["status"]),
    )  # fmt: skip
    assert text.returncode == 0 and "lag 30" in text.stdout


def test_a_failed_loader_exits_1_and_status_names_the_error(tmp_path: Path) -> None:
    log = f"sqlite:{tmp_path / 'events.db'}"
    asyncio.run(append_records(log, list(chained_records(50, sessions=2))))
    not_a_dir = tmp_path / "lake"
    not_a_dir.write_text("this is a file, not a lake directory")
    status_dir = tmp_path / "status"
    failed = run(
        "loader", "--log", log, "--warehouse", f"lake:{not_a_dir}", "--once",
        "--status-dir", str(status_dir),
    )  # fmt: skip
    assert failed.returncode == 1
    assert "error:" in failed.stderr and str(not_a_dir) in failed.stderr
    assert "Traceback" not in failed.stderr
    report = json.loads(
        run(
            "loader",
            "status",
            "--log",
            log,
            "--warehouse",
            f"lake:{not_a_dir}",
            "--status-dir",
            str(status_dir),
            "--json",
        ).stdout  # fmt: skip
    )
    assert report["last_error"] and str(not_a_dir) in report["last_error"]
    assert report["loaders"][0]["state"] == "failed"


def test_bad_inputs_fail_with_exit_2_and_create_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    done = run(
        "loader", "--log", f"sqlite:{missing}", "--warehouse", f"lake:{tmp_path}/l", "--once"
    )
    assert done.returncode == 2 and "no event log" in done.stderr
    assert not missing.exists()
    done = run("loader", "--log", "mysql://x", "--warehouse", f"lake:{tmp_path}/l", "--once")
    assert done.returncode == 2 and "sqlite:PATH or kafka://" in done.stderr
    done = run("loader", "--log", f"sqlite:{missing}", "--warehouse", "s3://bucket", "--once")
    assert done.returncode == 2
    for depth in ("0", "17", "two"):
        done = run(
            "loader", "--log", f"sqlite:{missing}", "--warehouse", f"lake:{tmp_path}/l",
            "--once", "--pipeline-depth", depth,
        )  # fmt: skip
        assert done.returncode == 2 and "--pipeline-depth" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
    assert not (tmp_path / "l").exists()
    helped = run("loader", "--help", COLUMNS="200")
    assert helped.returncode == 0 and "--pipeline-depth" in helped.stdout


def test_a_running_loader_retries_an_unreachable_warehouse_and_no_secret_leaks(
    tmp_path: Path,
) -> None:
    """Without --once the loader waits for the warehouse to come back, and `loader
    status` shows it retrying (in JSON and in text)."""
    log = f"sqlite:{tmp_path / 'events.db'}"
    asyncio.run(append_records(log, list(chained_records(20, sessions=1))))
    url = f"clickhouse://loader:{SECRET}@127.0.0.1:9/audit"  # nothing listens on port 9
    status_dir = tmp_path / "status"
    proc = subprocess.Popen(
        [*EMBEDGUARD, "loader", "--log", log, "--warehouse", url,
         "--status-dir", str(status_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        report: dict[str, Any] = {}
        while time.monotonic() < deadline:
            status = run(
                "loader", "status", "--log", log, "--warehouse", url,
                "--status-dir", str(status_dir), "--json",
            )  # fmt: skip
            assert status.returncode == 0, status.stderr
            assert SECRET not in status.stdout + status.stderr
            report = json.loads(status.stdout)
            if report["loaders"] and report["loaders"][0]["state"] == "retrying":
                break
            time.sleep(0.5)
        assert report["loaders"][0]["state"] == "retrying", report
        assert report["running"] == 1 and report["last_error"]
        assert report["live"] is False and report["problems"]
        shown = run(
            "loader", "status", "--log", log, "--warehouse", url, "--status-dir", str(status_dir),
        )  # fmt: skip
        pid = report["loaders"][0]["pid"]
        assert shown.returncode == 0 and f"pid {pid}: retrying" in shown.stdout, shown.stdout
        assert SECRET not in shown.stdout + shown.stderr
        assert proc.poll() is None  # still retrying, not crashed
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in err
    for text in (out, err, *(p.read_text() for p in status_dir.glob("*"))):
        assert SECRET not in text


def test_once_gives_up_on_an_unreachable_warehouse_and_names_it(tmp_path: Path) -> None:
    """--once must end: after --give-up-after seconds of retrying it exits 1 with
    an error naming the warehouse (without its password)."""
    log = f"sqlite:{tmp_path / 'events.db'}"
    asyncio.run(append_records(log, list(chained_records(20, sessions=1))))
    url = f"clickhouse://loader:{SECRET}@127.0.0.1:9/audit"  # nothing listens on port 9
    status_dir = tmp_path / "status"
    started = time.monotonic()
    done = run(
        "loader", "--log", log, "--warehouse", url, "--once", "--give-up-after", "2",
        "--status-dir", str(status_dir), timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < 90
    assert "error: gave up after" in done.stderr
    assert "the warehouse clickhouse://loader@127.0.0.1:9/audit is unavailable" in done.stderr
    assert "Traceback" not in done.stderr
    report = json.loads(
        run(
            "loader", "status", "--log", log, "--warehouse", url,
            "--status-dir", str(status_dir), "--json",
        ).stdout
    )  # fmt: skip
    assert report["loaders"][0]["state"] == "failed"
    assert "gave up after" in report["last_error"]
    for text in (done.stdout, done.stderr, *(p.read_text() for p in status_dir.glob("*"))):
        assert SECRET not in text
    refused = run("loader", "--log", log, "--warehouse", url, "--once", "--give-up-after", "0")
    assert refused.returncode == 2 and "--give-up-after" in refused.stderr


def test_markup_in_arguments_is_shown_as_typed(tmp_path: Path) -> None:
    """rich markup in a path or a name is text: no MarkupError traceback."""
    missing = tmp_path / "[/nolog].db"
    done = run(
        "loader", "--log", f"sqlite:{missing}", "--warehouse", f"lake:{tmp_path}/l", "--once"
    )
    assert done.returncode == 2, done.stderr
    assert f"error: no event log at {missing};" in done.stderr
    assert "Traceback" not in done.stderr
    log = f"sqlite:{tmp_path / 'events.db'}"
    asyncio.run(append_records(log, list(chained_records(10, sessions=1))))
    status = run(
        "loader", "status", "--log", log, "--warehouse", f"lake:{tmp_path / '[b]lake[/]'}",
        "--group", "[red]ops[/]", "--status-dir", str(tmp_path / "status"),
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert "loader group [red]ops[/]: 0 running" in status.stdout
    assert "Traceback" not in status.stderr


def test_status_counts_each_dead_letter_once_before_a_merge(tmp_path: Path) -> None:
    """After a kill -9 and a re-write with other batch boundaries a MergeTree table
    holds rows twice until a merge; `loader status` counts records, not rows."""
    from embedguard.cli_loader import status_report
    from pipeline.loader import DEFAULT_GROUP
    from pipeline.warehouse.clickhouse import ChdbWarehouse
    from tests.pipeline.loader_helpers import read_records, write_dead_letters_twice
    from tests.pipeline.warehouse.scenario import shared_chdb_dir, unique_database

    log = f"sqlite:{tmp_path / 'events.db'}"
    records = list(chained_records(30, sessions=2))
    for at in (2, 9, 17, 25):
        records.insert(at, AppendRecord(b"s-x", b"\x00 poison %d" % at))
    asyncio.run(append_records(log, records))
    source, read = asyncio.run(read_records(log))
    database = unique_database()
    crashing = ChdbWarehouse(str(shared_chdb_dir()), database=database)
    crashing.migrate()
    crashing._command(f"SYSTEM STOP MERGES {crashing.db}.dead_letters")  # keep the duplicates
    restarted = ChdbWarehouse(str(shared_chdb_dir()), database=database)
    write_dead_letters_twice(crashing, restarted, source, read)
    assert restarted.query("SELECT count() AS n FROM {dead_letters}", {}) == [{"n": 8}]

    url = f"chdb:{shared_chdb_dir()}?database={database}"
    report = status_report(log, url, DEFAULT_GROUP, tmp_path / "status")
    assert report["live"] is True, report["problems"]
    assert report["dead_letters"] == 4
    assert report["partitions"] == {"0": {"end": 34, "loaded": 34, "lag": 0}}


# --------------------------------------------------------------------------- rebuild


def test_rebuild_into_a_fresh_lake_gives_the_same_row_counts(
    loaded: dict[str, Any], tmp_path: Path
) -> None:
    fresh = tmp_path / "rebuilt"
    done = run(
        "warehouse", "rebuild", "--log", loaded["log"], "--warehouse", f"lake:{loaded['lake']}",
        "--into", f"lake:{fresh}", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["events"], result["dead_letters"]) == (2_000, 1)
    live, rebuilt = counts(loaded["lake"]), counts(fresh)
    live.pop("loads"), rebuilt.pop("loads")  # batch markers differ with batch sizes
    assert rebuilt == live
    assert rebuilt["events"] == 2_000 and rebuilt["dead_letters"] == 1

    # a warehouse that holds data is not a fresh one
    again = run(
        "warehouse", "rebuild", "--log", loaded["log"], "--into", f"lake:{fresh}",
    )  # fmt: skip
    assert again.returncode == 2 and "not empty" in again.stderr


def test_rebuild_in_place_swaps_the_lake_and_keeps_the_old_one(loaded: dict[str, Any]) -> None:
    before = counts(loaded["lake"])
    done = run(
        "warehouse", "rebuild", "--log", loaded["log"], "--warehouse", f"lake:{loaded['lake']}",
        "--status-dir", str(loaded["status"]), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    previous = Path(result["previous"])
    assert previous.exists() and previous != loaded["lake"]
    after = counts(loaded["lake"])
    before.pop("loads"), after.pop("loads")
    assert after == before
    assert "rebuilding" in done.stderr  # the progress bar


def test_rebuild_in_place_keeps_the_warehouse_url_options(loaded: dict[str, Any]) -> None:
    """`?body_retention_days=N` is an option of the warehouse, not part of its
    directory: the rebuilt lake replaces DIR and is compacted with the option."""
    lake: Path = loaded["lake"]
    before = counts(lake)
    assert before["bodies"] > 0
    done = run(
        "warehouse", "rebuild", "--log", loaded["log"],
        "--warehouse", f"lake:{lake}?body_retention_days=30",
        "--status-dir", str(loaded["status"]), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["warehouse"] == f"lake:{lake}?body_retention_days=30"
    assert Path(result["previous"]).parent == lake.parent
    assert [p.name for p in lake.parent.iterdir() if ".rebuild-" in p.name] == []
    after = counts(lake)
    # the log's bodies are from 2026-03-01: past 30 days, purged when it was compacted
    assert after["events"] == before["events"] == 2_000 and after["bodies"] == 0
    # a lake that holds data is refused as --into, whatever its options
    again = run(
        "warehouse", "rebuild", "--log", loaded["log"],
        "--into", f"lake:{lake}?body_retention_days=30",
    )  # fmt: skip
    assert again.returncode == 2 and f"{lake} is not empty" in again.stderr
