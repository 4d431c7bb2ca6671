-- Account erasure (`erase` on deactivation, spec v1.10): events an erased user
-- sent are served redacted to anyone who was not joined when they were sent.
alter table users add column erased boolean not null default false;
