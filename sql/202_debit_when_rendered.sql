-- A generation is debited when it is delivered: the render's transaction (which
-- sets rendered_at) writes the job's debit and debited_at too, and the usage
-- handler's pending condition becomes "succeeded, rendered, not debited" (the
-- backlog of jobs rendered before this change). A job whose render dies for
-- good (its outputs expired at the provider, a permanent error) becomes
-- 'failed' with an error saying why, and is never debited.
--
-- The quota still counts a succeeded job whose debit is not written yet (it may
-- still be rendered and debited): the submit rule looks up the owner's
-- undebited succeeded jobs in this index, which holds only those rows (no
-- lookback bound, however long a render takes). Rows with output null are left
-- out: they can never be rendered, so never debited.
--
-- idx_jobs_pending_usage (succeeded, debited_at null) still serves the usage
-- handler's scan: its predicate is implied by the new pending condition.
-- CREATE INDEX holds a SHARE lock while it builds (writes wait); on a big
-- table, create it beforehand with CREATE INDEX CONCURRENTLY (same name).
create index if not exists idx_jobs_undebited_owner on public.generation_jobs (owner_id)
  where status = 'succeeded' and output is not null and debited_at is null;
