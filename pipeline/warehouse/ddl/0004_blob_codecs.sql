-- embedguard warehouse, migration 0004: ZSTD(1) for the large text columns.
--
-- events.raw and payload_json, bodies.body, dead_letters.raw and the
-- operations_json of requests and approvals were ZSTD(3). Level 1 compresses
-- these rows (Avro bytes, JSON) to about the same size and costs less CPU on
-- every insert and every merge (bench/chdb_insert.py --codecs measures both;
-- docs/benchmarks.md has the figures).
--
-- A codec-only MODIFY COLUMN changes no type and rewrites no data: parts
-- written before it keep ZSTD(3) until a merge rewrites them, and read back
-- the same either way. A warehouse created after this migration runs
-- 0001..0004 in order too, so old and new warehouses end with the same codecs.
--
-- ClickHouse only: the lake (Delta) has no column codecs and skips these
-- statements (pipeline/warehouse/ddl.py, MODIFY COLUMN ... CODEC).

ALTER TABLE {db}.events MODIFY COLUMN payload_json CODEC(ZSTD(1))
;
ALTER TABLE {db}.events MODIFY COLUMN raw CODEC(ZSTD(1))
;
ALTER TABLE {db}.requests MODIFY COLUMN operations_json CODEC(ZSTD(1))
;
ALTER TABLE {db}.approvals MODIFY COLUMN operations_json CODEC(ZSTD(1))
;
ALTER TABLE {db}.bodies MODIFY COLUMN body CODEC(ZSTD(1))
;
ALTER TABLE {db}.dead_letters MODIFY COLUMN raw CODEC(ZSTD(1))
