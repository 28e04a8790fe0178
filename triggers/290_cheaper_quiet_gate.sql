-- The quiet gate of triggers/280_quiet_gate.sql, at half the writers' cost.
--
-- PostgreSQL rebuilds a trigger's WHEN condition from its stored text for
-- every statement that fires it, so a single-row insert pays for reading and
-- preparing the whole expression each time, whatever it evaluates to. The
-- first gate, coalesce() of the flag against a numeric
-- extract(epoch from now()) * 1000, cost a quiet insert ~6 µs of server CPU,
-- more than the insert itself. Comparing timestamps,
-- to_timestamp(<flag>) <= now(), costs ~3 µs (BENCHMARKS.md).
--
-- So the flag is now the end of the quiet lease in whole seconds since the
-- epoch (rounded down: writers may hint again up to a second before the lease
-- ends, never after it), in a sequence of its own,
-- `reactor.quiet_until_<md5 of the table's name>` (reactor.quiet_gate_flag()).
-- The flag of triggers/280 (milliseconds, reactor.quiet_flag()) is no longer
-- read: a reactor from before this file still sets it, and its leases still
-- quiet the trigger functions themselves (they check reactor.quiet_tables),
-- so a mix of versions loses nothing while they are upgraded.
--
-- A new flag is set to 0 as it is created: a sequence never set reads as null,
-- and a null condition would keep the trigger from running.
--
-- Every trusted hint trigger is built again from what it is: the gate, and
-- for a status trigger its own condition (the status changed), as
-- reactor.watch_table and triggers/120_notify.sql create them.

-- The quiet flag the hint triggers of `table_name` read (hints carry the name
-- without its schema, as reactor.quiet_tables does). Null: no gated trigger yet.
create or replace function reactor.quiet_gate_flag(table_name text) returns regclass
language sql stable set search_path = pg_catalog as $$
  select to_regclass(format('reactor.%I', 'quiet_until_' || md5(table_name)))
$$;

-- Gives every trusted hint trigger not gated this way the gate (and its table
-- a flag set to 0), once. The trigger is replaced (in the caller's
-- transaction) and comes back enabled: callers apply the mode afterwards.
create or replace function reactor.gate_hint_triggers() returns void
language plpgsql set search_path = pg_catalog as $$
declare
  t record;
  flag text;
  own text;
  parts text[];
begin
  for t in
    select h.tbl, h.trigger_name, h.table_name, h.args, pg_get_triggerdef(tg.oid) as def
    from reactor.hint_triggers h
    join pg_trigger tg on tg.tgrelid = h.tbl and tg.tgname = h.trigger_name
    where pg_get_triggerdef(tg.oid) not like '%to_timestamp(%pg_sequence_last_value(%'
  loop
    flag := format('reactor.%I', 'quiet_until_' || md5(t.table_name));
    if reactor.quiet_gate_flag(t.table_name) is null then
      execute format('create sequence %s as bigint minvalue 0 start 0', flag);
      execute format('grant select on sequence %s to public', flag);
      perform setval(flag::regclass, 0);
    end if;
    -- CREATE TRIGGER <name …> FOR EACH ROW [WHEN (<condition>) ]EXECUTE FUNCTION …
    parts := regexp_match(t.def,
      '^CREATE TRIGGER (.*) FOR EACH ROW (WHEN \((.*)\) )?(EXECUTE FUNCTION reactor\..*)$');
    if parts is null then
      raise exception 'reactor.gate_hint_triggers: unexpected trigger definition: %', t.def;
    end if;
    -- The trigger's own condition: a status trigger runs when the status changed.
    own := case t.trigger_name
      when 'reactor_watch_status'
        then format('old.%1$I is distinct from new.%1$I',
                    split_part(encode(t.args, 'escape'), '\000', 2))
      when 'reactor_notify_status'
        then 'old.status is distinct from new.status'
    end;
    -- PostgreSQL 14+ replaces a trigger under SHARE ROW EXCLUSIVE (readers
    -- go on); before, DROP TRIGGER takes ACCESS EXCLUSIVE for the moment.
    if current_setting('server_version_num')::int < 140000 then
      execute format('drop trigger %I on %s', t.trigger_name, t.tbl);
    end if;
    execute format(
      'create %s trigger %s for each row when ((pg_catalog.to_timestamp(pg_catalog.pg_sequence_last_value(%L::regclass)) <= pg_catalog.now())%s) %s',
      case when current_setting('server_version_num')::int < 140000 then '' else 'or replace' end,
      parts[1], flag,
      case when own is null then '' else ' and (' || own || ')' end,
      parts[4]);
  end loop;
end
$$;

revoke all on function
  reactor.quiet_gate_flag(text),
  reactor.gate_hint_triggers()
from public, anon, authenticated;

select reactor.apply_notify_mode();
