"""Signed checkpoints over each gateway stream (architecture invariant 4).

Every event the recorder made durable is a leaf of its stream's RFC 6962
tree, at index ``stream_seq``; the leaf data is the event's Avro
single-object bytes as appended (what the hash chain covers too). Appends
finish out of order when requests run concurrently, so leaves wait in a small
buffer until the ones before them are durable: a tree only ever covers a
contiguous, durable prefix of its stream.

Every ``every`` events or ``interval_s`` seconds (whichever comes first, and
only if something new was recorded) the checkpointer signs a C2SP checkpoint
of the current stream and records it as a ``Checkpoint`` event in the
gateway's system session, so it is a leaf of the same stream. Its origin is
``embedguard/<stream>/<event id at stream_seq 0>``: a gateway restarted with
the same ``--gateway-id`` numbers its stream from 0 again, in a new tree. A stream that
was abandoned after a failed append (the recorder starts ``<id>#<epoch>``) gets
a last checkpoint over its durable prefix, recorded in the new stream. At a
clean shutdown every stream gets a final one.

The cost per event is one SHA-256 for the leaf and, amortised, one more for
the tree; signing happens only in the background task.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.chain import StampedEvent
from schemas.codec import SINGLE_OBJECT_MAGIC, EventCodec, default_codec
from schemas.merkle import Frontier
from schemas.models import Checkpoint
from schemas.note import CheckpointBody, Signer, checkpoint_origin

__all__ = ["Checkpointer", "StreamTree", "canonical_bytes"]

log = logging.getLogger("embedguard.checkpointer")

#: Records one event in the gateway's system session (Recorder.record_system).
RecordSystem = Callable[..., Awaitable[None]]


def canonical_bytes(stamped: StampedEvent, codec: EventCodec) -> bytes:
    """The single-object bytes of an event as appended, whatever its framing."""
    wire = stamped.wire
    if wire[:2] == SINGLE_OBJECT_MAGIC:
        return wire
    # Confluent framing (0x00 + 4-byte id + body): same body, current schema.
    fingerprint = codec.schemas.current[stamped.type_name].fingerprint
    return SINGLE_OBJECT_MAGIC + fingerprint + wire[5:]


@dataclass
class StreamTree:
    """The durable, contiguous prefix of one stream as a compact range."""

    stream_id: str
    frontier: Frontier = field(default_factory=Frontier)
    #: leaves that arrived before an earlier one: stream_seq -> (hash, is content)
    pending: dict[int, tuple[bytes, bool]] = field(default_factory=dict)
    #: tree size of the last checkpoint recorded for this stream
    checkpointed: int = 0
    #: leaves other than Checkpoint events since the last checkpoint
    new_content: int = 0
    #: the event id at stream_seq 0: names this run of the stream in the origin
    first_event_id: str | None = None

    @property
    def size(self) -> int:
        return self.frontier.size

    def add(self, stream_seq: int, leaf_hash: bytes, *, content: bool) -> None:
        if stream_seq == self.frontier.size and not self.pending:  # the usual case
            self.frontier.append_hash(leaf_hash)
            self.new_content += content
            return
        if stream_seq < self.frontier.size or stream_seq in self.pending:
            log.error(
                "stream %s: stream_seq %d recorded twice; ignored for the tree",
                self.stream_id,
                stream_seq,
            )
            return
        self.pending[stream_seq] = (leaf_hash, content)
        while self.frontier.size in self.pending:
            h, is_content = self.pending.pop(self.frontier.size)
            self.frontier.append_hash(h)
            self.new_content += is_content


class Checkpointer:
    def __init__(
        self,
        signer: Signer,
        *,
        every: int = 1000,
        interval_s: float = 10.0,
        codec: EventCodec | None = None,
    ) -> None:
        if every < 1:
            raise ValueError("checkpoint every must be at least 1 event")
        if interval_s <= 0:
            raise ValueError("checkpoint interval must be positive")
        self.signer = signer
        self.every = every
        self.interval_s = interval_s
        self.codec = codec or default_codec()
        self.trees: dict[str, StreamTree] = {}
        self._closed: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lock = asyncio.Lock()

    # -- feeding ------------------------------------------------------------------
    def observe(self, events: Sequence[StampedEvent]) -> None:
        """Take events that were just made durable (any order, any stream)."""
        for st in events:
            # the envelope fields StampedEvent carries: reading st.event would
            # build the model of every event the gateway stamps from a record
            stream = st.gateway_id
            if stream in self._closed:
                continue  # finalised after a failed append; no checkpoint covers it
            tree = self.trees.get(stream)
            if tree is None:
                tree = self.trees[stream] = StreamTree(stream)
            data = canonical_bytes(st, self.codec)
            leaf = hashlib.sha256(b"\x00" + data).digest()
            if st.stream_seq == 0:
                tree.first_event_id = st.event_id
            tree.add(st.stream_seq, leaf, content=st.type_name != Checkpoint.avro_name)
            if tree.new_content >= self.every:
                self._wake.set()

    # -- checkpoints --------------------------------------------------------------
    def _body(self, tree: StreamTree) -> tuple[CheckpointBody, dict[str, Any]]:
        assert tree.first_event_id is not None  # size > 0: leaf 0 is in
        origin = checkpoint_origin(tree.stream_id, tree.first_event_id)
        body = CheckpointBody(origin, tree.size, tree.frontier.root())
        fields = {
            "origin": body.origin,
            "tree_size": body.tree_size,
            "root_hash": body.root_hash.hex(),
            "signed_note": body.sign(self.signer),
            "key_id": self.signer.verifier.id_text,
        }
        return body, fields

    async def emit(self, record: RecordSystem, current_stream: str, *, final: bool = False) -> int:
        """Record the checkpoints that are due; returns how many were recorded.

        The current stream gets one if events other than checkpoints arrived
        since its last checkpoint; any other stream gets a last one over its
        durable prefix and is then closed.
        """
        recorded = 0
        async with self._lock:
            for stream, tree in list(self.trees.items()):
                current = stream == current_stream
                if current:
                    # A Checkpoint event is itself a leaf; one that follows only
                    # checkpoints would sign nothing new.
                    due = tree.new_content > 0 or (final and tree.checkpointed == 0)
                else:
                    due = tree.size > tree.checkpointed
                if due and tree.size > 0:
                    _, fields = self._body(tree)
                    content = tree.new_content
                    tree.new_content = 0
                    try:
                        await record(Checkpoint, **fields)
                    except BaseException:  # incl. cancellation: the events stay due
                        tree.new_content += content
                        raise
                    tree.checkpointed = fields["tree_size"]
                    recorded += 1
                if not current:
                    if tree.pending:
                        log.warning(
                            "stream %s closed at tree size %d; %d later event(s) are not "
                            "covered by a checkpoint (an earlier append failed)",
                            stream,
                            tree.size,
                            len(tree.pending),
                        )
                    self._closed.add(stream)
                    del self.trees[stream]
        return recorded

    async def run(self, record: RecordSystem, current_stream: Callable[[], str]) -> None:
        """Background task: checkpoint every ``every`` events or ``interval_s``."""
        from pipeline.transport import EventLogError

        while not self._stopping:
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel
            # that arrives as the wake-up completes, and stop() then waits forever.
            try:
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            if self._stopping:
                return
            self._wake.clear()
            try:
                await self.emit(record, current_stream())
            except EventLogError as exc:
                log.error("could not record a checkpoint: %s", exc)
            except Exception:  # keep checkpointing; the next round retries
                log.exception("checkpoint failed")

    def start(self, record: RecordSystem, current_stream: Callable[[], str]) -> None:
        log.info(
            "signing checkpoints every %d events or %gs with %s (pin: %s)",
            self.every,
            self.interval_s,
            self.signer.verifier.id_text,
            self.signer.verifier.vkey,
        )
        self._stopping = False
        self._task = asyncio.create_task(self.run(record, current_stream))

    async def stop(self, record: RecordSystem, current_stream: str) -> None:
        """Cancel the background task and record the final checkpoints."""
        from pipeline.transport import EventLogError

        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        try:
            await self.emit(record, current_stream, final=True)
        except EventLogError as exc:
            log.error("could not record the final checkpoint: %s", exc)
