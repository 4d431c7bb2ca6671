-- Registration across a UIA session (as Synapse does): the parameters of the
-- session's requests are remembered, so the request that completes the last
-- stage may carry only `auth`; the password is kept only as its hash. A spent
-- session is kept (until it expires) with the account it registered, so a retry
-- of the completed session answers with the same account instead of failing
-- or creating another.
alter table uia_sessions
    add column params jsonb,
    add column password_hash text,
    add column spent boolean not null default false,
    add column registered_user text;

-- What a session authorises beyond its kind and user (for deleting devices,
-- which devices): a session started for one operation cannot complete another.
alter table uia_sessions add column operation text;
