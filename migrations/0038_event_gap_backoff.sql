-- A gap whose fill from `/backfill` brought none of its events (the servers
-- asked were down, or lied) is not asked for again before `next_try_ts`: the
-- wait doubles per failure, capped (`service::federation::backfill`), so a
-- dead server does not slow every page that reaches the gap.
alter table event_gaps
    add column failures integer not null default 0,
    add column next_try_ts bigint not null default 0;
