"""Re-execute a recorded session against a target and diff the answers.

Targets come from the ``[[targets]]`` table of embedguard.toml (name, url,
production flag, the environment variable holding the credential). A URL that
no target names is treated as production: it is replayed read-only.

* Reads, searches, schema and health requests are replayed by default.
* Writes, deletes and admin requests are skipped unless ``include_writes``;
  with it, a production target is refused before anything is sent.
* Control-plane requests of the gateway (``/_embedguard/...``) never are.
* Authentication: ``token`` (sent as a bearer token), ``as_recorded_identity``
  (a token minted for each step's recorded subject and groups by the target's
  dev issuer; staging gateways only), else the target's credential variable.
* Chroma addresses a collection by a UUID that each server assigns: a step's
  recorded UUID is replaced by the target's UUID of the same collection name
  (the name the gateway resolved and recorded), looked up once per name on the
  target with the step's own credentials. A name the target does not have is
  sent as recorded, with a note saying so.

Each step reports the status then and now and a :class:`replay.diff.BodyDiff`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote
from uuid import UUID

import httpx

from capture.classify import chroma_collection_refs
from capture.types import HttpRequest
from embedguard.settings import ReplayTarget
from replay.diff import DEFAULT_TOLERANCE, BodyDiff, diff_bodies, parse_body
from replay.sessions import RecordedSession, Step

__all__ = [
    "ReplayError",
    "ReplayReport",
    "ReplayRefused",
    "StepResult",
    "replay_session",
    "resolve_target",
]


class ReplayError(Exception):
    pass


class ReplayRefused(ReplayError):
    """The replay would be unsafe (writes against production)."""


@dataclass
class StepResult:
    index: int
    request_id: str
    method: str | None
    path: str | None
    actions: list[str]
    replayed: bool
    skipped_reason: str | None = None
    status_then: int | None = None
    status_now: int | None = None
    error: str | None = None
    diff: BodyDiff | None = None
    #: the path sent, when it differs from the recorded one (a Chroma collection
    #: UUID replaced by the target's)
    path_sent: str | None = None
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "request_id": self.request_id,
            "method": self.method,
            "path": self.path,
            "actions": self.actions,
            "replayed": self.replayed,
            "skipped_reason": self.skipped_reason,
            "status_then": self.status_then,
            "status_now": self.status_now,
            "error": self.error,
            "diff": self.diff.to_json() if self.diff else None,
            "path_sent": self.path_sent,
            "note": self.note,
        }


@dataclass
class ReplayReport:
    session_id: str
    target: str
    production: bool
    include_writes: bool
    chain_ok: bool
    steps: list[StepResult] = field(default_factory=list)

    @property
    def summary(self) -> dict[str, int]:
        replayed = [s for s in self.steps if s.replayed]
        return {
            "steps": len(self.steps),
            "replayed": len(replayed),
            "skipped": len(self.steps) - len(replayed),
            "identical": sum(1 for s in replayed if s.diff and s.diff.identical),
            "different": sum(1 for s in replayed if s.diff and not s.diff.identical),
            "status_changed": sum(1 for s in replayed if s.status_then != s.status_now),
            "errors": sum(1 for s in replayed if s.error),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "target": self.target,
            "production": self.production,
            "include_writes": self.include_writes,
            "chain_ok": self.chain_ok,
            "summary": self.summary,
            "steps": [s.to_json() for s in self.steps],
        }


def resolve_target(target: str, configured: Sequence[ReplayTarget]) -> ReplayTarget:
    """A configured target by name or URL; an unknown URL is production."""
    for t in configured:
        if target == t.name or target.rstrip("/") == t.url:
            return t
    if not target.startswith(("http://", "https://")):
        names = ", ".join(t.name for t in configured) or "none configured"
        raise ReplayError(
            f"--target {target!r} is neither a URL nor a configured target ({names}); add it "
            "under [[targets]] in embedguard.toml or give http(s)://HOST:PORT"
        )
    return ReplayTarget(name=target, url=target, production=True)


def _skip_reason(step: Step, include_writes: bool) -> str | None:
    if (step.path or "").startswith("/_embedguard"):
        return "gateway control request"
    if not step.method or step.path is None:
        return "no request line recorded"
    if step.writes and not include_writes:
        return "changes state (write/delete/admin); use --include-writes"
    if step.request_body_state == "expired_or_redacted":
        return "request body expired or was redacted"
    return None


def _headers(
    step: Step,
    target: ReplayTarget,
    token: str | None,
    as_recorded_identity: bool,
    mint: Callable[[str, str, list[str]], str],
) -> dict[str, str]:
    headers = {"x-embedguard-replay-of": step.request_id}
    if step.request_body:
        headers["content-type"] = "application/json"
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    elif as_recorded_identity:
        if not target.dev_issuer:
            raise ReplayError(
                f"target {target.name!r} has no dev_issuer: --as-recorded-identity needs one "
                "(it mints tokens for recorded subjects); use --token instead"
            )
        ident = step.identity or {}
        subject = ident.get("subject") or step.subject
        if not subject:
            raise ReplayError(f"step {step.index} ({step.request_id}) has no recorded identity")
        headers["authorization"] = (
            f"Bearer {mint(target.dev_issuer, subject, list(ident.get('groups') or []))}"
        )
    elif target.credential_env:
        value = os.environ.get(target.credential_env)
        if not value:
            raise ReplayError(
                f"target {target.name!r} reads its credential from ${target.credential_env}, "
                "which is not set"
            )
        prefix = f"{target.credential_scheme} " if target.credential_scheme else ""
        headers[target.credential_header.lower()] = prefix + value
    return headers


def _mint(issuer: str, subject: str, groups: list[str]) -> str:
    from capture.devidp import mint_token

    return mint_token(issuer, subject, groups)


class _ChromaIds:
    """The target's UUID for each recorded collection name, looked up once."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client
        self.known: dict[tuple[str, str], str] = {}

    def forget(self, step: Step) -> None:
        """After an admin step (a collection created, deleted or changed), look
        its collections up again: a re-created collection has a new UUID."""
        if "admin" in step.actions:
            self.known = {k: v for k, v in self.known.items() if k[1] not in step.collections}

    def remap(self, step: Step, headers: dict[str, str]) -> tuple[str | None, str | None]:
        """(the path to send, a note); (None, None) when nothing changes."""
        if step.product != "chroma" or not step.path or not step.method:
            return None, None
        # where the collection UUID sits: the classifier's own Chroma route table
        refs = chroma_collection_refs(HttpRequest(step.method.upper(), step.path))
        if not refs:
            return None, None
        recorded = refs[0]
        idx = step.path.lower().find(f"/collections/{recorded}")
        if idx < 0:
            return None, None
        prefix = step.path[: idx + len("/collections/")]
        rest = step.path[len(prefix) + len(recorded) :]
        names = sorted(set(step.collections))
        if len(names) != 1:
            return None, (
                f"collection UUID {recorded} sent as recorded: the recording names "
                f"{len(names)} collections for it, not one"
            )
        name = names[0]
        key = (prefix, name)
        uuid = self.known.get(key)
        if uuid is None:
            # a miss is not remembered: a later step may create the collection
            uuid = self._lookup(prefix, name, headers)
            if uuid is not None:
                self.known[key] = uuid
        if uuid is None:
            return None, (
                f"the target has no collection {name!r} (or refused the lookup): sent with "
                f"the recorded UUID {recorded}"
            )
        if uuid.lower() == recorded:
            return None, None
        return f"{prefix}{uuid}{rest}", None

    def _lookup(self, prefix: str, name: str, headers: dict[str, str]) -> str | None:
        lookup = {k: v for k, v in headers.items() if k != "content-type"}
        try:
            r = self.client.get(prefix + quote(name, safe=""), headers=lookup)
        except httpx.HTTPError:
            return None
        if r.status_code != 200:
            return None
        try:
            found = r.json()
        except ValueError:
            return None
        uuid = found.get("id") if isinstance(found, dict) else None
        try:
            return str(UUID(uuid)) if isinstance(uuid, str) else None
        except ValueError:
            return None


