-- Pending queries answered from indexes that hold only pending rows, so a
-- sweep, a replay or a poll costs O(pending), not O(history).
--
-- Markers: a fact about the source row, set in the same statement as the
-- handler's effect (like rendered_at): the usage effect sets
-- generation_jobs.debited_at while inserting (or finding) the job's debit; the
-- favorites effect sets profiles.favorites_at while inserting (or finding) the
-- owner's "My Favorites". A marker is never set without its effect.
--
-- Existing rows are backfilled lazily, in bounded batches, by the reactor
-- itself: a row with a null marker is pending, and its effect finds the debit
-- or collection already there (ON CONFLICT DO NOTHING) and only sets the
-- marker, one page (REACTOR_BATCH_SIZE rows) per transaction. No statement here
-- touches existing rows, so this migration holds no long row locks.
alter table public.generation_jobs add column if not exists debited_at timestamptz;
alter table public.profiles add column if not exists favorites_at timestamptz;

-- One partial index per built-in pending condition: its predicate is exactly
-- the condition, so `where <pending> order by id limit n` walks pending rows
-- only. CREATE INDEX holds a SHARE lock (writes wait) while it builds, and
-- migrations run in a transaction, where CONCURRENTLY is impossible; on a big
-- table, create these indexes beforehand with CREATE INDEX CONCURRENTLY and the
-- same names (README, "Schema"): IF NOT EXISTS then skips them.
create index if not exists idx_jobs_pending_usage on public.generation_jobs (id)
  where status = 'succeeded' and debited_at is null;
create index if not exists idx_jobs_pending_renders on public.generation_jobs (id)
  where status = 'succeeded' and output is not null and rendered_at is null;
create index if not exists idx_jobs_in_flight on public.generation_jobs (id)
  where status in ('starting', 'processing');
-- Timed-out jobs are followed for a late success within REACTOR_LATE_WINDOW:
-- the window is a range of this index (timed-out jobs older than it stay in
-- the index but outside the range).
create index if not exists idx_jobs_timed_out_created on public.generation_jobs (created_at)
  where status = 'failed' and error = 'timed out' and prediction_id is not null;
create index if not exists idx_profiles_pending_favorites on public.profiles (id)
  where favorites_at is null;
