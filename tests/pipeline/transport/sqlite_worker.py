"""Subprocess roles for the multi-process SqliteEventLog tests (test_sqlite.py).

Run as ``python sqlite_worker.py ROLE PATH ...``. Every line is printed and flushed
only after the operation it reports has returned, so the parent can treat a line
it read as something the log acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys

from pipeline.transport.base import AppendRecord
from pipeline.transport.sqlite import SqliteEventLog


def crash_value(i: int) -> bytes:
    """The unique, checkable value of record ``i`` in the crash test (~300 bytes)."""
    return f"crash-{i:06d}-".encode() + hashlib.sha256(str(i).encode()).hexdigest().encode() * 4


async def append_many(path: str, total: int, window: int, inline: bool = False) -> None:
    """Keep ``window`` single-record appends in flight until ``total`` are acknowledged,
    printing ``offset i`` for each, so the writer thread is always mid-transaction."""
    async with SqliteEventLog(path, commit_inline_when_idle=inline) as log:
        slots = asyncio.Semaphore(window)

        async def one(i: int) -> None:
            async with slots:
                [position] = await log.append([AppendRecord(b"crash", crash_value(i))])
                # Padded, so the pipe buffer holds few lines and the parent's kill
                # lands while this process is still appending.
                sys.stdout.write(f"{position.offset:>12} {i:>12}\n")
                sys.stdout.flush()

        await asyncio.gather(*(one(i) for i in range(total)))
    sys.stdout.write("done\n")
    sys.stdout.flush()


async def sessions(path: str, prefix: str, keys: int, per_key: int) -> None:
    """Like gateway sessions: the keys run concurrently, but each key appends its
    events in order, awaiting each append (sometimes two events in one append)."""
    async with SqliteEventLog(path) as log:

        async def session(k: int) -> None:
            key = f"{prefix}-{k}".encode()
            seq = 0
            while seq < per_key:
                n = 2 if seq % 7 == 3 and seq + 1 < per_key else 1
                batch = [AppendRecord(key, key + b":%d" % (seq + j)) for j in range(n)]
                await log.append(batch)
                seq += n

        await asyncio.gather(*(session(k) for k in range(keys)))
    print("done", flush=True)


async def tail(path: str, group: str, until: int, timeout: float) -> int:
    """Read as ``group`` until its position reaches offset ``until``, committing after
    every poll, and print ``offset key value`` for each record."""
    log = SqliteEventLog(path)
    async with log.reader(group) as reader:
        position = (await reader.committed())[0]
        deadline = asyncio.get_running_loop().time() + timeout
        while position < until:
            if asyncio.get_running_loop().time() > deadline:
                print(f"timeout at offset {position}", file=sys.stderr, flush=True)
                return 2
            records = await reader.poll(max_records=min(500, until - position), timeout=0.5)
            for r in records:
                sys.stdout.write(f"{r.offset} {r.key.decode()} {r.value.decode()}\n")
            await reader.commit()
            sys.stdout.flush()
            if records:
                position = records[-1].offset + 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="role", required=True)
    a = sub.add_parser("append")
    a.add_argument("path")
    a.add_argument("--total", type=int, required=True)
    a.add_argument("--window", type=int, default=500)
    a.add_argument("--inline", action="store_true", help="commit_inline_when_idle")
    s = sub.add_parser("sessions")
    s.add_argument("path")
    s.add_argument("--prefix", required=True)
    s.add_argument("--keys", type=int, required=True)
    s.add_argument("--per-key", type=int, required=True)
    t = sub.add_parser("tail")
    t.add_argument("path")
    t.add_argument("--group", required=True)
    t.add_argument("--until", type=int, required=True)
    t.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if args.role == "append":
        asyncio.run(append_many(args.path, args.total, args.window, args.inline))
    elif args.role == "sessions":
        asyncio.run(sessions(args.path, args.prefix, args.keys, args.per_key))
    else:
        return asyncio.run(tail(args.path, args.group, args.until, args.timeout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
