-- Invites from other servers to rooms this server is not in. The invite event
-- itself is an outlier; `room_members` holds the user's `invite` membership (so
-- sync shows it) and this row what is needed to show the room and to answer the
-- invite: the room version, the inviting server, and the state the inviter sent
-- (`invite_room_state`, as received).
create table remote_invites (
    room_id        text not null,
    user_id        text not null,
    event_id       text not null,
    room_version   text not null,
    inviter_server text not null,
    invite_state   jsonb not null,
    primary key (room_id, user_id)
);

-- History fetched with /backfill sits before everything sync has shown: it takes
-- negative stream positions (sync never reads them; pagination orders by depth).
create sequence events_backfill_seq;
