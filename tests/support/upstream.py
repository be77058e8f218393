"""A recording HTTP upstream on loopback: answers like a vector database and
remembers every request that reached it (to prove what was not forwarded)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


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
    #: JSON answered to every request (Qdrant's envelope by default)
    answer: Any = None


@contextlib.contextmanager
def recording_upstream(answer: Any = None) -> Iterator[RecordingUpstream]:
    state = RecordingUpstream(url="", answer=answer)
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _handle(self) -> None:
            n = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(n) if n else b""
            with lock:
                state.requests.append(Recorded(self.command, self.path,
                                               {k.lower(): v for k, v in self.headers.items()}, body))
            payload = state.answer if state.answer is not None else {
                "result": {"points": [{"id": 1, "payload": {"email": "bob@example.org"},
                                       "vector": [0.1, 0.2]}]}, "status": "ok", "time": 0.001}
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle  # noqa: N815

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
