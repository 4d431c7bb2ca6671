-- Accounts, devices, access tokens and user-interactive auth sessions.
-- Timestamps are milliseconds since the Unix epoch (bigint), as in the Matrix APIs.

create table users (
    user_id        text primary key,            -- full MXID, @localpart:server_name
    password_hash  text,                        -- argon2id PHC string; null: no password login
    is_admin       boolean not null default false,
    is_guest       boolean not null default false,
    deactivated    boolean not null default false,
    created_ts     bigint not null
);

create table devices (
    user_id        text not null references users (user_id) on delete cascade,
    device_id      text not null,
    display_name   text,
    last_seen_ts   bigint,
    last_seen_ip   text,
    created_ts     bigint not null,
    primary key (user_id, device_id)
);

-- Access tokens are stored as sha256(token): a leaked table grants no sessions.
create table access_tokens (
    token_hash     bytea primary key,
    user_id        text not null,
    device_id      text not null,
    -- null for tokens that never expire (logins that did not ask for a refresh token)
    expires_ts     bigint,
    created_ts     bigint not null,
    foreign key (user_id, device_id) references devices (user_id, device_id) on delete cascade
);
create index access_tokens_device on access_tokens (user_id, device_id);

-- Refresh tokens, hashed like access tokens. Using one replaces the pair.
create table refresh_tokens (
    token_hash     bytea primary key,
    user_id        text not null,
    device_id      text not null,
    created_ts     bigint not null,
    foreign key (user_id, device_id) references devices (user_id, device_id) on delete cascade
);
create index refresh_tokens_device on refresh_tokens (user_id, device_id);

-- Registration tokens (m.login.registration_token), managed by the admin CLI and API.
create table registration_tokens (
    token          text primary key,
    uses_allowed   integer,                     -- null: unlimited
    pending        integer not null default 0,  -- uses in UIA sessions not yet completed
    completed      integer not null default 0,
    expiry_ts      bigint,                      -- null: never expires
    created_ts     bigint not null
);

-- User-interactive authentication sessions. `completed` lists the stage types done;
-- `bound` pins the session to what it authorises (a user, or a request hash) so a
-- session cannot be replayed for another operation.
create table uia_sessions (
    session_id     text primary key,
    kind           text not null,               -- 'register', 'delete_devices', ...
    user_id        text,                        -- the authenticated user, when there is one
    completed      text[] not null default '{}',
    registration_token text,                    -- the token this session reserved, if any
    created_ts     bigint not null
);
create index uia_sessions_created on uia_sessions (created_ts);
