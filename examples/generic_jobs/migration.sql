-- A generic job table (job_type, payload, result, retry_count) of a
-- Chrome extension's background work, worked by the reactor's http handler
-- instead of a background worker polling it.
--   reactor migrate                      # first: creates reactor.watch_table
--   psql "$DATABASE_URL" -f examples/generic_jobs/migration.sql
--   REACTOR_CONFIG=examples/generic_jobs/reactor.toml REACTOR_HTTP_SECRET=whsec_… reactor run
-- Idempotent: safe to run twice, and where the original migration already ran.

do $$
begin
  create type public.job_status as enum ('pending', 'processing', 'completed', 'failed');
exception when duplicate_object then null;
end
$$;

-- The original table as its guide describes it.
create table if not exists public.jobs (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users(id) on delete cascade,
  status public.job_status not null default 'pending',
  job_type text not null,
  payload jsonb not null,
  result jsonb,                 -- the handler's answer "result"
  error text,                   -- why it failed
  retry_count integer not null default 0,  -- failed attempts so far (the reactor counts them)
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

create index if not exists jobs_user_id_idx on public.jobs (user_id);
create index if not exists jobs_status_idx on public.jobs (status);
create index if not exists jobs_created_at_idx on public.jobs (created_at);
create index if not exists jobs_job_type_idx on public.jobs (job_type);
-- The reactor's pending scan: rows still pending or processing, by key.
create index if not exists jobs_in_flight_idx on public.jobs (id)
  where status in ('pending', 'processing');

-- "updated_at is automatically maintained".
create or replace function public.jobs_touch_updated_at() returns trigger
language plpgsql as $$
begin
  new.updated_at := now();
  return new;
end
$$;
drop trigger if exists jobs_touch_updated_at on public.jobs;
create trigger jobs_touch_updated_at before update on public.jobs
  for each row execute function public.jobs_touch_updated_at();

-- Row-level security. The original third policy let users update their own jobs,
-- so a user could mark a job completed with any result, clear its error or
-- reset retry_count. Only the reactor (a role that bypasses RLS) writes the
-- outcome: clients get no update policy and no update privilege. This file
-- owns the table's policies: it drops whatever is there.
alter table public.jobs enable row level security;
do $$
declare
  p record;
begin
  for p in select policyname from pg_policies where schemaname = 'public' and tablename = 'jobs' loop
    execute format('drop policy %I on public.jobs', p.policyname);
  end loop;
end
$$;

create policy "jobs_owner_insert" on public.jobs for insert to authenticated
  with check (
    auth.uid() = user_id
    and status = 'pending'
    and result is null
    and error is null
    and retry_count = 0
  );
create policy "jobs_owner_select" on public.jobs for select to authenticated
  using (auth.uid() = user_id);

-- Clients may read, and insert only the input columns.
revoke all on table public.jobs from anon, authenticated;
grant select on table public.jobs to authenticated;
grant insert (id, user_id, job_type, payload) on table public.jobs to authenticated;
grant all on table public.jobs to service_role;

select reactor.watch_table('public.jobs', 'status', 'user_id');
