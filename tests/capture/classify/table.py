"""Table-driven test support for the classifiers: one Row per request."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from capture.classify._common import Route, match_route, normalize_path
from capture.types import ActionClass, Classification, HttpRequest, Product

_UNCHECKED: Any = object()


def E(action: str, collection: str | None = _UNCHECKED, **fields: Any) -> dict[str, Any]:
    """Expected operation fields (a subset is compared; ``collection`` only
    when given, None included)."""
    out: dict[str, Any] = {"action": action}
    if collection is not _UNCHECKED:
        out["collection"] = collection
    out.update(fields)
    return out


@dataclass(frozen=True)
class Row:
    id: str
    method: str
    path: str
    body: Any = None
    expect: Sequence[Mapping[str, Any]] = ()
    #: Substring the classification error must contain (then the single
    #: operation must be unknown).
    error: str | None = None
    query: Sequence[tuple[str, str]] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    host: str = ""
    response_ids: Sequence[str] | None = None
    user_data: Sequence[str] | None = None
    vectors: Sequence[str] | None = None
    #: Extra keyword arguments for the classifier.
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def request(self) -> HttpRequest:
        if self.body is None:
            raw = b""
        elif isinstance(self.body, bytes):
            raw = self.body
        else:
            raw = json.dumps(self.body).encode()
        return HttpRequest(
            method=self.method,
            path=self.path,
            host=self.host,
            query=tuple(self.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=raw,
        )


def params(rows: Iterable[Row]) -> list[Any]:
    return [pytest.param(r, id=r.id) for r in rows]


def check(c: Classification, row: Row, product: Product) -> None:
    assert c.product == product
    if row.error is not None:
        assert c.error is not None, f"expected an error containing {row.error!r}"
        assert row.error in c.error, c.error
        assert len(c.operations) == 1
        assert c.operations[0].action == ActionClass.UNKNOWN
        assert not c.ok
        return
    assert c.error is None, c.error
    got = [o.model_dump(mode="json") for o in c.operations]
    assert len(got) == len(row.expect), got
    for i, (g, want) in enumerate(zip(got, row.expect, strict=True)):
        for key, value in want.items():
            assert g[key] == value, f"op {i} field {key}: {g[key]!r} != {value!r} in {g}"
        if g["filter_present"]:
            assert g["filter_sha256"] is not None and len(g["filter_sha256"]) == 64
        else:
            assert g["filter_sha256"] is None
    assert c.ok == all(o["action"] != "unknown" for o in got)
    if row.response_ids is not None:
        assert tuple(c.response_ids) == tuple(row.response_ids)
    if row.user_data is not None:
        assert tuple(c.user_data_paths) == tuple(row.user_data)
    if row.vectors is not None:
        assert tuple(c.vector_paths) == tuple(row.vectors)


def run_rows(classifier: Callable[..., Classification], row: Row, product: Product) -> None:
    check(classifier(row.request(), **row.kwargs), row, product)


def assert_routes_covered(routes: Sequence[Route[Any]], rows: Iterable[Row]) -> None:
    """Every route of a table is dispatched to by at least one row."""
    hit: set[int] = set()
    for r in rows:
        try:
            path = normalize_path(r.path)
        except Exception:  # noqa: BLE001 - malformed paths are error rows
            continue
        m = match_route(routes, r.method, path)
        if m.route is not None:
            hit.add(id(m.route))
    missing = [
        f"{'|'.join(sorted(route.methods))} {route.template}"
        for route in routes
        if id(route) not in hit
    ]
    assert not missing, "routes without a test row:\n" + "\n".join(missing)
