"""capture/enforcer.py: the masking plan the Enforcer derives from a decision's
obligations, remembered per obligations object, is the plan worked out afresh."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from capture.enforcer import Enforcer
from capture.masker import MaskPlan
from capture.policy import MaskSpec, RequestContext, RequestObligations, evaluate
from capture.types import Identity
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
