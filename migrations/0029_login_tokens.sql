-- Login tokens (m.login.token) issued by POST /login/get_token (MSC3882) to
-- an already logged-in user for signing in another device. Stored as
-- sha256; single use (deleted when used) and short-lived.
create table login_tokens (
    token_hash  bytea primary key,
    user_id     text not null references users (user_id) on delete cascade,
    expires_ts  bigint not null,
    created_ts  bigint not null
);
create index login_tokens_expires on login_tokens (expires_ts);
