"""A small client for the Confluent Schema Registry REST API.

Only the two calls the codec needs: register a schema under a subject (returns
its global id) and fetch a schema by id. Both are cached; ids never change.
Subjects follow the RecordNameStrategy (the record's full name), so one topic
can carry every event type.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["RegistryError", "SchemaRegistryClient"]

_CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


class RegistryError(Exception):
    """The schema registry refused a call or could not be reached."""


class SchemaRegistryClient:
    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise RegistryError(
                f"schema registry URL {self.redacted(url)!r} is not http(s)://host:port; "
                "pass the registry's base URL"
            )
        self._base = url.rstrip("/")
        self._timeout = timeout
        self._ids: dict[tuple[str, str], int] = {}
        self._schemas: dict[int, str] = {}
        self._lock = threading.Lock()

    @staticmethod
    def redacted(url: str) -> str:
        """The URL without any user:password part, for messages."""
        p = urllib.parse.urlsplit(url)
        host = p.hostname or ""
        if p.port:
            host = f"{host}:{p.port}"
        return urllib.parse.urlunsplit((p.scheme, host, p.path, "", ""))

    @property
    def url(self) -> str:
        return self.redacted(self._base)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
            self._base + path,
            data=data,
            method=method,
            headers={"Content-Type": _CONTENT_TYPE, "Accept": _CONTENT_TYPE},
        )
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as resp:  # noqa: S310
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            with exc:
                detail = exc.read()[:500].decode("utf-8", "replace")
            raise RegistryError(
                f"schema registry {self.url} answered {exc.code} to {method} {path}: {detail}"
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryError(
                f"schema registry {self.url} is unreachable ({exc}); check the URL or start it"
            ) from None

    def register(self, subject: str, schema: str) -> int:
        key = (subject, schema)
        with self._lock:
            if key in self._ids:
                return self._ids[key]
        quoted = urllib.parse.quote(subject, safe="")
        answer = self._call("POST", f"/subjects/{quoted}/versions", {"schema": schema})
        schema_id = int(answer["id"])
        with self._lock:
            self._ids[key] = schema_id
            self._schemas[schema_id] = schema
        return schema_id

    def get_schema(self, schema_id: int) -> str:
        with self._lock:
            if schema_id in self._schemas:
                return self._schemas[schema_id]
        answer = self._call("GET", f"/schemas/ids/{schema_id}")
        schema = str(answer["schema"])
        with self._lock:
            self._schemas[schema_id] = schema
        return schema
