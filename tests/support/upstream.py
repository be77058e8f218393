"""A recording HTTP upstream on loopback: answers like a vector database and
remembers every request that reached it (to prove what was not forwarded)."""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["Answer", "Recorded", "RecordingUpstream", "recording_upstream"]

#: ``answer(method, path, body)`` → the JSON to send back with status 200, or
#: ``(status, JSON)``; ``path`` keeps its query string, ``body`` is the raw bytes.
Answer = Callable[[str, str, bytes], Any]

DEFAULT_ANSWER: Any = {
    "result": {
        "points": [{"id": 1, "payload": {"email": "bob@example.org"}, "vector": [0.1, 0.2]}]
    },
    "status": "ok",
    "time": 0.001,
}


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RecordingUpstream:
    url: str
    requests: list[Recorded] = field(default_factory=list)
    #: JSON answered to every request (Qdrant's envelope by default), or an
    #: :data:`Answer` callable that answers per request
    answer: Any = None


@contextlib.contextmanager
def recording_upstream(
    answer: Any = None, *, tls: tuple[Path, Path] | None = None
) -> Iterator[RecordingUpstream]:
    """Serve on 127.0.0.1 and a free port; with ``tls=(cert, key)`` over https."""
    state = RecordingUpstream(url="", answer=answer)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _handle(self) -> None:
            n = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(n) if n else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            with lock:
                state.requests.append(Recorded(self.command, self.path, headers, body))
            status = 200
            if callable(state.answer):
                payload = state.answer(self.command, self.path, body)
                if isinstance(payload, tuple):
                    status, payload = payload
            else:
                payload = state.answer if state.answer is not None else DEFAULT_ANSWER
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle  # noqa: N815

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    scheme = "http"
    if tls is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(tls[0]), str(tls[1]))
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    state.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
