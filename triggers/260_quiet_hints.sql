-- The notify trigger functions of triggers/165_notify_settings.sql, now
-- sending no NOTIFY while their table is quiet (sql/260_quiet_hints.sql: a
-- reactor is paging the table's pending rows and renews a lease on it).
-- Payloads, outbox mode and the Realtime broadcast are unchanged: only the two
-- pg_notify calls are skipped, and with them the commit-time NOTIFY lock.
--
-- The quiet lookup is one primary-key probe of a tiny unlogged table, inlined
-- (no function call per row) in the same query as the mode lookup, and only reads: writers never wait on each
-- other for it. It compares with now() (the transaction's start): a writer
-- whose transaction began inside the lease skips its hint even if it commits
-- after the lease ended. The reactor covers that race by polling on for a
-- grace after the lease (REACTOR_QUIET_GRACE) and scanning once more; a
-- transaction longer than that is found by the periodic sweep.
--
-- notify_watched_row now reads its arguments and the row (through to_jsonb)
-- only when a payload is needed: not at all while quiet in notify mode.

create or replace function reactor.notify_generation_job() returns trigger
language plpgsql security definer set search_path = pg_catalog, public as $$
declare
  payload text := '{"table":"generation_jobs","op":"' || tg_op
    || '","id":"' || new.id::text
    || '","owner_id":"' || new.owner_id::text
    || '","status":' || to_json(new.status)::text
    || ',"old_status":'
    || case when tg_op = 'UPDATE' then to_json(old.status)::text else 'null' end
    || '}';
  outbox boolean;
  quiet boolean;
begin
  -- The mode and the quiet lease in one query (one executor run per row).
  select coalesce(nullif(current_setting('reactor.notify_mode', true), ''),
                  (select s.notify_mode from reactor.settings s limit 1)) = 'outbox',
         exists (select 1 from reactor.quiet_tables q
                 where q.table_name = 'generation_jobs' and q.quiet_until > now())
    into outbox, quiet;
  if outbox then
    insert into reactor.outbox (payload) values (payload);
  elsif not quiet then
    perform pg_notify('reactor', payload);
    perform pg_notify('job_status', payload);
  end if;
  if to_regprocedure('realtime.send(jsonb,text,text,boolean)') is not null then
    execute 'select realtime.send($1::jsonb, $2, $3, true)'
      using payload, 'status', 'job_status:' || new.owner_id::text;
  end if;
  return null;
end
$$;

create or replace function reactor.notify_profile() returns trigger
language plpgsql security definer set search_path = pg_catalog, public as $$
declare
  payload text := '{"table":"profiles","op":"INSERT","id":"' || new.id::text
    || '","owner_id":"' || new.id::text || '","status":null,"old_status":null}';
  outbox boolean;
  quiet boolean;
begin
  select coalesce(nullif(current_setting('reactor.notify_mode', true), ''),
                  (select s.notify_mode from reactor.settings s limit 1)) = 'outbox',
         exists (select 1 from reactor.quiet_tables q
                 where q.table_name = 'profiles' and q.quiet_until > now())
    into outbox, quiet;
  if outbox then
    insert into reactor.outbox (payload, to_status) values (payload, false);
  elsif not quiet then
    perform pg_notify('reactor', payload);
  end if;
  return null;
end
$$;

create or replace function reactor.notify_watched_row() returns trigger
language plpgsql security definer set search_path = pg_catalog, public as $$
declare
  key_col text;
  status_col text;
  owner_col text;
  outbox boolean;
  quiet boolean;
  row_json jsonb;
  payload text;
begin
  select coalesce(nullif(current_setting('reactor.notify_mode', true), ''),
                  (select s.notify_mode from reactor.settings s limit 1)) = 'outbox',
         exists (select 1 from reactor.quiet_tables q
                 where q.table_name = tg_table_name and q.quiet_until > now())
    into outbox, quiet;
  outbox := coalesce(outbox, false);
  if not outbox and quiet then
    return null;
  end if;
  key_col := tg_argv[0];
  status_col := tg_argv[1];
  owner_col := nullif(coalesce(tg_argv[2], ''), '');
  row_json := to_jsonb(new);
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
  if outbox then
    insert into reactor.outbox (payload) values (payload);
  else
    perform pg_notify('reactor', payload);
    perform pg_notify('job_status', payload);
  end if;
  return null;
end
$$;
