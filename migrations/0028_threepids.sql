-- Third-party identifiers (email addresses) of local accounts, validated by a
-- mail this server sent. One account per address: the primary key is the
-- address, in its canonical form (lowercase).
create table user_threepids (
    medium        text not null,
    address       text not null,
    user_id       text not null references users (user_id) on delete cascade,
    validated_ts  bigint not null,
    added_ts      bigint not null,
    primary key (medium, address)
);
create index user_threepids_user_id on user_threepids (user_id);

-- A requestToken session: the client's secret, the address, what it is for
-- (registration, password reset, adding to an account), the current token
-- (as sha256, cleared once used, so a token validates once) and when it was
-- validated. A client repeats a request with the same client_secret, address
-- and purpose: the session is found again and a mail is sent only for a
-- higher send_attempt. A session authorises one operation (spent).
create table threepid_validation_sessions (
    session_id         text primary key,
    purpose            text not null,
    medium             text not null,
    address            text not null,
    client_secret      text not null,
    last_send_attempt  bigint not null,
    token_hash         bytea,
    token_expires_ts   bigint not null,
    next_link          text,
    validated_ts       bigint,
    spent              boolean not null default false,
    created_ts         bigint not null,
    unique (client_secret, medium, address, purpose)
);
create index threepid_validation_sessions_created on threepid_validation_sessions (created_ts);

-- The validation session a UIA session's m.login.email.identity stage used:
-- the operation it authorises acts on that address.
alter table uia_sessions add column threepid_sid text;
