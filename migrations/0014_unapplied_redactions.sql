-- Redactions that are not applied (spec: room versions' "Handling redactions"):
-- the event they name is not known yet, or their sender may not redact it.
-- They are withheld from clients. A row is checked again when the event it
-- names is written, and deleted when the redaction is applied.
create table unapplied_redactions (
    redaction_id    text primary key,
    redacts         text not null,
    room_id         text not null
);
create index unapplied_redactions_redacts on unapplied_redactions (redacts);
