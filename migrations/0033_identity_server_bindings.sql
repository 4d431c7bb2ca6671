-- Addresses bound to local accounts on identity servers through this server
-- (`POST /account/3pid/bind`), one row per identity server, as Synapse's
-- user_threepid_id_server: unbinding (`/account/3pid/unbind` or `/delete`
-- without `id_server`, and deactivation) asks the servers recorded here.
-- The address need not be one of the account's own (user_threepids).
create table user_threepid_id_servers (
    user_id    text not null references users (user_id) on delete cascade,
    medium     text not null,
    address    text not null,
    id_server  text not null,
    primary key (user_id, medium, address, id_server)
);
