-- Events that notify a user, from evaluating their push rules when the event is
-- persisted. Sync counts the rows after the user's read receipt for
-- `unread_notifications`; rows before the receipt may be pruned.
create table event_push_actions (
    user_id          text not null,
    room_id          text not null,
    stream_ordering  bigint not null,
    event_id         text not null,
    thread_id        text not null,   -- '' for the main timeline, else the thread root
    highlight        boolean not null,
    primary key (user_id, room_id, stream_ordering)
);
