from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.services import tansu_broker


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Tansu broker for the whole test session (started, not assumed)."""
    with tansu_broker(tmp_path_factory.mktemp("tansu")) as bootstrap:
        yield bootstrap


@pytest.fixture
def kafka_topic() -> str:
    """A fresh topic name per test, so tests never see each other's records."""
    return f"embedguard.test.{uuid.uuid4().hex[:12]}"


@pytest.fixture
def sqlite_log_path(tmp_path: Path) -> Path:
    return tmp_path / "events.db"
