-- Backoff as users see it (issue #20): a destination failing for long is marked
-- down, and what is queued for it is collapsed where that is safe.

-- When the destination's current run of failures began (null while it answers).
-- Failing for longer than `federation.destination_down_after_secs` marks it down.
alter table federation_destinations add column failing_since_ts bigint;

-- Queued items a newer one with the same key replaces (the older row is deleted
-- when the newer is queued): typing per room and user, public receipts per room,
-- user and thread, presence per user, and, for a destination that is down, PDUs
-- per room (the destination fetches the ones in between with
-- /get_missing_events when it takes the newest).
alter table federation_outbox add column collapse_key text;
create index federation_outbox_collapse on federation_outbox (destination, collapse_key)
    where collapse_key is not null;
