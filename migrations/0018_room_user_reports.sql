-- Reports of whole rooms (spec v1.13) and of users (v1.14), for the server's
-- administrators, like event_reports.
create table room_reports (
    report_id      bigserial primary key,
    room_id        text not null,
    reporter       text not null,
    reason         text not null,
    created_ts     bigint not null
);

create table user_reports (
    report_id      bigserial primary key,
    target_user_id text not null,
    reporter       text not null,
    reason         text not null,
    created_ts     bigint not null
);
