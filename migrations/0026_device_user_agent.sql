-- The user agent a device was last seen with (reported by whois, as Synapse does).
alter table devices add column last_seen_user_agent text;
