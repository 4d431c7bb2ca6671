-- The event graph: the server's signing key, rooms, events (PDUs), state stored as
-- deltas between state groups, forward extremities, and per-user transaction IDs.

-- The server's ed25519 signing keys. The newest unexpired one signs; old ones stay
-- for /_matrix/key/v2/server's old_verify_keys.
create table server_signing_keys (
    key_id         text primary key,            -- 'ed25519:abc123'
    pkcs8          bytea not null,              -- the private key document
    created_ts     bigint not null,
    expired_ts     bigint                       -- null: in use
);

create table rooms (
    room_id        text primary key,
    room_version   text not null,
    creator        text,
    -- state after the room's forward extremities (its current state)
    current_state_group bigint,
    created_ts     bigint not null
);

-- Interned (event type, state key) pairs: state rows carry a 4-byte id, not text.
create table state_keys (
    state_key_id   serial primary key,
    event_type     text not null,
    state_key      text not null,
    unique (event_type, state_key)
);

-- A state group is a full state map, stored as a delta against `parent_group`
-- (null: a full snapshot). `chain_depth` bounds how many deltas a read must merge.
create table state_groups (
    state_group    bigserial primary key,
    room_id        text not null,
    parent_group   bigint references state_groups (state_group),
    chain_depth    integer not null
);

create table state_group_entries (
    state_group    bigint not null references state_groups (state_group) on delete cascade,
    state_key_id   integer not null,
    event_id       text not null,
    primary key (state_group, state_key_id)
);

-- Every PDU, local or remote, as its canonical JSON. `stream_ordering` is the global
-- order sync follows; (depth, stream_ordering) is the topological order pagination
-- follows. `state_group` is the state *after* the event.
create table events (
    event_id        text primary key,
    room_id         text not null,
    stream_ordering bigint not null unique,
    depth           bigint not null,
    event_type      text not null,
    state_key       text,
    sender          text not null,
    origin_server_ts bigint not null,
    json            text not null,
    state_group     bigint,
    rejected        boolean not null default false,
    -- set when a redaction of this event is accepted; responses then serve the
    -- redacted form
    redacted_by     text,
    received_ts     bigint not null
);
create sequence events_stream_seq;
create index events_room_topo on events (room_id, depth, stream_ordering);
create index events_room_stream on events (room_id, stream_ordering);

create table forward_extremities (
    room_id        text not null,
    event_id       text not null,
    primary key (room_id, event_id)
);

-- Current membership per room, kept in step with the current state: the fast path
-- for joined rooms, member lists and visibility checks.
create table room_members (
    room_id        text not null,
    user_id        text not null,
    membership     text not null,              -- join, invite, leave, ban, knock
    event_id       text not null,
    stream_ordering bigint not null,
    primary key (room_id, user_id)
);
create index room_members_user on room_members (user_id, membership);

-- Rooms a user has forgotten (after leaving).
create table forgotten_rooms (
    user_id        text not null,
    room_id        text not null,
    primary key (user_id, room_id)
);

-- Client transaction IDs, for idempotent sends (per device, per spec).
create table event_txn_ids (
    user_id        text not null,
    device_id      text not null,
    txn_id         text not null,
    event_id       text not null,
    created_ts     bigint not null,
    primary key (user_id, device_id, txn_id)
);

-- Room aliases (#alias:server → room), local ones only for now.
create table room_aliases (
    room_alias     text primary key,
    room_id        text not null,
    creator        text not null,
    created_ts     bigint not null
);
create index room_aliases_room on room_aliases (room_id);
