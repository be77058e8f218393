"""The gateway's addons, registered with mitmproxy as one addon.

mitmproxy dispatches every hook of every flow to every registered addon: for
each lifecycle event it walks the whole addon list (a coroutine, a generator
and a ``getattr`` per addon), then walks it again for the ``update`` event
that follows. With nine gateway addons beside mitmproxy's own six, that is
about 150 such calls per request, most of them finding no hook at all.

``AddonChain`` keeps the addons separate (one concern per file) but gives
mitmproxy a single addon whose hooks call, in order, only the addons that
define them, through bound methods collected once. The semantics are
mitmproxy's: the same order, sync hooks called and async hooks awaited, and
an exception in one addon's hook is logged and does not stop the next
(mitmproxy's ``safecall``; the gateway's hooks fail closed on their own, see
``capture.state.fail_closed``).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

log = logging.getLogger("embedguard.chain")

def _all_hook_names() -> frozenset[str]:
    """Every mitmproxy hook name (each module registers its hooks on import)."""
    import mitmproxy.addonmanager
    import mitmproxy.proxy.layers.dns
    import mitmproxy.proxy.layers.http
    import mitmproxy.proxy.layers.quic
    import mitmproxy.proxy.layers.tcp
    import mitmproxy.proxy.layers.tls
    import mitmproxy.proxy.layers.udp
    import mitmproxy.proxy.layers.websocket
    import mitmproxy.proxy.server_hooks  # noqa: F401
    from mitmproxy import hooks

    return frozenset(hooks.all_hooks)


_Hook = Callable[..., Any]


def _hooks(addons: Sequence[object], name: str) -> list[tuple[_Hook, bool]]:
    out: list[tuple[_Hook, bool]] = []
    for addon in addons:
        fn = getattr(addon, name, None)
        if fn is not None:
            if not callable(fn):
                raise TypeError(f"{type(addon).__name__}.{name} is not callable")
            out.append((fn, inspect.iscoroutinefunction(fn)))
    return out


def _report(fn: _Hook) -> None:
    owner = getattr(fn, "__self__", None)
    log.error(
        "addon %s failed in %s; the next addon's hook still runs",
        type(owner).__name__ if owner is not None else fn,
        getattr(fn, "__name__", "?"),
        exc_info=True,
    )


def _make(hooks: list[tuple[_Hook, bool]]) -> Callable[..., Awaitable[None] | None]:
    if not any(is_async for _, is_async in hooks):
        fns = [fn for fn, _ in hooks]

        def call_sync(*args: Any) -> None:
            for fn in fns:
                try:
                    fn(*args)
                except Exception:  # noqa: BLE001 - mitmproxy's safecall: log, go on
                    _report(fn)

        return call_sync

    async def call(*args: Any) -> None:
        for fn, is_async in hooks:
            try:
                if is_async:
                    await fn(*args)
                else:
                    result = fn(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except Exception:  # noqa: BLE001 - mitmproxy's safecall: log, go on
                _report(fn)

    return call


class AddonChain:
    """One mitmproxy addon that runs ``addons``' hooks in order."""

    def __init__(self, addons: Sequence[object]) -> None:
        for addon in addons:
            if hasattr(addon, "addons"):
                raise TypeError(
                    f"{type(addon).__name__} has nested addons; AddonChain does not walk them"
                )
        self.members: tuple[object, ...] = tuple(addons)
        #: the mitmproxy hooks some member defines: each is forwarded, in order
        self.hook_names: tuple[str, ...] = tuple(
            sorted(n for n in _all_hook_names() if any(hasattr(a, n) for a in addons))
        )
        for name in self.hook_names:
            hooks = _hooks(self.members, name)
            if hooks:
                setattr(self, name, _make(hooks))

    def __repr__(self) -> str:
        return f"AddonChain({', '.join(type(a).__name__ for a in self.members)})"
