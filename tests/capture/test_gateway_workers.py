"""`embedguard gateway --workers 2` end to end: a real supervisor and two real
worker processes sharing one port (SO_REUSEPORT), the dev issuer, a recording
upstream and one SQLite log. Concurrent requests are all served by both
workers, each worker's stream verifies, a held request is released through
the control API, a DPoP proof is single-use across workers, a worker killed
with SIGKILL is restarted while service continues, and SIGTERM stops
everything cleanly. Bad --workers values and a port in use end in clear errors."""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from capture.devidp import generate_dpop_key, make_dpop_proof, mint_token
from capture.policy import policy_sha256
from capture.workers import SqliteReplayCache, worker_gateway_id
from replay.verify_core import verify_log
from schemas.chain import verify_chains
from schemas.codec import DecodedEvent
from schemas.models import (
    Checkpoint,
    GatewayStarted,
    PolicyChanged,
    PolicyDecided,
    RequestReceived,
)
from schemas.note import Signer
from tests.support.approval_e2e import approval_requested, decide
from tests.support.events import read_events
from tests.support.gateway import UPSTREAM_SECRET, GatewayProcess, gateway_process
from tests.support.services import free_port
from tests.support.upstream import RecordingUpstream, recording_upstream

POLICY = """\
version: 1
approvers:
  groups_any_of: [[Vector-Approve]]
  expires_after: 30m
  mode: hold
rules:
  - id: readers
    effect: allow
    subjects: {groups: [Vector-Read]}
    actions: [search, read]
    collections: ["*"]
  - id: ds-change
    effect: require_approval
    subjects: {groups: [Vector-Read]}
    actions: [write]
    collections: ["*"]
  - id: agents
    effect: allow
    subjects: {groups: [Agents]}
    actions: [search]
    collections: ["*"]
    conditions: {require_dpop: true}
"""
QUERY_PATH = "/collections/docs/points/query"
QUERY = {"query": [0.1, 0.2], "limit": 3}
WAIT = 90.0


@dataclass
class Scenario:
    gw: GatewayProcess
    upstream: RecordingUpstream
    base_id: str
    vkey: str
    first_statuses: list[int] = field(default_factory=list)
    held_status: int = 0
    approval_status: int = 0
    approval_through: str = ""
    dpop_answers: list[tuple[int, str]] = field(default_factory=list)
    killed_pid: int = 0
    killed_index: int = 0
    restarted_pid: int = 0
    after_kill_statuses: list[int] = field(default_factory=list)
    resets_after_kill: list[str] = field(default_factory=list)
    exit_code: int | None = None
    worker_pids: list[int] = field(default_factory=list)
    stderr: str = ""
    events: list[DecodedEvent] = field(default_factory=list)


def _query(url: str, token: str) -> int:
    # a fresh connection per request: the kernel picks a worker per connection
    r = httpx.post(url + QUERY_PATH, json=QUERY, timeout=WAIT,
                   headers={"authorization": f"Bearer {token}"})
    return r.status_code


def _query_retrying(url: str, token: str, resets: list[str]) -> int:
    """A client that retries a read whose connection was reset: a connection the
    kernel queued on a worker's socket is reset when that worker dies (or a
    restarted one stops again while it starts), as with any SO_REUSEPORT server.
    The resets are counted; the answer must still be a 200."""
    for _ in range(4):
        try:
            return _query(url, token)
        except httpx.TransportError as exc:
            resets.append(type(exc).__name__)
    return -1


def _worker_pids(stderr: str) -> dict[int, int]:
    """worker index → pid of its latest ready run, from the workers' log lines."""
    out: dict[int, int] = {}
    for m in re.finditer(r"worker (\d+) ready: stream \S+, pid (\d+)", stderr):
        out[int(m.group(1))] = int(m.group(2))
    return out


def _wait_log(gw: GatewayProcess, pattern: str, timeout: float = WAIT) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while True:
        m = re.search(pattern, gw.stderr())
        if m:
            return m
        if gw.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{pattern!r} not in the gateway log:\n{gw.stderr()[-4000:]}")
        time.sleep(0.1)


