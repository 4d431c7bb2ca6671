-- Sync filters uploaded by clients (POST /user/{userId}/filter).
create table filters (
    filter_id      bigserial primary key,
    user_id        text not null,
    filter_json    text not null,
    created_ts     bigint not null
);
create index filters_user on filters (user_id);
