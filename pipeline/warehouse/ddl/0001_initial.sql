-- embedguard warehouse, migration 0001: the initial tables.
--
-- One DDL for every backend. ClickHouse server and chDB run it as written
-- ({db} is the database); the lake backend maps each CREATE TABLE to a Delta
-- table with the same column names and types (pipeline/warehouse/ddl.py), so
-- the query text of pipeline/queries.py is the same everywhere.
--
-- Derived tables (requests, sessions, approvals) hold one PARTIAL row per event
-- that contributes to the entity; queries fold them with dedup-safe aggregates
-- (any/min/max/uniqExact over event_id), so they are right whatever the batch
-- boundaries, and a duplicate row (a retried batch before a merge) changes
-- nothing. ReplacingMergeTree keys end in event_id, so merges drop duplicates
-- too, but no query relies on a merge having happened.
--
-- events.raw keeps each event's canonical Avro bytes (what the hash chain
-- covers), so a body small enough to travel inline in its event stays there;
-- the bodies table (its own retention) is what search, display and export use.
--
-- Statements are separated by a line holding only ';'.

CREATE TABLE IF NOT EXISTS {db}.events
(
    event_id String CODEC(ZSTD(1)),
    type LowCardinality(String),
    occurred_at DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    day Date,
    gateway_id LowCardinality(String),
    session_id String,
    seq Int64 CODEC(Delta, ZSTD(1)),
    stream_seq Int64 CODEC(Delta, ZSTD(1)),
    prev_hash String CODEC(ZSTD(1)),
    request_id Nullable(String),
    subject Nullable(String),
    collections Array(String),
    actions Array(LowCardinality(String)),
    outcome Nullable(String),
    status Nullable(Int32),
    approval_id Nullable(String),
    body_sha256 Nullable(String),
    payload_json String CODEC(ZSTD(3)),
    raw String CODEC(ZSTD(3)),
    schema_fingerprint LowCardinality(String),
    writer_version LowCardinality(String),
    source LowCardinality(String),
    src_partition Int32,
    src_offset Int64 CODEC(Delta, ZSTD(1)),
    loaded_at DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    INDEX ix_event_id event_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX ix_request_id request_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX ix_type type TYPE set(64) GRANULARITY 4,
    INDEX ix_time occurred_at TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (session_id, seq, event_id)
SETTINGS non_replicated_deduplication_window = 10000
;
CREATE TABLE IF NOT EXISTS {db}.requests
(
    request_id String,
    event_id String,
    type LowCardinality(String),
    occurred_at DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    day Date,
    session_id String,
    gateway_id LowCardinality(String),
    subject Nullable(String),
    method Nullable(String),
    host Nullable(String),
    path Nullable(String),
    query Nullable(String),
    product Nullable(String),
    actions Array(LowCardinality(String)),
    collections Array(String),
    operations_json Nullable(String) CODEC(ZSTD(3)),
    op_count Nullable(Int32),
    id_count Nullable(Int64),
    vector_count Nullable(Int64),
    request_body_sha256 Nullable(String),
    request_body_size Nullable(Int64),
    outcome Nullable(String),
    matched_rules Array(String),
    reasons Array(String),
    policy_sha256 Nullable(String),
    grant_id Nullable(String),
    ticket_id Nullable(String),
    approval_id Nullable(String),
    forwarded Nullable(Bool),
    upstream Nullable(String),
    status Nullable(Int32),
    response_body_sha256 Nullable(String),
    response_body_size Nullable(Int64),
    original_body_sha256 Nullable(String),
    masked_fields Array(String),
    result_count Nullable(Int64),
    upstream_error Nullable(String),
    latency_us Nullable(Int64),
    blocked_error Nullable(String),
    blocked_reason Nullable(String),
    blocked_stage Nullable(String),
    schema_fingerprint LowCardinality(String),
    source LowCardinality(String),
    src_partition Int32,
    src_offset Int64,
    INDEX ix_session session_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX ix_approval approval_id TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX ix_req_body request_body_sha256 TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX ix_resp_body response_body_sha256 TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX ix_time occurred_at TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (request_id, event_id)
SETTINGS non_replicated_deduplication_window = 10000
;
CREATE TABLE IF NOT EXISTS {db}.sessions
(
    session_id String,
    event_id String,
    type LowCardinality(String),
    occurred_at DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    day Date,
    gateway_id LowCardinality(String),
    request_id Nullable(String),
    subject Nullable(String),
    issuer Nullable(String),
    client_address Nullable(String),
    token_id Nullable(String),
    client_session_name Nullable(String),
    user_agent Nullable(String),
    ended_reason Nullable(String),
    actions Array(LowCardinality(String)),
    collections Array(String),
    outcome Nullable(String),
    status Nullable(Int32),
    schema_fingerprint LowCardinality(String),
    source LowCardinality(String),
    src_partition Int32,
    src_offset Int64,
    INDEX ix_subject subject TYPE bloom_filter(0.01) GRANULARITY 4,
    INDEX ix_time occurred_at TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (session_id, event_id)
SETTINGS non_replicated_deduplication_window = 10000
;
CREATE TABLE IF NOT EXISTS {db}.approvals
(
    approval_id String,
    event_id String,
    type LowCardinality(String),
    occurred_at DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    day Date,
    session_id String,
    request_id Nullable(String),
    kind Nullable(String),
    requester_subject Nullable(String),
    request_sha256 Nullable(String),
    min_approvals Nullable(Int32),
    expires_at Nullable(DateTime64(6, 'UTC')),
    mode Nullable(String),
    reason Nullable(String),
    blast_radius Nullable(Int64),
    actions Array(LowCardinality(String)),
    collections Array(String),
    operations_json Nullable(String) CODEC(ZSTD(3)),
    decision Nullable(String),
    approver_subject Nullable(String),
    decision_reason Nullable(String),
    grant_id Nullable(String),
    schema_fingerprint LowCardinality(String),
    source LowCardinality(String),
    src_partition Int32,
    src_offset Int64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (approval_id, event_id)
SETTINGS non_replicated_deduplication_window = 10000
;
CREATE TABLE IF NOT EXISTS {db}.vector_lineage
(
    collection String,
    point_id String,
    event_id String,
    op_index Int32,
    action LowCardinality(String),
    occurred_at DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    day Date,
    session_id String,
    request_id String,
    product LowCardinality(String),
    ids_known Bool,
    id_count Int64,
    vector_count Int64,
    filter_present Bool,
    filter_sha256 Nullable(String),
    bulk Bool,
    schema_fingerprint LowCardinality(String),
    source LowCardinality(String),
    src_partition Int32,
    src_offset Int64,
    INDEX ix_point point_id TYPE bloom_filter(0.001) GRANULARITY 2,
    INDEX ix_request request_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (collection, point_id, event_id, op_index)
SETTINGS non_replicated_deduplication_window = 10000
;
CREATE TABLE IF NOT EXISTS {db}.bodies
(
    sha256 String,
    kind LowCardinality(String),
    event_id String,
    request_id Nullable(String),
    occurred_at DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    day Date,
    content_type Nullable(String),
    size Int64,
    body String CODEC(ZSTD(3)),
    source LowCardinality(String),
    src_partition Int32,
    src_offset Int64,
    INDEX ix_body body TYPE ngrambf_v1(3, 65536, 2, 0) GRANULARITY 1,
    INDEX ix_request request_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (sha256, kind)
SETTINGS non_replicated_deduplication_window = 10000
;
CREATE TABLE IF NOT EXISTS {db}.dead_letters
(
    source LowCardinality(String),
    src_partition Int32,
    src_offset Int64,
    record_key String,
    raw String CODEC(ZSTD(3)),
    error String,
    log_timestamp DateTime64(6, 'UTC'),
    loaded_at DateTime64(6, 'UTC'),
    day Date
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (source, src_partition, src_offset)
SETTINGS non_replicated_deduplication_window = 10000
;
CREATE TABLE IF NOT EXISTS {db}.checkpoints
(
    origin String,
    tree_size Int64,
    event_id String,
    occurred_at DateTime64(6, 'UTC'),
    day Date,
    gateway_id LowCardinality(String),
    session_id String,
    root_hash String,
    signed_note String,
    key_id String,
    schema_fingerprint LowCardinality(String),
    source LowCardinality(String),
    src_partition Int32,
    src_offset Int64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (origin, tree_size, event_id)
SETTINGS non_replicated_deduplication_window = 10000
;
CREATE TABLE IF NOT EXISTS {db}.loads
(
    source LowCardinality(String),
    src_partition Int32,
    table_name LowCardinality(String),
    first_offset Int64,
    last_offset Int64,
    token String,
    row_count Int64,
    loaded_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY (source, src_partition, table_name, last_offset)
SETTINGS non_replicated_deduplication_window = 10000
