"""One gateway process, two routes: a Qdrant listener and a Milvus listener,
each in front of its own recording upstream with its own credential. Each
listener forwards only to its upstream, injects only its credential, and
classifies by its route's kind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from capture.devidp import mint_token
from tests.support.events import read_events
from tests.support.gateway import UPSTREAM_SECRET, GatewayProcess, gateway_process
from tests.support.services import free_port, wait_for_port
from tests.support.upstream import RecordingUpstream, recording_upstream

MILVUS_SECRET = "eg-milvus-secret-0c4e8a2f19"
POLICY = """\
version: 1
rules:
  - id: read
    effect: allow
    subjects: {groups: [Vector-Read]}
    actions: [search, read, schema]
    collections: ["*"]
"""
QDRANT_SEARCH = ("/collections/docs/points/query", {"query": [0.1, 0.2], "limit": 3})
MILVUS_SEARCH = (
    "/v2/vectordb/entities/search",
    {"collectionName": "docs", "data": [[0.1, 0.2]], "limit": 3},
)


@dataclass
class Rig:
    gw: GatewayProcess
    qdrant_url: str
    milvus_url: str
    qdrant: RecordingUpstream
    milvus: RecordingUpstream


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, dev_idp: str) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("gw-multi")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    milvus_port = free_port()
    milvus_answer = {"code": 0, "cost": 0, "data": [{"id": 11, "distance": 0.9}]}
    with recording_upstream() as qdrant, recording_upstream(milvus_answer) as milvus:
        extra = [
            "--upstream",
            milvus.url,
            "--listen",
            f"127.0.0.1:{milvus_port}",
            "--kind",
            "milvus",
            "--credential-env",
            "EG_TEST_MILVUS_KEY",
        ]
        with gateway_process(
            tmp,
            upstream=qdrant.url,
            kind="qdrant",
            policy=policy,
            issuer=dev_idp,
            extra_args=extra,
            env={"EG_TEST_MILVUS_KEY": MILVUS_SECRET},
        ) as gw:
            wait_for_port(milvus_port, proc=gw.proc, timeout=10)
            yield Rig(gw, gw.url, f"http://127.0.0.1:{milvus_port}", qdrant, milvus)


@pytest.fixture(scope="module")
def auth(dev_idp: str) -> dict[str, str]:
    return {"authorization": f"Bearer {mint_token(dev_idp, 'rita', ['Vector-Read'])}"}


def _post(base: str, req: tuple[str, dict[str, Any]], auth: dict[str, str]) -> httpx.Response:
    return httpx.post(f"{base}{req[0]}", json=req[1], headers=auth, timeout=30)


def test_each_listener_forwards_to_its_own_upstream_with_its_own_key(
    rig: Rig, auth: dict[str, str]
) -> None:
    q0, m0 = len(rig.qdrant.requests), len(rig.milvus.requests)
    rq = _post(rig.qdrant_url, QDRANT_SEARCH, auth)
    assert rq.status_code == 200, rq.text
    assert len(rig.qdrant.requests) == q0 + 1 and len(rig.milvus.requests) == m0
    rm = _post(rig.milvus_url, MILVUS_SEARCH, auth)
    assert rm.status_code == 200, rm.text
    assert rm.json()["data"][0]["id"] == 11
    assert len(rig.qdrant.requests) == q0 + 1 and len(rig.milvus.requests) == m0 + 1

    to_qdrant, to_milvus = rig.qdrant.requests[-1], rig.milvus.requests[-1]
    assert to_qdrant.path == QDRANT_SEARCH[0] and to_milvus.path == MILVUS_SEARCH[0]
    # Qdrant reads its key from api-key, Milvus from a bearer Authorization
    assert to_qdrant.headers["api-key"] == UPSTREAM_SECRET
    assert "authorization" not in to_qdrant.headers
    assert to_milvus.headers["authorization"] == f"Bearer {MILVUS_SECRET}"
    assert "api-key" not in to_milvus.headers
    assert MILVUS_SECRET not in json.dumps(to_qdrant.headers)
    assert UPSTREAM_SECRET not in json.dumps(to_milvus.headers)
    assert to_qdrant.headers["host"] == rig.qdrant.url.removeprefix("http://")
    assert to_milvus.headers["host"] == rig.milvus.url.removeprefix("http://")

    evs = read_events(rig.gw.log_url)
    started = [e.event for e in evs if e.event.avro_name == "GatewayStarted"]
    assert len(started) == 1
    assert started[0].upstreams == [rig.qdrant.url, rig.milvus.url]
    forwarded = {
        e.event.envelope.request_id: e.event for e in evs if e.event.avro_name == "RequestForwarded"
    }
    fq = forwarded[rq.headers["x-embedguard-request-id"]]
    fm = forwarded[rm.headers["x-embedguard-request-id"]]
    assert (fq.upstream, fq.credential_ref) == (rig.qdrant.url, "env:EG_TEST_UPSTREAM_KEY")
    assert (fm.upstream, fm.credential_ref) == (rig.milvus.url, "env:EG_TEST_MILVUS_KEY")
    recorded = {
        e.event.envelope.request_id: e.event for e in evs if e.event.avro_name == "ResponseRecorded"
    }
    assert recorded[rq.headers["x-embedguard-request-id"]].result_ids == ["1"]
    assert recorded[rm.headers["x-embedguard-request-id"]].result_ids == ["11"]
    raw = b"".join(e.canonical for e in evs)
    assert UPSTREAM_SECRET.encode() not in raw and MILVUS_SECRET.encode() not in raw
    assert MILVUS_SECRET not in rig.gw.stderr()


def test_classification_follows_the_routes_kind(rig: Rig, auth: dict[str, str]) -> None:
    q0, m0 = len(rig.qdrant.requests), len(rig.milvus.requests)
    ok_q = _post(rig.qdrant_url, QDRANT_SEARCH, auth)
    ok_m = _post(rig.milvus_url, MILVUS_SEARCH, auth)
    assert ok_q.status_code == ok_m.status_code == 200
    # each product's request, sent to the other product's listener, is not
    # understood there: denied by default, never forwarded
    wrong_q = _post(rig.qdrant_url, MILVUS_SEARCH, auth)
    wrong_m = _post(rig.milvus_url, QDRANT_SEARCH, auth)
    for r in (wrong_q, wrong_m):
        assert r.status_code == 403, r.text
        assert "unclassifiable" in r.json()["reason"]
    assert len(rig.qdrant.requests) == q0 + 1 and len(rig.milvus.requests) == m0 + 1

    received = {
        e.event.envelope.request_id: e.event
        for e in read_events(rig.gw.log_url)
        if e.event.avro_name == "RequestReceived"
    }

    def ops(r: httpx.Response) -> tuple[str, list[tuple[str, str | None]]]:
        ev = received[r.headers["x-embedguard-request-id"]]
        return ev.product, [(o.action.value, o.collection) for o in ev.operations]

    assert ops(ok_q) == ("qdrant", [("search", "docs")])
    assert ops(ok_m) == ("milvus", [("search", "docs")])
    assert ops(wrong_q)[0] == "qdrant" and ops(wrong_q)[1][0][0] == "unknown"
    assert ops(wrong_m)[0] == "milvus" and ops(wrong_m)[1][0][0] == "unknown"
