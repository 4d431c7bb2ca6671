-- Device lists across servers (spec: "Tracking the device list for a user").

-- A change only one user may see (their signatures on others' keys, their own
-- user-signing key): device_lists.changed of `only_for` alone, never federated.
alter table device_list_changes add column only_for text;

-- Remote users whose device lists we hold: those sharing a room with one of
-- our users. `stream_id` is the last of their server's `m.device_list_update`
-- stream IDs applied; an update whose `prev_id` names a later one means one
-- went missing, and the list is fetched again (`/user/devices`). Rows are
-- dropped when no local user shares a room with the user any more (updates
-- stop coming then), so a row is always current.
create table remote_device_lists (
    user_id          text primary key,
    stream_id        bigint not null,
    master_key       text,          -- cross-signing keys as their server sent them
    self_signing_key text,
    updated_ts       bigint not null
);

create table remote_devices (
    user_id          text not null references remote_device_lists (user_id) on delete cascade,
    device_id        text not null,
    display_name     text,
    keys             text,          -- the device keys JSON (null: none uploaded)
    primary key (user_id, device_id)
);
