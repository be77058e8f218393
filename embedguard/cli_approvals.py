"""``embedguard approvals | tickets | grants``: four-eyes decisions from the shell.

Thin: every command calls the gateway's control API with the caller's own
token (:class:`capture.approvals.client.ControlClient`); the gateway verifies
the token and enforces every rule (no self-approval, approver groups, N of M,
expiry). The token is never printed. Registered from ``embedguard/cli.py``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.text import Text

from capture.approvals.client import ControlApiError, ControlClient
from embedguard.console import plain_console, visible

__all__ = ["approvals_app", "grants_app", "register", "tickets_app"]

T = TypeVar("T")

approvals_app = typer.Typer(help="List and decide approval requests.", no_args_is_help=True)
tickets_app = typer.Typer(help="Open and inspect change tickets.", no_args_is_help=True)
grants_app = typer.Typer(help="Issue and list time-boxed (JIT) grants.", no_args_is_help=True)

# markup off: approver groups print as "[Vector-Approve]", which rich would eat;
# emoji codes off: a reason ":white_check_mark:" is shown as typed
_out = plain_console()
_err = plain_console(stderr=True)

GatewayOpt = Annotated[
    str | None,
    typer.Option("--gateway", envvar="EMBEDGUARD_GATEWAY_URL",
                 help="Gateway URL, e.g. http://127.0.0.1:8080 (env EMBEDGUARD_GATEWAY_URL)"),
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", envvar="EMBEDGUARD_TOKEN", show_default=False,
                 help="Your access token (env EMBEDGUARD_TOKEN); never printed"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (recorded with the event)")]
ActionsOpt = Annotated[
    str, typer.Option("--actions", help="Comma-separated actions, e.g. upsert,delete")
]
CollectionsOpt = Annotated[
    str, typer.Option("--collections", help="Comma-separated collection globs, e.g. 'docs-*'")
]
WindowOpt = Annotated[str, typer.Option("--window", help="How long it is valid, e.g. 2h")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    _err.print(Text.assemble(("error:", "bold red"), " ", visible(message)))
    return typer.Exit(code)


def _call(gateway: str | None, token: str | None, fn: Callable[[ControlClient], T]) -> T:
    if not gateway:
        raise _fail("no gateway: pass --gateway URL or set EMBEDGUARD_GATEWAY_URL")
    try:
        with ControlClient(gateway, token or "", verify=_verify()) as client:
            return fn(client)
    except ControlApiError as exc:
        rid = f" (request id {exc.request_id})" if exc.request_id else ""
        code = 1 if exc.status is not None and 400 <= exc.status < 500 else 2
        raise _fail(f"{exc.code}: {exc.reason}{rid}", code) from None


def _verify() -> bool | str:
    ca = os.environ.get("EMBEDGUARD_GATEWAY_CA")
    return ca if ca else True


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False))


def _ops(a: dict[str, Any]) -> str:
    parts = []
    for op in a.get("operations", [])[:4]:
        coll = op.get("collection") or "-"
        n = len(op.get("ids", [])) or op.get("vector_count") or ""
        parts.append(f"{op.get('action')} {coll}" + (f" ×{n}" if n else ""))
    more = len(a.get("operations", [])) - 4
    return ", ".join(parts) + (f" +{more}" if more > 0 else "")


def _approval_line(a: dict[str, Any]) -> str:
    """One approval per line, id first (people copy it into `approvals approve`)."""
    votes = f"{len(a.get('approvals', []))}/{a.get('min_approvals')}"
    if a.get("denials"):
        votes += f", {len(a['denials'])} deny"
    line = (f"{a['approval_id']}  {a['status']:<8} {a['kind']:<7} by "
            f"{a['requester']['subject']}  {_ops(a)}  votes {votes}  "
            f"expires {(a.get('expires_at') or '')[:19]}")
    return line + (f"\n    reason: {a['reason']}" if a.get("reason") else "")


def _show_approval(a: dict[str, Any]) -> None:
    _out.print(
        Text.assemble(visible(f"approval {a['approval_id']} ({a['kind']}): "),
                      (visible(a["status"]), "bold"))
    )
    _out.print(f"  requester  {a['requester']['subject']} ({a['requester']['issuer']})")
    _out.print(f"  requested  {a.get('requested_at')}   expires {a.get('expires_at')}")
    groups = " or ".join("[" + " and ".join(s) + "]" for s in a.get("approver_groups", []))
    _out.print(f"  approvers  {a.get('min_approvals')} of {groups}")
    if a.get("reason"):
        _out.print(f"  reason     {a['reason']}")
    if a.get("blast_radius") is not None:
        _out.print(f"  touches    about {a['blast_radius']} points")
    for op in a.get("operations", []):
        ids = op.get("ids", [])
        extra = f" ids {', '.join(ids[:10])}" + (" …" if len(ids) > 10 else "") if ids else ""
        filt = " (by filter)" if op.get("filter_present") else ""
        _out.print(f"  operation  {op.get('action')} on {op.get('collection') or '-'}{extra}{filt}")
    scope = a.get("scope")
    if scope:
        _out.print(f"  scope      {', '.join(scope['actions'])} on "
                   f"{', '.join(scope['collections'])} from {scope['valid_from']} to "
                   f"{scope['valid_until']}, max {scope['max_operations'] or 'unlimited'} "
                   f"operation(s), used {a.get('used_operations', 0)}")
    for v in a.get("approvals", []):
        _out.print(f"  approved   by {v['subject']} at {v['at']}: {v['reason']}")
    for v in a.get("denials", []):
        _out.print(f"  denied     by {v['subject']} at {v['at']}: {v['reason']}")


# -- approvals --------------------------------------------------------------------


@approvals_app.command("list")
def approvals_list(
    pending: Annotated[bool, typer.Option("--pending", help="Only pending approvals")] = False,
    gateway: GatewayOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approvals you requested or may decide."""
    items = _call(gateway, token, lambda c: c.list_approvals("pending" if pending else None))
    if as_json:
        _print_json(items)
    elif not items:
        _out.print("no pending approvals" if pending else "no approvals")
    else:
        for a in items:
            _out.print(_approval_line(a))


