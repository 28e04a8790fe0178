-- The hint triggers the reactor trusts, in one place.
--
-- A trigger's name proves nothing: any login may create a TEMPORARY table
-- (TEMP is granted to PUBLIC on every database) named like one of ours, with a
-- trigger named reactor_watch_status on a function of its own in pg_temp. The
-- status feed, WAL mode and reactor.apply_notify_mode() used to take every
-- trigger of that name for a watched table, so such a table broke every
-- owner's event stream (its rows cannot be read from another session) and
-- the mode switch (another session's temporary table cannot be altered).
--
-- Trusted is a trigger that
--   * calls one of the reactor's hint functions (a function of the reactor
--     schema, where only its owner creates functions; EXECUTE on them is
--     revoked from everyone else, and CREATE TRIGGER needs it),
--   * on a table that is not temporary (temporary tables belong to one
--     session: nobody else can read or alter them),
--   * owned by a role whose privileges the owner of the reactor schema has
--     (the reactor's own role, or one it inherits from): exactly the tables
--     apply_notify_mode may alter.
create or replace view reactor.hint_triggers as
select t.tgrelid::regclass as tbl,
       n.nspname::text as schema_name,
       c.relname::text as table_name,
       t.tgname::text as trigger_name,
       -- reactor.watch_table's arguments: key, status, owner ('' when none), NUL-separated.
       t.tgargs as args,
       t.tgenabled <> 'D' as enabled
from pg_trigger t
join pg_proc p on p.oid = t.tgfoid
join pg_class c on c.oid = t.tgrelid
join pg_namespace n on n.oid = c.relnamespace
where not t.tgisinternal
  and p.pronamespace = 'reactor'::regnamespace
  and (t.tgname, p.proname) in (
        ('reactor_notify_insert', 'notify_generation_job'),
        ('reactor_notify_status', 'notify_generation_job'),
        ('reactor_notify_insert', 'notify_profile'),
        ('reactor_watch_insert', 'notify_watched_row'),
        ('reactor_watch_status', 'notify_watched_row'))
  and c.relpersistence <> 't'
  and n.nspname not like 'pg\_temp\_%'
  and pg_has_role((select r.nspowner from pg_namespace r where r.nspname = 'reactor'),
                  c.relowner, 'USAGE');

revoke all on reactor.hint_triggers from public, anon, authenticated;

-- reactor.apply_notify_mode() as in sql/190_wal_mode.sql, now over the
-- trusted triggers only: a stranger's look-alike is neither altered (which
-- failed, and with it the switch) nor published.
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
    select h.tbl, h.trigger_name
    from reactor.hint_triggers h
    where h.enabled = wal
  loop
    execute format('alter table %s %s trigger %I', t.tbl,
                   case when wal then 'disable' else 'enable' end, t.trigger_name);
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
    select ht.tbl,
           (select string_agg(distinct quote_ident(c), ', ')
            from unnest(case
                   when ht.trigger_name = 'reactor_watch_status'
                     then array[split_part(encode(ht.args, 'escape'), '\000', 1),
                                split_part(encode(ht.args, 'escape'), '\000', 2),
                                split_part(encode(ht.args, 'escape'), '\000', 3)]
                   when ht.tbl = 'public.generation_jobs'::regclass
                     then array['id', 'owner_id', 'status']
                   else array['id'] end) c
            where c <> '') as cols
    from reactor.hint_triggers ht
    where ht.trigger_name in ('reactor_watch_status', 'reactor_notify_insert')
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

revoke all on function reactor.apply_notify_mode() from public, anon, authenticated;
