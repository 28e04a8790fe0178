-- Column rules that row-level security cannot express. A "client" is a request
-- made as Supabase's anon or authenticated role (PostgREST runs SET ROLE); the
-- reactor, billing and service_role are not clients.

-- generation_jobs: a client submits a fresh job and nothing else. It fills
-- only the submission fields listed below; every other column (prediction_id,
-- error, output, completed_at and whatever later migrations add) belongs to the
-- server and must be null, status must be 'starting', and the timestamps are
-- overwritten (a back-dated created_at would make a new job look stuck).
-- An allow-list, so a column added later is the server's by default. A new
-- column with a non-null default must be listed here, or clients cannot submit.
create or replace function reactor.guard_generation_job() returns trigger
language plpgsql as $$
declare
  col text;
  is_set boolean;
begin
  if tg_op = 'INSERT' and current_user in ('anon', 'authenticated') then
    -- RLS would refuse this row too, but only after every BEFORE trigger ran:
    -- the submit rules (110) would first answer with the other owner's PT409
    -- or "n of m used on plan X". Refuse here, before they run.
    if new.owner_id is distinct from auth.uid() then
      raise exception 'clients may only submit jobs for themselves'
        using errcode = '42501', column = 'owner_id', table = 'generation_jobs';
    end if;
    if new.status is distinct from 'starting' then
      raise exception 'clients may only submit jobs with status ''starting'' (got %)', coalesce(new.status, 'null')
        using errcode = '42501', column = 'status', table = 'generation_jobs';
    end if;
    for col in
      select a.attname from pg_catalog.pg_attribute a
      where a.attrelid = tg_relid and a.attnum > 0 and not a.attisdropped
        and a.attname <> all (array['id', 'owner_id', 'mode', 'room_type', 'style',
          'input1_path', 'input2_path', 'prompt', 'idempotency_key',
          'status', 'created_at', 'updated_at'])
      order by a.attnum
    loop
      -- "is not null" on the column itself: a jsonb 'null' is a value too.
      execute format('select ($1).%I is not null', col) into is_set using new;
      if is_set then
        raise exception 'clients may not set generation_jobs.% (the reactor sets it)', col
          using errcode = '42501', column = col, table = 'generation_jobs';
      end if;
    end loop;
    new.created_at := now();
  end if;
  if tg_op = 'UPDATE' then
    new.created_at := old.created_at;
  end if;
  new.updated_at := now();
  return new;
end
$$;

drop trigger if exists reactor_10_guard on public.generation_jobs;
create trigger reactor_10_guard
  before insert or update on public.generation_jobs
  for each row execute function reactor.guard_generation_job();

-- profiles: price_id decides the plan, so only billing (not the client) sets it.
create or replace function reactor.guard_profile() returns trigger
language plpgsql as $$
begin
  if current_user in ('anon', 'authenticated') then
    if tg_op = 'INSERT' and new.price_id is not null then
      raise exception 'clients may not set profiles.price_id (billing sets the plan)'
        using errcode = '42501', column = 'price_id', table = 'profiles';
    end if;
    if tg_op = 'UPDATE' and new.price_id is distinct from old.price_id then
      raise exception 'clients may not change profiles.price_id (billing sets the plan)'
        using errcode = '42501', column = 'price_id', table = 'profiles';
    end if;
    if tg_op = 'INSERT' then
      new.created_at := now();
    end if;
  end if;
  if tg_op = 'UPDATE' then
    new.created_at := old.created_at;
  end if;
  new.updated_at := now();
  return new;
end
$$;

drop trigger if exists reactor_10_guard on public.profiles;
create trigger reactor_10_guard
  before insert or update on public.profiles
  for each row execute function reactor.guard_profile();

-- collections: "My Favorites" is a system collection the reactor creates; a
-- client that could create or unflag one could squat or delete it.
create or replace function reactor.guard_collection() returns trigger
language plpgsql as $$
begin
  if current_user in ('anon', 'authenticated') then
    if tg_op = 'INSERT' and new.is_default_favorites then
      raise exception 'clients may not create the default favorites collection (the reactor does)'
        using errcode = '42501', column = 'is_default_favorites', table = 'collections';
    end if;
    if tg_op = 'UPDATE' and new.is_default_favorites is distinct from old.is_default_favorites then
      raise exception 'clients may not change collections.is_default_favorites'
        using errcode = '42501', column = 'is_default_favorites', table = 'collections';
    end if;
  end if;
  return new;
end
$$;

drop trigger if exists reactor_10_guard on public.collections;
create trigger reactor_10_guard
  before insert or update on public.collections
  for each row execute function reactor.guard_collection();
