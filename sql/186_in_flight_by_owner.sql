-- idx_jobs_in_flight (180) is keyed on id. The submit rule "one job in flight
-- per owner" (owner_id = $1 and status in ('starting', 'processing')) then has
-- two candidate indexes, and when the statistics were taken with few jobs in
-- flight the planner picks the small partial one and filters it by owner: every
-- submission walks every in-flight job of every user. A burst of submissions,
-- or jobs piling up while the reactor is down, made each insert O(all jobs in
-- flight) (measured: 3.4 ms instead of 0.05 ms with 5,000 in flight, and half
-- the insert rate).
--
-- Keyed on owner_id, the same partial index answers that rule with one lookup,
-- and still serves what it served (the generation handler's pending page and
-- the stuck rule read it as a bitmap of in-flight rows: their order comes from
-- a sort of the in-flight rows, which is all they read anyway).
--
-- CREATE INDEX holds a SHARE lock on generation_jobs while it builds (writes
-- wait); it reads the in-flight rows only after a scan of the table. On a big
-- table run this beforehand, then the migration skips it:
--   create index concurrently if not exists idx_jobs_in_flight_owner
--     on public.generation_jobs (owner_id) where status in ('starting', 'processing');
--   drop index concurrently if exists public.idx_jobs_in_flight;
create index if not exists idx_jobs_in_flight_owner on public.generation_jobs (owner_id)
  where status in ('starting', 'processing');
drop index if exists public.idx_jobs_in_flight;
