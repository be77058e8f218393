"""compose.yaml is valid YAML describing the server mode, wired together.

`docker compose config` needs an engine, which these machines do not have, so
this checks the structure that compose would check and the wiring we rely on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert isinstance(data, dict)
    return data


def test_services_exist(compose: dict[str, Any]) -> None:
    assert {"kafka", "clickhouse", "gateway", "loader", "dashboard", "qdrant"} <= set(
        compose["services"]
    )


def test_kafka_runs_kraft(compose: dict[str, Any]) -> None:
    env = compose["services"]["kafka"]["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"]
    assert "ZOOKEEPER" not in " ".join(env)
    assert compose["services"]["kafka"]["image"].startswith("apache/kafka:")


def test_clickhouse_server(compose: dict[str, Any]) -> None:
    ch = compose["services"]["clickhouse"]
    assert ch["image"].startswith("clickhouse/clickhouse-server:")
    assert "healthcheck" in ch


@pytest.mark.parametrize("svc", ["gateway", "loader", "dashboard"])
def test_embedguard_services_are_wired(compose: dict[str, Any], svc: str) -> None:
    s = compose["services"][svc]
    assert s["command"].startswith(f"embedguard {svc}")
    env = s["environment"]
    assert env["EMBEDGUARD_LOG"].startswith("kafka://kafka:9092")
    assert env["EMBEDGUARD_WAREHOUSE"].startswith("clickhouse://")
    for dep in s["depends_on"]:
        assert dep in compose["services"]
    assert s.get("build") == "." and (ROOT / "Dockerfile").exists()


def test_gateway_fronts_qdrant_and_holds_its_key(compose: dict[str, Any]) -> None:
    gw = compose["services"]["gateway"]
    assert "--upstream http://qdrant:6333" in gw["command"]
    assert "--log kafka://kafka:9092" in gw["command"]
    assert "qdrant_api_key" in gw["secrets"]
    assert gw["deploy"]["replicas"] >= 2
    # Qdrant is not published: only the gateway reaches it, and gRPC is off.
    q = compose["services"]["qdrant"]
    assert "ports" not in q
    assert q["environment"]["QDRANT__SERVICE__GRPC_PORT"] == "null"


def test_loader_writes_clickhouse_from_kafka(compose: dict[str, Any]) -> None:
    cmd = compose["services"]["loader"]["command"]
    assert "--log kafka://kafka:9092" in cmd and "--warehouse clickhouse://" in cmd
    assert (
        compose["services"]["loader"]["depends_on"]["clickhouse"]["condition"] == "service_healthy"
    )


def test_no_plaintext_secrets(compose: dict[str, Any]) -> None:
    text = (ROOT / "compose.yaml").read_text()
    assert "${CLICKHOUSE_PASSWORD" in text and "${QDRANT_API_KEY" in text
    for svc in compose["services"].values():
        for k, v in (svc.get("environment") or {}).items():
            if any(w in k for w in ("PASSWORD", "API_KEY", "SECRET")) and not k.endswith("_FILE"):
                assert str(v).startswith("${"), f"{k} must come from the environment"
