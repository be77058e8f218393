"""Classifier: what the request does, one operation per batch item.

Thin adapter over ``capture.classify``. Chroma addresses records by collection
UUID; policy globs match names, so UUIDs are resolved through the upstream
with the gateway's credential (cached per tenant and database: the lookup goes
to the path the client named). A UUID that does not resolve there is refused
(403 ``collection_unresolved``, or 502 when the upstream cannot be asked):
Chroma's record endpoints ignore the path's tenant, so a UUID under a made-up
tenant would otherwise reach a collection its name's rules deny.

A cached name goes stale when the collection is renamed (``PUT
.../collections/{id}`` with ``new_name``) or deleted. When such a request
passes through this gateway process, the names it concerns are dropped from
the cache when the request is classified and again when the upstream has
answered (or failed), so a lookup racing with the rename cannot keep the old
name. A rename made elsewhere (another gateway worker or replica, or straight
at the upstream) is seen only when the cached entry expires: for up to
``ChromaNames.ttl_s`` (15 s) a UUID may still be classified under its old
name there. The cost of the short TTL is one upstream lookup per UUID (per
tenant/database prefix) every 15 s per gateway process.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Collection
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

__all__ = [
    "ClassificationCache",
    "Classifier",
    "ChromaNames",
    "classification_key",
    "repeated_read_headers",
]

log = logging.getLogger("embedguard.classifier")


class ChromaNames:
    """UUID → collection name, resolved through the upstream and cached.

    Keyed by the path's tenant/database prefix and the UUID: the name is the
    one the upstream gives for that collection *under that prefix*, and a
    failed lookup under one prefix says nothing about another.

    ``ttl_s`` bounds how long a rename made outside this process goes unseen
    (see the module docstring); a rename or delete through this process is
    applied at once by :meth:`forget_names`."""

    def __init__(
        self, ttl_s: float = 15.0, negative_ttl_s: float = 5.0, max_entries: int = 50_000
    ) -> None:
        self.ttl_s = ttl_s
        self.negative_ttl_s = negative_ttl_s
        self.max_entries = max_entries
        self._cache: dict[tuple[str, str], tuple[str | None, float]] = {}
        self._http: httpx.AsyncClient | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    def forget_names(self, names: Collection[str]) -> int:
        """Drop every cached UUID that resolved to one of ``names`` (under any
        prefix); returns how many entries went. Called for renames and
        deletes, which are rare: a scan of the cache is cheap enough."""
        if not names:
            return 0
        stale = [k for k, (name, _) in self._cache.items() if name in names]
        for k in stale:
            del self._cache[k]
        return len(stale)

    async def resolve(
        self, route: Route, path: str, uuids: list[str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """``(names, failures)``: the names found, and for each UUID not
        resolved, why (``not_found`` or ``upstream_error``; the latter is
        never cached)."""
        now = time.monotonic()
        out: dict[str, str] = {}
        failed: dict[str, str] = {}
        for uuid in uuids:
            url = self._lookup_url(route, path, uuid)
            if url is None:
                failed[uuid] = "not_found"
                continue
            key = (url, uuid)
            hit = self._cache.get(key)
            if hit is not None and hit[1] > now:
                if hit[0] is not None:
                    out[uuid] = hit[0]
                else:
                    failed[uuid] = "not_found"
                continue
            name, why = await self._fetch(route, url, uuid)
            if why == "upstream_error":
                failed[uuid] = why
                continue
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            self._cache[key] = (name, now + (self.ttl_s if name else self.negative_ttl_s))
            if name is not None:
                out[uuid] = name
            else:
                failed[uuid] = "not_found"
        return out, failed

    @staticmethod
    def _lookup_url(route: Route, path: str, uuid: str) -> str | None:
        # The collection segment itself, not the first place the UUID appears:
        # /tenants/{uuid}/.../collections/{uuid} must not look up the tenant.
        idx = path.find(f"/collections/{uuid}")
        end = idx + len("/collections/") + len(uuid)
        if idx < 0 or path[end:end + 1] not in ("", "/"):
            return None
        # v2: GET .../collections/{x} takes a *name*; a UUID is looked up by-id
        if path.startswith("/api/v2/"):
            return f"{route.upstream}{path[:idx]}/collections/by-id/{uuid}"
        return route.upstream + path[:end]

    async def _fetch(self, route: Route, url: str, uuid: str) -> tuple[str | None, str]:
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
            return None, "upstream_error"
        if resp.status_code >= 500:
            log.warning("could not resolve Chroma collection %s: HTTP %d", uuid,
                        resp.status_code)
            return None, "upstream_error"
        if resp.status_code != 200:
            return None, "not_found"
        try:
            name = resp.json().get("name")
        except (ValueError, AttributeError):
            return None, "upstream_error"
        if isinstance(name, str) and name:
            return name, ""
        return None, "upstream_error"


#: what a classification depends on, for a request without a body: the
#: route's product and upstream, method, path and query, the client's Host and
#: the headers classification reads (HEADERS_READ by value, HEADERS_PRESENT
#: by presence only)
ClassificationKey = tuple[
    str, str, str, bool, str, str, str, tuple[tuple[str, bytes | None], ...]
]


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
    return (route.kind, route.upstream, route.pinecone_index or "", route.chroma_v1, method,
            path, host, tuple(read))


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


def repeated_read_headers(headers: http.Headers) -> list[str]:
    """The headers of HEADERS_READ that the request sends more than once.

    Servers disagree on which copy counts (Go's ``Header.Get``, which Milvus
    uses for DB-Name, takes the first; header_dict keeps the last), so such a
    request is refused rather than classified on a copy the server ignores."""
    seen: set[str] = set()
    repeated: list[str] = []
    for k, _ in headers.fields:
        name = k.decode("latin-1").lower()
        if name in HEADERS_READ:
            if name in seen and name not in repeated:
                repeated.append(name)
            seen.add(name)
    return repeated


_PCT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def go_query_problem(query: str) -> str | None:
    """Why Go's ``url.ParseQuery`` (Weaviate, Milvus) would read ``query``
    differently from the classifier, or None. Go drops every pair holding a
    ``;`` or a bad percent escape (so ``?class=Docs;`` lists every class
    there, while it names a class here); Python keeps them."""
    if ";" in query:
        return ("the query string holds ';', which the upstream ignores together with its "
                "parameter; percent-encode it as %3B")
    if _PCT.search(query):
        return ("the query string holds a '%' that starts no percent escape, which the "
                "upstream ignores together with its parameter; encode it as %25")
    return None


def header_dict(headers: http.Headers) -> dict[str, str]:
    """Lower-case name → value (last one wins), straight from the raw fields:
    mitmproxy's multidict accessors cost more than the rest of classification.
    Classifier.request refuses a repeated HEADERS_READ header first, so for
    those there is only one value."""
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


#: Chroma operations after which a cached UUID → name entry is wrong: the
#: operation's collection is the collection's (old) name
_CHROMA_RENAMES = frozenset({"modify_collection", "delete_collection"})


def chroma_renamed(cls: Classification | None) -> frozenset[str]:
    """The Chroma collection names a request renames away or deletes."""
    if cls is None or cls.product != "chroma":
        return frozenset()
    return frozenset(
        o.collection for o in cls.operations
        if o.detail in _CHROMA_RENAMES and o.collection is not None
    )


class Classifier:
    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self.chroma = ChromaNames()
        self.cache = ClassificationCache()

    async def done(self) -> None:
        await self.chroma.close()

    def response(self, flow: http.HTTPFlow) -> None:
        self._forget_renamed(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._forget_renamed(flow)

    def _forget_renamed(self, flow: http.HTTPFlow) -> None:
        # Again once the upstream has acted: a lookup that ran between the
        # classification and the rename may have cached the old name.
        st = state_of(flow)
        if st is not None:
            self.chroma.forget_names(chroma_renamed(st.classification))

    @fail_closed("classify")
    async def request(self, flow: http.HTTPFlow) -> None:
        st = state_of(flow)
        if st is None or flow.response is not None:
            return
        repeated = repeated_read_headers(flow.request.headers)
        if repeated:
            # before the cache: a key is never built for such a request
            block(flow, st, 400, "bad_request",
                  f"header {', '.join(repeated)} is sent more than once; the vector "
                  "database may read a different copy from the one the policy would "
                  "check: send it once", "classify")
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
        pinecone_hosts: dict[str, str] = {}
        if product == "pinecone":
            # The request goes to the route's upstream, with the upstream's Host
            # (Credentials sets it), whatever Host the client claimed: the
            # index is the upstream's own (an index host), or the route's
            # --pinecone-index, never the client's choice. With neither, data
            # plane requests cannot name an index and are denied.
            up = st.route.upstream_hostport
            req = dataclasses.replace(req, host=up)
            if st.route.pinecone_index and index_from_host(up) is None:
                pinecone_hosts = {up: st.route.pinecone_index}
        if product in ("weaviate", "milvus"):
            problem = go_query_problem(flow.request.path.partition("?")[2])
            if problem is not None:
                block(flow, st, 400, "bad_request", problem, "classify")
                return
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
                names, failed = await self.chroma.resolve(st.route, req.path, refs)
                if failed:
                    uuid, why = next(iter(failed.items()))
                    if why == "upstream_error":
                        block(flow, st, 502, "upstream_error",
                              f"collection_unresolved: could not look up Chroma collection "
                              f"{uuid} upstream to check the policy for it; try again",
                              "classify")
                    else:
                        tenant_db = req.path[: req.path.find("/collections/")]
                        block(flow, st, 403, "forbidden",
                              f"collection_unresolved: Chroma collection {uuid} does not "
                              f"exist under {tenant_db[:200]}; denied by default. Use the "
                              "tenant and database the collection belongs to", "classify")
                    return
        cls = classify(product, req, chroma_names=names, chroma_legacy_v1=st.route.chroma_v1,
                       pinecone_hosts=pinecone_hosts)
        if product == "pinecone" and not cls.ok and "cannot tell the index" in (cls.error or ""):
            cls = dataclasses.replace(
                cls, error=f"{cls.error}; this route's upstream {up[:120]} is not an index "
                "host: start it with --pinecone-index NAME")
        if key is not None and not refs:
            self.cache.put(key, cls)
            cls = self.cache.get(key) or cls  # the flow gets its own operations list
        self._classified(flow, st, cls)

    def _classified(self, flow: http.HTTPFlow, st: FlowState, cls: Classification) -> None:
        st.classification = cls
        self.chroma.forget_names(chroma_renamed(cls))
        if not cls.ok:
            block(
                flow,
                st,
                403,
                "forbidden",
                f"unclassifiable request, denied by default: {cls.error or 'unknown operation'}",
                "classify",
            )
