-- The notary's signed key responses, kept per key (as Synapse's server_keys_json)
-- rather than one per server: a later response that no longer lists a key (the
-- origin forgot it, or answered spuriously) replaces only the entries of the keys
-- it does list, so the notary can still serve the response that vouched for the
-- older key. An entry is the newest response listing the key, in verify_keys or
-- old_verify_keys, with that response's valid_until_ts.
create table server_key_json (
    server_name     text not null,
    key_id          text not null,
    json            text not null,
    valid_until_ts  bigint not null,
    fetched_ts      bigint not null,
    primary key (server_name, key_id)
);

insert into server_key_json (server_name, key_id, json, valid_until_ts, fetched_ts)
select r.server_name, k.key_id, r.json, r.valid_until_ts, r.fetched_ts
from server_key_responses r
cross join lateral (
    select jsonb_object_keys(case when jsonb_typeof(r.json::jsonb -> 'verify_keys') = 'object'
                                  then r.json::jsonb -> 'verify_keys' else '{}'::jsonb end)
    union
    select jsonb_object_keys(case when jsonb_typeof(r.json::jsonb -> 'old_verify_keys') = 'object'
                                  then r.json::jsonb -> 'old_verify_keys' else '{}'::jsonb end)
) as k(key_id);

drop table server_key_responses;
