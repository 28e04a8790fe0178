-- Dead rows leave the pending indexes (issue 22, item 5).
--
-- A row a handler gave up on ("dead": reactor.handler_state.dead_at set)
-- stayed pending in table state: its marker was never set, since its effect
-- never happened. Every scan walked it in the partial index and probed its
-- state row to skip it (measured: 92 ms for a poll with 1% of 1M jobs dead).
-- The leased handlers already take their dead rows out (a dead generation or
-- render fails its job, an own table's row gets its failure written on it);
-- the two SQL-action handlers now do too, with a second marker:
--
--   generation_jobs.debit_dead_at    the usage handler gave up on the debit
--   profiles.favorites_dead_at       the favorites handler gave up on the collection
--
-- The reactor sets it right after it records the row dead, and the pending
-- condition (and its partial index) require it null. A dead debit
-- still counts against the quota: the submit rule reads debited_at, which
-- stays null. The dead rows are still listed from reactor.handler_state
-- (`reactor status`, the README's "Dead rows" queries), and reactor.retry()
-- clears the marker with the state row, so the row is pending again.
--
-- Existing dead rows are marked by the reactor itself, in batches of 1000 per
-- transaction, on its first tidy pass: no statement here touches existing rows.
alter table public.generation_jobs add column if not exists debit_dead_at timestamptz;
alter table public.profiles add column if not exists favorites_dead_at timestamptz;

-- The pending indexes with the new condition, under new names (the old ones
-- are dropped). CREATE INDEX holds a SHARE lock (writes wait) while it
-- builds; on a big table, create them beforehand with CREATE INDEX
-- CONCURRENTLY (README, "Schema"): IF NOT EXISTS then skips them.
create index if not exists idx_jobs_usage_workable on public.generation_jobs (id)
  where status = 'succeeded' and debited_at is null and debit_dead_at is null;
create index if not exists idx_profiles_favorites_workable on public.profiles (id)
  where favorites_at is null and favorites_dead_at is null;
drop index if exists public.idx_jobs_pending_usage;
drop index if exists public.idx_profiles_pending_favorites;
-- A new column has no statistics, and the planner then takes "is null" for
-- 0.5% of the rows: it estimated a 32,000-row backlog at 220 rows and sorted
-- all of it for every page (270 ms a page instead of 27). ANALYZE of the two
-- columns samples at most 30,000 rows and does not block writes.
analyze public.generation_jobs (debit_dead_at);
analyze public.profiles (favorites_dead_at);

-- reactor.retry() as in sql/120_retry_generation.sql, and for usage and
-- favorites the dead marker cleared, so the row is pending again.
create or replace function reactor.retry(p_handler text, p_row_id text) returns boolean
language plpgsql as $$
declare
  found_state boolean;
  was_dead boolean;
  row_key uuid;
begin
  select dead_at is not null into was_dead
    from reactor.handler_state where handler = p_handler and row_id = p_row_id;
  delete from reactor.handler_state where handler = p_handler and row_id = p_row_id;
  found_state := found;
  if p_handler = 'generation' and coalesce(was_dead, false) then
    update public.generation_jobs
      set status = 'starting', error = null, completed_at = null
      where id::text = p_row_id and status = 'failed' and prediction_id is null;
  end if;
  if p_handler in ('usage', 'favorites') then
    begin
      row_key := p_row_id::uuid;
    exception when invalid_text_representation then
      row_key := null;
    end;
    if p_handler = 'usage' then
      update public.generation_jobs set debit_dead_at = null
        where id = row_key and debit_dead_at is not null;
    else
      update public.profiles set favorites_dead_at = null
        where id = row_key and favorites_dead_at is not null;
    end if;
  end if;
  perform pg_notify('reactor', json_build_object('reactor_retry', p_handler, 'id', p_row_id)::text);
  return found_state;
end
$$;
revoke all on function reactor.retry(text, text) from public;