def _gone(pid: int) -> bool:
    """The process has exited (a zombie has closed its sockets too)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory, dev_idp: str) -> Iterator[Scenario]:
    tmp = tmp_path_factory.mktemp("gw-workers")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    key = tmp / "keys" / "gw.key"
    reader = mint_token(dev_idp, "reader", ["Vector-Read"])
    with (
        recording_upstream() as up,
        gateway_process(
            tmp, upstream=up.url, kind="qdrant", policy=policy, issuer=dev_idp,
            extra_args=["--workers", "2", "--signing-key", str(key),
                        "--checkpoint-every", "25", "--checkpoint-interval", "1h"],
        ) as gw,
        concurrent.futures.ThreadPoolExecutor(16) as pool,
    ):
        base = f"gw-test-{gw.port}"
        sc = Scenario(gw, up, base, Signer.from_skey(key.read_text()).verifier.vkey)
        sc.worker_pids = sorted(_worker_pids(gw.stderr()).values())
        # 1. many concurrent requests, each on its own connection
        sc.first_statuses = list(pool.map(lambda _: _query(gw.url, reader), range(64)))

        # 2. a held write, released by another person through the control API
        alice = mint_token(dev_idp, "alice", ["Vector-Read"])
        held = pool.submit(
            httpx.put, gw.url + "/collections/docs/points", timeout=WAIT,
            json={"points": [{"id": 7, "vector": [0.1, 0.2], "payload": {}}]},
            headers={"authorization": f"Bearer {alice}"},
        )
        req = approval_requested(gw.log_url, subject="alice", collection="docs", client=held)
        bob = mint_token(dev_idp, "bob", ["Vector-Approve"])
        answer = decide(gw.url, bob, req.approval_id, "approve", "checked")
        sc.approval_status = answer.status_code
        sc.approval_through = req.envelope.gateway_id
        sc.held_status = held.result(timeout=WAIT).status_code

        # 3. one DPoP proof, sent on several connections
        dpop_key = tmp / "agent.pem"
        generate_dpop_key(dpop_key)
        bound = mint_token(dev_idp, "agent-1", ["Agents"], dpop_key_file=dpop_key)
        proof = make_dpop_proof(dpop_key, "POST", gw.url + QUERY_PATH, bound)

        def with_proof(_: int) -> tuple[int, str]:
            r = httpx.post(gw.url + QUERY_PATH, json=QUERY, timeout=WAIT,
                           headers={"authorization": f"DPoP {bound}", "dpop": proof})
            return r.status_code, r.text

        sc.dpop_answers = list(pool.map(with_proof, range(8)))

        # 4. SIGKILL one worker: the other serves on, the supervisor restarts it
        pids = _worker_pids(gw.stderr())
        sc.killed_index, sc.killed_pid = 0, pids[0]
        os.kill(sc.killed_pid, signal.SIGKILL)
        deadline = time.monotonic() + WAIT
        while not _gone(sc.killed_pid):
            assert time.monotonic() < deadline, "the killed worker did not exit"
            time.sleep(0.05)
        resets = sc.resets_after_kill
        sc.after_kill_statuses = list(
            pool.map(lambda _: _query_retrying(gw.url, reader, resets), range(16)))
        m = _wait_log(gw, r"worker 0 \(\S+\) restarted as pid (\d+) and is serving again")
        sc.restarted_pid = int(m.group(1))
        sc.after_kill_statuses += list(
            pool.map(lambda _: _query_retrying(gw.url, reader, resets), range(48)))

        # 5. SIGTERM: every worker stops cleanly, the supervisor exits 0
        gw.proc.send_signal(signal.SIGTERM)
        sc.exit_code = gw.proc.wait(timeout=WAIT)
        sc.stderr = gw.stderr()
    sc.events = read_events(gw.log_url)
    yield sc


def _streams(events: list[DecodedEvent], cls: type[Any] | None = None) -> set[str]:
    return {d.event.envelope.gateway_id for d in events
            if cls is None or isinstance(d.event, cls)}


def test_concurrent_requests_are_all_served_by_several_workers(scenario: Scenario) -> None:
    assert scenario.first_statuses == [200] * 64
    received = [d for d in scenario.events if isinstance(d.event, RequestReceived)
                and d.event.path == QUERY_PATH]
    # 64 + 8 DPoP attempts (one allowed; the refused ones are recorded too) + 64
    assert len(received) >= 64 + 64 + 1
    w0, w1 = (worker_gateway_id(scenario.base_id, k) for k in (0, 1))
    assert _streams(received) == {w0, w1}
    assert _streams(scenario.events) == {w0, w1}  # nothing recorded as the bare id
    reached = [r for r in scenario.upstream.requests if r.path == QUERY_PATH]
    assert len(reached) == 64 + 1 + 64
    assert all(UPSTREAM_SECRET in r.headers.get("api-key", "") for r in reached)


def test_each_worker_stream_verifies(scenario: Scenario) -> None:
    events = scenario.events
    report = verify_log(events, [scenario.vkey])
    assert report.ok and not report.errors, "\n".join(str(f) for f in report.errors)
    # Session chains verify, the restarted worker's too: each run of a stream
    # has its own system session (gateway:<stream>@<run>)
    assert verify_chains(events) == []
    restarted = worker_gateway_id(scenario.base_id, 0)
    runs = {d.event.envelope.session_id for d in events
            if d.event.envelope.session_id.startswith(f"gateway:{restarted}@")}
    assert len(runs) == 2, runs  # the killed run and its restart
    # each worker run started with GatewayStarted; the killed run ends without
    # a final checkpoint, the other runs were closed by one at shutdown
    starts = [d.event for d in events if isinstance(d.event, GatewayStarted)]
    assert sorted(e.pid for e in starts) == sorted(
        [*scenario.worker_pids, scenario.restarted_pid])
    assert len(report.streams) == 3, list(report.streams)
    cps = [d.event for d in events if isinstance(d.event, Checkpoint)]
    assert _streams(events, Checkpoint) == _streams(events)
    assert report.checkpoints_verified == len(cps)
    uncovered = [f for f in report.findings if f.kind == "not_checkpointed"]
    assert len(uncovered) <= 1, "\n".join(str(f) for f in report.findings)
    assert all(f.stream == worker_gateway_id(scenario.base_id, 0) for f in uncovered)
    closed = [s for s in report.streams.values() if s.verified_size == s.events - 1]
    assert len(closed) >= 2, report.streams  # w1 and the restarted w0


def test_held_request_is_released_through_the_control_api(scenario: Scenario) -> None:
    assert scenario.approval_status == 200
    assert scenario.held_status == 200
    assert scenario.approval_through.startswith(scenario.base_id + "/w")
    writes = [r for r in scenario.upstream.requests if r.path == "/collections/docs/points"]
    assert len(writes) == 1


def test_a_dpop_proof_is_single_use_across_workers(scenario: Scenario) -> None:
    statuses = sorted(s for s, _ in scenario.dpop_answers)
    assert statuses == [200] + [401] * 7, scenario.dpop_answers
    assert all("dpop_replayed" in text for s, text in scenario.dpop_answers if s == 401)
    # (with a cache per worker, the proof would be accepted once per worker
    # that its connections reached: 8 connections all reach one worker 1 in 128)


def test_a_killed_worker_is_restarted_and_service_continues(scenario: Scenario) -> None:
    assert scenario.after_kill_statuses == [200] * 64
    # a few reset connections while worker 0 restarts are what SO_REUSEPORT does;
    # most requests must not need a second try
    assert len(scenario.resets_after_kill) <= 16, scenario.resets_after_kill
    assert scenario.restarted_pid not in (0, scenario.killed_pid)
    assert re.search(r"worker 0 \(\S+/w0\) exited unexpectedly \(killed by SIGKILL\); "
                     r"restarting it in", scenario.stderr)
    restarted = [d.event for d in scenario.events if isinstance(d.event, GatewayStarted)
                 and d.event.pid == scenario.restarted_pid]
    assert [e.envelope.gateway_id for e in restarted] == [
        worker_gateway_id(scenario.base_id, 0)]
    served = {d.event.envelope.gateway_id for d in scenario.events
              if isinstance(d.event, RequestReceived)
              and d.event.envelope.occurred_at >= restarted[0].envelope.occurred_at}
    assert served, "nothing was served after the restart"


def test_sigterm_stops_every_worker_cleanly(scenario: Scenario) -> None:
    assert scenario.exit_code == 0, scenario.stderr[-3000:]
    assert "all workers stopped" in scenario.stderr
    for pid in (*scenario.worker_pids, scenario.restarted_pid):
        assert _gone(pid)
    assert "Traceback" not in scenario.stderr
    assert UPSTREAM_SECRET not in scenario.stderr


def test_workers_stop_when_their_supervisor_is_killed(tmp_path: Path, dev_idp: str) -> None:
    """An unsupervised worker must not keep serving (a new supervisor would
    share the port with it): it sees its stdin close and shuts down."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    with (
        recording_upstream() as up,
        gateway_process(tmp_path, upstream=up.url, kind="qdrant", policy=policy,
                        issuer=dev_idp, extra_args=["--workers", "2"]) as gw,
    ):
        pids = list(_worker_pids(gw.stderr()).values())
        assert len(pids) == 2
        gw.proc.kill()
        gw.proc.wait()
        deadline = time.monotonic() + WAIT
        while not all(_gone(pid) for pid in pids):
            assert time.monotonic() < deadline, f"workers {pids} outlived their supervisor"
            time.sleep(0.1)
    assert "supervisor gone, shutting down" in gw.stderr()


