-- Single sign-on through upstream OpenID Connect providers.

-- Which local user an account at an identity provider is: found by the
-- provider ("oidc-<idp_id>") and the subject it asserts on every later login.
-- One subject maps to one user; a user may be linked at several providers.
create table user_external_ids (
    auth_provider  text not null,
    external_id    text not null,
    user_id        text not null references users (user_id) on delete cascade,
    created_ts     bigint not null,
    primary key (auth_provider, external_id)
);
create index user_external_ids_user on user_external_ids (user_id);

-- Sign-ins in progress at a provider: written by /login/sso/redirect (or the
-- m.login.sso fallback page), taken once by the callback. The state sent to
-- the provider and the cookie set in the browser are stored as sha256: the
-- callback needs both, so a state alone (seen in a URL) completes nothing.
create table sso_sessions (
    state_hash     bytea primary key,
    browser_hash   bytea not null,
    idp_id         text not null,
    nonce          text not null,
    code_verifier  text,
    -- a login: where the client wants the browser back with its loginToken
    redirect_url   text,
    -- a user-interactive authentication: the session the stage completes
    uia_session    text,
    created_ts     bigint not null
);
create index sso_sessions_created on sso_sessions (created_ts);
