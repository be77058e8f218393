"""capture/enforcer.py: the masking plan the Enforcer derives from a decision's
obligations, remembered per obligations object, is the plan worked out afresh;
a request whose own filter cannot take the row filter is refused with a 400."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from mitmproxy import http
from mitmproxy.test import tflow

from capture.classify import classify
from capture.config import Route
from capture.enforcer import Enforcer
from capture.masker import MaskPlan
from capture.policy import MaskSpec, RequestContext, RequestObligations, evaluate
from capture.state import KEY, FlowState, state_of
from capture.types import HttpRequest, Identity
from schemas.models import ActionClass, Operation

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "policy.yaml"
NOW = datetime(2025, 1, 6, 10, 0, tzinfo=UTC)


def fresh_plan(ob: RequestObligations, paths: tuple[str, ...]) -> MaskPlan:
    m = ob.mask
    return MaskPlan(detectors=tuple(m.detectors) if m else (), fields=tuple(m.fields) if m else (),
                    field_paths=tuple(m.paths) if m else (),
                    mode=m.mode if m else "placeholder", strip_vectors=ob.strip_vectors,
                    user_data_paths=paths)


def test_mask_plan_is_the_plan_worked_out_afresh() -> None:
    enforcer = Enforcer(EXAMPLE)
    who = Identity(subject="alice", issuer="i", groups=frozenset({"Vector-Read"}))
    op = [Operation(action=ActionClass.READ, collection="docs", ids=["1"])]
    ob = evaluate(enforcer.policy, who, op, RequestContext(now=NOW)).obligations
    assert ob.mask is not None
    paths = ("result.payload",)
    first = enforcer._mask_plan(ob, paths)
    assert first == fresh_plan(ob, paths)
    assert enforcer._mask_plan(ob, paths) is first  # remembered
    assert enforcer._mask_plan(ob, ("result[].payload",)) == fresh_plan(ob, ("result[].payload",))
    # another obligations object never gets this one's plan, whatever its id
    other = RequestObligations(mask=MaskSpec(detectors=["phone"], mode="hmac"),
                               strip_vectors=True)
    assert enforcer._mask_plan(other, paths) == fresh_plan(other, paths)
    for i in range(600):  # the memory is bounded
        enforcer._mask_plan(ob, (f"p{i}",))
    assert len(enforcer._plans) <= 256
    assert enforcer._mask_plan(ob, paths) == first


# ---------------------------------------------------------------- row filters

RLS_POLICY = """\
version: 1
rules:
  - id: tenant-search
    effect: allow
    subjects: {groups: [team-a]}
    actions: [search, read]
    collections: ["shared-*"]
    obligations:
      inject_filter:
        milvus: 'team in {groups}'
"""
TEAM_A = Identity(subject="alice", issuer="i", groups=frozenset({"team-a"}))


def milvus_flow(body: bytes) -> http.HTTPFlow:
    f = tflow.tflow()
    f.request.method = "POST"
    f.request.path = "/v2/vectordb/entities/query"
    f.request.content = body
    st = FlowState(route=Route(kind="milvus", upstream="http://127.0.0.1:9", listen_port=0),
                   client_body=body)
    st.identity = TEAM_A
    st.classification = classify("milvus", HttpRequest(method="POST", path=f.request.path,
                                                       body=body))
    f.metadata[KEY] = st
    return f


async def test_a_filter_that_would_escape_the_row_filter_is_a_400(tmp_path: Path) -> None:
    """The audit's repro: ``team == "team-b") or (1 == 1`` reached Milvus as
    ``(team == "team-b") or (1 == 1) and (team in ["team-a"])``."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(RLS_POLICY)
    enforcer = Enforcer(policy)
    body = json.dumps({"collectionName": "shared-docs", "limit": 10,
                       "filter": 'team == "team-b") or (1 == 1'}).encode()
    f = milvus_flow(body)
    await enforcer.request(f)
    st = state_of(f)
    assert st is not None and f.response is not None
    assert f.response.status_code == 400
    answer = json.loads(f.response.content or b"")
    assert set(answer) == {"error", "reason", "request_id"}
    assert answer["error"] == "bad_request" and answer["request_id"] == st.request_id
    assert "body.filter is not one self-contained Milvus expression" in answer["reason"]
    assert "')' at character 17 closes nothing" in answer["reason"]
    assert "Traceback" not in answer["reason"]
    assert st.blocked is not None and st.blocked.status == 400
    assert not st.injected_filter and f.request.content == body  # nothing rewritten

    ok = json.dumps({"collectionName": "shared-docs", "limit": 10,
                     "filter": 'team == "team-b) or (1 == 1"'}).encode()
    f = milvus_flow(ok)
    await enforcer.request(f)
    assert f.response is None
    assert json.loads(f.request.content or b"")["filter"] == (
        '(team == "team-b) or (1 == 1") and (team in ["team-a"])')
