-- Application services.

-- Events waiting to be delivered to an application service, one row per
-- appservice and event, written in the transaction that writes the event.
-- `txn_id` is set when the row is put into a transaction: that transaction is
-- sent again with the same rows and ID until the appservice answers 2xx, then
-- its rows are deleted (so a restart resends it, never a different one).
create table appservice_outbox (
    id bigserial primary key,
    appservice_id text not null,
    event_id text not null,
    -- the event in client format, as it was written
    event_json text not null,
    txn_id bigint
);
create index appservice_outbox_by_service on appservice_outbox (appservice_id, id);

-- Rooms an application service published in its own room directory lists
-- (`PUT /directory/list/appservice/{networkId}/{roomId}`).
create table appservice_room_list (
    appservice_id text not null,
    network_id text not null,
    room_id text not null,
    primary key (appservice_id, network_id, room_id)
);
