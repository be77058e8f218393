"""``embedguard policy``: check a policy file, and explain what it decides.

Thin: parse options, call :mod:`capture.policy`, print. Registered in
``embedguard/cli.py`` as ``app.add_typer(policy_app, name="policy")``.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl

import typer

from capture.policy import (
    GrantScope,
    Policy,
    PolicyError,
    RequestContext,
    explain,
    format_duration,
    load_policy,
    parse_duration,
)
from capture.types import PRODUCTS, HttpRequest, Identity, Product
from embedguard.console import plain_console
from schemas.models import ActionClass, Operation

__all__ = ["policy_app"]

policy_app = typer.Typer(
    help="Check policy files and explain their decisions.", no_args_is_help=True
)
_out = plain_console()
_err = plain_console(stderr=True)

FileArg = Annotated[Path, typer.Argument(help="The policy YAML file")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    _err.print(f"error: {message}")
    return typer.Exit(code)


def _load(file: Path, as_json: bool) -> Policy:
    try:
        return load_policy(file)
    except PolicyError as exc:
        if as_json:
            _print_json({"ok": False, "file": str(file), "errors": [
                {"file": i.file, "line": i.line, "where": i.where, "message": i.message}
                for i in exc.issues
            ]})
        else:
            for issue in exc.issues:
                _err.print(str(issue))
            _err.print(f"{len(exc.issues)} problem(s) in {file}")
        raise typer.Exit(1) from None


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


@policy_app.command("check")
def check(file: FileArg, as_json: JsonOpt = False) -> None:
    """Validate a policy file; exit 1 and print FILE:LINE errors if it is invalid."""
    policy = _load(file, as_json)
    if as_json:
        _print_json({"ok": True, "file": str(file), "sha256": policy.sha256,
                     "rules": [r.id for r in policy.rules]})
    else:
        _out.print(f"ok: {file}: {len(policy.rules)} rules, sha256 {policy.sha256}")


def _operations_from_specs(specs: list[str], limit: int | None) -> list[Operation]:
    """``ACTION[:COLLECTION[:ID,ID...]]`` -> operations, for trying a policy
    without writing a request."""
    ops = []
    for spec in specs:
        action, _, rest = spec.partition(":")
        collection, _, ids = rest.partition(":")
        try:
            cls = ActionClass(action.strip().lower())
        except ValueError:
            raise _fail(f"--op {spec!r}: {action!r} is not an action — use one of "
                        f"{', '.join(a.value for a in ActionClass)}") from None
        ops.append(Operation(action=cls, collection=collection or None,
                             ids=[i for i in ids.split(",") if i], limit=limit))
    return ops


def _classify(product: str | None, request: HttpRequest
              ) -> tuple[Product, list[Operation], str | None, tuple[Any, ...]]:
    try:
        from capture.classify import classify, detect_product
    except ImportError as exc:  # pragma: no cover - the classifier ships with the gateway
        raise _fail(f"request classification is unavailable ({exc}); use --op instead") \
            from None
    chosen: Product | None
    if product is not None:
        if product not in PRODUCTS:
            raise _fail(f"--product {product!r} is not one of {', '.join(PRODUCTS)}")
        chosen = product
    else:
        chosen = detect_product(request)
        if chosen is None:
            raise _fail(f"cannot tell the product from {request.path!r} — pass --product "
                        f"({', '.join(PRODUCTS)})")
    classification = classify(chosen, request)
    return (chosen, list(classification.operations), classification.error,
            classification.filters)


@policy_app.command("explain")
def explain_command(
    file: FileArg,
    sub: Annotated[str, typer.Option("--sub", help="Caller's subject (sub claim)")],
    groups: Annotated[list[str], typer.Option(
        "--groups", help="Caller's groups, comma-separated or repeated")] = [],  # noqa: B006
    method: Annotated[str, typer.Option("--method", help="HTTP method")] = "POST",
    path: Annotated[str | None, typer.Option(
        "--path", help="Request path, optionally with ?query")] = None,
    body: Annotated[Path | None, typer.Option(
        "--body", help="File holding the request body ('-' for stdin)")] = None,
    host: Annotated[str, typer.Option("--host", help="Host header (Pinecone index)")] = "",
    product: Annotated[str | None, typer.Option(
        "--product", help=f"One of {', '.join(PRODUCTS)}; guessed from the path if unset")] = None,
    op: Annotated[list[str], typer.Option(
        "--op", help="Instead of a request: ACTION[:COLLECTION[:ID,ID]], repeatable")] = [],  # noqa: B006
    limit: Annotated[int | None, typer.Option(
        "--limit", help="limit/top_k of the --op operations")] = None,
    ticket: Annotated[str | None, typer.Option("--ticket", help="Change ticket")] = None,
    grant: Annotated[list[str], typer.Option(
        "--grant", help="An active JIT grant of the caller, ACTIONS:GLOBS (e.g. "
        "write,delete:docs-*), repeatable")] = [],  # noqa: B006
    token_age: Annotated[str | None, typer.Option(
        "--token-age", help="How old the token is, e.g. 20m (default: just issued)")] = None,
    token_lifetime: Annotated[str | None, typer.Option(
        "--token-lifetime", help="exp minus iat, e.g. 1h (default: expires in 5m)")] = None,
    dpop: Annotated[bool, typer.Option("--dpop", help="The token is DPoP-bound")] = False,
    issuer: Annotated[str, typer.Option("--issuer", help="Token issuer")] = "cli",
    client_address: Annotated[str | None, typer.Option(
        "--client-address", help="Client IP address")] = None,
    header: Annotated[list[str], typer.Option(
        "--header", help="Extra request header 'Name: value', repeatable")] = [],  # noqa: B006
    now: Annotated[str | None, typer.Option(
        "--now", help="Evaluate at this ISO time (default: now)")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show what the policy decides for one request, and why, rule by rule."""
    policy = _load(file, as_json)
    try:
        at = datetime.fromisoformat(now) if now else datetime.now(UTC)
    except ValueError:
        raise _fail(f"--now {now!r} is not an ISO time, e.g. 2025-01-06T10:00:00+01:00") \
            from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    try:
        age = parse_duration(token_age) if token_age else timedelta(0)
        lifetime = parse_duration(token_lifetime) if token_lifetime else None
    except ValueError as exc:
        raise _fail(f"--token-age/--token-lifetime: {exc}") from None
    issued = at - age
    identity = Identity(
        subject=sub, issuer=issuer,
        groups=frozenset(g.strip() for item in groups for g in item.split(",") if g.strip()),
        issued_at=issued,
        expires_at=issued + lifetime if lifetime else at + timedelta(minutes=5),
        auth_method="dpop" if dpop else "bearer",
    )

    chosen: Product | None = None
    classification_error: str | None = None
    filters: tuple[Any, ...] = ()
    request_path: str | None = None
    if op:
        if path is not None:
            raise _fail("give either --op or --path, not both")
        operations = _operations_from_specs(op, limit)
        if product is not None and product in PRODUCTS:
            chosen = product
    elif path is not None:
        raw_path, _, query = path.partition("?")
        request_path = raw_path
        headers = {}
        for h in header:
            name, sep, value = h.partition(":")
            if not sep:
                raise _fail(f"--header {h!r} must look like 'Name: value'")
            headers[name.strip().lower()] = value.strip()
        if ticket:
            headers[policy.change_ticket_header.lower()] = ticket
        data = b""
        if body is not None:
            try:
                data = sys.stdin.buffer.read() if str(body) == "-" else body.read_bytes()
            except OSError as exc:
                raise _fail(f"--body {body}: {exc.strerror or exc}") from None
            headers.setdefault("content-type", "application/json")
        request = HttpRequest(method=method.upper(), path=raw_path, host=host,
                              query=tuple(parse_qsl(query, keep_blank_values=True)),
                              headers=headers, body=data)
        chosen, operations, classification_error, filters = _classify(product, request)
    else:
        raise _fail("give the request (--method, --path, --body) or operations (--op)")

    grants = []
    for i, spec in enumerate(grant, 1):
        acts, sep, globs = spec.partition(":")
        if not sep or not acts.strip() or not globs.strip():
            raise _fail(f"--grant {spec!r} must look like ACTIONS:GLOBS, e.g. write:docs-*")
        grants.append(GrantScope(
            grant_id=f"cli-grant-{i}", actions=[a.strip() for a in acts.split(",") if a.strip()],
            collections=[g.strip() for g in globs.split(",") if g.strip()],
            valid_from=at - timedelta(minutes=1), valid_until=at + timedelta(hours=1)))
    ctx = RequestContext(now=at, change_ticket=ticket, dpop_bound=dpop, grants=grants,
                         client_address=client_address, product=chosen,
                         method=method.upper(), path=request_path)
    result = explain(policy, identity, operations, ctx)
    # what the gateway does after the policy allowed it: a filter on a field
    # the decision masks is refused (capture/filter_guard.py)
    refused: dict[str, Any] | None = None
    mask = result.decision.obligations.mask
    if (result.decision.outcome != "deny" and mask is not None and mask.filters == "deny"
            and filters and chosen is not None):
        from capture.filter_guard import masked_filter_problem

        problem = masked_filter_problem(chosen, filters, fields=mask.fields, paths=mask.paths,
                                        detectors=mask.detectors)
        if problem is not None:
            refused = {"status": 403, "error": "masked_field_filter", "reason": problem}
    if as_json:
        data_out = result.model_dump(mode="json")
        data_out["product"] = chosen
        data_out["classification_error"] = classification_error
        data_out["token_age"] = format_duration(age)
        data_out["refused"] = refused
        _print_json(data_out)
        return
    if chosen:
        _out.print(f"product  {chosen}" + (f" {method.upper()} {path}" if path else ""))
    if classification_error:
        _out.print(f"classification: {classification_error}")
    _out.print(result.to_text())
    if refused is not None:
        _out.print(f"then refused by the gateway: {refused['status']} {refused['error']}: "
                   f"{refused['reason']}")
