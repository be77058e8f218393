"""Run mitmproxy in-process, in reverse mode, with embedguard's addons."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from mitmproxy import master, options
from mitmproxy.addons import core, disable_h2c, next_layer, proxyserver, tlsconfig
from mitmproxy.proxy import server_hooks

from capture.chain import AddonChain
from capture.config import GatewayConfig
from capture.state import REQUEST_ID_HEADER, state_of

__all__ = ["UpstreamSni", "build_master", "run_gateway"]

log = logging.getLogger("embedguard.gateway")


class UpstreamSni:
    """Verify an https upstream's certificate against the upstream's own name.

    With ``keep_host_header`` (which the gateway needs) mitmproxy's reverse mode
    leaves the upstream connection's SNI unset, and its TLS addon then falls
    back to the SNI the *client* sent to reach the gateway: the upstream would
    be checked against the gateway's public name, a name the client chooses.
    Pinning it to the route's upstream host makes the check mean what
    ``--upstream-ca`` promises, whatever the client sends.
    """

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.server.address is not None:
            data.server.sni = data.server.address[0]


def _json_protocol_error(status_code: int, message: str = "") -> bytes:
    """mitmproxy answers protocol errors (upstream unreachable, malformed
    request) itself, after the hooks, with an HTML page. A gateway's clients
    get the same JSON shape as every other error instead."""
    from mitmproxy import http as mhttp
    from mitmproxy.net.http import http1

    error = {400: "bad_request", 413: "body_too_large", 502: "upstream_error"}.get(
        status_code, "gateway_error"
    )
    if status_code == 502:
        # mitmproxy's message names the upstream's address: internal topology.
        reason = "the vector database could not be reached or did not answer properly"
    else:
        reason = message[:300] or "protocol error"
    request_id = getattr(message, "request_id", None)
    body = json.dumps({"error": error, "reason": reason, "request_id": request_id}).encode()
    headers = {"content-type": "application/json", "connection": "close"}
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    resp = mhttp.Response.make(status_code, body, headers)
    return bytes(http1.assemble_response(resp))


class _WithRequestId(str):
    """An error message that carries the flow's request id to
    ``_json_protocol_error``, which mitmproxy calls with only the status and
    the message."""

    request_id: str | None = None


def _install_json_protocol_errors() -> None:
    from mitmproxy.proxy.layers.http import HttpStream, _http1
    from mitmproxy.proxy.layers.http._events import ResponseProtocolError

    _http1.make_error_response = _json_protocol_error
    if getattr(HttpStream.handle_protocol_error, "_embedguard", False):
        return
    original = HttpStream.handle_protocol_error

    def handle_protocol_error(self, event):  # type: ignore[no-untyped-def]
        # an upstream that cannot be reached: the request was recorded under
        # an id, which the client's 502 names too
        st = state_of(self.flow)
        if isinstance(event, ResponseProtocolError) and st is not None and st.request_id:
            tagged = _WithRequestId(event.message)
            tagged.request_id = st.request_id
            event = ResponseProtocolError(event.stream_id, tagged, event.code)
        return (yield from original(self, event))

    handle_protocol_error._embedguard = True  # type: ignore[attr-defined]
    HttpStream.handle_protocol_error = handle_protocol_error  # type: ignore[method-assign]


def _install_reuse_port() -> None:
    """Make this process's reverse-proxy listeners bind with SO_REUSEPORT, so
    that several gateway worker processes share each listen address and the
    kernel spreads connections over them (``embedguard gateway --workers N``).

    mitmproxy 11 has no option for it: its listener calls
    ``asyncio.start_server(handler, host, port)`` with asyncio's defaults. This
    replaces that one call for reverse mode, in the worker process only."""
    from mitmproxy.proxy.mode_servers import ReverseInstance

    async def listen(self: ReverseInstance, host: str, port: int) -> list[Any]:
        if port == 0:
            raise OSError(
                errno.EINVAL, "workers share one fixed port; give --listen HOST:PORT, not port 0"
            )
        return [await asyncio.start_server(self.handle_stream, host, port, reuse_port=True)]

    ReverseInstance.listen = listen  # type: ignore[method-assign,assignment]


def _listen_failure(server: Any) -> str:
    exc = server.last_exception
    where = f"{server.mode.custom_listen_host or '*'}:{server.mode.custom_listen_port}"
    code = getattr(exc, "errno", None)
    why = os.strerror(code) if isinstance(code, int) else str(exc)
    return f"cannot listen on {where}: {why}"


def _proxy_options(config: GatewayConfig, confdir: Path) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "mode": [r.mode_spec for r in config.routes],
        "keep_host_header": True,
        "connection_strategy": "lazy",
        "body_size_limit": str(config.max_body_size),
        "confdir": str(confdir),
        "http2": True,
        "rawtcp": False,
        "websocket": False,
        "server_replay_kill_extra": False,
    }
    if config.tls_cert is not None:
        if config.tls_key is None:
            raise ValueError("--tls-cert needs --tls-key")
        pem = confdir / "client-facing.pem"
        pem.write_bytes(config.tls_key.read_bytes() + b"\n" + config.tls_cert.read_bytes())
        pem.chmod(0o600)
        opts["certs"] = [f"*={pem}"]
    if config.upstream_ca is not None:
        opts["ssl_verify_upstream_trusted_ca"] = str(config.upstream_ca)
    if config.upstream_insecure:
        opts["ssl_insecure"] = True
    return opts


def build_master(config: GatewayConfig, addons: Sequence[object], confdir: Path) -> master.Master:
    _install_json_protocol_errors()
    opts = options.Options()
    m = master.Master(opts, event_loop=asyncio.get_running_loop(), with_termlog=False)
    m.addons.add(
        core.Core(),
        disable_h2c.DisableH2C(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        UpstreamSni(),
    )
    # One registered addon that runs ours in order (capture/chain.py): mitmproxy
    # walks every registered addon for every hook of every flow.
    m.addons.add(AddonChain(addons))
    known = set(opts.keys())
    opts.update(**{k: v for k, v in _proxy_options(config, confdir).items() if k in known})
    return m


async def run_gateway(
    config: GatewayConfig,
    addons: Sequence[object],
    *,
    on_ready: Callable[[], None] | None = None,
    stop: asyncio.Event | None = None,
    reuse_port: bool = False,
    on_listen_error: Callable[[str], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM (or ``stop`` is set). ``addons`` are the
    embedguard addons in order.

    ``reuse_port``: bind the listeners with SO_REUSEPORT (a worker of
    ``--workers N``). ``on_listen_error(message)``: if a listener cannot bind,
    call it and shut down instead of announcing readiness."""
    if reuse_port:
        _install_reuse_port()
    with tempfile.TemporaryDirectory(prefix="embedguard-mitm-") as tmp:
        m = build_master(config, addons, Path(tmp))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, m.shutdown)
            except (ValueError, RuntimeError):  # not the main thread (embedded, tests)
                break

        async def _ready() -> None:
            # Wait until every listener is bound, then announce.
            ps = m.addons.get("proxyserver")
            for _ in range(200):
                if ps is not None and ps.servers and all(s.is_running for s in ps.servers):
                    break
                if on_listen_error is not None and ps is not None and any(
                    s.last_exception is not None for s in ps.servers
                ):
                    break
                await asyncio.sleep(0.05)
            if on_listen_error is not None:
                failed = [s for s in (ps.servers if ps is not None else []) if not s.is_running]
                if failed or ps is None or not ps.servers:
                    on_listen_error(
                        "; ".join(_listen_failure(s) for s in failed if s.last_exception)
                        or "the listeners did not start"
                    )
                    m.shutdown()
                    return
            # ... and every addon that opens something (the audit log) is ready.
            for addon in addons:
                started = getattr(addon, "started", None)
                if isinstance(started, asyncio.Event):
                    await started.wait()
            if on_ready:
                on_ready()

        async def _stop_on_event() -> None:
            if stop is not None:
                await stop.wait()
                m.shutdown()

        ready_task = asyncio.create_task(_ready())
        stop_task = asyncio.create_task(_stop_on_event())
        try:
            await m.run()
        finally:
            ready_task.cancel()
            stop_task.cancel()
            # mitmproxy's run() leaves the listeners open (mitmdump just exits);
            # an embedded gateway (tests, `embedguard up`) would leak them.
            ps = m.addons.get("proxyserver")
            if ps is not None:
                await ps.servers.update([])
