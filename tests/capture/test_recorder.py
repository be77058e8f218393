"""Recorder (capture/recorder.py): when a response may leave, by durability mode.

The addons run in process, driven through their hooks with real mitmproxy
flows, the dev issuer's tokens, examples/policy.yaml and a real SQLite log.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import tflow
from pydantic import SecretStr

from capture.classifier import Classifier
from capture.config import GatewayConfig, Route
from capture.credentials import Credentials
from capture.enforcer import Enforcer
from capture.identity import IdentityCheck
from capture.intake import Intake
from capture.masker import Masker
from capture.recorder import Recorder
from capture.state import state_of
from pipeline.transport.sqlite import SqliteEventLog
from schemas.chain import verify_chains
from schemas.codec import default_codec
from tests.support.events import read_events

ROOT = Path(__file__).resolve().parents[2]
SECRET = "eg-recorder-upstream-secret-41c9"
POINT = {"id": 1, "payload": {"email": "bob@example.org", "team": "search"}, "vector": [0.1]}


def config(tmp: Path, issuer: str, **extra: Any) -> GatewayConfig:
    return GatewayConfig(
        routes=[
            Route(
                kind="qdrant",
                upstream="http://127.0.0.1:6333",
                listen_port=6333,
                credential=SecretStr(SECRET),
                credential_ref="env:EG_TEST_KEY",
            )
        ],
        policy_path=ROOT / "examples" / "policy.yaml",
        log_url=f"sqlite:{tmp / 'events.db'}",
        issuer=issuer,
        audience="embedguard",
        gateway_id="gw-recorder",
        **extra,
    )


class Chain:
    """The gateway's core addons in mitmproxy's hook order."""

    def __init__(self, cfg: GatewayConfig, log: SqliteEventLog) -> None:
        self.recorder = Recorder(cfg, log_=log)
        self.addons: list[Any] = [
            Intake(cfg),
            IdentityCheck(cfg),
            Classifier(cfg),
            Enforcer(cfg.policy_path),
            Masker(),
            Credentials(),
            self.recorder,
        ]

    async def _each(self, hook: str, flow: http.HTTPFlow) -> None:
        for addon in self.addons:
            fn: Callable[[http.HTTPFlow], Awaitable[None] | None] | None = getattr(
                addon, hook, None
            )
            if fn is not None:
                result = fn(flow)
                if result is not None:
                    await result

    async def start(self) -> None:
        for addon in self.addons:
            if hasattr(addon, "running"):
                result = addon.running()
                if result is not None:
                    await result

    async def stop(self) -> None:
        for addon in reversed(self.addons):
            if hasattr(addon, "done"):
                await addon.done()

    async def request(self, token: str) -> http.HTTPFlow:
        """A GET of point 1 through the request hooks only: forwarded if it
        leaves with no response."""
        flow = tflow.tflow()
        flow.request = http.Request.make(
            "GET",
            "http://127.0.0.1:6333/collections/docs/points/1",
            b"",
            {"host": "127.0.0.1:6333", "authorization": f"Bearer {token}"},
        )
        await self._each("requestheaders", flow)
        await self._each("request", flow)
        return flow

    async def exchange(self, token: str, body: bytes) -> http.HTTPFlow:
        """One GET of point 1; ``body`` is the upstream's answer."""
        flow = await self.request(token)
        st = state_of(flow)
        assert st is not None and st.forwarded, flow.response and flow.response.content
        flow.response = http.Response.make(200, body, {"content-type": "application/json"})
        await self._each("responseheaders", flow)
        await self._each("response", flow)
        return flow


def answer(padding: int = 0) -> bytes:
    return json.dumps({"result": {**POINT, "pad": "p" * padding}, "status": "ok"}).encode()


