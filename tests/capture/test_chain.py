"""AddonChain (capture/chain.py): the gateway's addons as one mitmproxy addon,
with mitmproxy's own dispatch semantics (order, sync and async hooks, an
exception in one hook logged and the next one still run)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from capture.chain import AddonChain


class Sync:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self.calls.append(f"{self.name}.requestheaders")

    def request(self, flow: http.HTTPFlow) -> None:
        self.calls.append(f"{self.name}.request")


class Async:
    def __init__(self, name: str, calls: list[str]) -> None:
        self.name, self.calls = name, calls

    async def request(self, flow: http.HTTPFlow) -> None:
        await asyncio.sleep(0)
        self.calls.append(f"{self.name}.request")

    async def running(self) -> None:
        self.calls.append(f"{self.name}.running")

    def client_disconnected(self, client: Any) -> None:
        self.calls.append(f"{self.name}.client_disconnected")


class Broken:
    def request(self, flow: http.HTTPFlow) -> None:
        raise RuntimeError("boom in Broken.request")


def test_hooks_run_in_order_sync_called_async_awaited() -> None:
    calls: list[str] = []
    chain = AddonChain([Sync("a", calls), Async("b", calls), Sync("c", calls)])
    flow = tflow.tflow()
    # only sync members: the chain's hook is sync too (no coroutine per call)
    assert chain.requestheaders(flow) is None  # type: ignore[attr-defined]
    asyncio.run(chain.request(flow))  # type: ignore[attr-defined]
    asyncio.run(chain.running())  # type: ignore[attr-defined]
    chain.client_disconnected(object())  # type: ignore[attr-defined]
    assert calls == [
        "a.requestheaders", "c.requestheaders",
        "a.request", "b.request", "c.request",
        "b.running",
        "b.client_disconnected",
    ]
    assert not hasattr(chain, "response"), "a hook no member defines is not offered"
    assert set(chain.hook_names) == {
        "requestheaders", "request", "running", "client_disconnected"
    }


def test_an_exception_is_logged_and_the_next_addon_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []
    chain = AddonChain([Sync("a", calls), Broken(), Async("b", calls)])
    with caplog.at_level(logging.ERROR, logger="embedguard.chain"):
        asyncio.run(chain.request(tflow.tflow()))  # type: ignore[attr-defined]
    assert calls == ["a.request", "b.request"]
    assert "Broken" in caplog.text and "boom in Broken.request" in caplog.text


def test_nested_addons_are_refused() -> None:
    class Parent:
        addons: list[object] = [object()]

    with pytest.raises(TypeError, match="nested addons"):
        AddonChain([Parent()])


def test_the_gateway_registers_its_addons_as_one_chain_in_order(tmp_path: Path) -> None:
    from capture.config import GatewayConfig, Route
    from capture.gateway import build_master

    cfg = GatewayConfig(
        routes=[Route(kind="qdrant", upstream="http://127.0.0.1:6333", listen_port=6333)],
        policy_path=Path("/dev/null"),
        log_url="sqlite:/dev/null",
        issuer="http://127.0.0.1:1",
        audience="x",
        gateway_id="chain-test",
    )
    calls: list[str] = []
    ours = [Sync("a", calls), Async("b", calls)]

    async def build() -> list[object]:
        m = build_master(cfg, ours, tmp_path)
        return list(m.addons.chain)

    registered = asyncio.run(build())
    chains = [a for a in registered if isinstance(a, AddonChain)]
    assert len(chains) == 1 and list(chains[0].members) == ours
    assert not any(a in registered for a in ours), "mitmproxy sees only the chain"
