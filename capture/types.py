"""Types shared by the gateway's pure functions (classification, identity,
policy, masking) and the mitmproxy addons that adapt them.

Pure functions take these, never mitmproxy objects, so they can be tested
without a proxy and reused by ``policy explain`` and the dashboard simulator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from schemas.models import ActionClass, Operation

__all__ = [
    "PRODUCTS",
    "ActionClass",
    "Classification",
    "HttpRequest",
    "Identity",
    "Operation",
    "Product",
]

Product = Literal["qdrant", "chroma", "pinecone", "weaviate", "milvus"]
PRODUCTS: tuple[Product, ...] = ("qdrant", "chroma", "pinecone", "weaviate", "milvus")


@dataclass(frozen=True)
class HttpRequest:
    """A request as the classifier sees it.

    ``path`` has no query string; ``query`` keeps repeated keys in order
    (Pinecone's ``?ids=a&ids=b``). Header names are lower-case.
    """

    method: str
    path: str
    host: str = ""
    query: Sequence[tuple[str, str]] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def query_values(self, key: str) -> list[str]:
        return [v for k, v in self.query if k == key]


@dataclass(frozen=True)
class ModelRead:
    """In ``Classification.filters``: a module upstream (Weaviate's generative
    search, question answering, summaries, rerankers) reads stored properties
    for the caller and answers in its own text, which field masking cannot map
    back to fields. The masked-filter check refuses it while a field is masked
    (capture/filter_guard.py)."""

    module: str


@dataclass(frozen=True)
class Classification:
    """What a request does: one operation per item of a batch.

    ``error`` is set when the request could not be classified (unknown
    endpoint, unparseable body); it is then denied by default and the error
    says why. ``response_ids`` names where ids appear in the response (dotted
    path, ``[]`` for each element), for lineage, and they are the only
    places masking leaves alone (keys named ``id`` inside user data are user
    data); ``user_data_paths`` names the response fields that carry user data,
    for masking. ``vector_paths`` names vector fields, stripped as they are;
    ``vector_scan_paths`` names subtrees whose vectors cannot be named (Milvus
    rows, whose field names come from the collection schema): every
    vector-shaped value in them is stripped. ``field_aliases`` pairs each
    response key a query renamed (GraphQL aliases) with the field it selects,
    so that masking by field name or path applies to the renamed key too.
    Its first element may instead be a response *path* (it then has a ``.``,
    ``[`` or ``{``, which a GraphQL name cannot): a location that holds a
    value of the named field, or one computed from its values, outside the
    field's own key (a Qdrant group id is the value of the ``group_by``
    field; a Weaviate aggregate of a property summarises its values). When
    that field is masked by name, the location is masked whole with the token
    the field's value would get, and it is no longer a response id.
    """

    product: Product
    operations: list[Operation]
    error: str | None = None
    response_ids: tuple[str, ...] = ()
    user_data_paths: tuple[str, ...] = ()
    vector_paths: tuple[str, ...] = ()
    vector_scan_paths: tuple[str, ...] = ()
    field_aliases: tuple[tuple[str, str], ...] = ()
    #: the client's filters as the classifier read them (JSON values, or a
    #: Milvus expression), in request order: what a masked-field filter check
    #: reads. Never recorded (events keep each operation's filter_sha256).
    filters: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    @property
    def ok(self) -> bool:
        return (
            self.error is None
            and all(op.action != ActionClass.UNKNOWN for op in self.operations)
            and bool(self.operations)
        )


@dataclass(frozen=True)
class Identity:
    """A verified caller."""

    subject: str
    issuer: str
    groups: frozenset[str] = frozenset()
    token_id: str | None = None
    issued_at: datetime | None = None
    expires_at: datetime | None = None
    auth_method: Literal["bearer", "dpop"] = "bearer"
    dpop_jkt: str | None = None
    client_id: str | None = None
