-- The quiet gate of triggers/290_cheaper_quiet_gate.sql, at half a writer's
-- cost again: a switch instead of a clock.
--
-- PostgreSQL builds a trigger's WHEN condition anew for every statement, so
-- each insert pays for every function in it. The gate of 290,
-- to_timestamp(<flag>) <= now(), has five: the flag's read, its cast to
-- float8, to_timestamp, now() and the comparison. At 32 durable writers it
-- cost 5-8 us of an 80-us insert, comparing with the clock about 4 us of it
-- (BENCHMARKS.md, seventh look).
--
-- So the gate is now one function: `pg_sequence_last_value(<switch>) is
-- null`. The switch is a sequence of its own,
-- `reactor.quiet_on_<md5 of the table's name>` (reactor.quiet_switch()):
-- never set (or set with is_called false) it reads as null and the triggers
-- run; a take sets it (setval, is_called true) and they do not.
--
-- The switch has no clock, so reactors turn it off (src/engine/quiet.rs):
-- every reactor, at start and every second, turns off the switch of every
-- table without a live quiet lease in reactor.quiet_tables, and scans the
-- table. A holder that dies leaves its switch on until another reactor, or the
-- next one to start, sees its lease has run out; while no reactor runs, no
-- hint would be heard anyway. The trigger functions themselves still read
-- the lease (triggers/260_quiet_hints.sql), so a switch turned off early
-- costs writers a function call, never a lost row.
--
-- The flag of 290 (reactor.quiet_gate_flag()) is no longer read. A reactor
-- from before this file still sets it, and the gate ignores it: while only
-- such reactors run, writers call the trigger functions, which stay quiet by
-- the lease, as before 280.
--
-- Every trusted hint trigger is built again from what it is: the gate, and
-- for a status trigger its own condition (the status changed), as
-- reactor.watch_table and triggers/120_notify.sql create them.

-- The quiet switch the hint triggers of `table_name` read (hints carry the
-- name without its schema, as reactor.quiet_tables does). Null: no gated
-- trigger yet.
create or replace function reactor.quiet_switch(table_name text) returns regclass
language sql stable set search_path = pg_catalog as $$
  select to_regclass(format('reactor.%I', 'quiet_on_' || md5(table_name)))
$$;

-- Gives every trusted hint trigger not gated this way the gate (and its table
-- a switch, off), once. The trigger is replaced (in the caller's transaction)
-- and comes back enabled: callers apply the mode afterwards.
create or replace function reactor.gate_hint_triggers() returns void
language plpgsql set search_path = pg_catalog as $$
declare
  t record;
  switch text;
  own text;
  parts text[];
begin
  for t in
    select h.tbl, h.trigger_name, h.table_name, h.args, pg_get_triggerdef(tg.oid) as def
    from reactor.hint_triggers h
    join pg_trigger tg on tg.tgrelid = h.tbl and tg.tgname = h.trigger_name
    where pg_get_triggerdef(tg.oid) not like '%pg_sequence_last_value(%quiet_on_%'
  loop
    switch := format('reactor.%I', 'quiet_on_' || md5(t.table_name));
    if reactor.quiet_switch(t.table_name) is null then
      -- Never set: it reads as null, the triggers run.
      execute format('create sequence %s as bigint minvalue 0 start 0', switch);
      execute format('grant select on sequence %s to public', switch);
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
      'create %s trigger %s for each row when ((pg_catalog.pg_sequence_last_value(%L::regclass) is null)%s) %s',
      case when current_setting('server_version_num')::int < 140000 then '' else 'or replace' end,
      parts[1], switch,
      case when own is null then '' else ' and (' || own || ')' end,
      parts[4]);
  end loop;
end
$$;

revoke all on function
  reactor.quiet_switch(text),
  reactor.gate_hint_triggers()
from public, anon, authenticated;

select reactor.apply_notify_mode();
