-- The device whose session set each pusher (Synapse records its access token).
-- A pusher goes with its device: logout, device deletion, and a password change
-- that logs out the other devices delete it, as Synapse deletes the pushers of
-- the access tokens it revokes. Null for pushers set before this column.
alter table pushers add column device_id text;
alter table pushers add constraint pushers_device foreign key (user_id, device_id)
    references devices (user_id, device_id) on delete cascade;
