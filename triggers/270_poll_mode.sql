-- Poll mode: no hint at all on the write path, no publication either; each
-- reactor pages the handlers' pending indexes every REACTOR_POLL_INTERVAL.
-- For transaction-mode poolers (where LISTEN cannot work) and for anyone who
-- wants writers to pay nothing and can wait an interval for their rows.
--
--   update reactor.settings set notify_mode = 'poll';   -- or: reactor notify-mode poll
--
-- reactor.apply_notify_mode() (triggers/210_trusted_hint_triggers.sql) now
-- disables the trusted hint triggers in 'poll' as in 'wal'; only 'wal' keeps
-- publication "reactor". Like 'wal', 'poll' in the table wins over the
-- database setting reactor.notify_mode: the triggers are off whatever a
-- session says.

alter table reactor.settings drop constraint if exists settings_notify_mode_check;
alter table reactor.settings add constraint settings_notify_mode_check
  check (notify_mode in ('notify', 'outbox', 'wal', 'poll'));

create or replace function reactor.notify_mode() returns text
language sql stable set search_path = pg_catalog as $$
  select case
    when (select notify_mode from reactor.settings limit 1) in ('wal', 'poll')
      then (select notify_mode from reactor.settings limit 1)
    else coalesce(
      nullif(current_setting('reactor.notify_mode', true), ''),
      (select notify_mode from reactor.settings limit 1),
      'notify')
  end
$$;
revoke all on function reactor.notify_mode() from public, anon, authenticated;

-- As in triggers/210_trusted_hint_triggers.sql, with the triggers off in
-- 'poll' too (and the publication only in 'wal').
create or replace function reactor.apply_notify_mode() returns void
language plpgsql set search_path = pg_catalog as $$
declare
  mode text := (select s.notify_mode from reactor.settings s limit 1);
  wal boolean := coalesce(mode = 'wal', false);
  off boolean := coalesce(mode in ('wal', 'poll'), false);
  t record;
  tables text;
begin
  if wal and current_setting('wal_level') <> 'logical' then
    raise exception 'notify mode wal needs wal_level = logical, and this server has wal_level = %',
      current_setting('wal_level')
      using errcode = 'object_not_in_prerequisite_state',
            hint = 'Set wal_level = logical in postgresql.conf and restart the server (Supabase projects already have it), or use poll mode: reactor notify-mode poll.';
  end if;

  for t in
    select h.tbl, h.trigger_name
    from reactor.hint_triggers h
    where h.enabled = off
  loop
    execute format('alter table %s %s trigger %I', t.tbl,
                   case when off then 'disable' else 'enable' end, t.trigger_name);
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

-- The deleted-objects hint (triggers/250_render_objects.sql) is sent from a
-- function, not a trigger: it stays silent in 'poll' as in 'wal' (the poll
-- finds the row).
create or replace function reactor.hint_deleted_object(object_id bigint) returns void
language plpgsql security definer set search_path = pg_catalog, public as $$
declare
  payload text := '{"table":"deleted_objects","op":"INSERT","id":"' || object_id::text
    || '","owner_id":null,"status":null,"old_status":null}';
  stored text := (select s.notify_mode from reactor.settings s limit 1);
  mode text := case when stored in ('wal', 'poll') then stored
                    else coalesce(nullif(current_setting('reactor.notify_mode', true), ''), stored) end;
begin
  if mode = 'outbox' then
    insert into reactor.outbox (payload, to_status) values (payload, false);
  elsif mode is distinct from 'wal' and mode is distinct from 'poll' then
    perform pg_notify('reactor', payload);
  end if;
end
$$;
