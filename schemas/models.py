"""Pydantic models that mirror the Avro schemas in ``schemas/avsc``.

The ``.avsc`` files are the wire contract. These models are how Python code
builds and reads events; ``embedguard schemas check`` (``schemas.check``) fails
if a model and its schema disagree on any field, type, optionality or default.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, ClassVar, Literal
from uuid import UUID

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "EVENT_TYPES",
    "ActionClass",
    "ApprovalClaimed",
    "ApprovalDecided",
    "ApprovalExpired",
    "ApprovalRequested",
    "AuditViewed",
    "Checkpoint",
    "Envelope",
    "Event",
    "EvidenceHeld",
    "GatewayStarted",
    "GrantIssued",
    "Header",
    "IdentityResolved",
    "MaskedField",
    "Obligation",
    "Operation",
    "OperationDecision",
    "PolicyChanged",
    "PolicyDecided",
    "RequestBlocked",
    "RequestForwarded",
    "RequestReceived",
    "ResponseRecorded",
    "SessionEnded",
    "SessionStarted",
    "GENESIS_HASH",
]

#: prev_hash of the first event of every session.
GENESIS_HASH = "0" * 64
_HEX64 = re.compile(r"^[0-9a-f]{64}$")

Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
NonNegative = Annotated[int, Field(ge=0)]


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, ser_json_bytes="base64", val_json_bytes="base64"
    )


class ActionClass(enum.StrEnum):
    SEARCH = "search"
    READ = "read"
    WRITE = "write"
    DELETE = "delete"
    ADMIN = "admin"
    SCHEMA = "schema"
    HEALTH = "health"
    UNKNOWN = "unknown"


class Envelope(_Model):
    event_id: UUID
    type: str
    occurred_at: AwareDatetime
    gateway_id: str = Field(min_length=1)
    session_id: str = Field(min_length=1)
    seq: NonNegative
    stream_seq: NonNegative
    prev_hash: Hex64
    request_id: str | None = None


class Header(_Model):
    name: str
    value: str


class Operation(_Model):
    action: ActionClass
    collection: str | None = None
    database: str | None = None
    ids: list[str] = []
    ids_known: bool = True
    vector_count: NonNegative = 0
    filter_present: bool = False
    filter_sha256: str | None = None
    limit: int | None = None
    with_vectors: bool | None = None
    bulk: bool = False
    detail: str | None = None


class Obligation(_Model):
    kind: str
    params_json: str = "{}"


class OperationDecision(_Model):
    index: int
    outcome: str
    rule_id: str | None = None
    reason: str


class MaskedField(_Model):
    path: str
    kind: str


class Event(_Model):
    """Base of every event: the shared envelope plus a typed body."""

    envelope: Envelope
    #: Record name in the Avro schema; also the value of ``envelope.type``.
    avro_name: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.avro_name = cls.__name__

    @model_validator(mode="after")
    def _type_matches_class(self) -> Event:
        if self.envelope.type != self.avro_name:
            raise ValueError(
                f"envelope.type is {self.envelope.type!r} but the event is a {self.avro_name}"
            )
        return self


class SessionStarted(Event):
    subject: str
    issuer: str
    client_address: str
    token_id: str | None = None
    dpop_jkt: str | None = None
    client_session_name: str | None = None
    user_agent: str | None = None


class SessionEnded(Event):
    reason: str
    request_count: NonNegative
    started_at: AwareDatetime


class IdentityResolved(Event):
    subject: str
    issuer: str
    groups: list[str] = []
    token_id: str | None = None
    token_issued_at: AwareDatetime | None = None
    token_expires_at: AwareDatetime | None = None
    auth_method: str
    dpop_jkt: str | None = None
    client_address: str
    client_id: str | None = None


class RequestReceived(Event):
    method: str
    scheme: str = "http"
    host: str
    path: str
    query: str = ""
    headers: list[Header] = []
    body: bytes | None = None
    body_sha256: Hex64
    body_size: NonNegative
    content_type: str | None = None
    product: str
    operations: list[Operation] = []


class PolicyDecided(Event):
    outcome: Literal["allow", "deny", "require_approval"]
    matched_rules: list[str] = []
    reasons: list[str] = []
    obligations: list[Obligation] = []
    operation_decisions: list[OperationDecision] = []
    policy_sha256: str
    grant_id: str | None = None
    ticket_id: str | None = None


class ApprovalRequested(Event):
    approval_id: str
    kind: Literal["request", "ticket", "grant"]
    requester_subject: str
    requester_issuer: str
    requester_token_id: str | None = None
    operations: list[Operation] = []
    request_sha256: Hex64
    approver_groups: list[list[str]] = []
    min_approvals: int = Field(default=1, ge=1)
    expires_at: AwareDatetime
    mode: Literal["hold", "async"]
    reason: str | None = None
    blast_radius: int | None = None
    #: tickets (kind="ticket") only: the scope the approved ticket grants
    scope_actions: list[str] = []
    scope_collections: list[str] = []
    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None
    max_operations: int | None = None


class ApprovalDecided(Event):
    approval_id: str
    decision: Literal["approve", "deny"]
    approver_subject: str
    approver_issuer: str
    approver_token_id: str | None = None
    reason: str


class ApprovalExpired(Event):
    approval_id: str
    expired_at: AwareDatetime


class ApprovalClaimed(Event):
    """A gateway claims one use of an approval (an approved async re-send, a
    released hold) or ``operations`` uses of a change ticket, before the request
    goes upstream; ``released`` gives the claim of the same request back (it was
    not forwarded). Claims on one approval are ordered by the log: the claim
    admitted is the one that fits after every earlier claim not released."""

    approval_id: str
    kind: Literal["request", "ticket"]
    operations: int = Field(default=1, ge=1)
    released: bool = False
    reason: str | None = None


class GrantIssued(Event):
    grant_id: str
    kind: Literal["ticket", "jit"]
    approval_id: str | None = None
    subject: str
    actions: list[str] = []
    collections: list[str] = []
    valid_from: AwareDatetime
    valid_until: AwareDatetime
    max_operations: int | None = None
    issued_by: str
    reason: str | None = None
    #: the issuer of ``subject``: the grant is for that principal only (an
    #: OIDC ``sub`` is unique within its issuer). A ticket's grant takes its
    #: requester's issuer, a JIT grant the issuing approver's. None in grants
    #: recorded before the field existed, which no request matches.
    subject_issuer: str | None = None


class RequestForwarded(Event):
    upstream: str
    credential_ref: str | None = None
    approval_id: str | None = None
    grant_id: str | None = None
    injected_filter: bool = False


class ResponseRecorded(Event):
    status: int
    headers: list[Header] = []
    body: bytes | None = None
    body_sha256: Hex64
    body_size: NonNegative
    original_body_sha256: Hex64
    masked_fields: list[MaskedField] = []
    result_ids: list[str] = []
    upstream_error: str | None = None
    latency_us: NonNegative


class RequestBlocked(Event):
    status: int
    error: str
    reason: str
    stage: Literal["identity", "classify", "policy", "approval", "log", "upstream"]


class PolicyChanged(Event):
    old_sha256: str | None = None
    new_sha256: str
    diff: str
    source: str
    changed_by: str | None = None


class GatewayStarted(Event):
    config_sha256: str
    version: str
    listen: list[str] = []
    upstreams: list[str] = []
    policy_sha256: str | None = None
    pid: int


class Checkpoint(Event):
    origin: str
    tree_size: NonNegative
    root_hash: str
    signed_note: str
    key_id: str


class AuditViewed(Event):
    viewer_subject: str
    viewer_issuer: str | None = None
    what: str
    target: str
    filters_json: str = "{}"
    row_count: int | None = None


class EvidenceHeld(Event):
    """An exported evidence bundle holds its bodies until ``held_until``; large
    holds come in ``parts`` events sharing ``hold_id``."""

    hold_id: str = Field(min_length=1)
    bundle_sha256: Hex64
    bundle_name: str
    held_by: str = Field(min_length=1)
    held_by_issuer: str | None = None
    held_until: AwareDatetime
    reason: str | None = None
    part: NonNegative = 0
    parts: int = Field(default=1, ge=1)
    body_count: NonNegative = 0
    session_count: NonNegative = 0
    event_count: NonNegative = 0
    body_sha256s: list[Hex64] = []
    session_ids: list[str] = []


#: Every event type by its name (``envelope.type``).
EVENT_TYPES: dict[str, type[Event]] = {
    cls.avro_name: cls
    for cls in (
        SessionStarted,
        SessionEnded,
        IdentityResolved,
        RequestReceived,
        PolicyDecided,
        ApprovalRequested,
        ApprovalDecided,
        ApprovalExpired,
        ApprovalClaimed,
        GrantIssued,
        RequestForwarded,
        ResponseRecorded,
        RequestBlocked,
        PolicyChanged,
        GatewayStarted,
        Checkpoint,
        AuditViewed,
        EvidenceHeld,
    )
}
