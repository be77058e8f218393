"""Policy: which caller may do which operation on which collection, on what
conditions, with what obligations.

Pure: :func:`parse_policy` turns YAML text into a validated :class:`Policy`
(or a :class:`PolicyError` whose lines read ``FILE:LINE: where: what is wrong —
what to do``); :func:`evaluate` turns a policy, an :class:`~capture.types.Identity`,
the classified operations and a :class:`RequestContext` (which carries the
clock) into a :class:`Decision`. :func:`explain` does the same and also says,
for every rule, why it did or did not apply. Only :func:`load_policy` reads a
file.

The file
--------
::

    version: 1
    change_ticket_header: X-Change-Ticket     # the header a change ticket arrives in
    approvers:                                # default for require_approval rules
      groups_any_of: [[Vector-Approve]]       # OR of AND-sets of IdP groups
      min_approvals: 1
      expires_after: 30m
      mode: hold                              # hold the request | async
    rules:
      - id: ds-search                         # unique; shown in events and errors
        description: Data scientists search
        effect: allow                         # allow | deny | require_approval
        subjects: {groups: [Vector-Read]}     # groups, users, service_accounts, authenticated
        actions: [search]                     # search read write delete admin schema health | "*"
        collections: ["*"]                    # globs: * ? [abc] [!abc]
        conditions: {max_limit: 100}
        obligations:
          mask: {detectors: [email], mode: placeholder}

Rules
~~~~~
* ``subjects`` -- a rule applies to a caller in any of ``groups``, or whose
  subject (``sub``) is one of ``users`` or ``service_accounts`` (the two lists
  behave the same; the split documents intent), or to every verified caller
  with ``authenticated: true``. ``issuer`` optionally restricts all of that to
  tokens from one issuer. Names are compared exactly.
* ``actions`` -- action classes; ``"*"`` means all of them *except* ``unknown``.
  ``unknown`` cannot be named: an unclassified operation is never allowed.
* ``collections`` -- globs over the operation's collection (``*`` matches any
  characters, ``/`` included; ``?`` one; ``[a-z]`` and ``[!x]`` classes). An
  operation that spans every collection (the classifier's collection ``*``, e.g.
  Weaviate ``Explore``) is matched only by the glob ``*``. An operation with
  *no* collection (health, listing collections, cluster admin) is matched only
  by a rule with ``no_collection: true``; globs never match it.
  ``databases`` optionally adds globs over the operation's database; an
  operation without a database then does not match.
* ``conditions`` (allow and require_approval rules only):
  ``max_ids`` (ids or points per *request*, summed over the operations the rule
  matches; an operation that selects by filter or is a bulk import has unknown
  ids and fails the condition), ``require_change_ticket`` (and optionally
  ``change_ticket_pattern``, a regular expression the whole ticket must match,
  which implies it), ``time_window`` (``days``, ``start``, ``end``,
  ``timezone``; ``start`` after ``end`` wraps past midnight and then belongs to
  the day it starts on; ``end`` may be ``24:00``), ``max_token_age`` (now minus
  the token's ``iat``), ``max_token_lifetime`` (``exp`` minus ``iat``),
  ``require_dpop``, ``max_limit`` (the most results a search or read
  operation can return: its limit/top_k, times the number of queries when one
  operation carries several -- Chroma ``query_embeddings``, Milvus search
  ``data``/``ids`` and each ``hybrid_search`` part; a read by ids counts its
  ids; no limit at all fails), ``client_networks``
  (CIDRs). Durations are written ``45s``, ``15m``, ``1h30m``, ``2d``.
* ``obligations`` (allow and require_approval rules only): ``mask``
  (``detectors`` and ``fields`` apply inside the response's user data, i.e. the
  classifier's ``user_data_paths``; ``paths`` are absolute response paths whose
  whole value is masked, i.e. ``mask_document(field_paths=...)``; ``mode`` is
  ``placeholder`` or ``hmac``; ``filters`` is ``deny``, the default: a
  request whose own filter names a masked field or compares with a value of a
  masked kind is refused, see :mod:`capture.filter_guard`, or ``allow``; see
  :mod:`capture.masking`),
  ``strip_vectors``, ``inject_filter`` (one filter per product, see
  :mod:`capture.filters`). A rule with ``inject_filter`` may only allow search,
  read, schema and health, because a row filter cannot restrict writes.
* ``approvers`` (require_approval rules only) overrides the top-level
  ``approvers`` key by key.

Unknown keys, wrong types, bad globs, durations, time windows, regular
expressions, networks and filter templates, duplicate rule ids and duplicate
YAML keys are all errors, reported with their line.

Semantics
---------
Each operation of a request is decided on its own:

1. A rule *matches* an operation when its subjects, actions, collections (and
   databases) all match. An ``unknown`` operation matches no rule.
2. Every matching rule contributes:

   * a ``deny`` rule contributes deny (deny rules take no conditions, so they
     always apply);
   * an allow or require_approval rule whose conditions all hold contributes
     its effect;
   * an allow or require_approval rule with a failing condition contributes
     **deny**, with a reason naming the condition ("rule ops-write needs an
     X-Change-Ticket header"). Conditions are therefore obligations on everyone
     a rule matches: being in a second, more lenient group does not lift them.
     Scope rules narrowly.

3. deny beats require_approval beats allow. No contribution at all is the
   default deny: "no rule allows <action> on <collection> for <caller>".

The request's outcome is deny if any operation is denied, else require_approval
if any needs approval, else allow; a request with no operations is denied. The
obligations of every rule that contributed allow or require_approval are merged
and apply to the whole request (union of mask detectors, fields and paths; the
placeholder mode wins over hmac because it reveals less; vectors stripped if
any rule says so; every row filter is ANDed in). When the context names the
product and path, an operation that must get a row filter the endpoint cannot
take (a read by id, GraphQL) is denied here, with the reason. Approvers of
several require_approval rules are merged so that each approval satisfies all
of them. ``evaluate`` never raises: an internal error becomes a deny.

``evaluate`` compiles a policy's rules once and remembers, per :class:`Policy`
object, which rules match and whole decisions, keyed by everything a decision
is made of (conditions are checked on every request; see ``_decide``). The
decisions it returns are shared: treat them as read-only.

A require_approval decision keeps status 403 and the error
``approval_required``; the gateway's approval gate (:mod:`capture.approval_gate`)
holds such a request for the decision or answers 202 (async mode).

Change tickets and grants come in through :class:`RequestContext`: the gateway
verifies the ticket the request names against the approvals service and passes
the verdict (:class:`TicketCheck`); a rule that needs a change ticket then holds
only for a valid one (the pattern stays an extra format check). Active
time-boxed grants (:class:`GrantScope`) turn require_approval, or no matching
rule, into allow for the operations they cover; they never lift a deny rule or a
failing condition. The decision names the grant and ticket it relied on
(``grant_id``, ``ticket_id``).
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import re
import types
import typing
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeAlias
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from capture import filters as _filters
from capture import masking as _masking
from capture.types import Identity, Product
from schemas.models import ActionClass, Obligation, Operation, OperationDecision

__all__ = [
    "ACTIONS",
    "ApprovalRequirement",
    "ApproverOverride",
    "ApproverSpec",
    "AppliedRowFilter",
    "GrantScope",
    "Conditions",
    "Decision",
    "Effect",
    "Explanation",
    "MaskSpec",
    "Obligations",
    "OperationTrace",
    "OperationVerdict",
    "Outcome",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "RequestContext",
    "RequestObligations",
    "RowFilter",
    "Rule",
    "RuleTrace",
    "Subjects",
    "TicketCheck",
    "TimeWindow",
    "evaluate",
    "explain",
    "format_duration",
    "load_policy",
    "parse_duration",
    "parse_policy",
    "policy_diff",
    "policy_sha256",
]

Effect: TypeAlias = Literal["allow", "deny", "require_approval"]
Outcome: TypeAlias = Literal["allow", "deny", "require_approval"]
#: Action classes a rule may name (``unknown`` is never allowed).
ACTIONS: Final[tuple[str, ...]] = tuple(a.value for a in ActionClass if a != ActionClass.UNKNOWN)
#: Action classes whose results a row filter restricts.
_ROW_ACTIONS: Final = frozenset({ActionClass.SEARCH, ActionClass.READ})
_FILTERABLE_RULE_ACTIONS: Final = frozenset({"search", "read", "schema", "health"})
#: Operations that carry several queries in one, each answered with up to
#: ``limit`` results: product → operation detail → (the request's name for the
#: limit, whether ``ids`` are queries too). The classifiers record the
#: per-query limit as ``limit`` and the query vectors as ``vector_count``; a
#: Milvus search may name stored entities by id to search with instead.
#: Products not listed split a batch into one operation per query (Qdrant,
#: Pinecone ``queries[]``) or fold a per-group size into ``limit`` (Qdrant
#: groups and matrix).
_MULTI_QUERY: Final[dict[str, dict[str, tuple[str, bool]]]] = {
    "chroma": {"query": ("n_results", False)},
    "milvus": {"search": ("limit", True), "hybrid_search": ("limit", False)},
}
_DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_POLICY_BYTES: Final = 1024 * 1024
MAX_TICKET_LENGTH: Final = 256
_MAX_APPROVER_SETS: Final = 64


# ------------------------------------------------------------------------ errors


@dataclass(frozen=True)
class PolicyIssue:
    """One problem in a policy file."""

    file: str
    line: int | None
    where: str
    message: str

    def __str__(self) -> str:
        at = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{at}: {self.where}: {self.message}" if self.where else f"{at}: {self.message}"


class PolicyError(ValueError):
    """The policy file is invalid. ``str()`` has one ``FILE:LINE: ...`` line per issue."""

    def __init__(self, issues: Sequence[PolicyIssue]) -> None:
        self.issues: list[PolicyIssue] = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


# ------------------------------------------------------------- small value types

_DURATION = re.compile(r"(?:(\d{1,7})d)?(?:(\d{1,8})h)?(?:(\d{1,9})m)?(?:(\d{1,10})s)?")
_MAX_DURATION = timedelta(days=3660)


def parse_duration(text: object) -> timedelta:
    """``"1h30m"`` -> 90 minutes. Units d, h, m, s in that order. (A timedelta,
    from code rather than YAML, passes through if it is positive.)"""
    if isinstance(text, timedelta) and timedelta(0) < text <= _MAX_DURATION:
        return text
    if not isinstance(text, str):
        raise ValueError(
            f"{_show(text)} is not a duration — write it as text like 15m, 1h30m or 45s"
        )
    m = _DURATION.fullmatch(text.strip())
    if not text.strip() or m is None:
        raise ValueError(f"{text!r} is not a duration — write it like 15m, 1h30m, 45s or 2d")
    d, h, mi, s = (int(g) if g else 0 for g in m.groups())
    value = timedelta(days=d, hours=h, minutes=mi, seconds=s)
    if value <= timedelta(0):
        raise ValueError(f"{text!r} is zero — use a positive duration like 15m")
    if value > _MAX_DURATION:
        raise ValueError(f"{text!r} is longer than ten years — use a shorter duration")
    return value


def format_duration(value: timedelta) -> str:
    """90 minutes -> ``"1h30m"``; the inverse of :func:`parse_duration`."""
    total = max(0, int(value.total_seconds()))
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            parts.append(f"{total // size}{unit}")
            total %= size
    return "".join(parts) or "0s"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]


@lru_cache(maxsize=1024)
def _glob_regex(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                raise ValueError(f"glob {pattern!r} has '**' — use a single * (it already "
                                 "matches any characters, '/' included)")
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            j = i + 1
            negate = j < n and pattern[j] in "!^"
            if negate:
                j += 1
            k = pattern.find("]", j)
            if k == -1:
                raise ValueError(f"glob {pattern!r} has an unclosed '[' — close it with ']'")
            body = pattern[j:k]
            if not body:
                raise ValueError(f"glob {pattern!r} has an empty '[]' — list characters in it")
            chars = []
            for idx, ch in enumerate(body):
                is_range = (
                    ch == "-" and 0 < idx < len(body) - 1
                    and body[idx - 1] != "-" and body[idx + 1] != "-"
                )
                chars.append("-" if is_range else re.escape(ch))
            out.append("[" + ("^" if negate else "") + "".join(chars) + "]")
            i = k
        elif c == "]":
            raise ValueError(f"glob {pattern!r} has a ']' without '[' — remove it or add '['")
        else:
            out.append(re.escape(c))
        i += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return re.compile("".join(out), re.DOTALL | (re.IGNORECASE if ignore_case else 0))
    except (re.error, FutureWarning) as exc:
        raise ValueError(f"glob {pattern!r} is invalid ({exc}) — fix the character class") \
            from None


def _check_glob(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{_show(value)} is not a glob — write a non-empty quoted pattern "
                         "like \"docs-*\"")
    if value != value.strip():
        raise ValueError(f"glob {value!r} has leading or trailing spaces — remove them")
    _glob_regex(value)
    return value


def _glob_match(pattern: str, name: str, restrictive: bool = False) -> bool:
    """Does ``pattern`` match the collection (or database) ``name``?

    ``name`` ``*`` is an operation over every collection: an allow rule must
    name ``*`` to allow it, but a deny or require_approval rule on any glob
    matches it (the operation reaches the collections the rule protects). A
    restrictive rule also matches names ignoring case: Weaviate capitalises
    class names (``restricted*`` would never match ``RestrictedHr``), and
    denying more than the glob's exact case can only refuse more."""
    if name == "*":
        return restrictive or pattern == "*"
    return _glob_regex(pattern, restrictive).fullmatch(name) is not None


