-- Gaps in the middle of a room's timeline (issue #20): the prev events of an
-- accepted event that we do not hold (it was accepted with the state its sender
-- gave for them, or it is the oldest of a backfilled stretch). The gap sits just
-- before `event_id` in topological order; `/messages` paging back past it asks
-- `/backfill` for the events before it and the row goes once they are held.
create table event_gaps (
    room_id text not null,
    -- The timeline event that names the missing prev event.
    event_id text not null,
    -- The prev event we do not hold.
    prev_event_id text not null,
    primary key (event_id, prev_event_id)
);
create index event_gaps_room on event_gaps (room_id);
create index event_gaps_prev on event_gaps (prev_event_id);
