-- Application services: ephemeral data in the same durable queue as events.
--
-- `kind` says which part of a transaction a row goes in: `event` (`events`),
-- `ephemeral` (typing, receipts, presence: MSC2409), `to_device` (MSC4203),
-- `device_list` (MSC3202 `device_lists`; `event_json` is
-- `{"changed": user}` or `{"left": user}`). Rows that are not events have no
-- event ID.
alter table appservice_outbox add column kind text not null default 'event';
alter table appservice_outbox alter column event_id drop not null;
