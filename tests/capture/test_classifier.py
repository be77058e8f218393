"""The classifier addon's route settings (capture/classifier.py)."""

from __future__ import annotations

from pathlib import Path

from mitmproxy.test import tflow

from capture.classifier import Classifier
from capture.config import GatewayConfig, Route
from capture.state import KEY, FlowState
from capture.types import Classification


async def _classify(route: Route, method: str, path: str) -> Classification | None:
    cfg = GatewayConfig(routes=[route], policy_path=Path("unused.yaml"), log_url="sqlite:x",
                        issuer="https://issuer.invalid", audience="a", gateway_id="g")
    classifier = Classifier(cfg)
    try:
        flow = tflow.tflow()
        flow.request.method = method
        flow.request.path = path
        st = FlowState(route=route, client_host="127.0.0.1:1")
        flow.metadata[KEY] = st
        await classifier.request(flow)
        return st.classification
    finally:
        await classifier.done()


async def test_chroma_v1_paths_are_denied_unless_the_route_serves_them() -> None:
    route = Route(kind="chroma", upstream="http://127.0.0.1:8000", listen_port=1)
    off = await _classify(route, "GET", "/api/v1/heartbeat")
    assert off is not None and not off.ok and "v1 API is deprecated" in (off.error or "")
    on = await _classify(route.model_copy(update={"chroma_v1": True}), "GET",
                         "/api/v1/heartbeat")
    assert on is not None and on.ok, on
    assert [op.action for op in on.operations] == ["health"]
