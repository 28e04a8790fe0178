-- The lock that serializes an owner's submissions, on a row no outsider can
-- reach (replaces pg_advisory_xact_lock(hashtext('reactor.submit'),
-- hashtext(owner_id)) in reactor.enforce_submit_rules()).
--
-- Advisory-lock keys are global to the database and any login may take them,
-- even one with no grants at all; user ids are public (job_status payloads).
-- An outsider holding that key in an open transaction stalled the owner's
-- submissions until their statement timeout.
--
-- A row of reactor.submit_locks can be locked only by a role that may update
-- the table (nobody but its owner: no grants, no foreign keys point at it), so
-- only the security definer functions below and the reactor's own login reach
-- it. Not profiles: jobs do not reference profiles (an owner may have none),
-- and any session of the owner may lock its own profile row, which would hold
-- up the reactor's late successes (see reactor.lock_submissions' callers).
-- One row per owner who ever submitted; rows are never deleted.
create table if not exists reactor.submit_locks (
  owner_id uuid primary key
);
revoke all on table reactor.submit_locks from public;

-- Takes the owner's submit lock until the end of the transaction. Called by
-- reactor.enforce_submit_rules() before its checks, and by the reactor before
-- it records a prediction's success (so a late success and a submission of the
-- same owner are ordered: one sees the other).
create or replace function reactor.lock_submissions(p_owner uuid) returns void
language plpgsql security definer set search_path = pg_catalog as $$
begin
  insert into reactor.submit_locks (owner_id) values (p_owner) on conflict do nothing;
  perform 1 from reactor.submit_locks where owner_id = p_owner for no key update;
end
$$;
revoke all on function reactor.lock_submissions(uuid) from public, anon, authenticated;
