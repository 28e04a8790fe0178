-- A timed-out job whose prediction is still followed for a late success says
-- so on its row, until when: generation_jobs.followed_until. The stuck rule
-- sets it (created_at + REACTOR_LATE_WINDOW) when it times out a job that has a
-- prediction; a terminal answer from the provider, or the reactor when the
-- window has ended (after canceling the prediction), clears it.
--
-- Why on the row: the submit rules must know that such a job may still
-- deliver. It counts as in flight until followed_until, and a success arriving
-- after followed_until is refused, so a plan of N never gets more than N
-- generations however a timeout and a late success interleave. The late
-- window is the reactor's setting, which the database did not know.
alter table public.generation_jobs add column if not exists followed_until timestamptz;

-- Keyed on the owner: the submit rule looks up one owner's followed jobs, and
-- the generation handler's pending scan reads it whole (it holds only jobs
-- being followed: O(followed), never O(history)). Built while the column is
-- new, so it is empty and the build only scans the table once; on a big
-- table, create it beforehand with CREATE INDEX CONCURRENTLY (same name).
create index if not exists idx_jobs_followed_owner on public.generation_jobs (owner_id)
  where followed_until is not null;

-- Jobs timed out before this migration and still inside the default late
-- window (1 hour) stay followed. A range of idx_jobs_timed_out_created: only
-- the last hour's timed-out jobs are read and written.
update public.generation_jobs
set followed_until = created_at + interval '1 hour'
where status = 'failed' and error = 'timed out' and prediction_id is not null
  and created_at > now() - interval '1 hour' and followed_until is null;

-- The window is now followed_until; nothing reads this index any more.
drop index if exists public.idx_jobs_timed_out_created;
