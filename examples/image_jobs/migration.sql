-- An image-effects job table: image_jobs (shadow/reflection processing), worked by the reactor's
-- http handler instead of a server polling the table.
--   reactor migrate                      # first: creates reactor.watch_table
--   psql "$DATABASE_URL" -f examples/image_jobs/migration.sql
--   REACTOR_CONFIG=examples/image_jobs/reactor.toml REACTOR_HTTP_SECRET=whsec_… reactor run
-- Idempotent: safe to run twice, and on a database where the original already ran
-- (it then only replaces the policies and privileges).

do $$
begin
  create type public.image_job_status as enum ('pending', 'processing', 'completed', 'failed');
exception when duplicate_object then null;
end
$$;

-- The original table, unchanged.
create table if not exists public.image_jobs (
  id uuid primary key default gen_random_uuid(),
  user_id uuid references auth.users(id) on delete cascade,
  created_at timestamptz default now() not null,
  status public.image_job_status default 'pending' not null,
  original_image_url text,      -- input: the clean cutout's URL
  processing_options jsonb,     -- input: shadow/reflection settings
  final_image_url text,         -- output: the handler's answer "url"
  error_message text,           -- output: why it failed
  expires_at timestamptz default now() + interval '1 hour'
);

create index if not exists idx_image_jobs_user_id_status on public.image_jobs (user_id, status);
-- The reactor's pending scan: rows still pending or processing, by key.
create index if not exists idx_image_jobs_in_flight on public.image_jobs (id)
  where status in ('pending', 'processing');

-- Row-level security. The original "Server-side updates are allowed" policy was
-- FOR UPDATE USING (true) WITH CHECK (true) for every role: any client could
-- rewrite any user's job (mark it completed, point final_image_url anywhere).
-- The reactor connects as a role that bypasses RLS, so clients need no update
-- policy at all. This file owns the table's policies: it drops whatever is there.
alter table public.image_jobs enable row level security;
do $$
declare
  p record;
begin
  for p in select policyname from pg_policies where schemaname = 'public' and tablename = 'image_jobs' loop
    execute format('drop policy %I on public.image_jobs', p.policyname);
  end loop;
end
$$;

-- A client submits only its own job, and only as a fresh one.
create policy "image_jobs_owner_insert" on public.image_jobs for insert to authenticated
  with check (
    auth.uid() = user_id
    and status = 'pending'
    and final_image_url is null
    and error_message is null
  );
create policy "image_jobs_owner_select" on public.image_jobs for select to authenticated
  using (auth.uid() = user_id);

-- Privileges: Supabase grants everything on new tables to anon and
-- authenticated; clients may read, and insert only the input columns.
revoke all on table public.image_jobs from anon, authenticated;
grant select on table public.image_jobs to authenticated;
grant insert (id, user_id, original_image_url, processing_options) on table public.image_jobs to authenticated;
grant all on table public.image_jobs to service_role;

-- Inserts and status changes notify the reactor (and dashboards on job_status).
select reactor.watch_table('public.image_jobs', 'status', 'user_id');
