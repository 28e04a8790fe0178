-- WAL mode: the reactor hears inserts and status changes by logical decoding
-- of the write-ahead log, and no reactor trigger fires on the write path.
--
--   update reactor.settings set notify_mode = 'wal';   -- or: reactor notify-mode wal
--
-- Switching (a trigger on reactor.settings runs reactor.apply_notify_mode()):
--   * to 'wal': every hint trigger (reactor_notify_* on the built-in tables,
--     reactor_watch_* on tables watched with reactor.watch_table) is DISABLED
--     (ALTER TABLE … DISABLE TRIGGER: a disabled trigger is not even looked at
--     when a row is written), and publication "reactor" is made to publish
--     inserts and updates of exactly those tables (key, owner and status
--     columns only). Reactors then read it through a temporary logical slot.
--   * away from 'wal': the triggers are enabled again and the publication is
--     dropped.
-- Everything here is what the owner of the tables may do without superuser
-- (Supabase's `postgres` role): ALTER TABLE on its own tables, CREATE
-- PUBLICATION … FOR TABLE on them (with CREATE on the database). The reactor's
-- login needs the REPLICATION attribute for its slot.
--
-- reactor.watch_table/unwatch_table call the same function, so a table
-- watched while in wal mode gets disabled triggers and joins the publication.
-- The disabled triggers stay in place: they remember which tables are watched
-- (and with which columns) and come back on when switching away.

alter table reactor.settings drop constraint if exists settings_notify_mode_check;
alter table reactor.settings add constraint settings_notify_mode_check
  check (notify_mode in ('notify', 'outbox', 'wal'));

-- 'wal' in the table wins over the database setting: the triggers are off.
create or replace function reactor.notify_mode() returns text
language sql stable set search_path = pg_catalog as $$
  select case
    when (select notify_mode from reactor.settings limit 1) = 'wal' then 'wal'
    else coalesce(
      nullif(current_setting('reactor.notify_mode', true), ''),
      (select notify_mode from reactor.settings limit 1),
      'notify')
  end
$$;
revoke all on function reactor.notify_mode() from public;

-- Puts the hint triggers and publication "reactor" in line with
-- reactor.settings.notify_mode. Idempotent; runs as the caller (who must own
-- the watched tables, as whoever watched them did).
create or replace function reactor.apply_notify_mode() returns void
language plpgsql set search_path = pg_catalog as $$
declare
  wal boolean := coalesce((select s.notify_mode = 'wal' from reactor.settings s limit 1), false);
  t record;
  tables text;
begin
  if wal and current_setting('wal_level') <> 'logical' then
    raise exception 'notify mode wal needs wal_level = logical, and this server has wal_level = %',
      current_setting('wal_level')
      using errcode = 'object_not_in_prerequisite_state',
            hint = 'Set wal_level = logical in postgresql.conf and restart the server (Supabase projects already have it).';
  end if;

  for t in
    select tg.tgrelid::regclass as tbl, tg.tgname
    from pg_trigger tg
    where tg.tgname in ('reactor_notify_insert', 'reactor_notify_status',
                        'reactor_watch_insert', 'reactor_watch_status')
      and not tg.tgisinternal
      and (tg.tgenabled = 'D') is distinct from wal
  loop
    execute format('alter table %s %s trigger %I', t.tbl,
                   case when wal then 'disable' else 'enable' end, t.tgname);
  end loop;

  if not wal then
    drop publication if exists reactor;
    return;
  end if;

  -- Each hinted table with the columns its hints carry (PostgreSQL 15+ column
  -- lists; older servers publish whole rows).
  select string_agg(
           case when current_setting('server_version_num')::int >= 150000
                then format('%s (%s)', h.tbl, h.cols)
                else h.tbl::text end,
           ', ')
    into tables
  from (
    select tg.tgrelid::regclass as tbl,
           (select string_agg(distinct quote_ident(c), ', ')
            from unnest(case
                   when tg.tgname = 'reactor_watch_status'
                     -- tgargs: key, status, owner ('' when none), NUL-separated.
                     then array[split_part(encode(tg.tgargs, 'escape'), '\000', 1),
                                split_part(encode(tg.tgargs, 'escape'), '\000', 2),
                                split_part(encode(tg.tgargs, 'escape'), '\000', 3)]
                   when tg.tgrelid = 'public.generation_jobs'::regclass
                     then array['id', 'owner_id', 'status']
                   else array['id'] end) c
            where c <> '') as cols
    from pg_trigger tg
    where tg.tgname in ('reactor_watch_status', 'reactor_notify_insert')
      and not tg.tgisinternal
  ) h;

  if tables is null then
    drop publication if exists reactor;
  elsif exists (select 1 from pg_publication where pubname = 'reactor') then
    execute 'alter publication reactor set table ' || tables;
  else
    execute 'create publication reactor for table ' || tables
      || ' with (publish = ''insert, update'')';
  end if;
end
$$;

create or replace function reactor.notify_mode_changed() returns trigger
language plpgsql set search_path = pg_catalog as $$
begin
  perform reactor.apply_notify_mode();
  return null;
end
$$;

drop trigger if exists reactor_apply_notify_mode on reactor.settings;
create trigger reactor_apply_notify_mode
  after update of notify_mode on reactor.settings
  for each row when (old.notify_mode is distinct from new.notify_mode)
  execute function reactor.notify_mode_changed();

-- watch_table/unwatch_table as in sql/110_watch_table.sql, then the mode applied
-- (in wal mode: the new triggers disabled, the publication's tables updated).
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

  execute format('drop trigger if exists reactor_watch_insert on %s', tbl);
  execute format('drop trigger if exists reactor_watch_status on %s', tbl);
  execute format(
    'create trigger reactor_watch_insert after insert on %s
       for each row execute function reactor.notify_watched_row(%L, %L, %L)',
    tbl, pk[1], status_column, coalesce(owner_column, ''));
  execute format(
    'create trigger reactor_watch_status after update of %I on %s
       for each row when (old.%I is distinct from new.%I)
       execute function reactor.notify_watched_row(%L, %L, %L)',
    status_column, tbl, status_column, status_column, pk[1], status_column, coalesce(owner_column, ''));
  perform reactor.apply_notify_mode();
end
$$;

create or replace function reactor.unwatch_table(tbl regclass) returns void
language plpgsql as $$
begin
  execute format('drop trigger if exists reactor_watch_insert on %s', tbl);
  execute format('drop trigger if exists reactor_watch_status on %s', tbl);
  perform reactor.apply_notify_mode();
end
$$;

revoke all on function
  reactor.notify_mode(),
  reactor.apply_notify_mode(),
  reactor.notify_mode_changed(),
  reactor.watch_table(regclass, text, text),
  reactor.unwatch_table(regclass)
from public, anon, authenticated;
