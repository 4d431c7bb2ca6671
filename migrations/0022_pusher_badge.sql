-- Badge-only pushes (as Synapse sends them): a read receipt changes the user's
-- unread count, and each of their HTTP pushers is then sent a notification
-- with only `counts`, so the phone's badge follows. `badge_wanted` is raised by
-- every receipt; the push worker sends one badge and records the value it saw
-- in `badge_sent`. A receipt that arrives meanwhile leaves wanted > sent, so
-- the next badge carries its count: none is lost, and bursts coalesce.
alter table pushers add column badge_wanted bigint not null default 0;
alter table pushers add column badge_sent bigint not null default 0;
