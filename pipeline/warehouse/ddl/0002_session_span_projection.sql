-- embedguard warehouse, migration 0002: a per-session projection of sessions.
--
-- The sessions list picks its page by each session's first event time, over
-- every session that matches the filters: a GROUP BY session_id of the
-- sessions table, which holds a partial row per contributing event (~0.75 per
-- event). This aggregate projection keeps one row per session per part, so
-- ClickHouse answers that GROUP BY (and the count of matching sessions) from
-- it instead of the rows: at 10M events, ~200k rows instead of ~7.5M.
-- min/max are dedup-safe, and a merge rebuilds the projection from the merged
-- rows (deduplicate_merge_projection_mode), so duplicate partial rows before
-- or after a merge change nothing.
--
-- ClickHouse only: the lake (Delta) ignores these statements; its files are
-- sorted on session_id by compaction instead (pipeline/warehouse/lake.py).

ALTER TABLE {db}.sessions MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild'
;
ALTER TABLE {db}.sessions ADD PROJECTION IF NOT EXISTS p_session_span
(
    SELECT session_id, min(occurred_at), max(occurred_at)
    GROUP BY session_id
)
;
ALTER TABLE {db}.sessions MATERIALIZE PROJECTION p_session_span
