-- Per-user streams that /sync delivers besides room events, and the end-to-end
-- encryption key store.
--
-- Every row that sync delivers takes its position from `events_stream_seq`, the
-- same sequence as events: one number orders everything, so a sync token is one
-- position (plus the in-memory typing serial) and a sync reads each table for the
-- window (since, now].

-- Account data: global (room_id = '') and per room. One row per type; an update
-- moves the row to a new position.
create table account_data (
    user_id          text not null,
    room_id          text not null,
    data_type        text not null,
    content          text not null,
    stream_ordering  bigint not null,
    primary key (user_id, room_id, data_type)
);
create index account_data_stream on account_data (user_id, stream_ordering);

-- Receipts: the latest per (room, user, type, thread). thread_id '' = unthreaded.
create table receipts (
    room_id          text not null,
    user_id          text not null,
    receipt_type     text not null,
    thread_id        text not null,
    event_id         text not null,
    ts               bigint not null,
    stream_ordering  bigint not null,
    primary key (room_id, user_id, receipt_type, thread_id)
);
create index receipts_stream on receipts (room_id, stream_ordering);

-- To-device messages, deleted once the device's next sync acknowledges them.
create table to_device (
    id               bigserial primary key,
    user_id          text not null,
    device_id        text not null,
    stream_ordering  bigint not null,
    sender           text not null,
    event_type       text not null,
    content          text not null,
    foreign key (user_id, device_id) references devices (user_id, device_id) on delete cascade
);
create index to_device_target on to_device (user_id, device_id, stream_ordering);

-- sendToDevice idempotency per sending device and transaction ID.
create table to_device_txns (
    user_id          text not null,
    device_id        text not null,
    txn_id           text not null,
    created_ts       bigint not null,
    primary key (user_id, device_id, txn_id)
);

-- "User X's devices or cross-signing keys changed at position N": drives
-- device_lists.changed in sync and /keys/changes. Old rows may be pruned.
create table device_list_changes (
    stream_ordering  bigint not null,
    user_id          text not null,
    primary key (stream_ordering, user_id)
);
create index device_list_changes_user on device_list_changes (user_id, stream_ordering);

-- Device identity keys as uploaded (signed JSON, kept verbatim).
create table device_keys (
    user_id          text not null,
    device_id        text not null,
    json             text not null,
    primary key (user_id, device_id),
    foreign key (user_id, device_id) references devices (user_id, device_id) on delete cascade
);

-- One-time keys, claimed (deleted) one at a time.
create table one_time_keys (
    user_id          text not null,
    device_id        text not null,
    algorithm        text not null,
    key_id           text not null,
    json             text not null,
    primary key (user_id, device_id, algorithm, key_id),
    foreign key (user_id, device_id) references devices (user_id, device_id) on delete cascade
);

-- Fallback keys: one per algorithm, handed out when one-time keys run out.
create table fallback_keys (
    user_id          text not null,
    device_id        text not null,
    algorithm        text not null,
    key_id           text not null,
    json             text not null,
    used             boolean not null default false,
    primary key (user_id, device_id, algorithm),
    foreign key (user_id, device_id) references devices (user_id, device_id) on delete cascade
);

-- Cross-signing keys: master, self_signing, user_signing.
create table cross_signing_keys (
    user_id          text not null,
    key_type         text not null,
    json             text not null,
    primary key (user_id, key_type)
);

-- Signatures uploaded with /keys/signatures/upload, merged into the target key
-- when it is queried. target_key is a device ID or a cross-signing public key.
create table key_signatures (
    target_user_id   text not null,
    target_key       text not null,
    signer_user_id   text not null,
    signer_key_id    text not null,
    signature        text not null,
    primary key (target_user_id, target_key, signer_user_id, signer_key_id)
);

-- Server-side key backup (spec: "Server-side key backups").
create table room_key_backups (
    user_id          text not null,
    version          bigint not null,
    algorithm        text not null,
    auth_data        text not null,
    etag             bigint not null default 0,
    deleted          boolean not null default false,
    primary key (user_id, version)
);

create table room_key_backup_keys (
    user_id          text not null,
    version          bigint not null,
    room_id          text not null,
    session_id       text not null,
    first_message_index bigint not null,
    forwarded_count  bigint not null,
    is_verified      boolean not null,
    session_data     text not null,
    primary key (user_id, version, room_id, session_id),
    foreign key (user_id, version) references room_key_backups (user_id, version) on delete cascade
);
