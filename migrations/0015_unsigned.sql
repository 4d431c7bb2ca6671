-- What clients see in an event's `unsigned` besides its age.

-- Transaction IDs are looked up by event too: a page of events shows its sender's
-- device the transaction ID it sent each event with (`unsigned.transaction_id`).
create index event_txn_ids_event on event_txn_ids (event_id);

-- The state event each state event replaced: the same (type, state key) in the
-- state before it. Written with the event's state group; served as
-- `unsigned.replaces_state`, with the replaced event's content and sender as
-- `prev_content` and `prev_sender`.
create table state_replaced (
    event_id        text primary key,
    replaces_state  text not null
);
