-- A vision-board generator: vision_board_jobs (goals in, a generated board image out), worked by
-- the reactor's http handler instead of QStash and a Lambda.
--   reactor migrate                      # first: creates reactor.watch_table
--   psql "$DATABASE_URL" -f examples/vision_board/migration.sql
--   REACTOR_CONFIG=examples/vision_board/reactor.toml REACTOR_HTTP_SECRET=whsec_… reactor run
-- Idempotent: safe to run twice, and where the original schema already exists.

-- The original table, unchanged (qstash_message_id is kept for old rows; the
-- reactor does not need it).
create table if not exists public.vision_board_jobs (
  id uuid primary key default gen_random_uuid(),
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  email text,
  name text,
  rank_tag text,
  status varchar(20) default 'pending' not null,  -- pending, processing, complete, failed
  goals jsonb not null default '[]'::jsonb,
  image_url text,               -- the handler's answer "url"
  image_storage_path text,
  error_message text,
  qstash_message_id text,
  expires_at timestamptz
);

-- Added: the owner. The original has no user column and its suggested policy
-- matched rows by email, which is only what the client typed: anyone could
-- read anyone's board (name, email, goals) by submitting or knowing an email.
-- Row-level security needs a real owner: auth.uid(), filled in by default.
-- Visitors without an account can still submit with Supabase anonymous
-- sign-ins (they get a uid too). Rows from before this column stay with the
-- service only (their user_id is null).
alter table public.vision_board_jobs
  add column if not exists user_id uuid default auth.uid() references auth.users(id) on delete cascade;

-- Added: the four statuses as a rule, so a typo cannot park a job forever.
do $$
begin
  if not exists (select 1 from pg_constraint
                 where conrelid = 'public.vision_board_jobs'::regclass
                   and conname = 'vision_board_jobs_status_check') then
    alter table public.vision_board_jobs add constraint vision_board_jobs_status_check
      check (status in ('pending', 'processing', 'complete', 'failed'));
  end if;
end
$$;

create index if not exists idx_vision_board_jobs_status on public.vision_board_jobs (status);
create index if not exists idx_vision_board_jobs_email on public.vision_board_jobs (email);
create index if not exists idx_vision_board_jobs_qstash_id on public.vision_board_jobs (qstash_message_id);
create index if not exists idx_vision_board_jobs_created_at on public.vision_board_jobs (created_at);
create index if not exists idx_vision_board_jobs_user_id on public.vision_board_jobs (user_id);
-- The reactor's pending scan: rows still pending or processing, by key.
create index if not exists idx_vision_board_jobs_in_flight on public.vision_board_jobs (id)
  where status in ('pending', 'processing');

-- The original set updated_at by hand in every UPDATE; a trigger keeps it right
-- for the reactor's writes too.
create or replace function public.vision_board_jobs_touch_updated_at() returns trigger
language plpgsql as $$
begin
  new.updated_at := now();
  return new;
end
$$;
drop trigger if exists vision_board_jobs_touch_updated_at on public.vision_board_jobs;
create trigger vision_board_jobs_touch_updated_at before update on public.vision_board_jobs
  for each row execute function public.vision_board_jobs_touch_updated_at();

-- Row-level security (the original left it off: every client could read every
-- row). Owners submit and read their own boards; only the reactor writes the
-- outcome. This file owns the table's policies: it drops whatever is there.
alter table public.vision_board_jobs enable row level security;
do $$
declare
  p record;
begin
  for p in select policyname from pg_policies where schemaname = 'public' and tablename = 'vision_board_jobs' loop
    execute format('drop policy %I on public.vision_board_jobs', p.policyname);
  end loop;
end
$$;

create policy "vision_board_jobs_owner_insert" on public.vision_board_jobs for insert to authenticated
  with check (
    auth.uid() = user_id
    and status = 'pending'
    and image_url is null
    and image_storage_path is null
    and error_message is null
  );
create policy "vision_board_jobs_owner_select" on public.vision_board_jobs for select to authenticated
  using (auth.uid() = user_id);

-- Clients may read, and insert only the input columns.
revoke all on table public.vision_board_jobs from anon, authenticated;
grant select on table public.vision_board_jobs to authenticated;
grant insert (id, user_id, email, name, rank_tag, goals) on table public.vision_board_jobs to authenticated;
grant all on table public.vision_board_jobs to service_role;

select reactor.watch_table('public.vision_board_jobs', 'status', 'user_id');
