-- Profile fields beyond display name and avatar (spec v1.16, MSC4133): `m.tz`
-- and custom keys, as one JSON object of key to value.
alter table profiles add column fields text not null default '{}';