@approvals_app.command("show")
def approvals_show(
    approval_id: Annotated[str, typer.Argument(help="The approval id")],
    gateway: GatewayOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """What an approval asks for, and who decided it."""
    a = _call(gateway, token, lambda c: c.get_approval(approval_id))
    _print_json(a) if as_json else _show_approval(a)


def _decide(decision: str, approval_id: str, reason: str, gateway: str | None,
            token: str | None, as_json: bool) -> None:
    a = _call(gateway, token, lambda c: c.decide(approval_id, decision, reason))
    if as_json:
        _print_json(a)
        return
    verb = "approved" if decision == "approve" else "denied"
    _out.print(Text.assemble(
        visible(f"you {verb} {a['approval_id']}; it is now "), (visible(a["status"]), "bold"),
        f" ({len(a.get('approvals', []))} of {a.get('min_approvals')} approvals)"))


@approvals_app.command("approve")
def approvals_approve(
    approval_id: Annotated[str, typer.Argument(help="The approval id")],
    reason: ReasonOpt,
    gateway: GatewayOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Approve a request (you cannot approve your own)."""
    _decide("approve", approval_id, reason, gateway, token, as_json)


@approvals_app.command("deny")
def approvals_deny(
    approval_id: Annotated[str, typer.Argument(help="The approval id")],
    reason: ReasonOpt,
    gateway: GatewayOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Deny a request (any deny wins)."""
    _decide("deny", approval_id, reason, gateway, token, as_json)


# -- tickets ----------------------------------------------------------------------


@tickets_app.command("open")
def tickets_open(
    actions: ActionsOpt,
    collections: CollectionsOpt,
    window: WindowOpt,
    reason: ReasonOpt,
    max_operations: Annotated[
        int | None, typer.Option("--max-operations", min=1, help="Operations allowed in total")
    ] = None,
    gateway: GatewayOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Open a change ticket; a peer approves it with `embedguard approvals approve`."""
    t = _call(gateway, token, lambda c: c.open_ticket(
        actions=_split(actions), collections=_split(collections), window=window,
        max_operations=max_operations, reason=reason))
    if as_json:
        _print_json(t)
        return
    _out.print(f"ticket {t['approval_id']} is {t['status']}; send it as X-Change-Ticket once "
               f"a peer ran: embedguard approvals approve {t['approval_id']} --reason ...")


@tickets_app.command("show")
def tickets_show(
    ticket_id: Annotated[str, typer.Argument(help="The ticket id")],
    gateway: GatewayOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """A ticket's scope, approval and use."""
    t = _call(gateway, token, lambda c: c.get_ticket(ticket_id))
    _print_json(t) if as_json else _show_approval(t)


# -- grants -----------------------------------------------------------------------


@grants_app.command("issue")
def grants_issue(
    subject: Annotated[str, typer.Option("--subject", help="Who gets the rights")],
    actions: ActionsOpt,
    collections: CollectionsOpt,
    window: WindowOpt,
    reason: ReasonOpt,
    gateway: GatewayOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Give someone else extra rights for a while (just-in-time access)."""
    g = _call(gateway, token, lambda c: c.issue_grant(
        subject=subject, actions=_split(actions), collections=_split(collections),
        window=window, reason=reason))
    if as_json:
        _print_json(g)
        return
    _out.print(f"grant {g['grant_id']}: {g['subject']} may {', '.join(g['actions'])} on "
               f"{', '.join(g['collections'])} until {g['valid_until']}")


@grants_app.command("list")
def grants_list(
    gateway: GatewayOpt = None,
    token: TokenOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Grants (approvers see all, others their own)."""
    items = _call(gateway, token, lambda c: c.list_grants())
    if as_json:
        _print_json(items)
        return
    if not items:
        _out.print("no grants")
        return
    for g in items:
        used = f"{g['used_operations']}/{g['max_operations'] or 'unlimited'}"
        _out.print(f"{g['grant_id']}  {g['kind']:<6} {g['subject']} may "
                   f"{', '.join(g['actions'])} on {', '.join(g['collections'])} until "
                   f"{g['valid_until'][:19]}  used {used}  issued by {g['issued_by']}")


def register(app: typer.Typer) -> None:
    app.add_typer(approvals_app, name="approvals",
                  help="List and decide approval requests (four eyes).")
    app.add_typer(tickets_app, name="tickets", help="Open and inspect change tickets.")
    app.add_typer(grants_app, name="grants", help="Issue and list time-boxed grants.")
