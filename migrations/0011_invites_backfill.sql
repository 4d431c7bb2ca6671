-- A local user's invite to, or knock on, a room this server is not in. The
-- membership event itself is an outlier; `room_members` holds the membership (so
-- sync shows it) and this row what is needed to show the room and to act on it:
-- the room version, the server to go through (the inviter's, or the one knocked
-- through) and the stripped state it sent (`invite_room_state`/`knock_room_state`).
create table remote_memberships (
    room_id        text not null,
    user_id        text not null,
    membership     text not null,              -- invite, knock
    event_id       text not null unique,
    room_version   text not null,
    via_server     text not null,
    stripped_state jsonb not null,
    primary key (room_id, user_id)
);

-- History fetched with /backfill sits before everything sync has shown: it takes
-- negative stream positions (sync never reads them; pagination orders by depth).
create sequence events_backfill_seq;
