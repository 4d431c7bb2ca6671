-- Profiles of local users (display name, avatar). A missing row is an empty profile.
create table profiles (
    user_id        text primary key references users (user_id) on delete cascade,
    displayname    text,
    avatar_url     text
);
-- Existing accounts start with their localpart as display name, as new ones do.
insert into profiles (user_id, displayname)
select user_id, substring(user_id from 2 for position(':' in user_id) - 2) from users
on conflict do nothing;
