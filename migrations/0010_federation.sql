-- Federation: remote server keys, events known only for auth and state (outliers),
-- the durable per-destination send queue, and inbound transaction idempotency.

-- Verify keys of remote servers, from their /_matrix/key/v2/server (directly or
-- through a notary). A key is usable for requests while valid_until_ts is in the
-- future; old keys (expired_ts set) still verify events signed before expiry.
create table server_keys (
    server_name     text not null,
    key_id          text not null,
    verify_key      text not null,             -- unpadded base64
    valid_until_ts  bigint not null,
    expired_ts      bigint,
    fetched_ts      bigint not null,
    primary key (server_name, key_id)
);

-- The newest signed key response per server, served again (with our signature
-- added) by the notary endpoint /_matrix/key/v2/query.
create table server_key_responses (
    server_name     text primary key,
    json            text not null,
    valid_until_ts  bigint not null,
    fetched_ts      bigint not null
);

-- Events received for their auth chain or the state of a room at a join, but not
-- part of our timeline: they never appear in sync or /messages, only where events
-- are looked up by ID.
create table outlier_events (
    event_id        text primary key,
    room_id         text not null,
    depth           bigint not null,
    event_type      text not null,
    state_key       text,
    sender          text not null,
    json            text not null,
    rejected        boolean not null default false,
    received_ts     bigint not null
);

-- Events stored and visible in the timeline but kept out of the current state
-- because they fail auth against it ("soft-failed", spec 6.3 step 6).
alter table events add column soft_failed boolean not null default false;

-- The send queue: one row per (destination, PDU or EDU), written in the transaction
-- that persists the event, deleted when the destination acknowledges the
-- transaction that carried it.
create table federation_outbox (
    id              bigserial primary key,
    destination     text not null,
    event_id        text,                      -- a PDU
    edu             text,                      -- or an EDU as JSON
    created_ts      bigint not null,
    check ((event_id is null) <> (edu is null))
);
create index federation_outbox_destination on federation_outbox (destination, id);

-- Per-destination delivery health: backoff after failures, so a dead server is
-- retried ever less often and never delays the others.
create table federation_destinations (
    destination     text primary key,
    failures        integer not null default 0,
    retry_after_ts  bigint not null default 0,
    last_error      text,
    last_success_ts bigint
);

-- Inbound /send transactions already processed, per origin: a retried transaction
-- gets the same answer without processing its PDUs twice.
create table federation_inbound_txns (
    origin          text not null,
    txn_id          text not null,
    response        text not null,
    received_ts     bigint not null,
    primary key (origin, txn_id)
);
