"""A client of the gateway's control API (``/_embedguard/``), for the CLI and
the dashboard. It sends the caller's own token; the server checks every rule.

Errors are :class:`ControlApiError` with the server's ``error`` code, its
``reason`` and ``request_id``, or a clear local reason (unreachable gateway,
an answer that is not the control API's). The token never appears in them.
"""

from __future__ import annotations

import ssl
import urllib.parse
from typing import Any

import httpx

__all__ = ["ControlApiError", "ControlClient"]


class ControlApiError(Exception):
    def __init__(
        self, code: str, reason: str, *, status: int | None = None, request_id: str | None = None
    ) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.status = status
        self.request_id = request_id


def _check_url(url: str) -> str:
    p = urllib.parse.urlsplit(url.strip())
    if p.scheme not in ("http", "https") or not p.hostname:
        raise ControlApiError(
            "bad_gateway_url",
            f"--gateway {url!r} is not an http(s)://host:port URL; set --gateway or "
            "EMBEDGUARD_GATEWAY_URL to the gateway's address",
        )
    if p.username or p.password:
        raise ControlApiError("bad_gateway_url", "put the token in --token, not in the URL")
    return f"{p.scheme}://{p.netloc}"


class ControlClient:
    def __init__(
        self,
        gateway_url: str,
        token: str,
        *,
        timeout_s: float = 30.0,
        verify: bool | str | ssl.SSLContext = True,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not token or not token.strip():
            raise ControlApiError(
                "no_token", "no token: pass --token or set EMBEDGUARD_TOKEN (e.g. "
                "`embedguard token --sub you --groups Vector-Approve` on a dev setup)")
        self.base = _check_url(gateway_url)
        if isinstance(verify, str):  # a CA bundle file
            try:
                verify = ssl.create_default_context(cafile=verify)
            except (OSError, ssl.SSLError) as exc:
                raise ControlApiError(
                    "bad_ca", f"cannot load the CA bundle {verify}: {exc}; check "
                    "EMBEDGUARD_GATEWAY_CA") from None
        self._http = httpx.Client(
            base_url=self.base,
            headers={"authorization": f"Bearer {token.strip()}",
                     "user-agent": "embedguard-cli"},
            timeout=timeout_s,
            verify=verify,
            transport=transport,
            follow_redirects=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, *, json: Any = None,
              params: dict[str, str] | None = None) -> Any:
        try:
            resp = self._http.request(method, "/_embedguard/" + path, json=json, params=params)
        except httpx.TimeoutException:
            raise ControlApiError(
                "timeout", f"the gateway at {self.base} did not answer in time; retry") from None
        except httpx.HTTPError as exc:
            raise ControlApiError(
                "unreachable",
                f"cannot reach the gateway at {self.base} ({type(exc).__name__}); check "
                "--gateway / EMBEDGUARD_GATEWAY_URL and that the gateway runs",
            ) from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ControlApiError(
                "bad_answer",
                f"{self.base} answered HTTP {resp.status_code} without a JSON object; is it an "
                "embedguard gateway?", status=resp.status_code)
        if resp.status_code >= 400:
            raise ControlApiError(
                str(body.get("error") or f"http_{resp.status_code}"),
                str(body.get("reason") or "the gateway refused the request"),
                status=resp.status_code,
                request_id=body.get("request_id"),
            )
        return body

    @staticmethod
    def _id(value: str) -> str:
        return urllib.parse.quote(value.strip(), safe="")

    # -- approvals ----------------------------------------------------------------
    def list_approvals(
        self, status: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The approvals this caller may see (of one status); with ``limit``, the
        newest ``limit`` of them, newest first."""
        params = {k: str(v) for k, v in (("status", status), ("limit", limit)) if v}
        body = self._call("GET", "approvals", params=params or None)
        return list(body.get("approvals", []))

    def get_approval(self, approval_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"approvals/{self._id(approval_id)}"))

    def decide(self, approval_id: str, decision: str, reason: str) -> dict[str, Any]:
        return dict(self._call("POST", f"approvals/{self._id(approval_id)}/decision",
                               json={"decision": decision, "reason": reason}))

    # -- tickets and grants ---------------------------------------------------------
    def open_ticket(self, *, actions: list[str], collections: list[str], window: str,
                    max_operations: int | None, reason: str) -> dict[str, Any]:
        return dict(self._call("POST", "tickets", json={
            "actions": actions, "collections": collections, "window": window,
            "max_operations": max_operations, "reason": reason}))

    def get_ticket(self, ticket_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"tickets/{self._id(ticket_id)}"))

    def list_tickets(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "tickets").get("tickets", []))

    def issue_grant(self, *, subject: str, actions: list[str], collections: list[str],
                    window: str, reason: str) -> dict[str, Any]:
        return dict(self._call("POST", "grants", json={
            "subject": subject, "actions": actions, "collections": collections,
            "window": window, "reason": reason}))

    def list_grants(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "grants").get("grants", []))
