"""Read every event in a log, decoded, in log order (for assertions)."""

from __future__ import annotations

import asyncio

from pipeline.transport import open_log
from schemas.codec import DecodedEvent, default_codec

__all__ = ["read_events"]


def read_events(log_url: str) -> list[DecodedEvent]:
    async def read() -> list[DecodedEvent]:
        async with open_log(log_url) as lg:
            reader = lg.tail_reader()
            async with reader:
                out: list[DecodedEvent] = []
                while True:
                    batch = await reader.poll(max_records=5000, timeout=0.3)
                    if not batch:
                        return out
                    out.extend(default_codec().decode(r.value) for r in batch)

    return asyncio.run(read())
