-- Faster joins as the joining server (MSC3902): when a room's resync swaps in
-- the full state, a position on the global stream. Sync treats the room as
-- newly joined for a client whose token is before it (the full state, the
-- members' device lists in `device_lists.changed`), as Synapse does with its
-- un-partial-stated rooms stream.
create table partial_state_completions (
    room_id          text not null references rooms (room_id) on delete cascade,
    stream_ordering  bigint not null,
    primary key (room_id, stream_ordering)
);
create index partial_state_completions_stream on partial_state_completions (stream_ordering);