# -- a restart while the policy file does not load ------------------------------
#
# Audit 3b (t15): running workers keep their policy when the file becomes
# invalid, but a restarted worker could not load the file, and after three tries
# the supervisor stopped every worker. Now it starts from the last version that
# loaded, which the supervisor keeps, and follows the file from there.

EXTRA_RULE = """\
  - id: extra-{n}
    effect: deny
    subjects: {{groups: [Nobody]}}
    actions: [admin]
    collections: ["*"]
"""
INVALID_RULE = """\
  - id: broken
    effect: allow
    subjects: {groups: [X]}
    actions: [teleport]
"""


def _policy_changes(log_url: str, stream: str) -> list[PolicyChanged]:
    return [d.event for d in read_events(log_url) if isinstance(d.event, PolicyChanged)
            and d.event.envelope.gateway_id == stream]


def _wait_for(what: str, check: Any, gw: GatewayProcess) -> Any:
    deadline = time.monotonic() + WAIT
    while not (found := check()):
        assert gw.proc.poll() is None, f"the gateway exited:\n{gw.stderr()[-4000:]}"
        assert time.monotonic() < deadline, f"{what}:\n{gw.stderr()[-4000:]}"
        time.sleep(0.2)
    return found


def test_a_worker_restarted_while_the_policy_is_invalid_serves_the_last_valid_one(
    tmp_path: Path, dev_idp: str
) -> None:
    policy = tmp_path / "policy.yaml"
    v1, v2 = POLICY, POLICY + EXTRA_RULE.format(n=2)
    v3 = POLICY + EXTRA_RULE.format(n=3)
    policy.write_text(v1)
    reader = mint_token(dev_idp, "reader", ["Vector-Read"])
    with (
        recording_upstream() as up,
        gateway_process(tmp_path, upstream=up.url, kind="qdrant", policy=policy,
                        issuer=dev_idp, extra_args=["--workers", "2"]) as gw,
    ):
        base = f"gw-test-{gw.port}"
        w0, w1 = worker_gateway_id(base, 0), worker_gateway_id(base, 1)
        # a valid change that both workers reload: the supervisor must keep this
        # one, not the version the workers started with
        policy.write_text(v2)
        for stream in (w0, w1):
            _wait_for(f"{stream} did not reload", lambda s=stream: any(
                c.new_sha256 == policy_sha256(v2) for c in _policy_changes(gw.log_url, s)), gw)
        policy.write_text(v2 + INVALID_RULE)
        _wait_for("the workers did not both reject the invalid file", lambda: len(re.findall(
            r"new policy \S+ is invalid; keeping policy", gw.stderr())) >= 2, gw)

        killed = _worker_pids(gw.stderr())[0]
        os.kill(killed, signal.SIGKILL)
        m = _wait_log(gw, r"worker 0 \(\S+\) restarted as pid (\d+) and is serving again")
        restarted = int(m.group(1))
        resets: list[str] = []
        statuses = [_query_retrying(gw.url, reader, resets) for _ in range(16)]
        assert statuses == [200] * 16
        log = gw.stderr()
        assert re.search(r"does not load; worker 0 \(\S+/w0\) starts from the last version "
                         rf"that loaded \({policy_sha256(v2)[:12]}\)", log), log[-4000:]
        assert re.search(r"\[w0\]: policy \S+ does not load, so this gateway enforces the "
                         rf"last version that loaded \({policy_sha256(v2)[:12]}\)", log)
        assert "'teleport' is not an action" in log.rsplit("restarted as pid", 1)[0]

        # the restarted run says truthfully what it enforces: v2, from nothing
        events = read_events(gw.log_url)
        (started,) = [d.event for d in events if isinstance(d.event, GatewayStarted)
                      and d.event.pid == restarted]
        assert started.policy_sha256 == policy_sha256(v2)
        after = [c for c in _policy_changes(gw.log_url, w0)
                 if c.envelope.occurred_at >= started.envelope.occurred_at]
        assert [(c.old_sha256, c.new_sha256) for c in after] == [(None, policy_sha256(v2))]
        decided = [d.event for d in events if isinstance(d.event, PolicyDecided)
                   and d.event.envelope.gateway_id == w0
                   and d.event.envelope.occurred_at >= started.envelope.occurred_at]
        assert {e.policy_sha256 for e in decided} <= {policy_sha256(v2)}

        # and it follows the file once the file loads again
        policy.write_text(v3)
        _wait_for("the restarted worker did not follow the fixed file", lambda: any(
            (c.old_sha256, c.new_sha256) == (policy_sha256(v2), policy_sha256(v3))
            for c in _policy_changes(gw.log_url, w0)
            if c.envelope.occurred_at >= started.envelope.occurred_at), gw)
        assert gw.proc.poll() is None
        assert "could not start" not in gw.stderr()


