"""An exception in any addon refuses the flow: mitmproxy alone would log it and
forward the request unchecked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from mitmproxy import http

from capture import build_addons
from capture.config import GatewayConfig, Route
from capture.gateway import run_gateway
from capture.state import fail_closed
from tests.support.services import free_port
from tests.support.upstream import recording_upstream

ROOT = Path(__file__).resolve().parents[2]

# Stopping an in-process mitmproxy Master can leave a socket for the garbage
# collector to close; that is mitmproxy's teardown, not a finding of this test.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


class Exploding:
    def __init__(self, where: str) -> None:
        self.where = where

    @fail_closed("policy")
    def request(self, flow: http.HTTPFlow) -> None:
        if self.where == "request":
            raise RuntimeError("boom")


@pytest.mark.parametrize("position", [0, 3, 5])
async def test_exception_in_a_hook_refuses_the_request(tmp_path: Path, dev_idp: str, position: int) -> None:
    from capture.devidp import mint_token

    tok = await asyncio.to_thread(mint_token, dev_idp, "alice", ["Vector-Read"])
    with recording_upstream() as up:
        port = free_port()
        cfg = GatewayConfig(routes=[Route(kind="qdrant", upstream=up.url, listen_port=port)],
                            policy_path=ROOT / "examples" / "policy.yaml",
                            log_url=f"sqlite:{tmp_path / 'ev.db'}", issuer=dev_idp,
                            audience="embedguard", gateway_id="gw-fc")
        addons = build_addons(cfg)
        addons.insert(position, Exploding("request"))
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_gateway(cfg, addons, on_ready=ready.set, stop=stop))
        try:
            await asyncio.wait_for(ready.wait(), 30)
            async with httpx.AsyncClient() as c:
                r = await c.post(f"http://127.0.0.1:{port}/collections/docs/points/query",
                                 json={"query": [0.1], "limit": 2},
                                 headers={"authorization": f"Bearer {tok}"})
            assert r.status_code == 500
            assert r.json()["error"] == "internal_error"
            assert "boom" not in r.text and "Traceback" not in r.text
            assert up.requests == []
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)
