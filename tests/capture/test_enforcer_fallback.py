"""Enforcer (capture/enforcer.py): a restarted ``--workers`` worker whose policy
file does not load starts from the last version that loaded, and its
PolicyChanged events say which policy it enforces (audit 3b, t15)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from capture.enforcer import Enforcer, start_from_if_invalid
from capture.policy import PolicyError, policy_sha256

V1 = """\
version: 1
rules:
  - id: readers
    effect: allow
    subjects: {groups: [Vector-Read]}
    actions: [search, read]
    collections: ["*"]
"""
V2 = V1.replace("[search, read]", "[search]")
INVALID = V1.replace("[search, read]", "[teleport]")


@pytest.fixture
def policy(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "policy.yaml"
    yield path
    start_from_if_invalid(path, None)


def _changes(enforcer: Enforcer) -> list[tuple[str | None, str]]:
    seen: list[tuple[str | None, str]] = []

    async def record(_cls: Any, **body: Any) -> None:
        seen.append((body["old_sha256"], body["new_sha256"]))

    enforcer.record_system = record
    return seen


def _touch(path: Path, text: str, n: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(n * 10**9, n * 10**9))  # a new mtime, however fast


def test_an_invalid_file_without_a_fallback_refuses_the_start(policy: Path) -> None:
    policy.write_text(INVALID)
    with pytest.raises(PolicyError, match="teleport"):
        Enforcer(policy)


def test_an_invalid_file_starts_from_the_fallback_and_follows_the_file(
    policy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _touch(policy, INVALID, 1)
    start_from_if_invalid(policy, V1)
    enforcer = Enforcer(policy)
    assert enforcer.policy.sha256 == policy_sha256(V1)
    assert "does not load" in caplog.text and "teleport" in caplog.text
    seen = _changes(enforcer)

    async def run() -> None:
        await enforcer.record_active()
        assert not await enforcer.reload_if_changed()  # the same invalid file: nothing new
        _touch(policy, V2, 2)
        assert await enforcer.reload_if_changed()

    asyncio.run(run())
    assert seen == [(None, policy_sha256(V1)), (policy_sha256(V1), policy_sha256(V2))]
    assert enforcer.policy.sha256 == policy_sha256(V2)


def test_a_file_that_loads_wins_over_the_fallback(policy: Path) -> None:
    policy.write_text(V2)
    start_from_if_invalid(policy, V1)
    assert Enforcer(policy).policy.sha256 == policy_sha256(V2)
