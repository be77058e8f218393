-- embedguard warehouse, migration 0003: evidence holds.
--
-- The projection of EvidenceHeld events (pipeline/retention.py). Each part of a
-- hold gives one row with item_kind 'part' (item '') that carries the hold's
-- metadata, one row per held body (item_kind 'body', item = its sha256) and one
-- per session of the bundle (item_kind 'session', item = the session id).
-- Body retention (the hold-aware purge) never deletes a body whose sha256 is an
-- item of a hold with held_until after the purge's clock. Rows are never
-- deleted: an expired hold stays as the record that it existed.
--
-- ReplacingMergeTree keyed by (item_kind, item, hold_id, part): a duplicate row
-- (a retried batch before a merge) changes nothing, since every query reads
-- holds with IN / uniqExact.

CREATE TABLE IF NOT EXISTS {db}.evidence_holds
(
    hold_id String,
    part Int32,
    item_kind LowCardinality(String),
    item String,
    event_id String,
    occurred_at DateTime64(6, 'UTC') CODEC(DoubleDelta, ZSTD(1)),
    held_until DateTime64(6, 'UTC'),
    held_by String,
    held_by_issuer Nullable(String),
    bundle_sha256 String,
    bundle_name String,
    reason Nullable(String),
    parts Int32,
    body_count Int64,
    session_count Int64,
    event_count Int64,
    schema_fingerprint LowCardinality(String),
    source LowCardinality(String),
    src_partition Int32,
    src_offset Int64,
    INDEX ix_hold hold_id TYPE bloom_filter(0.01) GRANULARITY 4
)
ENGINE = ReplacingMergeTree
ORDER BY (item_kind, item, hold_id, part)
SETTINGS non_replicated_deduplication_window = 10000
