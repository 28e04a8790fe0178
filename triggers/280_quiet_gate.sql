-- Quiet hints without a trigger call: while a table is quiet, its hint
-- triggers do not run at all.
--
-- Before, a quiet table's trigger function still ran for every row to find
-- out that it had nothing to send (triggers/260_quiet_hints.sql). A call of a
-- security-definer plpgsql function with its own search_path costs more than
-- the NOTIFY-free insert it follows: measured on 2 cores, 32 durable writers,
-- ~26 µs of server CPU per single-row transaction (+13 %), where the check
-- below costs ~2 µs (+1 %).
--
-- So every trusted hint trigger gets a WHEN condition that reads its table's
-- quiet flag, a sequence `reactor.quiet_<md5 of the table's name>`: its
-- value is the end of the quiet lease in milliseconds since the epoch
-- (0 or never set: not quiet). A WHEN condition cannot read a table, but it
-- can call pg_sequence_last_value(), a built-in that reads one buffer under a
-- fast-path lock; setval() is not transactional, so a reactor's take is seen
-- by every writer at once and never waits for, or makes anyone wait on, a
-- transaction. The reactor that takes a quiet lease (reactor.quiet_tables)
-- sets the flag in the same statement (src/engine/quiet.rs).
--
-- It fails safe as the lease does: the flag is a time, compared with the
-- writer's now(); a holder that dies stops renewing and the triggers run again
-- once that time has passed, crash or no crash. The trigger functions still
-- check reactor.quiet_tables themselves (a lease written without the flag,
-- e.g. by an older reactor, still quiets them the old way).
--
-- Writers need SELECT on the flag to evaluate the condition: it is granted to
-- PUBLIC. The flag tells when a table is quiet, nothing of its rows.
--
-- reactor.apply_notify_mode() (called by every mode switch and by
-- reactor.watch_table) gates any trusted hint trigger not gated yet, so
-- tables watched later get the gate too. Its other two parts, the triggers
-- enabled or disabled by mode and the publication of WAL mode, are now
-- functions of their own, so that a later change replaces one part.

-- The quiet flag of hints naming `table_name` (hints carry the name without
-- its schema, as reactor.quiet_tables does). Null: no gated trigger yet.
create or replace function reactor.quiet_flag(table_name text) returns regclass
language sql stable set search_path = pg_catalog as $$
  select to_regclass(format('reactor.%I', 'quiet_' || md5(table_name)))
$$;

-- Gives every trusted hint trigger that has none the quiet gate (and its
-- table the flag), once. The trigger is replaced (in the caller's
-- transaction) and comes back enabled: callers apply the mode afterwards.
create or replace function reactor.gate_hint_triggers() returns void
language plpgsql set search_path = pg_catalog as $$
declare
  t record;
  flag text;
  parts text[];
begin
  for t in
    select h.tbl, h.trigger_name, h.table_name, pg_get_triggerdef(tg.oid) as def
    from reactor.hint_triggers h
    join pg_trigger tg on tg.tgrelid = h.tbl and tg.tgname = h.trigger_name
    where pg_get_triggerdef(tg.oid) not like '%pg_sequence_last_value%'
  loop
    flag := format('reactor.%I', 'quiet_' || md5(t.table_name));
    if reactor.quiet_flag(t.table_name) is null then
      execute format('create sequence %s as bigint minvalue 0 start 0', flag);
      execute format('grant select on sequence %s to public', flag);
    end if;
    -- CREATE TRIGGER <name …> FOR EACH ROW [WHEN (<condition>) ]EXECUTE FUNCTION …
    parts := regexp_match(t.def,
      '^CREATE TRIGGER (.*) FOR EACH ROW (WHEN \((.*)\) )?(EXECUTE FUNCTION reactor\..*)$');
    if parts is null then
      raise exception 'reactor.gate_hint_triggers: unexpected trigger definition: %', t.def;
    end if;
    -- PostgreSQL 14+ replaces a trigger under SHARE ROW EXCLUSIVE (readers
    -- go on); before, DROP TRIGGER takes ACCESS EXCLUSIVE for the moment.
    if current_setting('server_version_num')::int < 140000 then
      execute format('drop trigger %I on %s', t.trigger_name, t.tbl);
    end if;
    execute format(
      'create %s trigger %s for each row when ((coalesce(pg_catalog.pg_sequence_last_value(%L::regclass), 0) < extract(epoch from pg_catalog.now()) * 1000)%s) %s',
      case when current_setting('server_version_num')::int < 140000 then '' else 'or replace' end,
      parts[1], flag,
      case when parts[3] is null then '' else ' and (' || parts[3] || ')' end,
      parts[4]);
  end loop;
end
$$;

-- The trusted hint triggers on in 'notify' and 'outbox', off in 'wal' and 'poll'.
create or replace function reactor.enable_hint_triggers(turn_on boolean) returns void
language plpgsql set search_path = pg_catalog as $$
declare
  t record;
begin
  for t in
    select h.tbl, h.trigger_name from reactor.hint_triggers h where h.enabled <> turn_on
  loop
    execute format('alter table %s %s trigger %I', t.tbl,
                   case when turn_on then 'enable' else 'disable' end, t.trigger_name);
  end loop;
end
$$;

-- WAL mode's publication: each hinted table with the columns its hints carry
-- (PostgreSQL 15+ column lists; older servers publish whole rows). As in
-- triggers/270_poll_mode.sql.
create or replace function reactor.publish_hinted_tables() returns void
language plpgsql set search_path = pg_catalog as $$
declare
  tables text;
begin
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

-- As in triggers/270_poll_mode.sql, with the gate, out of its parts.
create or replace function reactor.apply_notify_mode() returns void
language plpgsql set search_path = pg_catalog as $$
declare
  mode text := (select s.notify_mode from reactor.settings s limit 1);
  wal boolean := coalesce(mode = 'wal', false);
begin
  if wal and current_setting('wal_level') <> 'logical' then
    raise exception 'notify mode wal needs wal_level = logical, and this server has wal_level = %',
      current_setting('wal_level')
      using errcode = 'object_not_in_prerequisite_state',
            hint = 'Set wal_level = logical in postgresql.conf and restart the server (Supabase projects already have it), or use poll mode: reactor notify-mode poll.';
  end if;
  perform reactor.gate_hint_triggers();
  perform reactor.enable_hint_triggers(not coalesce(mode in ('wal', 'poll'), false));
  if wal then
    perform reactor.publish_hinted_tables();
  else
    drop publication if exists reactor;
  end if;
end
$$;

revoke all on function
  reactor.quiet_flag(text),
  reactor.gate_hint_triggers(),
  reactor.enable_hint_triggers(boolean),
  reactor.publish_hinted_tables(),
  reactor.apply_notify_mode()
from public, anon, authenticated;

select reactor.apply_notify_mode();
