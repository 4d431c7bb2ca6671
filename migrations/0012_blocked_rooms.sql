-- Rooms an administrator blocked (admin API: DELETE /_synapse/admin/v1/rooms/{roomId}
-- with "block": true, or PUT .../block): local users may not join them or be
-- invited to them. Kept when the room itself is purged.
create table blocked_rooms (
    room_id     text primary key,
    blocked_by  text not null,
    blocked_ts  bigint not null
);
