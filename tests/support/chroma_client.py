"""Drive the official chromadb HttpClient (run with the peers venv's python).

Reads a JSON list of steps on stdin, prints one JSON result per step:
{"ok": true, "result": ...} or {"ok": false, "error": "...", "status": N}.
Telemetry is off: nothing leaves loopback.
"""

from __future__ import annotations

import json
import os
import sys

os.environ["ANONYMIZED_TELEMETRY"] = "False"

import chromadb  # noqa: E402
from chromadb.config import Settings  # noqa: E402


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    token = os.environ.get("EG_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    extra = json.loads(os.environ.get("EG_HEADERS", "{}"))
    headers.update(extra)
    steps = json.loads(sys.stdin.read())
    try:
        client = chromadb.HttpClient(
            host=host, port=port, headers=headers, settings=Settings(anonymized_telemetry=False)
        )
    except Exception as exc:  # noqa: BLE001 - report to the test
        print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}", "step": "connect"}))
        return
    for step in steps:
        op = step.pop("op")
        try:
            if op == "get_or_create_collection":
                col = client.get_or_create_collection(step["name"], embedding_function=None)
                result = {"id": str(col.id), "name": col.name}
            elif op == "delete_collection":
                client.delete_collection(step["name"])
                result = None
            else:
                col = client.get_collection(step.pop("collection"), embedding_function=None)
                fn = getattr(col, op)
                result = fn(**step)
                if hasattr(result, "items"):
                    result = {k: v for k, v in dict(result).items()}
            print(
                json.dumps(
                    {"ok": True, "result": result},
                    default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o),
                ),
                flush=True,
            )
        except Exception as exc:  # noqa: BLE001 - report to the test
            print(json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"}), flush=True)


if __name__ == "__main__":
    main()
