"""Request classification: what a vector-database request does.

Pure functions (no I/O, no clock): an :class:`~capture.types.HttpRequest` in,
a :class:`~capture.types.Classification` out, one
:class:`~schemas.models.Operation` per item of a batch. Anything that cannot
be placed is a single ``unknown`` operation with ``error`` saying exactly what
was not recognised, so policy denies it by default. No input makes a
classifier raise.

The endpoint → action map is shared/vector-db-apis.md; each product module
keeps a route table (method + path template → handler) that follows it.
"""

from __future__ import annotations

from collections.abc import Mapping

from capture.classify._common import header_lookup, unknown
from capture.classify.chroma import chroma_collection_refs, classify_chroma
from capture.classify.milvus import classify_milvus
from capture.classify.pinecone import classify_pinecone
from capture.classify.qdrant import classify_qdrant
from capture.classify.weaviate import classify_weaviate
from capture.types import PRODUCTS, Classification, HttpRequest, Product

__all__ = [
    "HEADERS_PRESENT",
    "HEADERS_READ",
    "chroma_collection_refs",
    "classify",
    "classify_chroma",
    "classify_milvus",
    "classify_pinecone",
    "classify_qdrant",
    "classify_weaviate",
    "detect_product",
]

_EMPTY: Mapping[str, str] = {}

#: The request headers whose values classification reads (detect_product, the
#: Pinecone index from Host, Milvus' db-name, the body's media type: Weaviate
#: reads YAML too); every other header is ignored.
#: A classification cached by request (capture/classifier.py) is keyed by
#: these, and tests/capture/classify/test_api.py holds the classifiers to them.
HEADERS_READ = frozenset({"host", "x-pinecone-api-version", "db-name", "content-type"})
#: Headers of which only the presence counts (detect_product): a cache key
#: records that they were sent, never their value (a credential).
HEADERS_PRESENT = frozenset({"api-key"})


def classify(
    product: Product,
    req: HttpRequest,
    *,
    chroma_names: Mapping[str, str] = _EMPTY,
    chroma_legacy_v1: bool = False,
    pinecone_hosts: Mapping[str, str] = _EMPTY,
) -> Classification:
    """Classify ``req`` as a request to ``product``; never raises.

    ``chroma_names`` maps Chroma collection UUIDs to names (see
    :func:`chroma_collection_refs`); ``chroma_legacy_v1`` maps the deprecated
    ``/api/v1`` paths to their v2 twins instead of denying them;
    ``pinecone_hosts`` maps data-plane hosts to index names when the Host
    header is not the index's own ``*.pinecone.io`` host.
    """
    if product == "qdrant":
        return classify_qdrant(req)
    if product == "chroma":
        return classify_chroma(req, names=chroma_names, legacy_v1=chroma_legacy_v1)
    if product == "pinecone":
        return classify_pinecone(req, index_hosts=pinecone_hosts)
    if product == "weaviate":
        return classify_weaviate(req)
    if product == "milvus":
        return classify_milvus(req)
    return unknown(
        product, f"unsupported product {str(product)[:40]!r}; expected one of {', '.join(PRODUCTS)}"
    )


_QDRANT_ROOTS = (
    "/collections",
    "/aliases",
    "/snapshots",
    "/cluster",
    "/telemetry",
    "/metrics",
    "/healthz",
    "/livez",
    "/readyz",
    "/issues",
    "/quotas",
    "/audit",
    "/profiler",
    "/debugger",
    "/logger",
    "/stacktrace",
)
_PINECONE_ROOTS = (
    "/vectors/",
    "/query",
    "/describe_index_stats",
    "/namespaces",
    "/records/",
    "/bulk/",
    "/indexes",
    "/backups",
    "/restore-jobs",
    "/embed",
    "/rerank",
    "/models",
    "/admin/",
)


def _under(path: str, roots: tuple[str, ...]) -> bool:
    for root in roots:
        if root.endswith("/"):
            if path.startswith(root):
                return True
        elif path == root or path.startswith(root + "/"):
            return True
    return False


def detect_product(req: HttpRequest) -> Product | None:
    """Guess the product a request is for, from its headers and path.

    A hint for set-ups that front several products; a configured product
    always wins. Returns None when nothing matches.
    """
    path = req.path
    host = (req.host or header_lookup(req.headers, "host") or "").lower().split(":")[0]
    if header_lookup(req.headers, "x-pinecone-api-version") is not None or host.endswith(
        ".pinecone.io"
    ):
        return "pinecone"
    if path == "/api/v2" or path.startswith(("/api/v2/", "/api/v1/")) or path == "/api/v1":
        return "chroma"
    if path.startswith(("/v2/vectordb/", "/v1/vector/")):
        return "milvus"
    if path == "/v1" or path.startswith("/v1/"):
        return "weaviate"
    # Pinecone's control plane also has /collections; its SDK always sends the
    # version header handled above, so a bare /collections is Qdrant.
    if path == "/" or _under(path, _QDRANT_ROOTS):
        return "qdrant"
    if header_lookup(req.headers, "api-key") is not None and _under(path, _PINECONE_ROOTS):
        return "pinecone"
    return None
