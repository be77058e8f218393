"""An exception in any addon refuses the flow: mitmproxy alone would log it and
forward the request unchecked. One in-process gateway (in its own thread and
event loop) carries a bomb before the first, the fourth and the last addon;
each test arms one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mitmproxy import http

from capture import build_addons
from capture.config import GatewayConfig, Route
from capture.state import fail_closed
from tests.support.gateway import gateway_in_process
from tests.support.services import free_port
from tests.support.upstream import RecordingUpstream, recording_upstream

ROOT = Path(__file__).resolve().parents[2]


class Bomb:
    def __init__(self, name: str) -> None:
        self.name = name  # mitmproxy addon names must be unique
        self.armed = False

    @fail_closed("policy")
    def request(self, flow: http.HTTPFlow) -> None:
        if self.armed:
            raise RuntimeError("boom: internal detail")


@pytest.fixture(scope="module")
def rig(
    tmp_path_factory: pytest.TempPathFactory, dev_idp: str
) -> Iterator[tuple[str, list[Bomb], RecordingUpstream]]:
    tmp = tmp_path_factory.mktemp("failclosed")
    bombs = [Bomb("bomb-first"), Bomb("bomb-middle"), Bomb("bomb-last")]
    with recording_upstream() as up:
        port = free_port()
        cfg = GatewayConfig(
            routes=[Route(kind="qdrant", upstream=up.url, listen_port=port)],
            policy_path=ROOT / "examples" / "policy.yaml",
            log_url=f"sqlite:{tmp / 'ev.db'}",
            issuer=dev_idp,
            audience="embedguard",
            gateway_id="gw-failclosed",
        )
        addons = build_addons(cfg)
        addons.insert(0, bombs[0])
        addons.insert(4, bombs[1])
        addons.insert(len(addons) - 1, bombs[2])
        with gateway_in_process(cfg, addons):
            yield f"http://127.0.0.1:{port}", bombs, up


@pytest.mark.parametrize("which", [0, 1, 2])
def test_exception_in_a_hook_refuses_the_request(
    rig: tuple[str, list[Bomb], RecordingUpstream], dev_idp: str, which: int
) -> None:
    from capture.devidp import mint_token

    url, bombs, up = rig
    tok = mint_token(dev_idp, "alice", ["Vector-Read"])
    q = {"query": [0.1], "limit": 2}
    h = {"authorization": f"Bearer {tok}"}
    before = len(up.requests)
    for b in bombs:
        b.armed = False
    assert (
        httpx.post(
            f"{url}/collections/docs/points/query", json=q, headers=h, timeout=30
        ).status_code
        == 200
    )
    assert len(up.requests) == before + 1
    bombs[which].armed = True
    try:
        r = httpx.post(f"{url}/collections/docs/points/query", json=q, headers=h, timeout=30)
    finally:
        bombs[which].armed = False
    assert r.status_code == 500
    assert r.json()["error"] == "internal_error" and r.json()["request_id"]
    assert "boom" not in r.text and "Traceback" not in r.text
    assert len(up.requests) == before + 1  # the refused request never reached the database