def test_sync_is_the_default_and_the_response_record_is_durable_before_delivery(
    tmp_path: Path, dev_idp: str
) -> None:
    from capture.devidp import mint_token

    cfg = config(tmp_path, dev_idp)
    assert cfg.response_durability == "sync"
    token = mint_token(dev_idp, "alice", ["Vector-Read"])

    async def run() -> list[tuple[str, str | None]]:
        log = SqliteEventLog(tmp_path / "events.db")
        chain = Chain(cfg, log)
        await chain.start()
        last_stored = []
        try:
            async with log.tail_reader() as reader:
                for _ in range(3):
                    flow = await chain.exchange(token, answer())
                    # The hook has returned, so mitmproxy may send the response
                    # now: its record must already be in the log.
                    records = await reader.poll(max_records=100, timeout=0)
                    last = default_codec().decode(records[-1].value).event.envelope
                    assert state_of(flow) is not None
                    last_stored.append((state_of(flow).request_id, last.request_id))  # type: ignore[union-attr]
                    assert last.type == "ResponseRecorded"
        finally:
            await chain.stop()
        return last_stored

    for request_id, stored_id in asyncio.run(run()):
        assert stored_id == request_id


def test_a_flow_alone_commits_on_the_loop_and_concurrent_flows_group_commit(
    tmp_path: Path, dev_idp: str
) -> None:
    """One flow in flight: its appends commit inline (no thread hand-off). Several
    in flight: none blocks the loop for its fsync; they share the writer's
    commits. The async response path never commits inline."""
    from capture.devidp import mint_token

    token = mint_token(dev_idp, "alice", ["Vector-Read"])

    async def run(cfg: GatewayConfig, flows: int, rounds: int) -> tuple[int, int, int]:
        log = SqliteEventLog(tmp_path / f"events-{cfg.response_durability}-{flows}.db")
        chain = Chain(cfg, log)
        await chain.start()
        try:
            base_commits, base_inline = log.stats.commits, log.stats.inline_commits
            for _ in range(rounds):
                await asyncio.gather(*(chain.exchange(token, answer()) for _ in range(flows)))
                # async responses: let the last round's records land first,
                # and the writer finish with them (it resolves an append's
                # future just before it counts the job done)
                await asyncio.gather(*chain.recorder._in_flight)
                for _ in range(2000):
                    if log._writer is None or not log._writer._outstanding:
                        break
                    await asyncio.sleep(0.005)
            assert chain.recorder._live == {}, "every flow's end was seen"
            return (
                log.stats.commits - base_commits,
                log.stats.inline_commits - base_inline,
                log.stats.appends,
            )
        finally:
            await chain.stop()

    sync_cfg = config(tmp_path, dev_idp)
    commits, inline, _ = asyncio.run(run(sync_cfg, 1, 5))
    assert (commits, inline) == (10, 10), "alone: request and response commit inline"
    commits, inline, _ = asyncio.run(run(sync_cfg, 8, 3))
    # Only a flow left alone at the end of a round (its response) may go inline.
    assert inline <= 3, "with other flows in flight no append holds the loop"
    assert commits < 2 * 8 * 3, "concurrent flows share group commits"
    async_cfg = config(tmp_path, dev_idp, response_durability="async")
    commits, inline, _ = asyncio.run(run(async_cfg, 1, 5))
    assert (commits, inline) == (10, 5), "requests commit inline; responses never wait"


def test_async_responses_are_recorded_in_stream_order_and_chain(
    tmp_path: Path, dev_idp: str
) -> None:
    from capture.devidp import mint_token

    cfg = config(tmp_path, dev_idp, response_durability="async")
    token = mint_token(dev_idp, "alice", ["Vector-Read"])

    async def run() -> list[http.HTTPFlow]:
        chain = Chain(cfg, SqliteEventLog(tmp_path / "events.db"))
        await chain.start()
        try:
            flows = [await chain.exchange(token, answer()) for _ in range(25)]
        finally:
            await chain.stop()  # waits for the appends still in flight
        return flows

    flows = asyncio.run(run())
    for flow in flows:
        assert flow.response is not None and flow.response.status_code == 200
        assert b"bob@example.org" not in flow.response.content  # masked as in sync mode
    events = read_events(cfg.log_url)
    assert verify_chains(events) == []
    stream = [d.event.envelope.stream_seq for d in events]
    assert stream == list(range(len(events))), "the log holds the stream in stamp order"
    request_ids = {state_of(f).request_id for f in flows}  # type: ignore[union-attr]
    recorded = {
        d.event.envelope.request_id for d in events if d.event.envelope.type == "ResponseRecorded"
    }
    assert recorded == request_ids
    assert all(SECRET not in d.canonical.decode("latin-1") for d in events)


