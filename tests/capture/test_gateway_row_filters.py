"""A real gateway in front of a recording Milvus upstream, with a row filter
and max_limit: a client filter that would escape the row filter is refused with
a 400 and never forwarded; a well-formed one is forwarded ANDed with the row
filter; max_limit counts every query vector of a search."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from capture.devidp import mint_token
from schemas.models import RequestBlocked, RequestReceived
from tests.support.events import read_events
from tests.support.gateway import GatewayProcess, gateway_process
from tests.support.upstream import RecordingUpstream, recording_upstream

POLICY = """\
version: 1
rules:
  - id: tenant-search
    effect: allow
    subjects: {groups: [team-a]}
    actions: [search, read]
    collections: ["shared-*"]
    conditions: {max_limit: 100}
    obligations:
      inject_filter:
        milvus: 'team in {groups}'
"""


@dataclass
class Rig:
    gw: GatewayProcess
    upstream: RecordingUpstream
    auth: dict[str, str]


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, dev_idp: str) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("gw-rls")
    policy = tmp / "policy.yaml"
    policy.write_text(POLICY)
    with recording_upstream({"code": 0, "data": []}) as upstream, gateway_process(
        tmp, upstream=upstream.url, kind="milvus", policy=policy, issuer=dev_idp
    ) as gw:
        token = mint_token(dev_idp, "alice", ["team-a"])
        yield Rig(gw, upstream, {"authorization": f"Bearer {token}"})


def _post(rig: Rig, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(rig.gw.url + path, json=body, headers=rig.auth, timeout=30)


def test_a_client_filter_that_escapes_the_row_filter_is_refused(rig: Rig) -> None:
    before = len(rig.upstream.requests)
    r = _post(rig, "/v2/vectordb/entities/query",
              {"collectionName": "shared-docs", "limit": 10,
               "filter": 'team == "team-b") or (1 == 1'})
    assert r.status_code == 400, r.text
    answer = r.json()
    assert set(answer) == {"error", "reason", "request_id"}
    assert answer["error"] == "bad_request"
    assert "body.filter is not one self-contained Milvus expression" in answer["reason"]
    assert len(rig.upstream.requests) == before  # nothing reached Milvus
    blocked = [e.event for e in read_events(rig.gw.log_url)
               if isinstance(e.event, RequestBlocked)
               and e.event.envelope.request_id == answer["request_id"]]
    assert [(b.status, b.error) for b in blocked] == [(400, "bad_request")]


def test_hybrid_search_sub_filters_are_checked_too(rig: Rig) -> None:
    before = len(rig.upstream.requests)
    r = _post(rig, "/v2/vectordb/entities/hybrid_search",
              {"collectionName": "shared-docs", "limit": 10,
               "search": [{"data": [[0.1]], "limit": 10, "filter": "a == 1"},
                          {"data": [[0.2]], "limit": 10, "filter": "1 == 1) or (1 == 1"}]})
    assert r.status_code == 400, r.text
    assert "body.search[1].filter" in r.json()["reason"]
    assert len(rig.upstream.requests) == before


def test_a_well_formed_filter_is_forwarded_anded(rig: Rig) -> None:
    r = _post(rig, "/v2/vectordb/entities/query",
              {"collectionName": "shared-docs", "limit": 10,
               "filter": 'team == "team-b) or (1 == 1"'})
    assert r.status_code == 200, r.text
    sent = json.loads(rig.upstream.requests[-1].body)
    assert sent["filter"] == '(team == "team-b) or (1 == 1") and (team in ["team-a"])'


def test_max_limit_counts_every_query_vector(rig: Rig) -> None:
    before = len(rig.upstream.requests)
    r = _post(rig, "/v2/vectordb/entities/search",
              {"collectionName": "shared-docs", "data": [[0.1]] * 500, "limit": 100})
    assert r.status_code == 403, r.text
    assert "500 queries × limit 100 = 50000 results" in r.json()["reason"]
    assert len(rig.upstream.requests) == before
    received = [e.event for e in read_events(rig.gw.log_url)
                if isinstance(e.event, RequestReceived)
                and e.event.envelope.request_id == r.json()["request_id"]]
    # the recorded operation keeps what the client sent
    assert [(o.limit, o.vector_count) for o in received[0].operations] == [(100, 500)]


def test_a_search_seeded_by_a_record_id_is_refused_and_never_forwarded(rig: Rig) -> None:
    """Milvus reads the seed records of a search by primary key without the
    row filter, so an id outside the filter showed whether it exists and,
    through the scores, its vector (found in review). A search by vector is
    forwarded with the filter."""
    before = len(rig.upstream.requests)
    r = _post(rig, "/v2/vectordb/entities/search",
              {"collectionName": "shared-docs", "ids": [42], "limit": 3})
    assert r.status_code == 403, r.text
    assert "seeded by a record id" in r.json()["reason"]
    assert len(rig.upstream.requests) == before
    ok = _post(rig, "/v2/vectordb/entities/search",
               {"collectionName": "shared-docs", "data": [[0.1, 0.2]], "limit": 3})
    assert ok.status_code == 200, ok.text
    assert json.loads(rig.upstream.requests[-1].body)["filter"] == 'team in ["team-a"]'
