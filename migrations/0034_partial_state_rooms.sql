-- Faster joins as the joining server (MSC3902): a room joined with partial
-- state (send_join answered with `members_omitted`) until the background
-- resync has fetched, checked and swapped in the full state at the join.
-- A row here is the mark; the resync worker resumes from these rows at start.
create table partial_state_rooms (
    room_id        text primary key references rooms (room_id) on delete cascade,
    -- our join, the room's first timeline event here
    join_event_id  text not null,
    -- the snapshot group of the partial state before the join: the resync adds
    -- the omitted entries to it (every later group is a delta over it)
    state_group    bigint not null,
    -- where to fetch the full state: the server joined through first, then
    -- the answer's `servers_in_room`
    servers        text[] not null,
    created_ts     bigint not null,
    -- failed resync rounds so far (for the backoff) and the last failure
    attempts       integer not null default 0,
    last_error     text
);
