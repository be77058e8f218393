"""The Kafka event log (server mode), on aiokafka.

Writing: every record goes to one topic (default ``embedguard.events``), keyed by
session id, so the default murmur2 partitioner keeps a session's events in one
partition and in order. ``append`` returns only after every record is
acknowledged with ``acks=all``. The idempotent producer is off, because not every
Kafka-protocol broker has it (Tansu, used in tests, does not). A retried batch may
therefore be written twice; downstream deduplicates by ``event_id``. Order within a
partition still holds across retries, because aiokafka keeps at most one request in
flight per broker.

Reading: ``KafkaLogReader`` is an ``AIOKafkaConsumer`` in a consumer group with
auto-commit off. Readers of one group share the partitions (aiokafka rebalances
them), or a reader pins ``partitions`` and still commits to the group. The consumer
runs with ``auto_offset_reset="none"``, so a position that the broker no longer
holds raises ``TruncatedLog`` instead of being skipped silently; a group with no
committed position starts at the oldest or the newest record, as the
``from_beginning`` flag asks.

Every network step is bounded by a timeout and turns into ``LogUnavailable``, whose
message names the bootstrap servers and the topic and says what to do. No message,
log line or repr contains a SASL password.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Self
from urllib.parse import parse_qsl, quote, urlsplit

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    IllegalStateError,
    KafkaError,
    MessageSizeTooLargeError,
    NoOffsetForPartitionError,
    OffsetOutOfRangeError,
    TopicAlreadyExistsError,
    for_code,
)
from aiokafka.helpers import create_ssl_context
from pydantic import SecretStr

from pipeline.transport.base import AppendRecord, EventLog, LogReader, LogRecord, Position
from pipeline.transport.errors import InvalidLogUrl, LogUnavailable, TruncatedLog

__all__ = [
    "COMPRESSIONS",
    "DEFAULT_PARTITIONS",
    "DEFAULT_PORT",
    "DEFAULT_TOPIC",
    "KafkaEventLog",
    "KafkaLogReader",
    "parse_kafka_url",
]

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "embedguard.events"
DEFAULT_PARTITIONS = 6
DEFAULT_PORT = 9092
COMPRESSIONS = ("gzip", "snappy", "lz4", "zstd")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

# Kafka's own rule for topic names.
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
#: Most bytes one fetch returns per partition (aiokafka's default is 1 MB); the
#: whole fetch stays bounded by aiokafka's fetch_max_bytes (50 MB).
FETCH_PARTITION_BYTES = 8 * 1024 * 1024
#: How long the broker may hold a fetch that finds nothing new (aiokafka: 500 ms).
FETCH_MAX_WAIT_MS = 100
_UNAVAILABLE_ERRORS = (KafkaError, OSError, TimeoutError)


# --------------------------------------------------------------------------- URLs


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean (use true or false)")


def _parse_compression(value: str) -> str | None:
    lowered = value.strip().lower()
    if lowered in ("", "none"):
        return None
    if lowered not in COMPRESSIONS:
        raise ValueError(f"{value!r} is not one of none, {', '.join(COMPRESSIONS)}")
    return lowered


#: Query options a kafka:// URL may carry, with the parser that turns each into the
#: KafkaEventLog keyword argument of the same name. Credentials are deliberately
#: absent: URLs end up in messages and events.
_URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "partitions": int,
    "replication_factor": int,
    "create_topic": _parse_bool,
    "compression": _parse_compression,
    "linger_ms": int,
    "security_protocol": str.upper,
    "sasl_mechanism": str.upper,
    "ssl_cafile": str,
    "client_id": str,
    "connect_timeout": float,
    "request_timeout": float,
    "append_timeout": float,
    "session_timeout": float,
    "heartbeat_interval": float,
}
_CREDENTIAL_HINTS = ("password", "secret", "token", "username", "user", "key")


def _parse_host(item: str) -> str:
    port_text: str | None
    if not item:
        raise InvalidLogUrl("kafka:// URL has an empty broker address; use HOST:PORT[,HOST:PORT]")
    if item.startswith("["):
        host, sep, rest = item[1:].partition("]")
        if not sep or not host:
            raise InvalidLogUrl(f"kafka:// broker address {item!r} has an unclosed IPv6 bracket")
        host = f"[{host}]"
        port_text = rest.removeprefix(":") if rest.startswith(":") else None
        if rest and port_text is None:
            raise InvalidLogUrl(f"kafka:// broker address {item!r} is not [IPv6]:PORT")
    else:
        host, sep, port_text_raw = item.rpartition(":")
        if not sep:
            host, port_text = item, None
        else:
            port_text = port_text_raw
        if not host or ":" in host:
            raise InvalidLogUrl(f"kafka:// broker address {item!r} is not HOST:PORT")
    if port_text is None or port_text == "":
        port = DEFAULT_PORT
    else:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise InvalidLogUrl(f"kafka:// broker address {item!r} has no valid port (1-65535)")
        port = int(port_text)
    return f"{host}:{port}"


def parse_kafka_url(url: str) -> tuple[str, str, dict[str, Any]]:
    """Split ``kafka://HOST:PORT[,HOST:PORT...][?topic=NAME&OPTION=VALUE...]``.

    Returns ``(bootstrap, topic, options)``: the comma-separated ``HOST:PORT`` list
    (port 9092 when missing), the topic (``embedguard.events`` when missing) and
    the other query options, already converted to the types of the
    ``KafkaEventLog`` keyword arguments they name, so that
    ``KafkaEventLog(bootstrap, topic=topic, **options)`` works.

    A URL never carries credentials: ``user:pass@`` or a password-like option is
    rejected (without echoing it); pass ``sasl_username``/``sasl_password`` as
    arguments instead. Raises InvalidLogUrl, naming the part that is wrong.
    """
    if not url.startswith("kafka://"):
        raise InvalidLogUrl("a Kafka log URL starts with kafka://, e.g. kafka://127.0.0.1:9092")
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise InvalidLogUrl(
            "kafka:// URL must not contain credentials (user:password@); pass "
            "sasl_username and sasl_password as settings instead "
            "(e.g. EMBEDGUARD_KAFKA_SASL_PASSWORD)"
        )
    if parts.path not in ("", "/"):
        raise InvalidLogUrl(
            f"kafka:// URL has a path {parts.path!r}; name the topic with ?topic=NAME instead"
        )
    if parts.fragment:
        raise InvalidLogUrl("kafka:// URL must not have a #fragment")
    if not parts.netloc:
        raise InvalidLogUrl("kafka:// URL names no broker; use kafka://HOST:PORT[,HOST:PORT]")
    bootstrap = ",".join(_parse_host(item.strip()) for item in parts.netloc.split(","))

    pairs = parse_qsl(parts.query, keep_blank_values=True)
    names = [name for name, _ in pairs]
    # Checked before anything that echoes values, so a secret never reaches a message.
    for name in names:
        if name not in _URL_OPTIONS and name != "topic" and any(
            hint in name.lower() for hint in _CREDENTIAL_HINTS
        ):
            raise InvalidLogUrl(
                f"kafka:// URL option {name!r} looks like a credential; credentials never go "
                "in a log URL, pass sasl_username/sasl_password as settings instead"
            )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise InvalidLogUrl(f"kafka:// URL repeats option(s) {', '.join(duplicates)}")

    topic = DEFAULT_TOPIC
    options: dict[str, Any] = {}
    for name, value in pairs:
        if name == "topic":
            if not _TOPIC_NAME.match(value):
                raise InvalidLogUrl(
                    f"kafka:// URL topic {value!r} is not a valid Kafka topic name "
                    "(1-249 characters from A-Z a-z 0-9 . _ -)"
                )
            topic = value
            continue
        parser = _URL_OPTIONS.get(name)
        if parser is None:
            raise InvalidLogUrl(
                f"kafka:// URL option {name!r} is unknown; known options: topic, "
                + ", ".join(sorted(_URL_OPTIONS))
            )
        try:
            options[name] = parser(value)
        except ValueError as err:
            raise InvalidLogUrl(f"kafka:// URL option {name}={value!r} is invalid: {err}") from err
    return bootstrap, topic, options


def _normalise_bootstrap(bootstrap: str | Sequence[str]) -> str:
    items = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
    try:
        return ",".join(_parse_host(item.strip()) for item in items)
    except InvalidLogUrl as err:
        raise ValueError(str(err).replace("kafka:// ", "")) from None


# --------------------------------------------------------------------------- the log


class KafkaEventLog(EventLog):
    """The event log in the Kafka topic ``topic`` on the brokers ``bootstrap``.

    ``bootstrap`` is ``"HOST:PORT[,HOST:PORT]"`` or a list of ``HOST:PORT``.

    ``start()`` creates the topic when it is missing (``create_topic``) with
    ``partitions`` partitions, ``replication_factor`` replicas and ``topic_config``
    (e.g. ``{"min.insync.replicas": "2"}``; with ``acks=all`` that is what makes an
    acknowledged record survive a broker loss). An existing topic is used as it is.

    Producer: ``compression`` (None, gzip, snappy, lz4 or zstd), ``linger_ms`` (how
    long a batch waits for more records; concurrent gateway requests share a batch),
    ``max_batch_bytes`` and ``max_request_bytes``.

    Timeouts, in seconds: ``connect_timeout`` bounds ``start()`` of the log and of a
    reader; ``request_timeout`` bounds one broker request (commit, offsets);
    ``append_timeout`` bounds a whole ``append``. Consumer groups use
    ``session_timeout`` and ``heartbeat_interval`` (Apache Kafka accepts session
    timeouts from 6 s by default; shorter ones suit test brokers).

    Security: ``security_protocol`` (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL),
    ``sasl_mechanism`` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), ``sasl_username``,
    ``sasl_password`` (kept as a SecretStr), and ``ssl_context`` or ``ssl_cafile``.
    """

    def __init__(
        self,
        bootstrap: str | Sequence[str],
        *,
        topic: str = DEFAULT_TOPIC,
        partitions: int = DEFAULT_PARTITIONS,
        replication_factor: int = 1,
        topic_config: Mapping[str, str] | None = None,
        create_topic: bool = True,
        compression: str | None = "zstd",
        linger_ms: int = 5,
        max_batch_bytes: int = 512 * 1024,
        max_request_bytes: int = 1024 * 1024,
        connect_timeout: float = 10.0,
        request_timeout: float = 10.0,
        append_timeout: float = 15.0,
        session_timeout: float = 10.0,
        heartbeat_interval: float = 3.0,
        security_protocol: str = "PLAINTEXT",
        sasl_mechanism: str | None = None,
        sasl_username: str | None = None,
        sasl_password: str | SecretStr | None = None,
        ssl_context: ssl.SSLContext | None = None,
        ssl_cafile: str | os.PathLike[str] | None = None,
        client_id: str = "embedguard",
    ) -> None:
        self.bootstrap = _normalise_bootstrap(bootstrap)
        if not _TOPIC_NAME.match(topic):
            raise ValueError(
                f"topic {topic!r} is not a valid Kafka topic name "
                "(1-249 characters from A-Z a-z 0-9 . _ -)"
            )
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        if replication_factor < 1:
            raise ValueError(f"replication_factor must be at least 1, got {replication_factor}")
        if compression is not None and compression not in COMPRESSIONS:
            raise ValueError(
                f"compression {compression!r} is not one of None, {', '.join(COMPRESSIONS)}"
            )
        if linger_ms < 0:
            raise ValueError(f"linger_ms must not be negative, got {linger_ms}")
        if max_batch_bytes < 1 or max_request_bytes < 1:
            raise ValueError("max_batch_bytes and max_request_bytes must be positive")
        for name, value in (
            ("connect_timeout", connect_timeout),
            ("request_timeout", request_timeout),
            ("append_timeout", append_timeout),
            ("session_timeout", session_timeout),
            ("heartbeat_interval", heartbeat_interval),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if heartbeat_interval >= session_timeout:
            raise ValueError(
                f"heartbeat_interval ({heartbeat_interval}s) must be shorter than "
                f"session_timeout ({session_timeout}s)"
            )
        if security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"security_protocol {security_protocol!r} is not one of "
                f"{', '.join(SECURITY_PROTOCOLS)}"
            )
        uses_sasl = security_protocol.startswith("SASL_")
        if uses_sasl:
            sasl_mechanism = sasl_mechanism or "PLAIN"
            if sasl_mechanism not in SASL_MECHANISMS:
                raise ValueError(
                    f"sasl_mechanism {sasl_mechanism!r} is not one of {', '.join(SASL_MECHANISMS)}"
                )
            if not sasl_username or sasl_password is None:
                raise ValueError(
                    f"security_protocol {security_protocol} needs sasl_username and sasl_password"
                )
        elif sasl_mechanism or sasl_username or sasl_password is not None:
            raise ValueError(
                f"SASL settings were given but security_protocol is {security_protocol}; "
                "use SASL_SSL (or SASL_PLAINTEXT) to send them"
            )
        if ssl_context is not None and ssl_cafile is not None:
            raise ValueError("give ssl_context or ssl_cafile, not both")
        if (ssl_context is not None or ssl_cafile is not None) and not security_protocol.endswith(
            "SSL"
        ):
            raise ValueError(
                f"SSL settings were given but security_protocol is {security_protocol}; "
                "use SSL or SASL_SSL"
            )

        self.topic = topic
        self.partitions = partitions
        self.replication_factor = replication_factor
        self.topic_config = dict(topic_config or {})
        self.create_topic = create_topic
        self.compression = compression
        self.linger_ms = linger_ms
        self.max_batch_bytes = max_batch_bytes
        self.max_request_bytes = max_request_bytes
        self.connect_timeout = connect_timeout
        self.request_timeout = request_timeout
        self.append_timeout = append_timeout
        self.session_timeout = session_timeout
        self.heartbeat_interval = heartbeat_interval
        self.security_protocol = security_protocol
        self.sasl_mechanism = sasl_mechanism
        self.sasl_username = sasl_username
        self._sasl_password = (
            sasl_password
            if isinstance(sasl_password, SecretStr) or sasl_password is None
            else SecretStr(sasl_password)
        )
        if security_protocol.endswith("SSL") and ssl_context is None:
            # Built now, so a missing or bad CA file fails at configuration time.
            try:
                ssl_context = create_ssl_context(cafile=ssl_cafile)
            except (OSError, ssl.SSLError) as err:
                raise ValueError(f"ssl_cafile {os.fspath(ssl_cafile or '')!r}: {err}") from err
        self._ssl_context = ssl_context
        self.client_id = client_id
        self.url = f"kafka://{self.bootstrap}?topic={quote(topic, safe='')}"
        self._producer: AIOKafkaProducer | None = None

    def __repr__(self) -> str:
        return f"KafkaEventLog({self.url!r})"

    @property
    def source_id(self) -> str:
        return f"kafka:{self.topic}"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    # -- connection settings shared by producer, consumers and admin client

    def _client_kwargs(self, role: str) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "client_id": f"{self.client_id}-{role}",
            "request_timeout_ms": int(self.request_timeout * 1000),
            "security_protocol": self.security_protocol,
        }
        if self._ssl_context is not None:
            kwargs["ssl_context"] = self._ssl_context
        if self.security_protocol.startswith("SASL_"):
            assert self._sasl_password is not None
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self._sasl_password.get_secret_value()
        return kwargs

    def _unavailable(
        self, doing: str, err: BaseException, advice: str | None = None
    ) -> LogUnavailable:
        name, text = type(err).__name__, str(err).strip().rstrip(".")
        reason = text if text.startswith(name) else f"{name}: {text}" if text else name
        return LogUnavailable(
            f"Kafka log {self.url} (bootstrap servers {self.bootstrap}, topic {self.topic!r}) "
            f"could not {doing}: {reason}. "
            + (
                advice
                or "Check that the brokers are running and reachable from this host "
                "(address, port, TLS/SASL settings), then retry."
            )
        )

    # -- lifecycle

    async def start(self) -> None:
        if self._producer is not None:
            return
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.create_topic:
                    await self._ensure_topic()
                self._producer = await self._start_producer()
        except LogUnavailable:
            raise
        except _UNAVAILABLE_ERRORS as err:
            raise self._unavailable(
                f"start within {self.connect_timeout:g}s", err
            ) from err

    async def _ensure_topic(self) -> None:
        admin = AIOKafkaAdminClient(**self._client_kwargs("admin"))
        try:
            await admin.start()
            response = await admin.create_topics(
                [
                    NewTopic(
                        self.topic,
                        self.partitions,
                        self.replication_factor,
                        topic_configs=self.topic_config,
                    )
                ]
            )
        finally:
            await admin.close()
        for result in response.topic_errors:
            code = result[1]
            error = for_code(code)
            if code == 0:
                log.info(
                    "created Kafka topic %r with %d partition(s) on %s",
                    self.topic, self.partitions, self.bootstrap,
                )
            elif error is TopicAlreadyExistsError:
                log.debug("Kafka topic %r already exists", self.topic)
            else:
                detail = result[2] if len(result) > 2 and result[2] else error.__name__
                raise LogUnavailable(
                    f"Kafka log {self.url} (bootstrap servers {self.bootstrap}) could not create "
                    f"topic {self.topic!r}: {error.__name__}: {detail}. Create the topic "
                    "yourself (or fix partitions/replication_factor/topic_config), or pass "
                    "create_topic=False if it exists and this client may not create topics."
                )

    async def _start_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            **self._client_kwargs("producer"),
            acks="all",
            enable_idempotence=False,
            compression_type=self.compression,
            linger_ms=self.linger_ms,
            max_batch_size=self.max_batch_bytes,
            max_request_size=self.max_request_bytes,
        )
        try:
            await producer.start()
            partitions = await producer.partitions_for(self.topic)
        except BaseException:
            await producer.stop()
            raise
        log.info(
            "Kafka log %s ready: %d partition(s), acks=all, compression=%s",
            self.url, len(partitions), self.compression or "none",
        )
        return producer

    async def close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is None:
            return
        try:
            async with asyncio.timeout(self.append_timeout):
                await producer.stop()
        except TimeoutError:
            # stop() marked the producer closed before it began flushing; what is
            # still unsent was never acknowledged, so no caller counted it as written.
            log.warning(
                "Kafka log %s: closing took over %gs; unacknowledged records were dropped",
                self.url, self.append_timeout,
            )

    # -- writing

    async def append(self, records: Sequence[AppendRecord]) -> list[Position]:
        if not records:
            return []
        producer = self._producer
        if producer is None:
            raise LogUnavailable(
                f"Kafka log {self.url} is not open; call start() first (or it was closed)"
            )
        futures: list[asyncio.Future[Any]] = []
        try:
            async with asyncio.timeout(self.append_timeout):
                for record in records:
                    futures.append(
                        await producer.send(self.topic, value=record.value, key=record.key)
                    )
                results = await asyncio.gather(*futures, return_exceptions=True)
        except BaseException as err:
            # Nobody will await these any more. Cancelling a delivery future does not
            # unsend its record; it only stops "exception never retrieved" noise.
            for future in futures:
                future.cancel()
            if isinstance(err, _UNAVAILABLE_ERRORS):
                raise self._append_failed(len(records), err) from err
            raise
        positions: list[Position] = []
        for result in results:
            if isinstance(result, BaseException):
                raise self._append_failed(len(records), result) from result
            positions.append(Position(result.partition, result.offset))
        return positions

    def _append_failed(self, count: int, err: BaseException) -> LogUnavailable:
        if isinstance(err, TimeoutError):
            err = TimeoutError(f"no acknowledgement within {self.append_timeout:g}s")
        if isinstance(err, MessageSizeTooLargeError):
            what_to_do = (
                f"A record is larger than max_request_bytes ({self.max_request_bytes}); "
                "raise it together with the topic's max.message.bytes, or keep large bodies "
                "out of events (they are referenced by sha256)."
            )
        else:
            what_to_do = (
                "Check that the brokers are reachable and the topic has enough in-sync "
                "replicas, then retry; a retry may duplicate records, which downstream "
                "removes by event_id."
            )
        return self._unavailable(
            f"acknowledge {count} record(s) with acks=all",
            err,
            f"Treat none of them as written. {what_to_do}",
        )

    # -- reading

    def reader(
        self,
        group: str,
        *,
        from_beginning: bool = True,
        partitions: Sequence[int] | None = None,
    ) -> KafkaLogReader:
        """A reader in consumer group ``group``.

        Without ``partitions`` it subscribes to the topic and shares the partitions
        with the group's other readers. With ``partitions`` it reads exactly those
        (no rebalancing) but still uses and commits the group's positions.
        """
        if not group:
            raise ValueError("a reader needs a non-empty consumer group name")
        return KafkaLogReader(self, group, from_beginning=from_beginning, partitions=partitions)

    def tail_reader(
        self, *, from_beginning: bool = True, partitions: Sequence[int] | None = None
    ) -> KafkaLogReader:
        """A reader in no consumer group: it reads ``partitions`` (all the topic's
        partitions at start by default), commits nothing and joins nothing."""
        return KafkaLogReader(self, None, from_beginning=from_beginning, partitions=partitions)


# --------------------------------------------------------------------------- reader


def _known_position(consumer: AIOKafkaConsumer, tp: TopicPartition) -> int | None:
    """The consumer's next fetch offset for ``tp``, or None while it is unknown.

    aiokafka only offers an async ``position()`` that waits for the offset to be
    looked up; ``LogReader.positions`` is synchronous, so this reads the same
    partition state that ``highwater()`` reads.
    """
    try:
        state = consumer._subscription.subscription.assignment.state_value(tp)
        return int(state.position) if state is not None and state.has_valid_position else None
    except (AttributeError, KeyError):
        return None


class _ForgetRevoked(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, reader: KafkaLogReader) -> None:
        self._reader = reader

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._reader._forget({tp.partition for tp in revoked})
        if self._reader.on_revoked is not None:
            await self._reader.on_revoked(frozenset(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self._reader.on_assigned is not None:
            await self._reader.on_assigned(frozenset(tp.partition for tp in assigned))
        self._reader._apply_pending_seeks()


class KafkaLogReader(LogReader):
    """A consumer of a KafkaEventLog's topic in consumer group ``group``, or in no
    group at all when ``group`` is None (a tail reader, see ``tail_reader``).

    ``commit()`` without arguments commits what ``poll`` returned from the
    partitions this reader still owns. Positions of partitions lost in a
    rebalance are forgotten: their next owner reads them again from the group's
    committed position (at least once).

    While the brokers are unreachable, ``poll`` returns nothing (aiokafka keeps
    reconnecting in the background); ``commit``, ``committed`` and ``end_offsets``
    raise LogUnavailable after ``request_timeout``.
    """

    def __init__(
        self,
        log: KafkaEventLog,
        group: str | None,
        *,
        from_beginning: bool = True,
        partitions: Sequence[int] | None = None,
    ) -> None:
        if partitions is not None:
            if not partitions:
                raise ValueError("partitions, when given, must name at least one partition")
            if any(p < 0 for p in partitions):
                raise ValueError(f"partition numbers must not be negative, got {list(partitions)}")
        self._log = log
        self.group = group
        self.from_beginning = from_beginning
        self.pinned = frozenset(partitions) if partitions is not None else None
        self._consumer: AIOKafkaConsumer | None = None
        self._returned: dict[int, int] = {}
        self._pending_seeks: dict[int, int] = {}
        #: Awaited inside a rebalance (group readers only), before the group moves
        #: on: ``on_revoked`` can finish work on partitions it is losing, and
        #: ``on_assigned`` can seek new ones (e.g. to the warehouse's position).
        self.on_revoked: Callable[[frozenset[int]], Awaitable[None]] | None = None
        self.on_assigned: Callable[[frozenset[int]], Awaitable[None]] | None = None

    def __repr__(self) -> str:
        return f"KafkaLogReader({self._log.url!r}, group={self.group!r})"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    @property
    def _who(self) -> str:
        return f"reader group {self.group!r}" if self.group else "tail reader"

    def _tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self._log.topic, partition)

    def _unavailable(
        self, doing: str, err: BaseException, advice: str | None = None
    ) -> LogUnavailable:
        return self._log._unavailable(f"{doing} for {self._who}", err, advice)

    def _require(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise LogUnavailable(
                f"{self._who} on Kafka log {self._log.url} is not open; "
                "call start() first (or it was closed)"
            )
        return self._consumer

    @property
    def assignment(self) -> frozenset[int]:
        """The partitions this reader owns right now (empty until the group assigns)."""
        if self._consumer is None:
            return frozenset()
        return frozenset(tp.partition for tp in self._consumer.assignment())

    async def start(self) -> None:
        if self._consumer is not None:
            return
        log_ = self._log
        consumer = AIOKafkaConsumer(
            **log_._client_kwargs("reader" if self.group else "tail"),
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="none",
            # Fewer, larger fetches: 1 MB (the default) is ~800 events per fetch;
            # the read-only rate from Tansu rose ~1.2x, at the same CPU per record.
            max_partition_fetch_bytes=FETCH_PARTITION_BYTES,
            # A fetch of a partition with nothing new waits this long on the
            # broker, and requests on the same connection (end offsets) queue
            # behind it: 500 ms (the default) held a --once loader's last end
            # offset refresh ~0.4 s. Records present are returned at once either way.
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            session_timeout_ms=int(log_.session_timeout * 1000),
            heartbeat_interval_ms=int(log_.heartbeat_interval * 1000),
        )
        try:
            async with asyncio.timeout(log_.connect_timeout):
                await consumer.start()
                if self.group is not None and self.pinned is None:
                    consumer.subscribe([log_.topic], listener=_ForgetRevoked(self))
                else:
                    existing = {tp.partition for tp in await self._partitions(consumer)}
                    if not existing:
                        raise LogUnavailable(
                            f"Kafka log {log_.url} has no topic {log_.topic!r} to read; "
                            "start the log once (it creates the topic) or create it"
                        )
                    # A tail reader reads the partitions that exist now.
                    self.pinned = frozenset(existing) if self.pinned is None else self.pinned
                    if not self.pinned <= existing:
                        raise ValueError(
                            f"topic {log_.topic!r} on {log_.bootstrap} has partitions "
                            f"0..{max(existing)}; {sorted(self.pinned - existing)} do not exist"
                        )
                    consumer.assign([self._tp(p) for p in sorted(self.pinned)])
        except BaseException as err:
            await consumer.stop()
            if isinstance(err, _UNAVAILABLE_ERRORS):
                raise self._unavailable(
                    f"start a reader within {log_.connect_timeout:g}s", err
                ) from err
            raise
        self._consumer = consumer

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is None:
            return
        try:
            async with asyncio.timeout(self._log.request_timeout):
                await consumer.stop()
        except TimeoutError:
            log.warning("%s on %s: closing timed out", self._who, self._log.url)

    # -- positions

    def _forget(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._returned.pop(partition, None)

    def _apply_pending_seeks(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        owned = self.assignment
        for partition, offset in list(self._pending_seeks.items()):
            if partition in owned:
                consumer.seek(self._tp(partition), offset)
                del self._pending_seeks[partition]

    def positions(self) -> dict[int, int]:
        """Where the next poll of each partition this reader owns starts; a
        partition whose start is not known yet (the group's committed position is
        still being looked up) is left out."""
        consumer = self._consumer
        if consumer is None:
            return {}
        result: dict[int, int] = {}
        for partition in self.assignment:
            if partition in self._pending_seeks:
                result[partition] = self._pending_seeks[partition]
                continue
            position = _known_position(consumer, self._tp(partition))
            if position is None:
                position = self._returned.get(partition)
            if position is not None:
                result[partition] = position
        return result

    def caught_up(self) -> bool:
        """Whether everything the broker reported holding, at the latest fetch
        of each partition this reader owns, was returned by ``poll``: every
        owned partition was fetched (Tansu under-reports end offsets until
        then), no seek is pending, and its next poll starts at or past the high
        watermark of that fetch. False while it owns nothing."""
        consumer = self._consumer
        if consumer is None or self._pending_seeks:
            return False
        owned = consumer.assignment()
        return bool(owned) and len(self.caught_up_partitions()) == len(owned)

    def caught_up_partitions(self) -> frozenset[int]:
        """The owned partitions whose every record the broker reported holding
        at their latest fetch was returned by ``poll``: fetched at least once, no
        seek pending, and the next poll starts at or past that fetch's high
        watermark. A partition with a fetch still to come (or in flight) after
        records already returned is not among them."""
        consumer = self._consumer
        if consumer is None:
            return frozenset()
        done: set[int] = set()
        for tp in consumer.assignment():
            if tp.partition in self._pending_seeks:
                continue
            highwater = consumer.highwater(tp)
            position = _known_position(consumer, tp)
            if highwater is not None and position is not None and position >= highwater:
                done.add(tp.partition)
        return frozenset(done)

    def seek(self, partition: int, offset: int) -> None:
        """Make the next poll of ``partition`` start at ``offset``. A partition the
        reader does not own yet is sought as soon as the group assigns it."""
        if offset < 0:
            raise ValueError(f"offset must not be negative, got {offset}")
        if self.pinned is not None and partition not in self.pinned:
            raise ValueError(
                f"partition {partition} is not among this reader's partitions {sorted(self.pinned)}"
            )
        self._pending_seeks[partition] = offset
        self._apply_pending_seeks()

    async def poll(self, max_records: int = 1000, timeout: float = 1.0) -> list[LogRecord]:
        consumer = self._require()
        if max_records < 1:
            raise ValueError(f"max_records must be at least 1, got {max_records}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout, 0.0)
        self._apply_pending_seeks()
        while True:
            remaining = max(deadline - loop.time(), 0.0)
            try:
                # getmany waits for a running rebalance without a limit; the outer
                # bound keeps poll's promise to return after about ``timeout``.
                async with asyncio.timeout(remaining + 0.5):
                    batches = await consumer.getmany(
                        timeout_ms=int(remaining * 1000), max_records=max_records
                    )
            except TimeoutError:
                return []
            except NoOffsetForPartitionError as err:
                await self._start_position(err.args[0])
                continue
            except OffsetOutOfRangeError as err:
                raise await self._truncated(err) from err
            except KafkaError as err:
                raise self._unavailable("poll", err) from err
            break

        records: list[LogRecord] = []
        record = LogRecord  # one comprehension per partition: the per-record hot loop
        for tp, messages in batches.items():
            if not messages:
                continue
            partition = tp.partition
            records += [
                record(partition, m.offset, m.key or b"", m.value or b"", m.timestamp)
                for m in messages
            ]
            self._returned[partition] = messages[-1].offset + 1
        return records

    async def _start_position(self, tp: TopicPartition) -> None:
        """The group has no committed position for ``tp``: start at either end."""
        consumer = self._require()
        try:
            if self.from_beginning:
                await consumer.seek_to_beginning(tp)
            else:
                await consumer.seek_to_end(tp)
        except IllegalStateError:
            pass  # revoked meanwhile; its next owner decides

    async def _truncated(self, err: OffsetOutOfRangeError) -> TruncatedLog:
        consumer = self._require()
        offsets: Mapping[TopicPartition, int] = err.args[0] if err.args else {}
        tp, requested = next(iter(offsets.items()), (self._tp(0), -1))
        try:
            async with asyncio.timeout(self._log.request_timeout):
                oldest = (await consumer.beginning_offsets([tp]))[tp]
                end = (await consumer.end_offsets([tp]))[tp]
        except (*_UNAVAILABLE_ERRORS, KeyError):
            oldest, end = -1, -1
        where = f"offsets {oldest}..{end - 1}" if oldest >= 0 else "a different range"
        return TruncatedLog(
            f"{self._who} asked Kafka log {self._log.url} for offset "
            f"{requested} of partition {tp.partition}, but the partition now holds {where}: "
            "retention removed the records or the topic was replaced. Decide whether the "
            "gap is acceptable, then seek() to a held offset and commit it.",
            requested=requested,
            oldest=oldest,
            partition=tp.partition,
        )

    async def commit(self, positions: Mapping[int, int] | None = None) -> None:
        consumer = self._require()
        if self.group is None:
            raise RuntimeError("a tail reader belongs to no group and cannot commit")
        if positions is None:
            owned = self.assignment
            offsets = {p: o for p, o in self._returned.items() if p in owned}
        else:
            offsets = dict(positions)
        if not offsets:
            return
        if any(o < 0 for o in offsets.values()):
            raise ValueError(f"offsets to commit must not be negative, got {offsets}")
        try:
            async with asyncio.timeout(self._log.request_timeout):
                await consumer.commit({self._tp(p): o for p, o in offsets.items()})
        except (IllegalStateError, CommitFailedError) as err:
            raise self._unavailable(
                f"commit partitions {sorted(offsets)}",
                err,
                "The group rebalanced and this reader no longer owns those partitions; "
                "their records will be read again by the new owner (at least once).",
            ) from err
        except _UNAVAILABLE_ERRORS as err:
            raise self._unavailable("commit", err) from err

    async def _partitions(self, consumer: AIOKafkaConsumer | None = None) -> list[TopicPartition]:
        consumer = consumer or self._require()
        known = consumer.partitions_for_topic(self._log.topic)
        if not known:
            admin = AIOKafkaAdminClient(**self._log._client_kwargs("admin"))
            try:
                await admin.start()
                described = await admin.describe_topics([self._log.topic])
            finally:
                await admin.close()
            known = {
                p["partition"]
                for t in described
                if t.get("error_code") == 0
                for p in t.get("partitions", [])
            }
        return [self._tp(p) for p in sorted(known)]

    async def committed(self) -> dict[int, int]:
        consumer = self._require()
        if self.group is None:
            return {}
        try:
            async with asyncio.timeout(self._log.request_timeout):
                result: dict[int, int] = {}
                for tp in await self._partitions():
                    offset = await consumer.committed(tp)
                    if offset is not None and offset >= 0:
                        result[tp.partition] = offset
                return result
        except _UNAVAILABLE_ERRORS as err:
            raise self._unavailable("read committed positions", err) from err

    async def end_offsets(self) -> dict[int, int]:
        consumer = self._require()
        try:
            async with asyncio.timeout(self._log.request_timeout):
                tps = await self._partitions()
                ends = await consumer.end_offsets(tps) if tps else {}
        except _UNAVAILABLE_ERRORS as err:
            raise self._unavailable("read end offsets", err) from err
        result = {tp.partition: int(offset) for tp, offset in ends.items()}
        # The high watermark from the latest fetch can be newer than the offsets
        # answer. Some Kafka-protocol brokers (Tansu 0.x) also answer ListOffsets
        # with the base offset of the newest batch + 1, and only fetches tell the
        # truth. Both values only grow, so the larger one is right.
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is not None and highwater > result.get(tp.partition, -1):
                result[tp.partition] = highwater
        return result
