-- OpenID tokens (`POST /user/{userId}/openid/request_token`): handed to a third
-- party, which exchanges them over federation (`/openid/userinfo`) for the user
-- ID. Stored as sha256, like access tokens, and in a table of their own, so an
-- OpenID token is never an access token and an access token never an OpenID one.
create table openid_tokens (
    token_hash  bytea primary key,
    user_id     text not null references users (user_id) on delete cascade,
    expires_ts  bigint not null
);

create index openid_tokens_expires on openid_tokens (expires_ts);