def replay_session(
    session: RecordedSession,
    target: ReplayTarget,
    *,
    include_writes: bool = False,
    token: str | None = None,
    as_recorded_identity: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    timeout_s: float = 60.0,
    on_step: Callable[[StepResult], None] | None = None,
    mint: Callable[[str, str, list[str]], str] = _mint,
) -> ReplayReport:
    if token is not None and as_recorded_identity:
        raise ReplayError("give --token or --as-recorded-identity, not both")
    if include_writes and target.production:
        raise ReplayRefused(
            f"target {target.name!r} ({target.url}) is production (or not configured as a "
            "non-production target): writes and deletes are never replayed against it; "
            "drop --include-writes or use a staging target with production = false"
        )
    report = ReplayReport(
        session.session_id, target.url, target.production, include_writes, session.chain_ok
    )
    with httpx.Client(base_url=target.url, timeout=timeout_s, trust_env=False) as client:
        chroma = _ChromaIds(client)
        for step in session.steps:
            res = StepResult(
                step.index,
                step.request_id,
                step.method,
                step.path,
                step.actions,
                replayed=False,
                status_then=step.status,
            )
            reason = _skip_reason(step, include_writes)
            if reason is not None:
                res.skipped_reason = reason
            else:
                res.replayed = True
                try:
                    headers = _headers(step, target, token, as_recorded_identity, mint)
                    res.path_sent, res.note = chroma.remap(step, headers)
                    url = res.path_sent or step.path or "/"
                    if step.query:
                        url += "?" + step.query.lstrip("?")
                    resp = client.request(
                        step.method or "GET", url, content=step.request_body, headers=headers
                    )
                    res.status_now = resp.status_code
                    res.diff = diff_bodies(
                        parse_body(step.response_body),
                        parse_body(resp.content),
                        status_then=step.status,
                        status_now=resp.status_code,
                        tolerance=tolerance,
                    )
                    if step.response_body_state == "expired_or_redacted":
                        res.diff.identical = False
                        res.diff.note = "the recorded response body expired or was redacted"
                except httpx.HTTPError as exc:
                    res.error = f"{type(exc).__name__}: {exc}"
                chroma.forget(step)
            report.steps.append(res)
            if on_step is not None:
                on_step(res)
    return report
