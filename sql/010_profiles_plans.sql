-- profiles: one per auth user (profiles.id == auth.users.id). Seed 004 calls it
-- "existing"; we create it where it is missing and add what the reactor needs.
create table if not exists public.profiles (
  id uuid primary key references auth.users (id) on delete cascade,
  price_id text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
alter table public.profiles add column if not exists price_id text;
alter table public.profiles add column if not exists created_at timestamptz not null default now();
alter table public.profiles add column if not exists updated_at timestamptz not null default now();
alter table public.profiles enable row level security;

drop policy if exists "profiles_owner_select" on public.profiles;
create policy "profiles_owner_select" on public.profiles for select
  using (auth.uid() = id);
drop policy if exists "profiles_owner_insert" on public.profiles;
create policy "profiles_owner_insert" on public.profiles for insert
  with check (auth.uid() = id);
drop policy if exists "profiles_owner_update" on public.profiles;
create policy "profiles_owner_update" on public.profiles for update
  using (auth.uid() = id) with check (auth.uid() = id);

-- plans: price id -> monthly generation quota. The seed keeps this in config.ts;
-- here it is a table so the quota is enforced inside the database. The row with
-- is_default = true applies when profiles.price_id is null or unknown.
create table if not exists public.plans (
  price_id text primary key,
  name text not null,
  monthly_generations int not null check (monthly_generations >= 0),
  is_default boolean not null default false
);
create unique index if not exists uniq_plans_default on public.plans (is_default) where is_default;
alter table public.plans enable row level security;
drop policy if exists "plans_read" on public.plans;
create policy "plans_read" on public.plans for select using (true);

insert into public.plans (price_id, name, monthly_generations, is_default)
values ('free', 'Free', 30, true)
on conflict do nothing;