def test_workers_refuse_to_start_on_a_policy_that_never_loaded(
    tmp_path: Path, dev_idp: str
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY + INVALID_RULE)
    r = subprocess.run(
        [sys.executable, "-m", "embedguard.cli", "gateway", "--upstream", "http://127.0.0.1:9",
         "--kind", "qdrant", "--policy", str(policy), "--log", f"sqlite:{tmp_path / 'e.db'}",
         "--issuer", dev_idp, "--audience", "embedguard", "--gateway-id", "gw-bad",
         "--signing-key", str(tmp_path / "gw.key"), "--listen", f"127.0.0.1:{free_port()}",
         "--workers", "2"],
        capture_output=True, text=True, timeout=WAIT,
    )
    assert r.returncode != 0
    assert "the policy does not load" in r.stderr and "teleport" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_the_supervisor_keeps_the_last_policy_that_loaded(tmp_path: Path) -> None:
    from capture.config import GatewayConfig, Route
    from capture.workers import Supervisor

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY + INVALID_RULE)
    config = GatewayConfig(
        routes=[Route(kind="qdrant", upstream="http://127.0.0.1:9", listen_port=1)],
        policy_path=policy, log_url=f"sqlite:{tmp_path / 'e.db'}", issuer="http://i",
        audience="a", gateway_id="gw")
    sup = Supervisor(config, 1)
    try:
        assert sup.last_valid_policy is None  # never loaded: nothing to fall back to
        for n, (text, kept) in enumerate([
            (POLICY, POLICY),
            (POLICY + INVALID_RULE, POLICY),
            (POLICY + EXTRA_RULE.format(n=2), POLICY + EXTRA_RULE.format(n=2)),
            ("version: [", POLICY + EXTRA_RULE.format(n=2)),
        ]):
            policy.write_text(text)
            os.utime(policy, ns=(n * 10**9, n * 10**9))  # a new mtime, however fast
            sup._check_policy()
            assert sup.last_valid_policy == kept
        policy.unlink()
        sup._check_policy()
        assert sup.last_valid_policy == POLICY + EXTRA_RULE.format(n=2)
    finally:
        sup.sel.close()
        sup._wake_r.close()
        sup._wake_w.close()
        shutil.rmtree(sup._scratch, ignore_errors=True)


