-- Presence of local users (spec: "Presence"). Nothing runs on a timer: an
-- `online` user whose last activity is older than the idle timeout reads as
-- `unavailable` when presence is read. `stream_ordering` moves only when the
-- state or status message changes, so activity alone wakes no one's sync.
create table presence (
    user_id          text primary key,
    state            text not null,          -- online, unavailable, offline
    status_msg       text,
    last_active_ts   bigint not null,
    stream_ordering  bigint not null
);
create index presence_stream on presence (stream_ordering);

-- Full-text index for POST /search: message bodies, room names and topics.
-- Rows go when the event is redacted.
create table event_search (
    event_id         text primary key,
    room_id          text not null,
    stream_ordering  bigint not null,
    key              text not null,          -- content.body, content.name, content.topic
    vector           tsvector not null
);
create index event_search_vector on event_search using gin (vector);
create index event_search_room on event_search (room_id, stream_ordering);

-- The push rule actions that matched, for /notifications and push gateway tweaks.
alter table event_push_actions add column actions text not null default '["notify"]';
create index event_push_actions_user on event_push_actions (user_id, stream_ordering);

-- HTTP pushers (spec: "Push Notifications"). `last_stream_ordering` is the newest
-- notification already handed to the push gateway (or skipped).
create table pushers (
    user_id              text not null,
    app_id               text not null,
    pushkey              text not null,
    kind                 text not null,
    app_display_name     text not null,
    device_display_name  text not null,
    profile_tag          text,
    lang                 text not null,
    data                 text not null,      -- JSON object; `url` for http pushers
    created_ts           bigint not null,
    last_stream_ordering bigint not null,
    primary key (app_id, pushkey, user_id)
);
create index pushers_user on pushers (user_id);
