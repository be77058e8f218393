"""Gateway configuration: one route per upstream, each with its own listener.

The upstream credential is read from an environment variable or a file at
start; it is held as a SecretStr and never appears in events, logs or errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from capture.types import Product

__all__ = ["CREDENTIAL_HEADERS", "ConfigError", "GatewayConfig", "Route"]


class ConfigError(ValueError):
    """Bad gateway configuration; the message says which option and what to do."""


#: The header each product's server reads the API key from, and its format.
CREDENTIAL_HEADERS: dict[str, tuple[str, str]] = {
    "qdrant": ("api-key", "{secret}"),
    "chroma": ("x-chroma-token", "{secret}"),
    "pinecone": ("api-key", "{secret}"),
    "weaviate": ("authorization", "Bearer {secret}"),
    "milvus": ("authorization", "Bearer {secret}"),
}


class Route(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Product | Literal["auto"] = "auto"
    upstream: str
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(ge=0, le=65535)
    credential: SecretStr | None = None
    credential_ref: str | None = Field(
        default=None, description="Where the credential came from (name, not value)"
    )
    #: the URL clients reach this listener by (scheme://host[:port], no path),
    #: when that is not the listen address itself (a DNS name, a load
    #: balancer): DPoP proofs must be made for it. Without it, a proof must
    #: name the address the connection arrived on (loopback names accepted for
    #: a loopback listener); the client's Host header never decides.
    public_url: str | None = None
    #: Pinecone: the index every data-plane request of this route addresses,
    #: when the upstream is not that index's own *.svc.*.pinecone.io host
    #: (Pinecone Local serves each index on its own port). The client's Host
    #: header never decides it.
    pinecone_index: str | None = Field(
        default=None, pattern=r"^[a-z0-9](?:[a-z0-9-]{0,43}[a-z0-9])?$"
    )
    #: Chroma: classify the deprecated /api/v1 paths (a legacy Python server
    #: still serves them) as their v2 twins instead of denying them
    chroma_v1: bool = False

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        p = urllib.parse.urlsplit(v)
        if (p.scheme not in ("http", "https") or not p.hostname or p.username or p.password
                or p.path not in ("", "/") or p.query or p.fragment):
            raise ValueError(
                f"public URL {v!r} must be http(s)://host[:port] with no path, user or query"
            )
        return v.rstrip("/")

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, v: str) -> str:
        p = urllib.parse.urlsplit(v)
        if p.scheme not in ("http", "https") or not p.hostname:
            raise ValueError(f"upstream {v!r} must be http(s)://host[:port]")
        if p.username or p.password:
            raise ValueError(
                "put the upstream credential in --credential-env or --credential-file, "
                "not in the URL"
            )
        return v.rstrip("/")

    @property
    def mode_spec(self) -> str:
        return f"reverse:{self.upstream}@{self.listen_host}:{self.listen_port}"

    @property
    def upstream_hostport(self) -> str:
        p = urllib.parse.urlsplit(self.upstream)
        default = 443 if p.scheme == "https" else 80
        return p.hostname if (p.port or default) == default else f"{p.hostname}:{p.port}"  # type: ignore[return-value]


def load_credential(env: str | None, file: Path | None) -> tuple[SecretStr | None, str | None]:
    if env and file:
        raise ConfigError("give either --credential-env or --credential-file, not both")
    if env:
        value = os.environ.get(env)
        if not value:
            raise ConfigError(
                f"environment variable {env} is empty or unset; export the upstream API key there"
            )
        return SecretStr(value.strip()), f"env:{env}"
    if file:
        try:
            value = file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read credential file {file}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"credential file {file} is empty")
        return SecretStr(value), f"file:{file}"
    return None, None


class GatewayConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    routes: list[Route]
    policy_path: Path
    log_url: str
    issuer: str
    audience: str
    groups_claim: str = "groups"
    gateway_id: str
    session_idle_s: float = 900.0
    record_body_limit: int = 64 * 1024
    max_body_size: int = 32 * 1024 * 1024
    mask_hmac_key: SecretStr | None = None
    #: "sync" (the default): a response is delivered only once its ResponseRecorded
    #: is durable. "async" (opt-in): it is delivered while that event is being made
    #: durable; a crash in that window can lose the record of a response the client
    #: got, and a failed append is only logged (the chain shows the gap). Requests
    #: are recorded before forwarding either way (invariant 1).
    response_durability: Literal["sync", "async"] = "sync"
    tls_cert: Path | None = None
    tls_key: Path | None = None
    upstream_ca: Path | None = None
    upstream_insecure: bool = False
    #: POST approval notifications here (a secret: Slack puts its token in the path)
    approval_webhook_url: SecretStr | None = None
    #: Ed25519 key that signs Merkle checkpoints (created 0600 if missing);
    #: None: no checkpoints (the CLI always sets one, under the data dir)
    signing_key: Path | None = None
    #: a checkpoint every this many events, or after this many seconds
    checkpoint_every: int = Field(default=1000, ge=1)
    checkpoint_interval_s: float = Field(default=10.0, gt=0)
    #: longest a held request waits for its approval (then 403 approval_expired)
    hold_timeout_s: float = Field(default=300.0, gt=0)

    def config_sha256(self) -> str:
        """A hash of the configuration without secrets, for GatewayStarted."""
        data = self.model_dump(mode="json", exclude={"mask_hmac_key", "approval_webhook_url"})
        for r in data["routes"]:
            r.pop("credential", None)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
