"""Sessions through a real gateway process: an idle gap closes a session
(SessionEnded, reason idle) and the next request opens a new one; a client
names its session with ``X-Embedguard-Session``; shutdown ends what is open."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from capture.devidp import mint_token
from schemas.chain import verify_chains
from tests.support.events import read_events
from tests.support.gateway import gateway_process
from tests.support.upstream import DEFAULT_ANSWER, recording_upstream

POLICY = """\
version: 1
rules:
  - id: read
    effect: allow
    subjects: {groups: [Vector-Read]}
    actions: [search, read]
    collections: ["*"]
"""
PATH = "/collections/docs/points/query"
QUERY = {"query": [0.1, 0.2], "limit": 3}


def _by_type(evs: list[Any], name: str) -> list[Any]:
    return [e.event for e in evs if e.event.avro_name == name]


def _session_of(evs: list[Any], request_id: str) -> str:
    (received,) = [
        ev for ev in _by_type(evs, "RequestReceived") if ev.envelope.request_id == request_id
    ]
    return str(received.envelope.session_id)


def test_idle_gap_closes_the_session_and_names_are_kept(tmp_path: Path, dev_idp: str) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    token = mint_token(dev_idp, "nina", ["Vector-Read"])
    auth = {"authorization": f"Bearer {token}"}
    named = {**auth, "X-Embedguard-Session": "nightly-import"}
    with (
        recording_upstream() as up,
        gateway_process(
            tmp_path,
            upstream=up.url,
            kind="qdrant",
            policy=policy,
            issuer=dev_idp,
            extra_args=["--session-idle", "1s"],
        ) as gw,
    ):

        def post(headers: dict[str, str]) -> str:
            r = httpx.post(f"{gw.url}{PATH}", json=QUERY, headers=headers, timeout=30)
            assert r.status_code == 200, r.text
            return r.headers["x-embedguard-request-id"]

        first = post(auth)
        time.sleep(1.6)  # longer than --session-idle
        second = post(auth)
        # a named run: its requests share one session, apart from the unnamed one
        named_ids = [post(named), post(named)]
        evs = read_events(gw.log_url)
        s1, s2 = _session_of(evs, first), _session_of(evs, second)
        assert s1 != s2
        ended = {ev.envelope.session_id: ev for ev in _by_type(evs, "SessionEnded")}
        assert ended[s1].reason == "idle" and ended[s1].request_count == 1
        # the idle end is recorded before the next session starts
        order = [(e.event.avro_name, e.event.envelope.session_id) for e in evs]
        assert order.index(("SessionEnded", s1)) < order.index(("SessionStarted", s2))

        sn = {_session_of(evs, rid) for rid in named_ids}
        assert len(sn) == 1 and sn.isdisjoint({s1, s2})
        started = {ev.envelope.session_id: ev for ev in _by_type(evs, "SessionStarted")}
        assert started[sn.pop()].client_session_name == "nightly-import"
        assert started[s1].client_session_name is None
        assert started[s1].subject == started[s2].subject == "nina"
        # each session resolves the identity once, at its start
        resolved = Counter(ev.envelope.session_id for ev in _by_type(evs, "IdentityResolved"))
        assert resolved[s1] == resolved[s2] == 1
        assert verify_chains(evs) == []

    # once the gateway has stopped, every session has ended exactly once (idle,
    # or at shutdown if it was still open), with its request count
    evs = read_events(gw.log_url)
    ends = Counter(ev.envelope.session_id for ev in _by_type(evs, "SessionEnded"))
    assert set(ends) == {ev.envelope.session_id for ev in _by_type(evs, "SessionStarted")}
    assert set(ends.values()) == {1}
    ended = {ev.envelope.session_id: ev for ev in _by_type(evs, "SessionEnded")}
    named_session = _session_of(evs, named_ids[0])
    assert ended[s2].reason in ("idle", "shutdown") and ended[s2].request_count == 1
    assert ended[named_session].request_count == 2
    assert verify_chains(evs) == []


def test_a_request_in_flight_keeps_its_session_open(tmp_path: Path, dev_idp: str) -> None:
    """A request slower than the idle gap (a slow upstream here; a request held
    for approval is the same) does not let its session end under it: before
    the fix the sweeper recorded SessionEnded while it waited, and its
    ResponseRecorded began the ended session's chain again at seq 0, which
    verification reports as tampering. A request arriving meanwhile joins the
    same session, and the gap counts from the end of the last request."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    token = mint_token(dev_idp, "nina", ["Vector-Read"])
    auth = {"authorization": f"Bearer {token}"}
    slow_paths = {PATH}

    def answer(method: str, path: str, body: bytes) -> Any:
        if path in slow_paths:
            time.sleep(2.5)  # over twice --session-idle
        return DEFAULT_ANSWER

    with (
        recording_upstream(answer) as up,
        gateway_process(
            tmp_path,
            upstream=up.url,
            kind="qdrant",
            policy=policy,
            issuer=dev_idp,
            extra_args=["--session-idle", "1s"],
        ) as gw,
    ):
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(
                httpx.post, f"{gw.url}{PATH}", json=QUERY, headers=auth, timeout=30
            )
            time.sleep(1.5)  # past the gap since the slow request arrived
            fast = httpx.post(
                f"{gw.url}/collections/docs/points/scroll", json={"limit": 1},
                headers=auth, timeout=30,
            )
            assert fast.status_code == 200, fast.text
            r = slow.result()
        assert r.status_code == 200, r.text
        ended_at = time.monotonic()
        while time.monotonic() - ended_at < 15:  # the idle end, once both are done
            evs = read_events(gw.log_url)
            if _by_type(evs, "SessionEnded"):
                break
            time.sleep(0.2)
        sid = _session_of(evs, r.headers["x-embedguard-request-id"])
        assert _session_of(evs, fast.headers["x-embedguard-request-id"]) == sid
        mine = [e.event for e in evs if e.event.envelope.session_id == sid]
        assert [e.envelope.seq for e in mine] == list(range(len(mine)))
        assert mine[-1].avro_name == "SessionEnded"
        assert mine[-1].reason == "idle" and mine[-1].request_count == 2
        assert [e.avro_name for e in mine].count("ResponseRecorded") == 2
        assert verify_chains(evs) == []
