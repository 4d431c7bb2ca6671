-- Soft-failed and rejected events received in a room's graph stay outliers (never
-- in sync, /messages or the current state), but later events may name them as
-- prev events (spec: "Soft failure"; Synapse keeps both in the graph). For those
-- the state group is kept: the state after a soft-failed event, the state before
-- a rejected one (a rejected event changes no state). Null for every other outlier
-- (auth chains, the state at a join, invites), which cannot serve as prev events.
alter table outlier_events add column state_group bigint;