def _check_action(value: object) -> str:
    if value == "unknown":
        raise ValueError("'unknown' cannot be named: unclassified operations are always "
                         "denied — remove it")
    if not isinstance(value, str) or (value != "*" and value not in ACTIONS):
        raise ValueError(f"{_show(value)} is not an action — use one of "
                         f"{', '.join(ACTIONS)}, or \"*\" for all of them")
    return value


def _check_network(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{_show(value)} is not a network — write a CIDR like 10.0.0.0/8")
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a network ({exc}) — write a CIDR like "
                         "10.0.0.0/8 with no host bits set") from None
    return value


def _check_regex(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{_show(value)} is not a regular expression — quote it, "
                         "e.g. '^CHG-[0-9]+$'")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            re.compile(value)
    except (re.error, FutureWarning, OverflowError, RecursionError) as exc:
        raise ValueError(f"{value!r} is not a valid regular expression ({exc}) — fix it") \
            from None
    return value


def _check_mask_path(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{_show(value)} is not a path — write e.g. data[].email")
    try:
        _masking.parse_path(value)
    except _masking.MaskingError as exc:
        raise ValueError(str(exc)) from None
    return value


def _check_clock(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d|24:00", value):
        raise ValueError(f"{_show(value)} is not a time of day — write it quoted as "
                         "\"HH:MM\" (00:00 to 24:00)")
    return value


def _check_version(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(f"{_show(value)} is not a version — write version: 1")
    return value


def _groups_any_of(value: object) -> object:
    # a bare group name is an AND-set of one: [A, [B, C]] = A or (B and C)
    if isinstance(value, list):
        return [[item] if isinstance(item, str) else item for item in value]
    return value


def _clock_seconds(clock: str) -> int:
    hh, mm = clock.split(":")
    return int(hh) * 3600 + int(mm) * 60


def _show(value: object) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


ActionItem = Annotated[str, BeforeValidator(_check_action)]
Glob = Annotated[str, BeforeValidator(_check_glob)]
Network = Annotated[str, BeforeValidator(_check_network)]
Regex = Annotated[str, BeforeValidator(_check_regex)]
MaskPath = Annotated[str, BeforeValidator(_check_mask_path)]
Clock = Annotated[str, BeforeValidator(_check_clock)]
Name = Annotated[str, Field(strict=True, min_length=1)]
PositiveInt = Annotated[int, Field(strict=True, ge=1)]
RuleId = Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
HeaderName = Annotated[str, Field(strict=True, pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")]
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Detector = Literal["email", "phone", "card", "national_id"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ------------------------------------------------------------------------ models


class ApproverSpec(_Model):
    """Who may approve, how many, and how long a request waits."""

    groups_any_of: Annotated[
        list[Annotated[list[Name], Field(min_length=1)]],
        BeforeValidator(_groups_any_of),
        Field(min_length=1),
    ]
    min_approvals: PositiveInt = 1
    expires_after: Duration = timedelta(minutes=30)
    mode: Literal["hold", "async"] = "hold"


class ApproverOverride(_Model):
    """A rule's changes to the top-level ``approvers`` (unset keys are inherited)."""

    groups_any_of: Annotated[
        list[Annotated[list[Name], Field(min_length=1)]] | None,
        BeforeValidator(_groups_any_of),
        Field(min_length=1),
    ] = None
    min_approvals: PositiveInt | None = None
    expires_after: Duration | None = None
    mode: Literal["hold", "async"] | None = None


class Subjects(_Model):
    groups: list[Name] = []
    users: list[Name] = []
    service_accounts: list[Name] = []
    authenticated: Annotated[bool, Field(strict=True)] = False
    issuer: Name | None = None

    def matches(self, identity: Identity) -> bool:
        if self.issuer is not None and identity.issuer != self.issuer:
            return False
        if self.authenticated:
            return True
        return (
            not identity.groups.isdisjoint(self.groups)
            or identity.subject in self.users
            or identity.subject in self.service_accounts
        )

    def describe(self) -> str:
        if self.authenticated:
            who = "any authenticated caller"
        else:
            parts = []
            if self.groups:
                parts.append("groups " + ", ".join(self.groups))
            if self.users:
                parts.append("users " + ", ".join(self.users))
            if self.service_accounts:
                parts.append("service accounts " + ", ".join(self.service_accounts))
            who = "; ".join(parts) or "nobody"
        return who + (f" (issuer {self.issuer})" if self.issuer else "")


class TimeWindow(_Model):
    days: Annotated[list[Day], Field(min_length=1)] = ["mon", "tue", "wed", "thu", "fri",
                                                       "sat", "sun"]
    start: Clock
    end: Clock
    timezone: Name = "UTC"

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} — use an IANA name like "
                             "Europe/Berlin or UTC") from None
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> TimeWindow:
        if self.start == "24:00":
            raise ValueError("start is 24:00 — a window starts at 00:00 to 23:59")
        if _clock_seconds(self.start) == _clock_seconds(self.end):
            raise ValueError(f"start and end are both {self.start} — for the whole day write "
                             "start: \"00:00\" and end: \"24:00\"")
        return self

    def contains(self, now: datetime) -> bool:
        local = now.astimezone(ZoneInfo(self.timezone))
        t = local.hour * 3600 + local.minute * 60 + local.second
        start, end = _clock_seconds(self.start), _clock_seconds(self.end)
        today = _DAYS[local.weekday()]
        if start < end:
            return today in self.days and start <= t < end
        yesterday = _DAYS[(local.weekday() - 1) % 7]
        return (today in self.days and t >= start) or (yesterday in self.days and t < end)

    def describe(self) -> str:
        days = "every day" if len(set(self.days)) == 7 else ",".join(self.days)
        return f"{days} {self.start}–{self.end} {self.timezone}"


class Conditions(_Model):
    max_ids: PositiveInt | None = None
    require_change_ticket: Annotated[bool, Field(strict=True)] = False
    change_ticket_pattern: Regex | None = None
    time_window: TimeWindow | None = None
    max_token_age: Duration | None = None
    max_token_lifetime: Duration | None = None
    require_dpop: Annotated[bool, Field(strict=True)] = False
    max_limit: PositiveInt | None = None
    client_networks: Annotated[list[Network], Field(min_length=1)] | None = None

    def is_empty(self) -> bool:
        return self == Conditions()

    @property
    def needs_ticket(self) -> bool:
        return self.require_change_ticket or self.change_ticket_pattern is not None


class MaskSpec(_Model):
    """Mask response fields (see :func:`capture.masking.mask_document`).

    ``detectors`` and ``fields`` act inside the classifier's user-data paths
    (``mask_document(paths=user_data_paths, detectors=..., fields=...)``);
    ``paths`` are absolute response paths masked whole (``field_paths=``)."""

    detectors: list[Detector] = []
    fields: list[Name] = []
    paths: list[MaskPath] = []
    mode: Literal["placeholder", "hmac"] = "placeholder"
    #: ``deny``: a request whose own filter names a masked field, or compares
    #: with a value of a masked kind, is refused (it could confirm masked values
    #: by guessing; see capture/filter_guard.py). ``allow`` waives that.
    filters: Literal["deny", "allow"] = "deny"

    @model_validator(mode="after")
    def _something(self) -> MaskSpec:
        if not (self.detectors or self.fields or self.paths):
            raise ValueError("mask names nothing — add detectors (email, phone, card, "
                             "national_id), fields or paths")
        return self


class RowFilter(_Model):
    """One row filter per product; the gateway ANDs the request's product's form
    into every filter of a search or read (see :mod:`capture.filters`)."""

    qdrant: dict[str, Any] | None = None
    chroma: dict[str, Any] | None = None
    pinecone: dict[str, Any] | None = None
    weaviate: dict[str, Any] | None = None
    milvus: Annotated[str, Field(strict=True)] | None = None

    @field_validator("qdrant", "chroma", "pinecone", "weaviate", "milvus")
    @classmethod
    def _template(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            product: Product = info.field_name  # type: ignore[assignment]
            problems = _filters.check_template(value, product)
            if problems:
                raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _some_product(self) -> RowFilter:
        if all(getattr(self, p) is None for p in ("qdrant", "chroma", "pinecone", "weaviate",
                                                   "milvus")):
            raise ValueError("inject_filter has no filter — add one for qdrant, chroma, "
                             "pinecone, weaviate or milvus")
        return self

    def for_product(self, product: Product) -> _filters.JsonFilter | None:
        value: _filters.JsonFilter | None = getattr(self, product, None)
        return value


class Obligations(_Model):
    mask: MaskSpec | None = None
    strip_vectors: Annotated[bool, Field(strict=True)] = False
    inject_filter: RowFilter | None = None

    def is_empty(self) -> bool:
        return self == Obligations()


class Rule(_Model):
    id: RuleId
    description: Annotated[str, Field(strict=True)] = ""
    effect: Effect
    subjects: Subjects
    actions: Annotated[list[ActionItem], Field(min_length=1)]
    collections: list[Glob] = []
    databases: list[Glob] | None = None
    no_collection: Annotated[bool, Field(strict=True)] = False
    conditions: Conditions = Conditions()
    obligations: Obligations = Obligations()
    approvers: ApproverOverride | None = None

    def allows_action(self, action: ActionClass) -> bool:
        if action == ActionClass.UNKNOWN:
            return False
        return "*" in self.actions or action.value in self.actions


class Policy(_Model):
    version: Annotated[Literal[1], BeforeValidator(_check_version)]
    description: Annotated[str, Field(strict=True)] = ""
    change_ticket_header: HeaderName = "X-Change-Ticket"
    approvers: ApproverSpec | None = None
    rules: list[Rule]

    _source: str = PrivateAttr(default="<policy>")
    _sha256: str = PrivateAttr(default="")
    #: the rules compiled for evaluation, with what it remembers (see _compiled)
    _compiled: Any = PrivateAttr(default=None)

    @property
    def source(self) -> str:
        return self._source

    @property
    def sha256(self) -> str:
        # read straight from the private values: pydantic's __getattr__ for a
        # private attribute cost more than the rest of a remembered decision
        sha: str = _private(self)["_sha256"]
        return sha

    def rule(self, rule_id: str) -> Rule | None:
        return next((r for r in self.rules if r.id == rule_id), None)

    def approvers_for(self, rule: Rule) -> ApproverSpec | None:
        """The approvers of a require_approval rule: its own keys over the defaults."""
        if rule.effect != "require_approval":
            return None
        base = self.approvers
        override = rule.approvers or ApproverOverride()
        groups = override.groups_any_of or (base.groups_any_of if base else None)
        if not groups:
            return None
        return ApproverSpec(
            groups_any_of=groups,
            min_approvals=override.min_approvals or (base.min_approvals if base else 1),
            expires_after=override.expires_after
            or (base.expires_after if base else timedelta(minutes=30)),
            mode=override.mode or (base.mode if base else "hold"),
        )


# ----------------------------------------------------------------------- loading


def policy_sha256(text: str) -> str:
    """The hash recorded in PolicyDecided, PolicyChanged and GatewayStarted."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def policy_diff(old_text: str | None, new_text: str, *, name: str = "policy.yaml") -> str:
    """A unified diff from the old to the new policy text (empty when equal)."""

    def lines(text: str) -> list[str]:
        out = text.splitlines(keepends=True)
        if out and not out[-1].endswith(("\n", "\r")):
            out[-1] += "\n\\ No newline at end of file\n"
        return out

    return "".join(difflib.unified_diff(lines(old_text or ""), lines(new_text),
                                        fromfile=f"a/{name}", tofile=f"b/{name}"))


def load_policy(path: str | Path) -> Policy:
    """Read and parse a policy file; every problem is a :class:`PolicyError`."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise PolicyError([PolicyIssue(source, None, "", f"cannot read the policy file "
                                       f"({exc.strerror or exc}) — check the path")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise PolicyError([PolicyIssue(source, line, "", "the file is not UTF-8 text — save "
                                       "it as UTF-8")]) from None
    return parse_policy(text, source)


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Validate policy YAML. Raises :class:`PolicyError` listing every problem."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    def fail(line: int | None, message: str, where: str = "") -> PolicyError:
        return PolicyError([PolicyIssue(source, line, where, message)])

    if len(text.encode("utf-8")) > MAX_POLICY_BYTES:
        raise fail(1, f"the file is larger than {MAX_POLICY_BYTES // 1024} KiB — split or "
                      "shorten it")
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    try:
        doc = yaml.load(text)
    except MarkedYAMLError as exc:
        raise fail(*_yaml_error(exc)) from None
    except YAMLError as exc:
        raise fail(1, f"YAML error: {exc} — fix the YAML syntax") from None
    except RecursionError:
        raise fail(1, "the YAML nests too deeply — flatten it") from None
    if doc is None:
        raise fail(1, "the policy is empty — start with `version: 1` and `rules:`")
    if not isinstance(doc, dict):
        raise fail(1, f"the policy must be a mapping of keys, not {_show(_plain_leaf(doc))} "
                      "— start with `version: 1` and `rules:`")

    issues: list[PolicyIssue] = []
    try:
        data = _to_plain(doc, (), issues, source, [_MAX_VALUES])
    except _TooManyValues:
        raise fail(1, f"the policy expands to more than {_MAX_VALUES:,} values (nested YAML "
                      "aliases?) — write it out without aliases of aliases") from None
    if issues:
        raise PolicyError(issues)
    try:
        policy = Policy.model_validate(data)
    except (ValidationError, RecursionError, OverflowError, TypeError) as exc:
        if not isinstance(exc, ValidationError):  # never let a bad file crash a reload
            raise fail(None, f"the policy cannot be validated ({type(exc).__name__}: {exc}) "
                             "— simplify the offending value") from None
        errors = exc.errors()
        # a misspelt key ("efect") also makes the real one missing; report it once
        misspelt = {(tuple(e["loc"][:-1]), s) for e in errors if e["type"] == "extra_forbidden"
                    for s in _suggest(tuple(e["loc"]))}
        for err in errors:
            loc = tuple(err["loc"])
            if err["type"] == "missing" and (loc[:-1], loc[-1]) in misspelt:
                continue
            line, where = _locate(doc, loc)
            issues.append(PolicyIssue(source, line, where, _describe(err, loc)))
        raise PolicyError(_sorted(issues)) from None
    for loc, message in _semantic_problems(policy):
        line, where = _locate(doc, loc)
        issues.append(PolicyIssue(source, line, where, message))
    if issues:
        raise PolicyError(_sorted(issues))
    policy._source = source
    policy._sha256 = policy_sha256(text)
    return policy


_UNCLOSED: Final = (("flow sequence", "this [ list is not closed", "close it with ]"),
                    ("flow mapping", "this { mapping is not closed", "close it with }"),
                    ("quoted scalar", "this quoted text is not closed",
                     "close the quote"))


def _yaml_error(exc: Any) -> tuple[int | None, str]:
    """The line and message for a ruamel syntax error. An unclosed bracket or
    quote is blamed on the line where it opens; anything else on the line where
    the parser gave up."""
    problem = str(exc.problem or "").strip()
    context = str(exc.context or "").strip()
    p_line = exc.problem_mark.line + 1 if exc.problem_mark is not None else None
    c_line = exc.context_mark.line + 1 if exc.context_mark is not None else None
    if "duplicate key" in problem:
        return p_line, f"YAML {problem} — each key may appear once; remove one"
    for word, what, fix in _UNCLOSED:
        if word in context and c_line is not None:
            return c_line, f"YAML syntax error: {what} ({problem} on line {p_line}) — {fix}"
    where = f" ({context} on line {c_line})" if context and c_line else ""
    return p_line or c_line, (f"YAML syntax error: {problem}{where} — fix the indentation or "
                              "quoting on this line")


def _sorted(issues: list[PolicyIssue]) -> list[PolicyIssue]:
    unique = list(dict.fromkeys(issues))
    return sorted(unique, key=lambda i: (i.line or 0))


def _plain_leaf(node: Any) -> Any:
    from ruamel.yaml.scalarbool import ScalarBoolean

    if isinstance(node, ScalarBoolean | bool):
        return bool(node)
    if isinstance(node, str):
        return str(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    return node


#: the most values a policy may expand to: an alias is expanded where it is
#: used, so nested aliases of a few hundred bytes grow tenfold per level (a
#: "billion laughs" file stalled a reload for as long as it took to expand)
_MAX_VALUES = 100_000


class _TooManyValues(Exception):
    pass


def _to_plain(node: Any, loc: tuple[str | int, ...], issues: list[PolicyIssue],
              source: str, budget: list[int]) -> Any:
    """ruamel's round-trip nodes as plain JSON-like values; other YAML types
    (dates, tagged values, binary) are errors. ``budget``: values left to
    expand (:data:`_MAX_VALUES`)."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooManyValues
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            if not isinstance(key, str):
                issues.append(PolicyIssue(source, _line_of(node, key), _render_loc(loc),
                                          f"key {_show(_plain_leaf(key))} is not text — "
                                          "quote it"))
                continue
            if _is_unsupported(value):
                issues.append(PolicyIssue(source, _line_of(node, key),
                                          _render_loc((*loc, key)),
                                          f"unsupported YAML value ({type(value).__name__}) — "
                                          "quote it as text"))
                continue
            out[str(key)] = _to_plain(value, (*loc, str(key)), issues, source, budget)
        return out
    if isinstance(node, list):
        items = []
        for i, value in enumerate(node):
            if _is_unsupported(value):
                issues.append(PolicyIssue(source, _line_of(node, i), _render_loc((*loc, i)),
                                          f"unsupported YAML value ({type(value).__name__}) — "
                                          "quote it as text"))
                continue
            items.append(_to_plain(value, (*loc, i), issues, source, budget))
        return items
    return _plain_leaf(node)


def _is_unsupported(node: Any) -> bool:
    if isinstance(node, dict | list):
        return False
    leaf = _plain_leaf(node)
    return not (leaf is None or type(leaf) in (str, int, float, bool))


def _line_of(node: Any, key: Any) -> int | None:
    lc: Any = getattr(node, "lc", None)
    try:
        if isinstance(node, list):
            return int(lc.item(key)[0]) + 1
        return int(lc.key(key)[0]) + 1
    except (AttributeError, KeyError, TypeError, IndexError):
        return None


def _locate(doc: Any, loc: tuple[Any, ...]) -> tuple[int, str]:
    """The YAML line of a pydantic error location, and the location as text.

    Components that do not exist in the YAML (union tags, a missing key) are
    skipped for the line; a missing key is still named in the text."""
    node: Any = doc
    line = 1
    shown: list[str | int] = []
    for comp in loc:
        try:
            if isinstance(node, dict) and isinstance(comp, str) and comp in node:
                line = _line_of(node, comp) or line
                node = node[comp]
                shown.append(comp)
                continue
            if isinstance(node, list) and isinstance(comp, int) and 0 <= comp < len(node):
                line = _line_of(node, comp) or line
                node = node[comp]
                shown.append(comp)
                continue
        except (AttributeError, KeyError, TypeError, IndexError):
            pass
        if isinstance(comp, str) and isinstance(node, dict) and comp.isidentifier():
            shown.append(comp)  # a missing key: name it, keep the parent's line
            node = None
    return line, _render_loc(tuple(shown))


def _render_loc(loc: tuple[str | int, ...]) -> str:
    out = ""
    for comp in loc:
        out += f"[{comp}]" if isinstance(comp, int) else (f".{comp}" if out else comp)
    return out


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    tp: Any = Policy
    for comp in loc:
        if isinstance(comp, int):
            tp = _unwrap(tp, list)
            continue
        model = _unwrap(tp, BaseModel)
        if model is None or comp not in model.model_fields:
            return None
        tp = model.model_fields[comp].annotation
    model = _unwrap(tp, BaseModel)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(tp: Any, want: type) -> Any:
    """The list item type (want=list) or the model class (want=BaseModel) in ``tp``."""
    seen = 0
    while seen < 8:
        seen += 1
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if args else None
        elif want is list and origin is list:
            return typing.get_args(tp)[0]
        elif want is BaseModel and isinstance(tp, type) and issubclass(tp, BaseModel):
            return tp
        else:
            return None
    return None


def _suggest(loc: tuple[Any, ...]) -> list[str]:
    """The allowed key closest to an unknown one at ``loc`` (empty if none is close)."""
    model = _model_at(loc[:-1])
    if model is None or not loc or not isinstance(loc[-1], str):
        return []
    return difflib.get_close_matches(loc[-1], list(model.model_fields), n=1)


_KEY_HINTS: Final = {
    "version": "add `version: 1` at the top",
    "rules": "add `rules:` with a list of rules (an empty list denies everything)",
    "id": "add a unique id, e.g. `id: ds-search`",
    "effect": "add `effect: allow`, `deny` or `require_approval`",
    "subjects": "add `subjects:` with groups, users, service_accounts or authenticated: true",
    "actions": "add `actions:`, e.g. [search, read]",
    "groups_any_of": "add `groups_any_of: [[Vector-Approve]]`",
    "start": "add `start: \"08:00\"`",
    "end": "add `end: \"18:00\"`",
}


def _describe(err: Any, loc: tuple[Any, ...]) -> str:
    kind = err["type"]
    value = err.get("input")
    key = next((c for c in reversed(loc) if isinstance(c, str)), "value")
    ctx = err.get("ctx") or {}
    if kind == "missing":
        return f"missing required key '{key}' — {_KEY_HINTS.get(key, f'add `{key}:`')}"
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        allowed = list(model.model_fields) if model else []
        close = _suggest(loc)
        fix = f"did you mean '{close[0]}'?" if close else "remove it"
        return f"unknown key '{key}' — {fix} (allowed: {', '.join(allowed)})"
    if kind == "literal_error":
        return f"{_show(value)} is not allowed here — use {ctx.get('expected')}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"expected a whole number, got {_show(value)} — write it unquoted, e.g. 100"
    if kind in ("bool_type", "bool_parsing"):
        return f"expected true or false, got {_show(value)} — write true or false"
    if kind in ("string_type", "str_type"):
        return f"expected text, got {_show(value)} — write it as (quoted) text"
    if kind in ("list_type", "tuple_type"):
        return f"expected a list, got {_show(value)} — write [a, b] or one '- item' per line"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping, got {_show(value)} — write `key: value` lines under it"
    if kind in ("greater_than_equal", "greater_than"):
        return f"{_show(value)} is too small — use at least {ctx.get('ge', ctx.get('gt'))}"
    if kind == "too_short":
        return "is empty — list at least one item"
    if kind == "string_too_short":
        return "is empty — write a non-empty value"
    if kind == "string_pattern_mismatch":
        if key == "id":
            return (f"{_show(value)} is not a valid rule id — use up to 64 letters, digits, "
                    "'-', '_' or '.', starting with a letter or digit")
        if key == "change_ticket_header":
            return f"{_show(value)} is not an HTTP header name — e.g. X-Change-Ticket"
        return f"{_show(value)} does not match {ctx.get('pattern')}"
    if kind in ("value_error", "assertion_error"):
        msg = str(err["msg"])
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        return msg
    return f"{err['msg']} (got {_show(value)})"


def _semantic_problems(policy: Policy) -> list[tuple[tuple[Any, ...], str]]:
    """Checks that span several keys, each with the location to blame."""
    out: list[tuple[tuple[Any, ...], str]] = []
    first_index: dict[str, int] = {}
    for i, rule in enumerate(policy.rules):
        at = ("rules", i)
        if rule.id in first_index:
            out.append(((*at, "id"), f"duplicate rule id '{rule.id}' (first used by "
                        f"rules[{first_index[rule.id]}]) — give each rule its own id"))
        else:
            first_index[rule.id] = i
        s = rule.subjects
        named = bool(s.groups or s.users or s.service_accounts)
        if not named and not s.authenticated:
            out.append(((*at, "subjects"), "names nobody — add groups, users, "
                        "service_accounts or authenticated: true"))
        if named and s.authenticated:
            out.append(((*at, "subjects", "authenticated"), "authenticated: true already "
                        "matches every caller — remove it or the names"))
        if not rule.collections and not rule.no_collection:
            out.append(((*at, "collections"), "matches no collection — add collections: "
                        "[\"*\"] (or globs), or no_collection: true for operations without one"))
        if rule.databases is not None and not rule.databases:
            out.append(((*at, "databases"), "is empty and would match nothing — remove it "
                        "to match any database"))
        if rule.effect == "deny":
            if not rule.conditions.is_empty():
                out.append(((*at, "conditions"), "a deny rule always applies and takes no "
                            "conditions — move the condition to the allow rule it restricts"))
            if not rule.obligations.is_empty():
                out.append(((*at, "obligations"), "a deny rule forwards nothing, so "
                            "obligations do not apply — remove them"))
        if rule.approvers is not None and rule.effect != "require_approval":
            out.append(((*at, "approvers"), f"only require_approval rules have approvers; "
                        f"this rule's effect is {rule.effect} — remove them"))
        if rule.effect == "require_approval" and policy.approvers_for(rule) is None:
            out.append(((*at, "effect"), "require_approval needs approvers — add "
                        "approvers.groups_any_of to the rule or a top-level approvers key"))
        if rule.obligations.inject_filter is not None:
            extra = sorted(set(ACTIONS if "*" in rule.actions else rule.actions)
                           - _FILTERABLE_RULE_ACTIONS)
            if extra:
                out.append(((*at, "obligations", "inject_filter"), "a row filter restricts "
                            f"only search and read, but this rule also allows "
                            f"{', '.join(extra)} — move those actions to another rule"))
        if rule.conditions.max_limit is not None and "*" not in rule.actions \
                and not {"search", "read"} & set(rule.actions):
            out.append(((*at, "conditions", "max_limit"), "max_limit limits search and read, "
                        "which this rule does not allow — remove it"))
    return out


# -------------------------------------------------------------------- evaluation


class GrantScope(_Model):
    """A time-boxed grant of the caller (JIT access), as the policy sees it.

    The gateway looks the caller's active grants up (``ApprovalService.
    active_grants``) and passes them in :class:`RequestContext`, so
    :func:`evaluate` stays pure.
    """

    grant_id: str
    kind: Literal["ticket", "jit"] = "jit"
    actions: list[str]
    collections: list[str]
    valid_from: AwareDatetime
    valid_until: AwareDatetime
    issued_by: str | None = None

    def covers(self, op: Operation, now: datetime) -> bool:
        if not (self.valid_from <= now < self.valid_until):
            return False
        if op.action == ActionClass.UNKNOWN:
            return False
        if "*" not in self.actions and op.action.value not in self.actions:
            return False
        if not op.collection:
            return False
        return any(_glob_match(g, op.collection) for g in self.collections)

    def describe(self) -> str:
        return (f"grant {self.grant_id} ({self.kind}: {', '.join(self.actions)} on "
                f"{', '.join(self.collections)} until {self.valid_until:%Y-%m-%d %H:%M:%S}Z"
                + (f", issued by {self.issued_by}" if self.issued_by else "") + ")")


class TicketCheck(_Model):
    """The outcome of checking the request's change ticket against the approvals
    service (approved by another person, in scope, in its window, not used up)."""

    ticket_id: str
    valid: bool
    #: why the ticket was refused (names the reason and what to do)
    reason: str = ""
    #: the approvals error code (ticket_expired, ticket_exhausted, ...)
    error: str | None = None


class RequestContext(_Model):
    """What the gateway knows about a request besides identity and operations.

    ``grants`` are the caller's active time-boxed grants; ``ticket`` is the
    verdict on the change ticket the request names. With ``verify_tickets`` (the
    gateway always sets it) a rule that needs a change ticket is satisfied only by
    a ``ticket`` that is valid; without it, only the header's format is checked
    (``policy explain`` without an approvals service).
    """

    now: AwareDatetime
    change_ticket: str | None = None
    ticket: TicketCheck | None = None
    verify_tickets: bool = False
    grants: list[GrantScope] = []
    dpop_bound: bool = False
    client_address: str | None = None
    product: Product | None = None
    method: str | None = None
    path: str | None = None


class OperationVerdict(_Model):
    index: int
    action: str
    collection: str | None = None
    outcome: Outcome
    #: the rule that decided (None for the default deny)
    rule_id: str | None = None
    reason: str
    #: every rule that matched this operation, in policy order
    rules: list[str] = []


class ApprovalRequirement(_Model):
    """Approvers for a require_approval decision, merged over its rules."""

    rule_ids: list[str]
    groups_any_of: list[list[str]]
    min_approvals: int
    expires_after: Duration
    mode: Literal["hold", "async"]


class AppliedRowFilter(_Model):
    rule_id: str
    filter: RowFilter


class RequestObligations(_Model):
    """Everything the gateway must do to the request and response."""

    mask: MaskSpec | None = None
    strip_vectors: bool = False
    row_filters: list[AppliedRowFilter] = []

    def to_event(self) -> list[Obligation]:
        out: list[Obligation] = []
        if self.mask is not None:
            out.append(Obligation(kind="mask", params_json=_json(self.mask.model_dump())))
        if self.strip_vectors:
            out.append(Obligation(kind="strip_vectors"))
        for rf in self.row_filters:
            out.append(Obligation(kind="inject_filter", params_json=_json(
                {"rule_id": rf.rule_id, **rf.filter.model_dump(exclude_none=True)})))
        return out


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class Decision(_Model):
    outcome: Outcome
    #: HTTP status for the client: 200 allow, 403 deny and (until approvals exist)
    #: require_approval. 401 is for identity, never decided here.
    status: int
    error: Literal["policy_denied", "approval_required"] | None = None
    per_operation: list[OperationVerdict]
    matched_rules: list[str] = []
    reasons: list[str] = []
    obligations: RequestObligations = RequestObligations()
    approval: ApprovalRequirement | None = None
    policy_sha256: str = ""
    #: the time-boxed grant that allowed an operation, if one did
    grant_id: str | None = None
    #: the verified change ticket a rule relied on, if one did
    ticket_id: str | None = None

    @property
    def allowed(self) -> bool:
        return self.outcome == "allow"

    @property
    def reason(self) -> str:
        """One line for the client's error body."""
        return "; ".join(self.reasons)

    def to_event_fields(self) -> dict[str, Any]:
        """The body fields of a PolicyDecided event."""
        return {
            "outcome": self.outcome,
            "matched_rules": list(self.matched_rules),
            "reasons": list(self.reasons),
            "obligations": self.obligations.to_event(),
            "operation_decisions": [
                OperationDecision(index=v.index, outcome=v.outcome, rule_id=v.rule_id,
                                  reason=v.reason)
                for v in self.per_operation
            ],
            "policy_sha256": self.policy_sha256,
            "grant_id": self.grant_id,
            "ticket_id": self.ticket_id,
        }


class RuleTrace(_Model):
    rule_id: str
    effect: Effect
    matched: bool
    #: why the rule did not match (None when it matched)
    why_not: str | None = None
    failed_conditions: list[str] = []
    #: what the rule contributed when it matched
    contributed: Outcome | None = None


class OperationTrace(_Model):
    index: int
    operation: Operation
    outcome: Outcome
    rule_id: str | None = None
    reason: str
    rules: list[RuleTrace]


class Explanation(_Model):
    policy_source: str
    policy_sha256: str
    subject: str
    issuer: str
    groups: list[str]
    decision: Decision
    operations: list[OperationTrace]
    grants: list[GrantScope] = []

    def to_text(self) -> str:
        d = self.decision
        lines = [
            f"policy   {self.policy_source} (sha256 {self.policy_sha256[:12]})",
            f"caller   {self.subject} (groups: {', '.join(self.groups) or 'none'})",
            f"decision {d.outcome.upper()} (HTTP {d.status}"
            + (f", {d.error}" if d.error else "") + ")",
        ]
        lines += [f"  - {r}" for r in d.reasons]
        for g in self.grants:
            used = " (used)" if g.grant_id == d.grant_id else ""
            lines.append(f"{'grant':<8} {g.describe()}{used}")
        if d.ticket_id:
            lines.append(f"ticket   {d.ticket_id} (verified)")
        for op in self.operations:
            o = op.operation
            target = _target(o)
            lines.append("")
            lines.append(f"operation {op.index}: {o.action.value} {target} -> {op.outcome}"
                         + (f" by {op.rule_id}" if op.rule_id else " (default)"))
            lines.append(f"  {op.reason}")
            for r in op.rules:
                if r.matched:
                    mark = {"deny": "x", "require_approval": "?", "allow": "+"}[
                        r.contributed or "deny"]
                    lines.append(f"  [{mark}] {r.rule_id} ({r.effect}) matched -> "
                                 f"{r.contributed}")
                    lines += [f"        {c}" for c in r.failed_conditions]
                else:
                    lines.append(f"  [ ] {r.rule_id}: {r.why_not}")
        ob = d.obligations
        if d.outcome != "deny" and (ob.mask or ob.strip_vectors or ob.row_filters):
            lines.append("")
            lines.append("obligations")
            for obligation in ob.to_event():
                lines.append(f"  {obligation.kind} {obligation.params_json}")
        if d.approval is not None:
            a = d.approval
            lines.append("")
            lines.append(f"approval {a.min_approvals} of "
                         + " or ".join("+".join(s) for s in a.groups_any_of)
                         + f", expires after {format_duration(a.expires_after)}, {a.mode}")
        return "\n".join(lines)


def _target(op: Operation) -> str:
    if op.collection is None or op.collection == "":
        return "(no collection)"
    return f"{op.database}/{op.collection}" if op.database else op.collection


def _caller(identity: Identity) -> str:
    groups = ", ".join(sorted(identity.groups)) or "none"
    return f"{identity.subject} (groups: {groups})"


_NO_MATCH = "no match"  # _why_not's answer when nobody will read why


def _why_not(rule: Rule, identity: Identity, op: Operation, explain: bool = True) -> str | None:
    """None when ``rule`` matches ``op`` for ``identity``, else why not (with
    ``explain=False``, a fixed string: deciding needs only whether it matched,
    and building every non-matching rule's message was a third of a decision)."""
    if op.action == ActionClass.UNKNOWN:
        return "unknown operations match no rule" if explain else _NO_MATCH
    if not rule.allows_action(op.action):
        return f"action {op.action.value} is not in [{', '.join(rule.actions)}]" \
            if explain else _NO_MATCH
    if not rule.subjects.matches(identity):
        return f"caller is not among {rule.subjects.describe()}" if explain else _NO_MATCH
    restrictive = rule.effect != "allow"
    collection = op.collection or None
    if collection is None:
        if not rule.no_collection:
            return "the operation has no collection and the rule does not set no_collection" \
                if explain else _NO_MATCH
    elif not any(_glob_match(g, collection, restrictive) for g in rule.collections):
        return f"collection {collection!r} matches none of [{', '.join(rule.collections)}]" \
            if explain else _NO_MATCH
    if collection is not None and rule.databases is not None:
        if op.database is None:
            return "the operation names no database and the rule restricts databases" \
                if explain else _NO_MATCH
        if not any(_glob_match(g, op.database, restrictive) for g in rule.databases):
            return f"database {op.database!r} matches none of [{', '.join(rule.databases)}]" \
                if explain else _NO_MATCH
    return None


_MATCH_CACHE_SIZE = 4096
_DECISION_CACHE_SIZE = 2048


def _private(model: BaseModel) -> dict[str, Any]:
    private = model.__pydantic_private__
    assert private is not None  # every model with PrivateAttrs has them
    return private


def _star_or_match(star: bool, patterns: tuple[re.Pattern[str], ...], name: str,
                   restrictive: bool = False) -> bool:
    """``any(_glob_match(g, name, restrictive) for g in globs)``, with the globs
    compiled (``restrictive``: as :func:`_glob_regex` ignoring case)."""
    if name == "*":  # an operation over every collection (see _glob_match)
        return star or (restrictive and bool(patterns))
    return star or any(p.fullmatch(name) is not None for p in patterns)


@dataclass(frozen=True, slots=True)
class _RuleMatcher:
    """A rule's subjects, actions, collections and databases, compiled:
    ``matches`` is ``_why_not(rule, ...) is None`` (a property test holds them equal)."""

    actions: frozenset[ActionClass]
    issuer: str | None
    anyone: bool
    groups: frozenset[str]
    names: frozenset[str]
    no_collection: bool
    any_collection: bool
    collections: tuple[re.Pattern[str], ...]
    any_database: bool
    databases: tuple[re.Pattern[str], ...] | None
    #: a deny or require_approval rule (see _glob_match)
    restrictive: bool

    @classmethod
    def of(cls, rule: Rule) -> _RuleMatcher:
        s = rule.subjects
        restrictive = rule.effect != "allow"
        actions = (frozenset(a for a in ActionClass if a != ActionClass.UNKNOWN)
                   if "*" in rule.actions else frozenset(ActionClass(a) for a in rule.actions))
        dbs = rule.databases
        return cls(
            actions=actions, issuer=s.issuer, anyone=s.authenticated,
            groups=frozenset(s.groups), names=frozenset(s.users) | frozenset(s.service_accounts),
            no_collection=rule.no_collection, any_collection="*" in rule.collections,
            collections=tuple(_glob_regex(g, restrictive) for g in rule.collections if g != "*"),
            any_database=dbs is not None and "*" in dbs,
            databases=None if dbs is None
            else tuple(_glob_regex(g, restrictive) for g in dbs if g != "*"),
            restrictive=restrictive,
        )

    def matches(self, identity: Identity, op: Operation) -> bool:
        if op.action not in self.actions:  # never unknown
            return False
        if self.issuer is not None and identity.issuer != self.issuer:
            return False
        if not self.anyone and self.groups.isdisjoint(identity.groups) \
                and identity.subject not in self.names:
            return False
        collection = op.collection or None
        if collection is None:
            return self.no_collection
        if not _star_or_match(self.any_collection, self.collections, collection,
                              self.restrictive):
            return False
        if self.databases is not None:
            if op.database is None:
                return False
            return _star_or_match(self.any_database, self.databases, op.database,
                                  self.restrictive)
        return True


#: a matching rule's part in an operation's verdict: (rule index, outcome, reason)
_Part: TypeAlias = tuple[int, Outcome, str]


class _Compiled:
    """What evaluating a policy needs, worked out once per :class:`Policy` object
    (a reload makes a new one, so nothing remembered outlives its policy).

    ``matches`` remembers which rules match, by what decides it: the caller's
    issuer, subject and groups and the operation's action, collection and
    database (not time, tickets, ids or the body: those are conditions, checked
    on every request). ``decisions`` remembers whole decisions, keyed by every
    input the decision is made of (see :func:`_decide`).
    """

    __slots__ = ("approvers", "decisions", "header", "matchers", "matches", "n", "needs_ticket",
                 "passed", "rules", "sha256", "static")

    def __init__(self, policy: Policy, sha256: str) -> None:
        self.rules = policy.rules
        self.n = len(policy.rules)
        self.approvers = policy.approvers
        self.header = policy.change_ticket_header
        self.sha256 = sha256
        self.matchers = tuple(_RuleMatcher.of(rule) for rule in policy.rules)
        self.matches: dict[tuple[Any, ...], tuple[int, ...]] = {}
        self.decisions: dict[tuple[Any, ...], Decision] = {}
        #: what a rule contributes when its conditions hold (or it is a deny rule)
        self.passed: list[tuple[Outcome, str]] = []
        #: the same, for rules that contribute it whatever the request (no
        #: conditions, no row filter to check); None: check per request
        self.static: list[tuple[Outcome, str] | None] = []
        self.needs_ticket = tuple(rule.conditions.needs_ticket for rule in policy.rules)
        for rule in policy.rules:
            if rule.effect == "deny":
                part: tuple[Outcome, str] = (
                    "deny", f"denied by rule {rule.id}"
                    + (f": {rule.description}" if rule.description else ""))
                fixed = True
            else:
                if rule.effect == "require_approval":
                    part = ("require_approval", f"rule {rule.id} requires approval by "
                            f"{_approval_text(policy.approvers_for(rule))}")
                else:
                    part = ("allow", f"allowed by rule {rule.id}")
                fixed = rule.conditions.is_empty() and rule.obligations.inject_filter is None
            self.passed.append(part)
            self.static.append(part if fixed else None)

    def fits(self, policy: Policy, sha256: str) -> bool:
        return (policy.rules is self.rules and len(policy.rules) == self.n
                and policy.approvers is self.approvers
                and policy.change_ticket_header == self.header and sha256 == self.sha256)

    def matching(self, identity: Identity, op: Operation) -> tuple[int, ...]:
        """The indices of the rules that match ``op`` for ``identity``, in order."""
        key = (identity.issuer, identity.subject, identity.groups, op.action, op.collection,
               op.database)
        found = self.matches.get(key)
        if found is None:
            found = tuple(r for r, m in enumerate(self.matchers) if m.matches(identity, op))
            if len(self.matches) >= _MATCH_CACHE_SIZE:
                self.matches.clear()
            self.matches[key] = found
        return found


def _compiled(policy: Policy) -> _Compiled:
    private = _private(policy)
    sha256: str = private["_sha256"]
    comp: _Compiled | None = private.get("_compiled")
    if comp is None or not comp.fits(policy, sha256):
        comp = private["_compiled"] = _Compiled(policy, sha256)
    return comp


def _matching_rules(policy: Policy, identity: Identity, op: Operation) -> tuple[int, ...]:
    """The indices of the rules that match ``op`` for ``identity`` (remembered
    per policy; see :class:`_Compiled`)."""
    return _compiled(policy).matching(identity, op)


@dataclass(frozen=True)
class _IdCount:
    count: int
    unknown: str | None  # why the ids are unknown, if they are


def _id_count(ops: Iterable[Operation]) -> _IdCount:
    total = 0
    for op in ops:
        if op.bulk:
            return _IdCount(total, "is a bulk import")
        if not op.ids_known:
            return _IdCount(total, "selects by filter" if op.filter_present
                            else "does not name its ids")
        total += max(len(op.ids), op.vector_count)
    return _IdCount(total, None)


def _article(word: str) -> str:
    return "an" if word[:1].upper() in "AEFHILMNORSX" else "a"


def _condition_failures(
    policy: Policy, rule: Rule, op: Operation, identity: Identity, ctx: RequestContext,
    ids: _IdCount | None,
) -> list[str]:
    c = rule.conditions
    rid = rule.id
    out: list[str] = []
    if c.max_ids is not None and ids is not None:
        if ids.unknown:
            out.append(f"the request {ids.unknown} (ids unknown); rule {rid} allows at most "
                       f"{c.max_ids} ids per request")
        elif ids.count > c.max_ids:
            out.append(f"the request touches {ids.count} ids; rule {rid} allows at most "
                       f"{c.max_ids}")
    if c.needs_ticket:
        header = policy.change_ticket_header
        ticket = (ctx.change_ticket or "").strip()
        if not ticket:
            out.append(f"rule {rid} needs {_article(header)} {header} header")
        elif len(ticket) > MAX_TICKET_LENGTH:
            out.append(f"the {header} header is longer than {MAX_TICKET_LENGTH} characters "
                       f"(rule {rid})")
        elif c.change_ticket_pattern and re.fullmatch(c.change_ticket_pattern, ticket) is None:
            out.append(f"{header} {ticket!r} does not match {c.change_ticket_pattern} "
                       f"(rule {rid})")
        elif ctx.ticket is not None and ctx.ticket.ticket_id == ticket and not ctx.ticket.valid:
            out.append(f"change ticket {ticket!r} is refused: {ctx.ticket.reason} (rule {rid})")
        elif ctx.verify_tickets and (ctx.ticket is None or ctx.ticket.ticket_id != ticket):
            out.append(f"change ticket {ticket!r} could not be verified (rule {rid})")
    if c.time_window is not None and not c.time_window.contains(ctx.now):
        local = ctx.now.astimezone(ZoneInfo(c.time_window.timezone))
        out.append(f"rule {rid} allows this only {c.time_window.describe()}; it is "
                   f"{_DAYS[local.weekday()]} {local:%H:%M} there")
    if c.max_token_age is not None:
        limit = format_duration(c.max_token_age)
        if identity.issued_at is None:
            out.append(f"the token has no issue time (iat); rule {rid} needs tokens at most "
                       f"{limit} old")
        else:
            age = max(timedelta(0), ctx.now - identity.issued_at)
            if age > c.max_token_age:
                out.append(f"token is {format_duration(age)} old; rule {rid} allows at most "
                           f"{limit}")
    if c.max_token_lifetime is not None:
        limit = format_duration(c.max_token_lifetime)
        if identity.issued_at is None or identity.expires_at is None:
            out.append(f"the token lacks iat or exp; rule {rid} needs tokens that live at "
                       f"most {limit}")
        else:
            life = identity.expires_at - identity.issued_at
            if life > c.max_token_lifetime:
                out.append(f"token lives {format_duration(life)}; rule {rid} allows at most "
                           f"{limit}")
    if c.require_dpop and not ctx.dpop_bound:
        out.append(f"rule {rid} needs a DPoP-bound token; this request has a plain bearer "
                   "token")
    if c.max_limit is not None and op.action in _ROW_ACTIONS:
        queries, limit_name = _queries(op, ctx.product)
        if op.limit is not None:
            asked: int | None = op.limit * queries
        elif op.ids_known and op.ids and not op.bulk:
            asked = len(op.ids)
        else:
            asked = None
        if op.limit is not None and op.limit <= 0:
            # Milvus reads limit 0 (or less) as no limit at all
            out.append(f"the request sets {limit_name} {op.limit}, which some databases read "
                       f"as no limit; rule {rid} allows at most {c.max_limit} results — set a "
                       "positive limit/top_k")
        elif asked is None:
            out.append(f"the request sets no limit; rule {rid} allows at most {c.max_limit} "
                       "results — set limit/top_k")
        elif asked > c.max_limit and queries > 1:
            out.append(f"the request asks for {queries} queries × {limit_name} {op.limit} = "
                       f"{asked} results; rule {rid} allows at most {c.max_limit} (max_limit "
                       "bounds the results of all queries together)")
        elif asked > c.max_limit:
            out.append(f"the request asks for {asked} results; rule {rid} allows at most "
                       f"{c.max_limit}")
    if c.client_networks:
        nets = ", ".join(c.client_networks)
        address = _parse_address(ctx.client_address)
        if address is None:
            out.append(f"the client address {ctx.client_address!r} is unknown or not an IP; "
                       f"rule {rid} allows only {nets}")
        elif not any(address in _network(n) for n in c.client_networks):
            out.append(f"client {address} is outside {nets} (rule {rid})")
    rf = rule.obligations.inject_filter
    if rf is not None and op.action in _ROW_ACTIONS and ctx.product is not None:
        spec = rf.for_product(ctx.product)
        if spec is None:
            out.append(f"rule {rid} must add a row filter but has none for {ctx.product}")
        else:
            why = _filters.filter_target(ctx.product, ctx.path) if ctx.path else None
            if why:
                out.append(f"rule {rid} must add a row filter, but {why}")
            else:
                try:
                    _filters.render_filter(spec, identity, ctx.product)
                except _filters.FilterInjectionError as exc:
                    out.append(f"rule {rid}: {exc}")
    return out


def _queries(op: Operation, product: Product | None) -> tuple[int, str]:
    """How many queries ``op`` carries, each answered with up to ``op.limit``
    results, and the request's name for that limit.

    Without a product (``policy explain`` of hand-written operations) a search
    with several query vectors counts each one: that may over-count (a Qdrant
    recommend's examples are one query) but never under-counts.
    """
    if op.action != ActionClass.SEARCH:
        return 1, "limit"
    if product is None:
        return max(1, op.vector_count), "limit"
    shape = _MULTI_QUERY.get(product, {}).get(op.detail or "")
    if shape is None:
        return 1, "limit"
    name, ids_are_queries = shape
    return max(1, op.vector_count + (len(op.ids) if ids_are_queries else 0)), name


def _parse_address(
    address: str | None,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not address:
        return None
    try:
        parsed = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return None
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return parsed.ipv4_mapped
    return parsed


@lru_cache(maxsize=256)
def _network(cidr: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(cidr)


def _approval_text(spec: ApproverSpec | None) -> str:
    if spec is None:
        return "an approver"
    sets = " or ".join("+".join(s) for s in spec.groups_any_of)
    return f"{spec.min_approvals} of {sets}"


@dataclass
class _Contribution:
    outcome: Outcome
    rule: Rule
    reason: str
    failed: list[str]


def evaluate(
    policy: Policy, identity: Identity, operations: Sequence[Operation], ctx: RequestContext,
) -> Decision:
    """Decide a request (see the module docstring). Never raises: an internal
    error becomes a deny whose reason says so."""
    try:
        return _decide(policy, identity, list(operations), ctx)
    except Exception as exc:  # noqa: BLE001 - fail closed, whatever went wrong
        return _failed(policy, list(operations), exc)


def _evaluate_reference(
    policy: Policy, identity: Identity, operations: Sequence[Operation], ctx: RequestContext,
) -> Decision:
    """:func:`evaluate` worked out from scratch: nothing compiled, nothing
    remembered. Tests hold :func:`evaluate` equal to it."""
    try:
        return _evaluate(policy, identity, list(operations), ctx, traces=None, remember=False)
    except Exception as exc:  # noqa: BLE001 - fail closed, whatever went wrong
        return _failed(policy, list(operations), exc)


def explain(
    policy: Policy, identity: Identity, operations: Sequence[Operation], ctx: RequestContext,
) -> Explanation:
    """The decision plus, for every operation and rule, whether and why it applied."""
    traces: list[OperationTrace] = []
    try:
        decision = _evaluate(policy, identity, list(operations), ctx, traces=traces)
    except Exception as exc:  # noqa: BLE001 - fail closed
        decision = _failed(policy, list(operations), exc)
        traces = []
    return Explanation(
        policy_source=policy.source, policy_sha256=policy.sha256, subject=identity.subject,
        issuer=identity.issuer, groups=sorted(identity.groups), decision=decision,
        operations=traces, grants=list(ctx.grants),
    )


def _failed(policy: Policy, operations: list[Operation], exc: BaseException) -> Decision:
    reason = f"policy evaluation failed ({type(exc).__name__}); denying"
    return Decision(
        outcome="deny", status=403, error="policy_denied", reasons=[reason],
        per_operation=[
            OperationVerdict(index=i, action=str(getattr(op, "action", "unknown")),
                             outcome="deny", reason=reason)
            for i, op in enumerate(operations)
        ],
        policy_sha256=policy.sha256,
    )


def _decide(
    policy: Policy, identity: Identity, ops: list[Operation], ctx: RequestContext,
) -> Decision:
    """:func:`_evaluate`, remembered per policy.

    A decision is made of the policy and, per operation, of its action,
    collection, database (and detail, if unknown) and what each matching rule
    contributed (rule, outcome, reason: the conditions, which depend on time,
    the token, ids, limits, tickets and the client, are checked here on every
    request and their failures named in the reason); of the caller's subject
    and groups when an operation falls to the default deny (its reason names
    them); and of the change ticket when a matching rule needs one and it was
    verified. Those are the key. Grants depend on the clock: a request for
    which a grant could lift an operation is decided afresh, and not remembered.
    """
    comp = _compiled(policy)
    if not ops:
        return _evaluate(policy, identity, ops, ctx, traces=None)
    keys: list[tuple[Any, ...]] = []
    who: tuple[str, frozenset[str]] | None = None
    ticket: str | None = None
    for op, parts in zip(ops, _contributions(comp, policy, identity, ops, ctx), strict=True):
        unknown = op.action == ActionClass.UNKNOWN
        if unknown or not parts:
            if not unknown:
                who = (identity.subject, identity.groups)
            if ctx.grants:  # a grant may stand in for the default deny
                return _evaluate(policy, identity, ops, ctx, traces=None)
        elif ctx.grants and any(p[1] == "require_approval" for p in parts) \
                and not any(p[1] == "deny" for p in parts):  # or for the approval
            return _evaluate(policy, identity, ops, ctx, traces=None)
        if ticket is None and any(comp.needs_ticket[p[0]] for p in parts):
            ticket = ""
        keys.append((op.action, op.collection, op.database, op.detail if unknown else None,
                     parts))
    if ticket is not None:  # a matching rule needs a change ticket
        ticket = ctx.ticket.ticket_id if ctx.ticket is not None and ctx.ticket.valid else None
    key = (tuple(keys), who, ticket)
    decision = comp.decisions.get(key)
    if decision is None:
        decision = _evaluate(policy, identity, ops, ctx, traces=None)
        if len(comp.decisions) >= _DECISION_CACHE_SIZE:
            comp.decisions.clear()
        comp.decisions[key] = decision
    return decision


def _contributions(comp: _Compiled, policy: Policy, identity: Identity, ops: list[Operation],
                   ctx: RequestContext) -> list[tuple[_Part, ...]]:
    """What each matching rule contributes to each operation, as :func:`_evaluate`
    works it out: a deny rule its denial, another rule its effect, or a deny
    naming the conditions that fail (checked now, for this request)."""
    matchings = [comp.matching(identity, op) for op in ops]
    ids_by_rule: dict[int, _IdCount] = {}
    out: list[tuple[_Part, ...]] = []
    for op, matching in zip(ops, matchings, strict=True):
        parts: list[_Part] = []
        for r in matching:
            fixed = comp.static[r]
            if fixed is not None:
                parts.append((r, fixed[0], fixed[1]))
                continue
            rule = comp.rules[r]
            ids = None
            if rule.conditions.max_ids is not None:
                ids = ids_by_rule.get(r)
                if ids is None:
                    ids = ids_by_rule[r] = _id_count(
                        o for o, m in zip(ops, matchings, strict=True) if r in m)
            failed = _condition_failures(policy, rule, op, identity, ctx, ids)
            if failed:
                parts.append((r, "deny", "; ".join(failed)))
            else:
                passed = comp.passed[r]
                parts.append((r, passed[0], passed[1]))
        out.append(tuple(parts))
    return out


def _evaluate(
    policy: Policy, identity: Identity, ops: list[Operation], ctx: RequestContext,
    traces: list[OperationTrace] | None, *, remember: bool = True,
) -> Decision:
    if not ops:
        reason = "the request has no operations to allow"
        return Decision(outcome="deny", status=403, error="policy_denied", reasons=[reason],
                        per_operation=[], policy_sha256=policy.sha256)

    if traces is not None:
        why_not = [[_why_not(rule, identity, op) for rule in policy.rules] for op in ops]
    elif not remember:
        why_not = [[_why_not(rule, identity, op, explain=False) for rule in policy.rules]
                   for op in ops]
    else:
        why_not = []
        for op in ops:
            matching = _matching_rules(policy, identity, op)
            why_not.append([None if r in matching else _NO_MATCH
                            for r in range(len(policy.rules))])
    ids_by_rule: dict[int, _IdCount] = {}
    for r, rule in enumerate(policy.rules):
        if rule.conditions.max_ids is not None:
            ids_by_rule[r] = _id_count(op for o, op in enumerate(ops) if why_not[o][r] is None)

    verdicts: list[OperationVerdict] = []
    grants_used: list[str] = []
    granted: list[_Contribution] = []
    matched: set[int] = set()
    for o, op in enumerate(ops):
        contributions: list[_Contribution] = []
        for r, rule in enumerate(policy.rules):
            if why_not[o][r] is not None:
                continue
            matched.add(r)
            if rule.effect == "deny":
                text = f"denied by rule {rule.id}" + (f": {rule.description}"
                                                      if rule.description else "")
                contributions.append(_Contribution("deny", rule, text, []))
                continue
            failed = _condition_failures(policy, rule, op, identity, ctx, ids_by_rule.get(r))
            if failed:
                contributions.append(_Contribution("deny", rule, "; ".join(failed), failed))
            elif rule.effect == "require_approval":
                spec = policy.approvers_for(rule)
                contributions.append(_Contribution(
                    "require_approval", rule,
                    f"rule {rule.id} requires approval by {_approval_text(spec)}", []))
            else:
                contributions.append(_Contribution("allow", rule, f"allowed by rule {rule.id}",
                                                   []))
        verdict = _verdict(o, op, identity, contributions)
        grant = _covering_grant(ctx, op, contributions, verdict)
        if grant is not None:
            grants_used.append(grant.grant_id)
            verdict = verdict.model_copy(update={
                "outcome": "allow", "rule_id": None,
                "reason": f"allowed by {grant.describe()}"
                + (f" instead of: {verdict.reason}" if contributions else "")})
        verdicts.append(verdict)
        if verdict.outcome != "deny":
            granted.extend(c for c in contributions if c.outcome != "deny")
        if traces is not None:
            by_rule = {c.rule.id: c for c in contributions}
            traces.append(OperationTrace(
                index=o, operation=op, outcome=verdict.outcome, rule_id=verdict.rule_id,
                reason=verdict.reason,
                rules=[
                    RuleTrace(rule_id=rule.id, effect=rule.effect, matched=False,
                              why_not=why_not[o][r])
                    if why_not[o][r] is not None else
                    RuleTrace(rule_id=rule.id, effect=rule.effect, matched=True,
                              failed_conditions=by_rule[rule.id].failed,
                              contributed=by_rule[rule.id].outcome)
                    for r, rule in enumerate(policy.rules)
                ],
            ))

    outcomes = {v.outcome for v in verdicts}
    outcome: Outcome = ("deny" if "deny" in outcomes
                        else "require_approval" if "require_approval" in outcomes else "allow")
    many = len(ops) > 1
    reasons = list(dict.fromkeys(
        (f"operation {v.index} ({v.action} {_target(ops[v.index])}): {v.reason}"
         if many else v.reason)
        for v in verdicts if v.outcome == outcome
    ))
    obligations = RequestObligations()
    approval = None
    if outcome != "deny":
        obligations = _merge_obligations(granted)
        approval = None if outcome == "allow" else _merge_approvals(
            policy, [c.rule for c in granted if c.outcome == "require_approval"])
    ticket_id = None
    if (outcome != "deny" and ctx.ticket is not None and ctx.ticket.valid
            and any(c.rule.conditions.needs_ticket for c in granted)):
        ticket_id = ctx.ticket.ticket_id
    return Decision(
        outcome=outcome,
        status=200 if outcome == "allow" else 403,
        error=None if outcome == "allow" else
        ("policy_denied" if outcome == "deny" else "approval_required"),
        per_operation=verdicts,
        matched_rules=[policy.rules[r].id for r in sorted(matched)],
        reasons=reasons,
        obligations=obligations,
        approval=approval,
        policy_sha256=policy.sha256,
        grant_id=grants_used[0] if grants_used and outcome != "deny" else None,
        ticket_id=ticket_id,
    )


def _covering_grant(ctx: RequestContext, op: Operation, contributions: list[_Contribution],
                    verdict: OperationVerdict) -> GrantScope | None:
    """The grant that lifts this operation to allow, if any.

    A grant stands in for an approval and for the default deny: it turns
    require_approval, or no matching rule at all, into allow. It never lifts a
    deny rule or a failing condition (those bind everyone a rule matches).
    """
    if not ctx.grants or verdict.outcome == "allow":
        return None
    if any(c.outcome == "deny" for c in contributions):
        return None
    return next((g for g in ctx.grants if g.covers(op, ctx.now)), None)


def _verdict(index: int, op: Operation, identity: Identity,
             contributions: list[_Contribution]) -> OperationVerdict:
    def verdict(outcome: Outcome, reason: str, rule_id: str | None = None) -> OperationVerdict:
        return OperationVerdict(
            index=index, action=op.action.value, collection=op.collection, outcome=outcome,
            rule_id=rule_id, reason=reason,
            rules=list(dict.fromkeys(c.rule.id for c in contributions)),
        )

    if op.action == ActionClass.UNKNOWN:
        detail = f": {op.detail}" if op.detail else ""
        return verdict("deny", f"unclassified (unknown) operations are never allowed{detail}")
    if not contributions:
        where = f"on {_target(op)}" if op.collection else "without a collection"
        return verdict("deny", f"no rule allows {op.action.value} {where} for "
                               f"{_caller(identity)}")
    for outcome in ("deny", "require_approval", "allow"):
        chosen = [c for c in contributions if c.outcome == outcome]
        if chosen:
            return verdict(chosen[0].outcome,
                           "; ".join(dict.fromkeys(c.reason for c in chosen)),
                           chosen[0].rule.id)
    raise AssertionError("unreachable")  # pragma: no cover


def _merge_obligations(contributions: list[_Contribution]) -> RequestObligations:
    detectors: dict[str, None] = {}
    fields: dict[str, None] = {}
    paths: dict[str, None] = {}
    modes: set[str] = set()
    filter_modes: set[str] = set()
    strip = False
    filters: dict[str, AppliedRowFilter] = {}
    for c in contributions:
        ob = c.rule.obligations
        if ob.mask is not None:
            detectors.update(dict.fromkeys(ob.mask.detectors))
            fields.update(dict.fromkeys(ob.mask.fields))
            paths.update(dict.fromkeys(ob.mask.paths))
            modes.add(ob.mask.mode)
            filter_modes.add(ob.mask.filters)
        strip = strip or ob.strip_vectors
        if ob.inject_filter is not None and c.rule.id not in filters:
            filters[c.rule.id] = AppliedRowFilter(rule_id=c.rule.id, filter=ob.inject_filter)
    mask = None
    if modes:
        mask = MaskSpec(detectors=list(detectors),  # type: ignore[arg-type]
                        fields=list(fields), paths=list(paths),
                        mode="placeholder" if "placeholder" in modes else "hmac",
                        filters="deny" if "deny" in filter_modes else "allow")
    return RequestObligations(mask=mask, strip_vectors=strip, row_filters=list(filters.values()))


def _merge_approvals(policy: Policy, rules: list[Rule]) -> ApprovalRequirement | None:
    specs: list[tuple[str, ApproverSpec]] = []
    seen: set[str] = set()
    for rule in rules:
        spec = policy.approvers_for(rule)
        if spec is not None and rule.id not in seen:
            seen.add(rule.id)
            specs.append((rule.id, spec))
    if not specs:
        return None
    # AND of ORs of AND-sets: one approver must satisfy every rule, so take the
    # cross product; dropping alternatives past the cap only makes it stricter
    sets: list[frozenset[str]] = [frozenset()]
    for _, spec in specs:
        product = [a | frozenset(b) for a in sets for b in spec.groups_any_of]
        sets = list(dict.fromkeys(product))[:_MAX_APPROVER_SETS]
    return ApprovalRequirement(
        rule_ids=list(dict.fromkeys(rid for rid, _ in specs)),
        groups_any_of=[sorted(s) for s in sets],
        min_approvals=max(s.min_approvals for _, s in specs),
        expires_after=min(s.expires_after for _, s in specs),
        mode="hold" if any(s.mode == "hold" for _, s in specs) else "async",
    )
