-- The notify trigger functions of triggers/120_notify.sql and
-- sql/110_watch_table.sql, now choosing NOTIFY or the outbox by
-- reactor.notify_mode() (sql/175_settings.sql: the database setting when set,
-- else the reactor.settings row) instead of the database setting alone.
-- Payloads are unchanged, byte for byte.
--
-- The mode lookup is inlined (not a call to reactor.notify_mode()) to save a
-- function call per row on the write path.

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
begin
  if coalesce(nullif(current_setting('reactor.notify_mode', true), ''),
              (select s.notify_mode from reactor.settings s limit 1)) = 'outbox' then
    insert into reactor.outbox (payload) values (payload);
  else
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
begin
  if coalesce(nullif(current_setting('reactor.notify_mode', true), ''),
              (select s.notify_mode from reactor.settings s limit 1)) = 'outbox' then
    insert into reactor.outbox (payload, to_status) values (payload, false);
  else
    perform pg_notify('reactor', payload);
  end if;
  return null;
end
$$;

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
  if coalesce(nullif(current_setting('reactor.notify_mode', true), ''),
              (select s.notify_mode from reactor.settings s limit 1)) = 'outbox' then
    insert into reactor.outbox (payload) values (payload);
  else
    perform pg_notify('reactor', payload);
    perform pg_notify('job_status', payload);
  end if;
  return null;
end
$$;
