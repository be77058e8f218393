-- embedguard warehouse, migration 0005: what settling an approval needs, as columns.
--
-- The gateways settle an approval (capture/approvals/state.py) on who voted,
-- by issuer and subject: the requester's own vote and a second vote by one
-- person never count, and neither does a vote at or after the deadline, which
-- an ApprovalExpired's expired_at can bring forward. The approvals table had
-- the subjects only, so the warehouse's fold (pipeline/queries.py) read the
-- issuers and expired_at from the events' payloads, which costs a read of the
-- large payload_json column. These columns carry them.
--
-- Rows loaded before this migration keep NULL here; the fold then falls back
-- to the payloads for the approvals that need them (an expiry, a vote by the
-- requester's subject, a subject voting twice). `embedguard warehouse
-- rebuild` fills them everywhere. The lake adds the same nullable columns to
-- its Delta tables.

ALTER TABLE {db}.approvals ADD COLUMN IF NOT EXISTS requester_issuer Nullable(String)
;
ALTER TABLE {db}.approvals ADD COLUMN IF NOT EXISTS approver_issuer Nullable(String)
;
ALTER TABLE {db}.approvals ADD COLUMN IF NOT EXISTS expired_at Nullable(DateTime64(6, 'UTC'))
