"""End to end: masking and vector stripping as a client of a real `embedguard
gateway` process sees them, and as the event log records them.

Milvus, Weaviate and Qdrant listeners of one gateway sit in front of recording
upstreams on loopback (no server of these runs here; see test_gateway_multi);
Chroma is the real server. Regressions of the third audit: (A) strip_vectors
did nothing for Milvus, (B) a Weaviate GraphQL alias escaped masking by field
name, (C) keys named id/_id/ids inside user data were never masked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from capture.devidp import mint_token
from schemas.models import MaskedField, ResponseRecorded
from tests.support.events import read_events
from tests.support.gateway import GatewayProcess, gateway_process
from tests.support.services import free_port, run_chroma_client, wait_for_port
from tests.support.upstream import recording_upstream

ROOT = Path(__file__).resolve().parents[2]
POLICY = """\
version: 1
rules:
  - id: read
    effect: allow
    subjects: {groups: [Vector-Read]}
    actions: [search, read]
    collections: ["*"]
    obligations:
      mask:
        detectors: [email]
        fields: [salary]
        paths: ["data.Get.Doc[].ssn"]
      strip_vectors: true
"""

MILVUS_ROW = {"id": 1, "distance": 0.9, "title": "x", "embedding": [0.11, 0.22, 0.33],
              "bin": "AAECAw==", "sparse": {"7": 0.5}}
MILVUS_ANSWER = {"code": 0, "cost": 0, "data": [MILVUS_ROW]}
QDRANT_ANSWER = {"result": {"points": [{"id": 1, "payload": {
    "owner": "carol@x.io", "id": "alice@x.io", "ids": {"contact": "bob@x.io"}},
    "vector": [0.5, 0.6]}]}, "status": "ok"}


def weaviate_answer(_method: str, _path: str, body: bytes) -> Any:
    query = json.loads(body)["query"]
    if "s: salary" in query:
        return {"data": {"Get": {"Doc": [{"s": "120000 EUR"}]}}}
    if "x: ssn" in query:
        return {"data": {"g": {"D": [{"x": "123-45-6789", "t": "kept"}]}}}
    return {"data": {"Get": {"Doc": [{"a": {"i": "6b1b5c3e-6f0e-4b6a-9a57-3f3c8f0b2a11",
                                            "v": [0.1, 0.2]}}]}}}


@dataclass
class Rig:
    gw: GatewayProcess
    milvus: str
    weaviate: str


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, dev_idp: str) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("gw-mask")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    ports = {"milvus": free_port(), "weaviate": free_port()}
    with (
        recording_upstream(QDRANT_ANSWER) as qdrant,
        recording_upstream(MILVUS_ANSWER) as milvus,
        recording_upstream(weaviate_answer) as weaviate,
    ):
        extra: list[str] = []
        for kind, up in (("milvus", milvus), ("weaviate", weaviate)):
            extra += ["--upstream", up.url, "--listen", f"127.0.0.1:{ports[kind]}",
                      "--kind", kind, "--credential-env", "EG_TEST_UPSTREAM_KEY"]
        with gateway_process(tmp, upstream=qdrant.url, kind="qdrant", policy=policy,
                             issuer=dev_idp, extra_args=extra) as gw:
            for port in ports.values():
                wait_for_port(port, proc=gw.proc, timeout=10)
            yield Rig(gw, f"http://127.0.0.1:{ports['milvus']}",
                      f"http://127.0.0.1:{ports['weaviate']}")


@pytest.fixture(scope="module")
def auth(dev_idp: str) -> dict[str, str]:
    return {"authorization": f"Bearer {mint_token(dev_idp, 'rita', ['Vector-Read'])}"}


def post(rig: Rig, url: str, body: Any,
         auth: dict[str, str]) -> tuple[Any, list[MaskedField], bytes]:
    """The body delivered, and the fields recorded as masked for it."""
    r = httpx.post(url, json=body, headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    rid = r.headers["x-embedguard-request-id"]
    (recorded,) = [e.event for e in read_events(rig.gw.log_url)
                   if isinstance(e.event, ResponseRecorded)
                   and e.event.envelope.request_id == rid]
    assert recorded.body == r.content  # the record holds what was delivered
    return r.json(), list(recorded.masked_fields), r.content


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v2/vectordb/entities/query", {"collectionName": "docs", "filter": "id > 0"}),
        ("/v2/vectordb/entities/get", {"collectionName": "docs", "id": [1]}),
        ("/v2/vectordb/entities/search",
         {"collectionName": "docs", "data": [[0.1, 0.2, 0.3]], "outputFields": ["*"]}),
        ("/v2/vectordb/entities/hybrid_search",
         {"collectionName": "docs", "outputFields": ["*"],
          "search": [{"data": [[0.1, 0.2, 0.3]], "annsField": "embedding", "limit": 3}]}),
    ],
)
def test_milvus_vectors_are_stripped_and_recorded(
    rig: Rig, auth: dict[str, str], path: str, body: dict[str, Any]
) -> None:
    out, masked, raw = post(rig, rig.milvus + path, body, auth)
    assert out["data"] == [{**MILVUS_ROW, "embedding": None, "bin": None, "sparse": None}]
    assert b"0.11" not in raw and b"AAECAw" not in raw
    assert sorted((f.path, f.kind) for f in masked) == [
        ("data[0].bin", "vector"), ("data[0].embedding", "vector"), ("data[0].sparse", "vector")]


def test_weaviate_aliases_are_masked_as_their_fields(rig: Rig, auth: dict[str, str]) -> None:
    gql = rig.weaviate + "/v1/graphql"
    out, masked, _ = post(rig, gql, {"query": "{ Get { Doc { s: salary } } }"}, auth)
    assert out == {"data": {"Get": {"Doc": [{"s": "[MASKED:field]"}]}}}
    assert masked == [MaskedField(path="data.Get.Doc[0].s", kind="field")]
    # a policy path, through a renamed Get, class and field
    out, masked, _ = post(rig, gql, {"query": "{ g: Get { D: Doc { x: ssn t: title } } }"}, auth)
    assert out == {"data": {"g": {"D": [{"x": "[MASKED:field]", "t": "kept"}]}}}
    assert masked == [MaskedField(path="data.g.D[0].x", kind="field")]
    # a renamed _additional: its vector is stripped, its id kept
    query = "{ Get { Doc { a: _additional { i: id v: vector } } } }"
    out, masked, _ = post(rig, gql, {"query": query}, auth)
    assert out["data"]["Get"]["Doc"][0]["a"] == {"i": "6b1b5c3e-6f0e-4b6a-9a57-3f3c8f0b2a11",
                                                  "v": None}
    assert masked == [MaskedField(path="data.Get.Doc[0].a.v", kind="vector")]


def test_qdrant_payload_keys_named_id_are_masked(rig: Rig, auth: dict[str, str]) -> None:
    out, masked, _ = post(rig, rig.gw.url + "/collections/docs/points/query",
                          {"query": [0.1, 0.2], "limit": 3, "with_payload": True}, auth)
    point = out["result"]["points"][0]
    assert point["id"] == 1 and point["vector"] is None
    assert point["payload"] == {"owner": "[MASKED:email]", "id": "[MASKED:email]",
                                "ids": {"contact": "[MASKED:email]"}}
    assert {f.path for f in masked} >= {"result.points[0].payload.id",
                                        "result.points[0].payload.ids.contact"}


# ------------------------------------------------------ the real Chroma server


@pytest.fixture(scope="module")
def chroma_gw(
    tmp_path_factory: pytest.TempPathFactory, dev_idp: str, chroma_url: str
) -> Iterator[GatewayProcess]:
    host, port = chroma_url.removeprefix("http://").split(":")
    seeded = run_chroma_client(host, int(port), [
        {"op": "get_or_create_collection", "name": "idkeys"},
        {"op": "upsert", "collection": "idkeys", "ids": ["rec-1"],
         "embeddings": [[0.1, 0.2, 0.3]], "documents": ["plain text"],
         "metadatas": [{"id": "alice@example.com", "_id": "dave@example.com",
                        "team": "search"}]},
    ])
    assert all(r["ok"] for r in seeded), seeded
    with gateway_process(tmp_path_factory.mktemp("gw-chroma-ids"), upstream=chroma_url,
                         kind="chroma", policy=ROOT / "examples" / "policy.yaml",
                         issuer=dev_idp) as gw:
        yield gw


def test_chroma_metadata_keys_named_id_are_masked(chroma_gw: GatewayProcess,
                                                   dev_idp: str) -> None:
    alice = mint_token(dev_idp, "alice", ["Vector-Read"])
    res = run_chroma_client("127.0.0.1", chroma_gw.port, [
        {"op": "get", "collection": "idkeys", "ids": ["rec-1"],
         "include": ["documents", "metadatas"]},
        {"op": "query", "collection": "idkeys", "query_embeddings": [[0.1, 0.2, 0.3]],
         "n_results": 1, "include": ["metadatas"]},
    ], token=alice)
    assert all(r["ok"] for r in res), res
    got, queried = res[0]["result"], res[1]["result"]
    assert got["ids"] == ["rec-1"] and queried["ids"] == [["rec-1"]]
    want = {"id": "[MASKED:email]", "_id": "[MASKED:email]", "team": "search"}
    assert got["metadatas"] == [want]
    assert queried["metadatas"] == [[want]]


@pytest.mark.parametrize(("path", "body", "shown"), [
    ("/collections/docs/points/scroll",
     {"filter": {"must": [{"key": "salary", "range": {"gte": 100000}}]}}, "'salary'"),
    ("/collections/docs/points/count",
     {"filter": {"must": [{"key": "owner", "match": {"value": "carol@x.io"}}]}}, "email"),
    # a piece of the value: no detector finds an e-mail in "carol@", but the
    # count confirms it all the same (found in review)
    ("/collections/docs/points/count",
     {"filter": {"must": [{"key": "owner", "match": {"text": "carol@"}}]}}, "match.text"),
])
def test_a_filter_cannot_guess_a_masked_value(
    rig: Rig, auth: dict[str, str], path: str, body: dict[str, Any], shown: str
) -> None:
    """Responses show [MASKED:...], but a filter works on the real values: a
    count of owner == "carol@x.io" would confirm the guess. The gateway refuses
    the request, says why, and forwards nothing."""
    r = httpx.post(rig.gw.url + path, json=body, headers=auth, timeout=30)
    assert r.status_code == 403, r.text
    err = r.json()
    assert err["error"] == "masked_field_filter" and shown in err["reason"]
    rid = r.headers["x-embedguard-request-id"]
    types = [e.event.envelope.type for e in read_events(rig.gw.log_url)
             if e.event.envelope.request_id == rid]
    assert "RequestBlocked" in types and "RequestForwarded" not in types
    # a filter on a field nobody masks goes through
    ok = httpx.post(rig.gw.url + "/collections/docs/points/scroll", headers=auth, timeout=30,
                    json={"filter": {"must": [{"key": "team", "match": {"value": "b"}}]}})
    assert ok.status_code == 200, ok.text
