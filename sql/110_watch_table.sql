-- Watching your own job tables: reactor.watch_table() installs, on any table with
-- a single-column primary key and a status column, the same hints the built-in
-- tables send: on insert and on a real status change, a NOTIFY on channels
-- "reactor" and "job_status" with the payload documented in the README:
--   {"table":"image_jobs","op":"UPDATE","id":"…","owner_id":"…","status":"completed","old_status":"processing"}
-- ("table" is the table's name without its schema; "id" and "owner_id" are text).
--
--   select reactor.watch_table('public.image_jobs', 'status', 'user_id');
--   select reactor.unwatch_table('public.image_jobs');
--
-- Both are idempotent. The reactor does not need the triggers to be correct (its
-- sweeps read table state); they make it react at once instead of at the next sweep.

-- One trigger function for every watched table. Its arguments name the key,
-- status and (optional) owner columns; the row is read through to_jsonb because
-- plpgsql cannot read a field whose name is only known at run time. Security
-- definer, so that in outbox mode a client's insert may append to reactor.outbox.
create or replace function reactor.notify_watched_row() returns trigger
language plpgsql security definer set search_path = pg_catalog, public as $$
declare
  key_col text := tg_argv[0];
  status_col text := tg_argv[1];
  owner_col text := nullif(coalesce(tg_argv[2], ''), '');
  row_json jsonb := to_jsonb(new);
  payload text;
begin
  payload := '{"table":' || to_json(tg_table_name::text)::text
    || ',"op":"' || tg_op
    || '","id":' || coalesce(to_json(row_json ->> key_col)::text, 'null')
    || ',"owner_id":'
    || case when owner_col is null then 'null'
            else coalesce(to_json(row_json ->> owner_col)::text, 'null') end
    || ',"status":' || coalesce(to_json(row_json ->> status_col)::text, 'null')
    || ',"old_status":'
    || case when tg_op = 'UPDATE'
            then coalesce(to_json(to_jsonb(old) ->> status_col)::text, 'null')
            else 'null' end
    || '}';
  -- Outbox mode: see sql/130_outbox.sql (the table exists by the time this runs).
  if current_setting('reactor.notify_mode', true) = 'outbox' then
    insert into reactor.outbox (payload) values (payload);
  else
    perform pg_notify('reactor', payload);
    perform pg_notify('job_status', payload);
  end if;
  return null;
end
$$;

create or replace function reactor.watch_table(
  tbl regclass,
  status_column text default 'status',
  owner_column text default null
) returns void
language plpgsql as $$
declare
  kind "char";
  pk text[];
  col text;
begin
  select c.relkind into kind from pg_class c where c.oid = tbl;
  if kind is distinct from 'r' and kind is distinct from 'p' then
    raise exception 'reactor.watch_table(%): not a table', tbl
      using errcode = 'wrong_object_type';
  end if;

  select array_agg(a.attname::text order by k.ord) into pk
  from pg_index i
  cross join lateral unnest(i.indkey::int2[]) with ordinality as k(attnum, ord)
  join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
  where i.indrelid = tbl and i.indisprimary and k.ord <= i.indnkeyatts;
  if pk is null then
    raise exception 'reactor.watch_table(%): the table has no primary key', tbl
      using errcode = 'invalid_table_definition',
            hint = 'The reactor names rows by a single-column primary key; add one (e.g. id uuid primary key default gen_random_uuid()).';
  end if;
  if cardinality(pk) > 1 then
    raise exception 'reactor.watch_table(%): the primary key (%) has % columns; the reactor needs a single-column primary key',
      tbl, array_to_string(pk, ', '), cardinality(pk)
      using errcode = 'invalid_table_definition';
  end if;

  if status_column is null or status_column = '' then
    raise exception 'reactor.watch_table(%): status_column must name a column', tbl
      using errcode = 'invalid_parameter_value';
  end if;
  foreach col in array array[status_column, owner_column] loop
    if col is not null and not exists (
      select 1 from pg_attribute
      where attrelid = tbl and attname = col and attnum > 0 and not attisdropped
    ) then
      raise exception 'reactor.watch_table(%): column "%" does not exist', tbl, col
        using errcode = 'undefined_column';
    end if;
  end loop;

  -- Drop and create (rather than create or replace) so a second call may change the columns.
  execute format('drop trigger if exists reactor_watch_insert on %s', tbl);
  execute format('drop trigger if exists reactor_watch_status on %s', tbl);
  execute format(
    'create trigger reactor_watch_insert after insert on %s
       for each row execute function reactor.notify_watched_row(%L, %L, %L)',
    tbl, pk[1], status_column, coalesce(owner_column, ''));
  -- An update that leaves the status alone sends nothing.
  execute format(
    'create trigger reactor_watch_status after update of %I on %s
       for each row when (old.%I is distinct from new.%I)
       execute function reactor.notify_watched_row(%L, %L, %L)',
    status_column, tbl, status_column, status_column, pk[1], status_column, coalesce(owner_column, ''));
end
$$;

create or replace function reactor.unwatch_table(tbl regclass) returns void
language plpgsql as $$
begin
  execute format('drop trigger if exists reactor_watch_insert on %s', tbl);
  execute format('drop trigger if exists reactor_watch_status on %s', tbl);
end
$$;

-- Operator functions: not for clients.
revoke all on function reactor.watch_table(regclass, text, text) from public;
revoke all on function reactor.unwatch_table(regclass) from public;
-- Trigger functions need no EXECUTE privilege to fire; nobody should call it directly.
revoke all on function reactor.notify_watched_row() from public;
