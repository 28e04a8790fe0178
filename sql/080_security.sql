-- Closes the holes seed 004 leaves open. Table privileges are set explicitly
-- (Supabase grants everything to anon/authenticated by default; plain Postgres
-- grants nothing) and row-level security decides which rows. Column rules that
-- RLS cannot express (status, prediction id, price id, ...) are enforced by the
-- guard triggers in triggers/.

revoke all on table
  public.profiles, public.plans, public.generation_jobs, public.renders,
  public.render_variants, public.collections, public.collection_items,
  public.community_collections, public.community_items, public.usage_ledger
from anon, authenticated;

grant all on table
  public.profiles, public.plans, public.generation_jobs, public.renders,
  public.render_variants, public.collections, public.collection_items,
  public.community_collections, public.community_items, public.usage_ledger
to service_role;

grant select, insert, update on public.profiles to authenticated;
grant select on public.plans to anon, authenticated;
grant select, insert on public.generation_jobs to authenticated;
grant select, delete on public.renders, public.render_variants to authenticated;
grant select, insert, update, delete on public.collections to authenticated;
grant select, insert, delete on public.collection_items to authenticated;
grant select on public.community_collections, public.community_items to anon, authenticated;
grant select on public.usage_ledger to authenticated;

-- generation_jobs: a client submits only for itself, only as a fresh job.
drop policy if exists "jobs_owner_insert" on public.generation_jobs;
create policy "jobs_owner_insert" on public.generation_jobs for insert
  with check (
    auth.uid() = owner_id
    and status = 'starting'
    and prediction_id is null
    and error is null
    and output is null
    and completed_at is null
  );

-- renders / render_variants are written by the reactor only.
drop policy if exists "renders_owner_insert" on public.renders;
drop policy if exists "variants_owner_insert" on public.render_variants;

-- usage_ledger is written by the reactor (and billing) only: a client that could
-- insert could also write itself a negative debit.
drop policy if exists "usage_owner_insert" on public.usage_ledger;

-- A collection item may only point at a render of the collection's owner.
drop policy if exists "coll_items_owner_insert" on public.collection_items;
create policy "coll_items_owner_insert" on public.collection_items for insert
  with check (
    exists (select 1 from public.collections c
            where c.id = collection_id and c.owner_id = auth.uid())
    and exists (select 1 from public.renders r
                where r.id = render_id and r.owner_id = auth.uid())
  );

-- plans are written by service_role only (no write policy for anyone else).
