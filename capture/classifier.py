"""Classifier: what the request does, one operation per batch item.

Thin adapter over ``capture.classify``. Chroma addresses records by collection
UUID; policy globs match names, so UUIDs are resolved through the upstream
with the gateway's credential (cached). An unresolved UUID stays a UUID, which
no name glob matches: fail closed.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from urllib.parse import parse_qsl

import httpx
from mitmproxy import http

from capture.classify import (
    HEADERS_PRESENT,
    HEADERS_READ,
    chroma_collection_refs,
    classify,
    detect_product,
)
from capture.classify.pinecone import index_from_host
from capture.config import CREDENTIAL_HEADERS, GatewayConfig, Route
from capture.state import FlowState, block, fail_closed, state_of
from capture.types import Classification, HttpRequest, Product

__all__ = ["ClassificationCache", "Classifier", "ChromaNames", "classification_key"]

log = logging.getLogger("embedguard.classifier")


class ChromaNames:
    """UUID → collection name, resolved through the upstream and cached."""

    def __init__(
        self, ttl_s: float = 300.0, negative_ttl_s: float = 5.0, max_entries: int = 50_000
    ) -> None:
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.max_entries = max_entries
        self._cache: dict[str, tuple[str | None, float]] = {}
        self._http: httpx.AsyncClient | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def resolve(self, route: Route, path: str, uuids: list[str]) -> dict[str, str]:
        now = time.monotonic()
        out: dict[str, str] = {}
        for uuid in uuids:
            hit = self._cache.get(uuid)
            if hit is not None and hit[1] > now:
                if hit[0] is not None:
                    out[uuid] = hit[0]
                continue
            name = await self._fetch(route, path, uuid)
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            self._cache[uuid] = (name, now + (self.ttl_s if name else self.negative_ttl_s))
            if name is not None:
                out[uuid] = name
        return out

    async def _fetch(self, route: Route, path: str, uuid: str) -> str | None:
        # The collection segment itself, not the first place the UUID appears:
        # /tenants/{uuid}/.../collections/{uuid} must not look up the tenant.
        idx = path.find(f"/collections/{uuid}")
        end = idx + len("/collections/") + len(uuid)
        if idx < 0 or path[end:end + 1] not in ("", "/"):
            return None
        # v2: GET .../collections/{x} takes a *name*; a UUID is looked up by-id
        if path.startswith("/api/v2/"):
            url = f"{route.upstream}{path[:idx]}/collections/by-id/{uuid}"
        else:
            url = route.upstream + path[:end]
        headers = {}
        if route.credential is not None:
            name, fmt = CREDENTIAL_HEADERS["chroma"]
            headers[name] = fmt.format(secret=route.credential.get_secret_value())
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=5.0)
        try:
            resp = await self._http.get(url, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("could not resolve Chroma collection %s: %s", uuid, type(exc).__name__)
            return None
        if resp.status_code != 200:
            return None
        try:
            name = resp.json().get("name")
        except ValueError:
            return None
        return name if isinstance(name, str) and name else None


#: what a classification depends on, for a request without a body: the
#: route's product and upstream, method, path and query, the client's Host and
#: the headers classification reads (HEADERS_READ by value, HEADERS_PRESENT
#: by presence only)
ClassificationKey = tuple[str, str, str, str, str, tuple[tuple[str, bytes | None], ...]]


def classification_key(
    route: Route, method: str, path: str, host: str, headers: http.Headers
) -> ClassificationKey:
    """The cache key of a body-less request: every input of its classification
    (``to_http_request`` and ``Classifier.request`` read nothing else)."""
    read: list[tuple[str, bytes | None]] = []
    for k, v in headers.fields:
        name = k.decode("latin-1").lower()  # as header_dict names them
        if name in HEADERS_READ:
            read.append((name, v))
        elif name in HEADERS_PRESENT:
            read.append((name, None))
    return (route.kind, route.upstream, method, path, host, tuple(read))


#: a longer path (and query) is classified every time: keys stay small
_KEYED_PATH_MAX = 2048


class ClassificationCache:
    """Classifications of body-less requests by ``classification_key``.

    Classification is a pure function of those inputs, and most traffic
    repeats a few GETs; a hit skips building the request, matching the route
    and building the operations. Only results that needed no Chroma name
    lookup are kept (those follow ChromaNames' own expiry). Bounded: cleared
    when full (``max_entries=0`` keeps nothing). Each hit gets its own
    operations list (the models are frozen)."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._entries: dict[ClassificationKey, Classification] = {}

    def get(self, key: ClassificationKey) -> Classification | None:
        c = self._entries.get(key)
        if c is None:
            return None
        # every other field is immutable and carried over, whatever fields
        # Classification gains later
        return dataclasses.replace(c, operations=list(c.operations))

    def put(self, key: ClassificationKey, cls: Classification) -> None:
        if self.max_entries <= 0:  # disabled
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = cls

    def __len__(self) -> int:
        return len(self._entries)


def header_dict(headers: http.Headers) -> dict[str, str]:
    """Lower-case name → value (last one wins), straight from the raw fields:
    mitmproxy's multidict accessors cost more than the rest of classification."""
    return {
        k.decode("latin-1").lower(): v.decode("utf-8", "replace") for k, v in headers.fields
    }


def to_http_request(flow: http.HTTPFlow, host: str, body: bytes) -> HttpRequest:
    path, _, query = flow.request.path.partition("?")
    return HttpRequest(
        method=flow.request.method.upper(),
        path=path,
        host=host,
        query=tuple(parse_qsl(query, keep_blank_values=True)),
        headers=header_dict(flow.request.headers),
        body=body,
    )


class Classifier:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.chroma = ChromaNames()
        self.cache = ClassificationCache()

    async def done(self) -> None:
        await self.chroma.close()

    @fail_closed("classify")
    async def request(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or flow.response is not None:
            return
        key: ClassificationKey | None = None
        if not st.client_body and len(flow.request.path) <= _KEYED_PATH_MAX:
            key = classification_key(
                st.route, flow.request.method, flow.request.path, st.client_host,
                flow.request.headers,
            )
            cached = self.cache.get(key)
            if cached is not None:
                self._classified(flow, st, cached)
                return
        req = to_http_request(flow, st.client_host, st.client_body)
        product: Product | None = st.route.kind if st.route.kind != "auto" else detect_product(req)
        if product == "pinecone" and index_from_host(st.route.upstream_hostport) is not None:
            # The upstream is one index's host, and that is the Host it gets
            # (Credentials sets it): the index is that one, whatever Host the
            # client claimed.
            req = dataclasses.replace(req, host=st.route.upstream_hostport)
        if product is None:
            block(
                flow,
                st,
                403,
                "forbidden",
                f"cannot tell which vector database {req.method} {req.path[:200]} is for; "
                "configure the route's --kind",
                "classify",
            )
            return
        names: dict[str, str] = {}
        refs: list[str] = []
        if product == "chroma":
            refs = chroma_collection_refs(req)
            if refs:
                names = await self.chroma.resolve(st.route, req.path, refs)
        cls = classify(product, req, chroma_names=names)
        if key is not None and not refs:
            self.cache.put(key, cls)
            cls = self.cache.get(key) or cls  # the flow gets its own operations list
        self._classified(flow, st, cls)

    @staticmethod
    def _classified(flow: http.HTTPFlow, st: FlowState, cls: Classification) -> None:
        st.classification = cls
        if not cls.ok:
            block(
                flow,
                st,
                403,
                "forbidden",
                f"unclassifiable request, denied by default: {cls.error or 'unknown operation'}",
                "classify",
            )
