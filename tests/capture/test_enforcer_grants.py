"""The grants the Enforcer passes to the policy on every request
(``ApprovalService.active_grants``, which builds only the caller's grants in
their window) are what filtering every grant of the book gives, in its order."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from capture.approvals.service import ApprovalService
from capture.approvals.state import Grant
from pipeline.transport.sqlite import SqliteEventLog
from tests.support.approvals import ISS, Clock, approval_stack, who

ANN = who("ann", "Vector-Approve")
SUBJECTS = ["dana", "eve", "frank"]


def straightforward(a: ApprovalService, subject: str, now: datetime) -> list[Grant]:
    return [g for g in a.book.grants()
            if g.kind == "jit" and g.holder(ISS, subject) and g.active(now)]


async def test_active_grants_are_the_callers_grants_in_the_books_order(tmp_path: Path) -> None:
    clock = Clock()
    async with approval_stack(SqliteEventLog(tmp_path / "events.db"), "gw-a",
                              f"sqlite:{tmp_path / 'events.db'}", clock=clock) as (_, a):
        for i in range(9):
            await a.issue_grant(ANN, subject=SUBJECTS[i % 3], actions=["upsert"],
                                collections=[f"c{i}-*"], window=timedelta(minutes=20 * (i + 1)),
                                reason=f"r{i}")
            clock.advance(timedelta(minutes=7))
        seen = 0
        for step in range(16):
            now = clock() + timedelta(minutes=15 * step)
            for subject in [*SUBJECTS, "nobody"]:
                got = a.active_grants(ISS, subject, now)
                assert got == straightforward(a, subject, now)
                assert a.active_grants("https://other.example", subject, now) == []
                seen += len(got)
        assert seen > 0  # some were active, some had expired
        assert a.active_grants(ISS, "dana", clock() + timedelta(days=1)) == []
