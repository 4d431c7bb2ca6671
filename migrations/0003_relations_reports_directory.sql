-- Event relations (m.relates_to), content reports, and the public room directory.

create table event_relations (
    event_id        text primary key,           -- the relating event
    relates_to      text not null,              -- the event it relates to
    rel_type        text not null,              -- m.thread, m.annotation, m.replace, m.reference, ...
    room_id         text not null,
    event_type      text not null,
    sender          text not null,
    stream_ordering bigint not null
);
create index event_relations_target on event_relations (relates_to, rel_type, stream_ordering);
create index event_relations_threads on event_relations (room_id, rel_type, stream_ordering);

create table event_reports (
    report_id      bigserial primary key,
    room_id        text not null,
    event_id       text not null,
    reporter       text not null,
    reason         text,
    score          integer,
    created_ts     bigint not null
);

-- Rooms published in this server's public room directory.
alter table rooms add column published boolean not null default false;