def test_async_response_whose_record_fails_is_logged_and_the_stream_starts_over(
    tmp_path: Path, dev_idp: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The log has room for the request events but not for a response that
    carries a 300 kB body: the client already has its answer, so the failure
    is logged (no secret in it) and no chain continues over the hole."""
    import sqlite3

    from capture.devidp import mint_token

    cfg = config(tmp_path, dev_idp, response_durability="async", record_body_limit=600_000)
    token = mint_token(dev_idp, "alice", ["Vector-Read"])
    path = tmp_path / "events.db"

    async def run() -> tuple[http.HTTPFlow, http.HTTPFlow, str, str]:
        async with SqliteEventLog(path):  # create it, to size the cap from it
            pass
        pages = sqlite3.connect(path).execute("PRAGMA page_count").fetchone()[0]
        # 160 kB of room: the start-up events and a request's fit, the response does not
        chain = Chain(cfg, SqliteEventLog(path, max_bytes=(pages + 40) * 4096))
        await chain.start()
        try:
            stream_before = chain.recorder.stamper.gateway_id
            big = await chain.exchange(token, answer(padding=300_000))
            await asyncio.gather(*chain.recorder._in_flight, return_exceptions=True)
            await asyncio.sleep(0)  # let the done-callbacks run
            after = await chain.exchange(token, answer())
            return big, after, stream_before, chain.recorder.stamper.gateway_id
        finally:
            await chain.stop()

    with caplog.at_level(logging.ERROR, logger="embedguard.recorder"):
        big, after, stream_before, stream_after = asyncio.run(run())
    assert big.response is not None and big.response.status_code == 200
    failure = [r for r in caplog.records if "could not be made durable" in r.getMessage()]
    assert len(failure) == 1
    assert state_of(big).request_id in failure[0].getMessage()  # type: ignore[union-attr]
    assert SECRET not in caplog.text and token not in caplog.text
    assert stream_before == "gw-recorder" and stream_after == "gw-recorder#1"
    events = read_events(cfg.log_url)
    big_id = state_of(big).request_id  # type: ignore[union-attr]
    assert not [
        d
        for d in events
        if d.event.envelope.request_id == big_id and d.event.envelope.type == "ResponseRecorded"
    ]
    # the next request is recorded on the new stream, in a new session
    after_events = [
        d
        for d in events
        if d.event.envelope.request_id == state_of(after).request_id  # type: ignore[union-attr]
    ]
    assert after_events and {d.event.envelope.gateway_id for d in after_events} == {"gw-recorder#1"}
    assert verify_chains(events) == []


def test_a_gateway_restarted_with_the_same_id_starts_new_chains(
    tmp_path: Path, dev_idp: str
) -> None:
    """Production gateways keep their --gateway-id across restarts. Each run
    begins its stream and its chains again, so its system session
    (GatewayStarted, checkpoints, ...) is its own: the log's chains verify
    after any number of restarts (they used to share gateway:<id> and report
    the second run's seq 0 as out of order)."""
    from capture.devidp import mint_token

    cfg = config(tmp_path, dev_idp)
    token = mint_token(dev_idp, "alice", ["Vector-Read"])

    async def run_once() -> str:
        chain = Chain(cfg, SqliteEventLog(tmp_path / "events.db"))
        await chain.start()
        try:
            await chain.exchange(token, answer())
            return chain.recorder.system_session
        finally:
            await chain.stop()

    first, second = asyncio.run(run_once()), asyncio.run(run_once())
    assert first != second
    assert first.startswith("gateway:gw-recorder@") and second.startswith("gateway:gw-recorder@")
    events = read_events(cfg.log_url)
    system = [d for d in events if d.event.envelope.session_id in (first, second)]
    assert {d.event.envelope.type for d in system} >= {"GatewayStarted"}
    assert {d.event.envelope.session_id for d in system} == {first, second}
    assert verify_chains(events) == []


def test_gateway_built_events_decode_and_validate_against_the_models(
    tmp_path: Path, dev_idp: str
) -> None:
    """The recorder builds its per-request events as plain records (no pydantic
    model on the hot path); what reaches the log must still be exactly what
    the models accept, and what the Merkle tree and publisher saw."""
    from capture.devidp import mint_token
    from schemas.models import EVENT_TYPES

    cfg = config(tmp_path, dev_idp)
    token = mint_token(dev_idp, "alice", ["Vector-Read"])
    stamped: list[Any] = []

    async def run() -> None:
        log = SqliteEventLog(tmp_path / "events.db")
        chain = Chain(cfg, log)
        original = chain.recorder.append

        async def keep(events: Any) -> None:
            stamped.extend(events)
            await original(events)

        chain.recorder.append = keep  # type: ignore[method-assign]
        await chain.start()
        try:
            for _ in range(2):
                flow = await chain.exchange(token, answer())
                assert b"bob@example.org" not in (flow.response.content or b"")  # type: ignore[union-attr]
        finally:
            await chain.stop()

    asyncio.run(run())
    events = read_events(cfg.log_url)
    by_id = {str(d.event.envelope.event_id): d for d in events}
    types = [s.type_name for s in stamped]
    for name in ("RequestReceived", "PolicyDecided", "RequestForwarded", "ResponseRecorded"):
        assert types.count(name) == 2, types
    for s in stamped:
        decoded = by_id[s.event_id]
        assert decoded.canonical == s.wire
        model = EVENT_TYPES[s.type_name]
        # the model accepts the record again, field for field
        assert model.model_validate(decoded.event.model_dump()) == decoded.event
        assert s.event == decoded.event
        # the model path writes the same bytes (the second request's bodies
        # came from the codec's kept encodings)
        assert default_codec().canonical(decoded.event) == s.wire
    responses = [d.event for d in events if d.event.envelope.type == "ResponseRecorded"]
    masked = [m.path for r in responses for m in r.masked_fields]  # type: ignore[attr-defined]
    assert masked == ["result.payload.email"] * 2
    assert SECRET not in repr([d.event for d in events])
    assert verify_chains(events) == []


def test_a_record_with_lone_surrogates_is_recorded_with_them_escaped() -> None:
    """mitmproxy hands over undecodable path bytes as lone surrogates; Avro
    strings are UTF-8, so the recorder's stamper retries with them escaped
    (the first attempt changes no chain state)."""
    from capture.recorder import _RecordableStamper
    from schemas.models import RequestReceived

    stamper = _RecordableStamper("gw-surrogates")
    body = {
        "method": "GET", "scheme": "http", "host": "h", "path": "/collections/d\udc80cs",
        "query": "", "headers": [{"name": "x-note", "value": "caf\udce9"}], "body": b"",
        "body_sha256": "0" * 64, "body_size": 0, "content_type": None, "product": "qdrant",
        "operations": [],
    }
    st = stamper.stamp_record(RequestReceived, session_id="s", request_id="r", body=body)
    event = default_codec().decode(st.wire).event
    assert event.path == "/collections/d\\x80cs"  # type: ignore[attr-defined]
    assert event.headers[0].value == "caf\\xe9"  # type: ignore[attr-defined]
    assert (event.envelope.seq, st.stream_seq) == (0, 0)


def _decision(obligations: Any, **extra: Any) -> Any:
    from capture.policy import Decision, OperationVerdict

    return Decision(
        outcome="allow",
        status=200,
        per_operation=[
            OperationVerdict(index=0, action="read", collection="docs", outcome="allow",
                             rule_id="ds-read", reason="allowed by ds-read"),
            OperationVerdict(index=1, action="search", outcome="deny", reason="no rule"),
        ],
        matched_rules=["ds-read"],
        reasons=["allowed by ds-read"],
        obligations=obligations,
        policy_sha256="a" * 64,
        **extra,
    )


@pytest.mark.parametrize(
    "obligations",
    [
        {},
        {"strip_vectors": True},
        {"mask": {"detectors": ["email"], "fields": ["email"]}},
        {"mask": {"detectors": ["email", "phone"], "fields": ["email"], "mode": "hmac"},
         "strip_vectors": True},
        {"mask": {"paths": ["result[].payload.ssn"]}},
        {"row_filters": [{"rule_id": "rls", "filter": {
            "qdrant": {"must": [{"key": "team", "match": {"value": "search"}}]}}}]},
    ],
)
def test_decided_body_is_the_decisions_event_fields_as_records(obligations: dict[str, Any]) -> None:
    from capture.policy import RequestObligations
    from capture.recorder import decided_body

    ob = RequestObligations.model_validate(obligations)
    for extra in ({}, {"grant_id": "g-1", "ticket_id": "CHG-1"}):
        decision = _decision(ob, **extra)
        expected = decision.to_event_fields()
        expected["obligations"] = [o.model_dump() for o in expected["obligations"]]
        expected["operation_decisions"] = [
            o.model_dump() for o in expected["operation_decisions"]]
        # twice: the second comes from the cache of obligations
        assert decided_body(decision) == expected
        assert decided_body(_decision(ob.model_copy(deep=True), **extra)) == expected


@pytest.mark.parametrize("encoding", [None, "gzip"])
def test_response_hashes_whether_or_not_the_masker_changed_the_body(
    tmp_path: Path, dev_idp: str, encoding: str | None
) -> None:
    """The recorder reuses the masker's digest of a body nothing changed since
    (and hashes again a body the masker replaced): the recorded hashes are
    those of the body delivered and of the upstream's, either way."""
    import gzip
    import hashlib

    from capture.devidp import mint_token

    cfg = config(tmp_path, dev_idp)
    token = mint_token(dev_idp, "alice", ["Vector-Read"])
    clean = json.dumps({"result": {"id": 1, "payload": {"team": "search"}}}).encode()
    pii = answer()
    delivered: list[bytes] = []

    async def run() -> None:
        log = SqliteEventLog(tmp_path / "events.db")
        chain = Chain(cfg, log)
        await chain.start()
        try:
            for body in (clean, pii):
                flow = tflow.tflow()
                flow.request = http.Request.make(
                    "GET", "http://127.0.0.1:6333/collections/docs/points/1", b"",
                    {"host": "127.0.0.1:6333", "authorization": f"Bearer {token}"})
                await chain._each("requestheaders", flow)
                await chain._each("request", flow)
                headers = {"content-type": "application/json"}
                if encoding:
                    headers["content-encoding"] = encoding
                # make() encodes the body as content-encoding says
                flow.response = http.Response.make(200, body, headers)
                if encoding:
                    assert gzip.decompress(flow.response.raw_content or b"") == body
                await chain._each("responseheaders", flow)
                await chain._each("response", flow)
                delivered.append(flow.response.get_content() or b"")
        finally:
            await chain.stop()

    import capture.recorder as recorder_module

    hashed: list[bytes] = []
    original_sha256 = recorder_module._sha256

    def spy(data: bytes) -> str:
        hashed.append(data)
        return original_sha256(data)

    recorder_module._sha256 = spy  # type: ignore[assignment]
    try:
        asyncio.run(run())
    finally:
        recorder_module._sha256 = original_sha256  # type: ignore[assignment]
    # the unchanged body's digest came from the masker; the masked one was hashed
    assert clean not in hashed and delivered[1] in hashed
    responses = [d.event for d in read_events(cfg.log_url)
                 if d.event.envelope.type == "ResponseRecorded"]
    assert len(responses) == 2
    (unchanged, masked), sha = responses, (lambda b: hashlib.sha256(b).hexdigest())
    assert delivered[0] == clean and b"bob@example.org" not in delivered[1]
    assert unchanged.body == clean  # type: ignore[attr-defined]
    assert unchanged.body_sha256 == unchanged.original_body_sha256 == sha(clean)  # type: ignore[attr-defined]
    assert masked.body == delivered[1]  # type: ignore[attr-defined]
    assert masked.body_sha256 == sha(delivered[1])  # type: ignore[attr-defined]
    assert masked.original_body_sha256 == sha(pii)  # type: ignore[attr-defined]


def _decisions() -> list[Any]:
    from capture.policy import OperationVerdict, RequestObligations

    out = []
    for obligations in [{}, {"strip_vectors": True}, {"mask": {"detectors": ["email"]}},
                        {"mask": {"detectors": ["email"], "fields": ["email"]}},
                        {"mask": {"detectors": ["email"], "fields": ["email"], "mode": "hmac"}}]:
        ob = RequestObligations.model_validate(obligations)
        base = _decision(ob)
        out += [base] + [base.model_copy(update=u) for u in (
            {"grant_id": "g-1"}, {"ticket_id": "CHG-1"}, {"policy_sha256": "b" * 64},
            {"outcome": "deny"}, {"matched_rules": ["ds-read", "x"]}, {"reasons": ["r"]},
            {"per_operation": [OperationVerdict(
                index=0, action="read", outcome="allow", rule_id="ds-read",
                reason="allowed by ds-read")]},
            {"per_operation": [OperationVerdict(
                index=0, action="read", outcome="allow", rule_id="ds-read", reason="other")]},
        )]
    return out


def test_equal_decided_keys_mean_equal_decided_bodies() -> None:
    """PolicyDecided's kept encoding (EventCodec.record_bytes body_key) is
    looked up by decided_key: it must tell apart every two decisions whose
    bodies differ, and only those."""
    from capture.recorder import decided_body, decided_key

    decisions = _decisions()
    for a in decisions:
        for b in decisions:
            assert (decided_key(a) == decided_key(b)) == (decided_body(a) == decided_body(b))


_HEADERS = st.lists(st.fixed_dictionaries({
    "name": st.sampled_from(["accept", "user-agent", "authorization", "x-a"]),
    "value": st.sampled_from(["", "a", "b", "[REDACTED]"])}), max_size=3)


@st.composite
def _received(draw: st.DrawFn) -> tuple[dict[str, Any], list[Any]]:
    from schemas.models import ActionClass, Operation

    operations = draw(st.lists(st.builds(
        Operation,
        action=st.sampled_from(list(ActionClass)),
        collection=st.none() | st.sampled_from(["docs", "d2"]),
        ids=st.lists(st.sampled_from(["1", "2", "x"]), max_size=3),
        ids_known=st.booleans(),
        vector_count=st.integers(0, 2),
        limit=st.none() | st.integers(0, 2),
        with_vectors=st.none() | st.booleans(),
        detail=st.none() | st.just("get_point"),
    ), max_size=3))
    raw = draw(st.sampled_from([b"", b"{}", b"x" * 2000]))
    body = {
        "method": draw(st.sampled_from(["GET", "POST"])),
        "scheme": draw(st.sampled_from(["http", "https"])),
        "host": draw(st.sampled_from(["h", "h:1"])),
        "path": draw(st.sampled_from(["/collections/docs/points/1", "/collections"])),
        "query": draw(st.sampled_from(["", "wait=true"])),
        "headers": draw(_HEADERS),
        "body": raw if len(raw) <= 1000 else None,
        "body_sha256": hashlib.sha256(raw).hexdigest(),
        "body_size": len(raw),
        "content_type": draw(st.none() | st.just("application/json")),
        "product": draw(st.sampled_from(["qdrant", "chroma"])),
        "operations": [op.__dict__ for op in operations],
    }
    return body, operations


@settings(max_examples=200, deadline=None)
@given(st.lists(_received(), min_size=2, max_size=6))
def test_equal_received_keys_mean_equal_bodies_and_the_same_bytes(
    bodies: list[tuple[dict[str, Any], list[Any]]]
) -> None:
    """RequestReceived's kept encoding is looked up by received_key: equal
    keys only for equal bodies, and a stamper that keeps encodings writes the
    bytes of one that does not, event for event."""
    from capture.recorder import received_key
    from schemas.codec import EventCodec

    for body, ops in bodies:  # big headers or bodies are not kept
        huge = {**body, "headers": [*body["headers"], {"name": "x-a", "value": "v" * 5000}]}
        assert received_key(huge, ops) is None
        assert received_key({**body, "body": b"x" * 1025}, ops) is None
    for a, ops_a in bodies:
        for b, ops_b in bodies:
            ka, kb = received_key(a, ops_a), received_key(b, ops_b)
            if ka is not None and ka == kb:
                assert a == b
    keeping = EventCodec(schemas=default_codec().schemas)
    plain = EventCodec(schemas=default_codec().schemas)
    for seq, (body, ops) in enumerate(bodies * 2):
        record = {**body, "envelope": {
            "event_id": "01a22b94-651e-707f-96f4-d3702362bf8a", "type": "RequestReceived",
            "occurred_at": datetime(2026, 1, 1, tzinfo=UTC), "gateway_id": "g",
            "session_id": "s", "seq": seq, "stream_seq": seq, "prev_hash": f"{seq:064x}",
            "request_id": "r"}}
        assert keeping.record_bytes(
            "RequestReceived", record, body_key=received_key(body, ops)
        ) == plain.record_bytes("RequestReceived", record)


class _LogLock:
    """Another connection that holds the log's write lock (as a loader, the
    CLI or a second gateway may) until the gateway's writer has failed one
    commit on it; then it lets go, so the commits queued behind that one would
    find the lock free."""

    def __init__(self, path: Path, log: SqliteEventLog) -> None:
        import sqlite3

        self._log = log
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("BEGIN IMMEDIATE")
        self._failed_before = log.stats.failed_commits

    async def release_after_first_failure(self) -> None:
        for _ in range(4000):
            if self._log.stats.failed_commits > self._failed_before:
                break
            await asyncio.sleep(0.001)
        else:
            raise AssertionError("the gateway's writer never failed a commit")
        self._conn.execute("COMMIT")
        self._conn.close()


async def _respond(chain: Chain, flow: http.HTTPFlow) -> None:
    flow.response = http.Response.make(200, answer(), {"content-type": "application/json"})
    await chain._each("responseheaders", flow)
    await chain._each("response", flow)


@pytest.mark.parametrize("durability", ["sync", "async"])
def test_a_failed_append_leaves_no_gap_when_later_appends_were_already_queued(
    tmp_path: Path, dev_idp: str, durability: str
) -> None:
    """Another connection holds the log's write lock past busy_timeout. One
    flow's request batch fails; the request batches of flows that were stamped
    meanwhile on the same stream (and, with async responses, a response record)
    are queued behind it, and the lock is free by the time the writer takes
    them up. They must fail too (503, not forwarded): committing them would
    continue the stream and a session's chain over the failed batch's events
    (the audit's "gap: expected seq ..." and a tail no checkpoint covers). The
    next requests go on, on a new stream."""
    from capture.devidp import mint_token
    from replay.verify_core import verify_log

    cfg = config(
        tmp_path, dev_idp, response_durability=durability, signing_key=tmp_path / "gw.key",
        checkpoint_interval_s=3600.0,
    )
    token = mint_token(dev_idp, "alice", ["Vector-Read"])
    path = tmp_path / "events.db"

    async def run() -> tuple[list[http.HTTPFlow], http.HTTPFlow | None, list[http.HTTPFlow], str]:
        log = SqliteEventLog(path, busy_timeout=1.0)
        chain = Chain(cfg, log)
        await chain.start()
        recorder = chain.recorder
        try:
            await chain.exchange(token, answer())  # the session exists: later flows continue it
            in_flight = None
            if durability == "async":
                # forwarded; upstream answers while the log is locked
                in_flight = await chain.request(token)
            lock = _LogLock(path, log)
            first = asyncio.create_task(chain.request(token))
            await asyncio.sleep(0.2)  # the writer has taken its batch and waits for the lock
            later = [asyncio.create_task(chain.request(token)) for _ in range(3)]
            if in_flight is not None:
                await _respond(chain, in_flight)  # its record is queued behind the batch
            await asyncio.sleep(0.05)
            await lock.release_after_first_failure()
            refused = [await first] + [await t for t in later]
            await asyncio.gather(*recorder._in_flight, return_exceptions=True)
            await asyncio.sleep(0)
            after = [await chain.exchange(token, answer()) for _ in range(2)]
            assert recorder.checkpointer is not None
            return refused, in_flight, after, recorder.checkpointer.signer.verifier.vkey
        finally:
            await chain.stop()

    refused, in_flight, after, vkey = asyncio.run(run())
    events = read_events(cfg.log_url)
    forwarded_ids = {
        d.event.envelope.request_id for d in events if d.event.envelope.type == "RequestForwarded"
    }
    for flow in refused:
        st_ = state_of(flow)
        assert st_ is not None
        if st_.request_id in forwarded_ids:  # durable in time: went upstream
            assert st_.forwarded and flow.response is None
        else:  # not durably recorded: 503, and nothing forwarded
            assert not st_.forwarded
            assert flow.response is not None and flow.response.status_code == 503
    assert state_of(refused[0]).request_id not in forwarded_ids  # type: ignore[union-attr]
    if in_flight is not None:  # async: the client has its answer; no record of it follows a hole
        assert in_flight.response is not None and in_flight.response.status_code == 200
    assert all(state_of(f).forwarded for f in after)  # type: ignore[union-attr]
    assert {d.event.envelope.gateway_id for d in events} == {"gw-recorder", "gw-recorder#1"}
    assert verify_chains(events) == []
    report = verify_log(events, [vkey], require_checkpoint=True)
    assert report.ok and not report.findings, [str(f) for f in report.findings]
