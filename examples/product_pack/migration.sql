-- A product-pack pipeline: the product-pack app's jobs and job_outputs (types product_pack,
-- tryon_image, canvas_edit, extract_garment), worked by the reactor's http
-- handler: one URL per job type.
--   reactor migrate                      # first: creates reactor.watch_table
--   psql "$DATABASE_URL" -f examples/product_pack/migration.sql
--   REACTOR_CONFIG=examples/product_pack/reactor.toml REACTOR_HTTP_SECRET=whsec_… reactor run
-- Idempotent: safe to run twice. Only the job tables are here; the original
-- profiles, canvas_* and garment_cutouts tables are not job tables.

-- The original jobs table (its ERD gives columns, not statuses: the four status
-- values and the type rule are ours).
create table if not exists public.jobs (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references auth.users(id) on delete cascade,
  type text not null
    check (type in ('product_pack', 'tryon_image', 'canvas_edit', 'extract_garment')),
  status text not null default 'queued'
    check (status in ('queued', 'running', 'succeeded', 'failed')),
  input_json jsonb not null default '{}'::jsonb,
  provider_operation_id text,
  error text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

-- Added: the handler's answer. The handler writes its "result" here, and the
-- trigger below turns result.outputs into job_outputs rows in the same
-- transaction, so a job has its outputs exactly when it is succeeded.
alter table public.jobs add column if not exists result jsonb;

create table if not exists public.job_outputs (
  id uuid primary key default gen_random_uuid(),
  job_id uuid not null references public.jobs(id) on delete cascade,
  kind text not null default 'image',
  angle text,
  mime_type text,
  storage_path text not null,   -- the object in Storage, e.g. <user id>/<job id>/front.png
  width int,
  height int,
  created_at timestamptz not null default now()
);
-- An output is written once, however often its job's answer is applied.
create unique index if not exists job_outputs_job_id_storage_path_key on public.job_outputs (job_id, storage_path);

create index if not exists jobs_user_id_created_at_idx on public.jobs (user_id, created_at desc);
-- The reactor's pending scan: rows still queued or running, by key.
create index if not exists jobs_in_flight_idx on public.jobs (id)
  where status in ('queued', 'running');

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

-- result.outputs = [{"storage_path": "…", "kind": "image", "angle": "front",
-- "mime_type": "image/png", "width": 1024, "height": 1536}, …]
create or replace function public.jobs_write_outputs() returns trigger
language plpgsql as $$
begin
  if jsonb_typeof(new.result -> 'outputs') = 'array' then
    insert into public.job_outputs (job_id, kind, angle, mime_type, storage_path, width, height)
    select new.id,
           coalesce(o ->> 'kind', 'image'),
           o ->> 'angle',
           o ->> 'mime_type',
           o ->> 'storage_path',
           case when o ->> 'width' ~ '^[0-9]{1,9}$' then (o ->> 'width')::int end,
           case when o ->> 'height' ~ '^[0-9]{1,9}$' then (o ->> 'height')::int end
    from jsonb_array_elements(new.result -> 'outputs') as o
    where jsonb_typeof(o) = 'object' and coalesce(o ->> 'storage_path', '') <> ''
    on conflict (job_id, storage_path) do nothing;
  end if;
  return null;
end
$$;
drop trigger if exists jobs_write_outputs on public.jobs;
create trigger jobs_write_outputs after update of status on public.jobs
  for each row when (new.status = 'succeeded' and old.status is distinct from 'succeeded')
  execute function public.jobs_write_outputs();

-- Row-level security. The original app expects owners to select, insert, update
-- and delete their own jobs; an owner who may update could mark a job
-- succeeded with outputs pointing at anyone's files. Owners submit, read and
-- delete their own jobs; only the reactor (a role that bypasses RLS) writes
-- the outcome. job_outputs are read through their job's owner and written by
-- the reactor only. This file owns the tables' policies: it drops whatever is there.
alter table public.jobs enable row level security;
alter table public.job_outputs enable row level security;
do $$
declare
  p record;
begin
  for p in select tablename, policyname from pg_policies
           where schemaname = 'public' and tablename in ('jobs', 'job_outputs') loop
    execute format('drop policy %I on public.%I', p.policyname, p.tablename);
  end loop;
end
$$;

create policy "jobs_owner_insert" on public.jobs for insert to authenticated
  with check (
    auth.uid() = user_id
    and status = 'queued'
    and result is null
    and error is null
    and provider_operation_id is null
  );
create policy "jobs_owner_select" on public.jobs for select to authenticated
  using (auth.uid() = user_id);
create policy "jobs_owner_delete" on public.jobs for delete to authenticated
  using (auth.uid() = user_id);
create policy "job_outputs_owner_select" on public.job_outputs for select to authenticated
  using (exists (select 1 from public.jobs j where j.id = job_id and j.user_id = auth.uid()));

revoke all on table public.jobs, public.job_outputs from anon, authenticated;
grant select, delete on table public.jobs to authenticated;
grant insert (id, user_id, type, input_json) on table public.jobs to authenticated;
grant select on table public.job_outputs to authenticated;
grant all on table public.jobs, public.job_outputs to service_role;

select reactor.watch_table('public.jobs', 'status', 'user_id');
