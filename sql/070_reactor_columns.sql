-- What the reactor needs on top of seed 004 (README: "Schema: what we added").

-- The provider's output (a JSON list of image URLs) and a change timestamp.
alter table public.generation_jobs add column if not exists output jsonb;
alter table public.generation_jobs add column if not exists updated_at timestamptz not null default now();
-- Pending-state scans look for jobs by status (not by owner).
create index if not exists idx_jobs_status on public.generation_jobs (status, id);

-- A job has at most one render.
create unique index if not exists uniq_renders_job on public.renders (job_id);
-- A render has at most one variant per index.
create unique index if not exists uniq_variants_render_idx on public.render_variants (render_id, idx);

-- A job is debited at most once: the debit names its job in a column (not only
-- in meta) so a unique index can enforce it.
alter table public.usage_ledger add column if not exists job_id uuid;
create unique index if not exists uniq_usage_debit_job on public.usage_ledger (job_id)
  where kind = 'generation_debit';
-- Quota sums look up an owner's debits in the current month.
create index if not exists idx_usage_owner_kind_created on public.usage_ledger (owner_id, kind, created_at);

-- Scans for profiles still missing their default collection probe this.
create index if not exists idx_collections_owner on public.collections (owner_id);

-- The reactor's own bookkeeping: one row per (handler, source row) that is being
-- worked under a lease, is waiting to be retried, or is dead. A row that needs
-- nothing has no state here: "done" is read from the tables themselves (a
-- render exists, a debit exists), never from this table. Leases and attempts
-- live here rather than on generation_jobs because two handlers (renders and
-- usage) act on the same succeeded job, each with its own attempts and lease.
create schema if not exists reactor;
create table if not exists reactor.handler_state (
  handler text not null,
  row_id text not null,                -- the source row's primary key, as text
  attempts int not null default 0,     -- failed attempts so far
  next_attempt_at timestamptz,         -- not retried before this
  last_error text,
  dead_at timestamptz,                 -- set after the last allowed attempt failed
  lease_owner uuid,                    -- the reactor process working it now
  lease_token bigint not null default 0, -- bumped on every claim: fences stale writers
  lease_expires_at timestamptz,
  updated_at timestamptz not null default now(),
  primary key (handler, row_id)
);
create index if not exists idx_handler_state_lease_owner on reactor.handler_state (lease_owner)
  where lease_owner is not null;
create index if not exists idx_handler_state_dead on reactor.handler_state (handler)
  where dead_at is not null;