# -- errors ----------------------------------------------------------------------


def _gateway_cli(tmp: Path, issuer: str, *args: str, timeout: float = WAIT
                 ) -> subprocess.CompletedProcess[str]:
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    return subprocess.run(
        [sys.executable, "-m", "embedguard.cli", "gateway", "--upstream", "http://127.0.0.1:9",
         "--kind", "qdrant", "--policy", str(policy), "--log", f"sqlite:{tmp / 'events.db'}",
         "--issuer", issuer, "--audience", "embedguard", "--gateway-id", "gw-err",
         "--signing-key", str(tmp / "gw.key"), *args],
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.mark.parametrize("workers", ["0", "-1"])
def test_workers_must_be_one_or_more(tmp_path: Path, dev_idp: str, workers: str) -> None:
    r = _gateway_cli(tmp_path, dev_idp, "--listen", f"127.0.0.1:{free_port()}",
                     "--workers", workers)
    assert r.returncode != 0
    assert f"--workers {workers}" in r.stderr and "1 or more" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_workers_need_a_fixed_port(tmp_path: Path, dev_idp: str) -> None:
    r = _gateway_cli(tmp_path, dev_idp, "--listen", "127.0.0.1:0", "--workers", "2")
    assert r.returncode != 0
    assert "--workers shares fixed ports" in " ".join(r.stderr.split()), r.stderr
    assert "Traceback" not in r.stderr


def test_a_port_in_use_ends_the_supervisor_with_a_clear_error(
    tmp_path: Path, dev_idp: str
) -> None:
    with socket.socket() as taken:  # bound without SO_REUSEPORT: nobody may share it
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = _gateway_cli(tmp_path, dev_idp, "--listen", f"127.0.0.1:{port}", "--workers", "2")
    assert r.returncode == 1, r.stderr[-3000:]
    last = " ".join(r.stderr.rsplit("error:", 1)[-1].split())  # the CLI's message, unwrapped
    assert "could not start" in last and f"127.0.0.1:{port}" in last, r.stderr[-3000:]
    assert "in use" in last
    assert "Traceback" not in r.stderr
    assert "embedguard gateway gw-err:" not in r.stderr  # never announced as listening


def test_a_port_in_use_ends_a_single_gateway_with_a_clear_error(
    tmp_path: Path, dev_idp: str
) -> None:
    """Without --workers too: the gateway used to log the bind error, announce
    itself as listening anyway and serve nothing."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = _gateway_cli(tmp_path, dev_idp, "--listen", f"127.0.0.1:{port}")
    assert r.returncode == 1, r.stderr[-3000:]
    last = " ".join(r.stderr.rsplit("error:", 1)[-1].split())
    assert f"cannot listen on 127.0.0.1:{port}" in last and "in use" in last, r.stderr[-3000:]
    assert "--listen" in last
    assert "Traceback" not in r.stderr
    assert "embedguard gateway gw-err:" not in r.stderr  # never announced as listening


# -- the shared replay cache -------------------------------------------------------


def test_sqlite_replay_cache_is_shared_between_instances(tmp_path: Path) -> None:
    a = SqliteReplayCache(tmp_path / "replay.db")
    b = SqliteReplayCache(tmp_path / "replay.db")
    try:
        assert a.remember("k1", expires_at=100.0, now=10.0) == "new"
        assert b.remember("k1", expires_at=100.0, now=11.0) == "replayed"
        assert a.remember("k1", expires_at=100.0, now=12.0) == "replayed"
        assert b.remember("k2", expires_at=100.0, now=12.0) == "new"
        # once a proof is too old to be accepted anyway, its entry may go
        assert a.remember("k1", expires_at=300.0, now=150.0) == "new"
        assert b.remember("k1", expires_at=300.0, now=151.0) == "replayed"
    finally:
        a.close()
        b.close()


def test_sqlite_replay_cache_fails_closed_when_full(tmp_path: Path) -> None:
    cache = SqliteReplayCache(tmp_path / "replay.db", max_entries=2)
    try:
        assert cache.remember("a", expires_at=100.0, now=1.0) == "new"
        assert cache.remember("b", expires_at=100.0, now=1.1) == "new"
        assert cache.remember("c", expires_at=100.0, now=2.5) == "full"
        assert cache.remember("a", expires_at=100.0, now=2.6) == "replayed"
        assert cache.remember("c", expires_at=200.0, now=101.0) == "new"  # a, b expired
    finally:
        cache.close()
