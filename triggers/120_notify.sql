-- Work hints and status events. Payloads carry ids and statuses only (a NOTIFY
-- payload is capped at 8000 bytes), as compact JSON with a fixed key order:
--   {"table":"generation_jobs","op":"UPDATE","id":"…","owner_id":"…","status":"succeeded","old_status":"processing"}
-- Channel "reactor": the reactor's hints (job inserts, job status changes, profile inserts).
-- Channel "job_status": every job insert and status change, for dashboards.
-- The payload is built inline (no helper function). With
-- reactor.notify_mode = 'outbox' (sql/130_outbox.sql) the payloads go to
-- reactor.outbox instead of NOTIFY.

-- On Supabase (where realtime.send exists) each change is also broadcast to the
-- private Realtime topic 'job_status:<owner_id>' (event 'status'), so a
-- supabase-js client sees its own jobs live with no extra server. Security
-- definer: the client whose insert fires this may not call realtime.send itself.
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
  if current_setting('reactor.notify_mode', true) = 'outbox' then
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

drop trigger if exists reactor_notify_insert on public.generation_jobs;
create trigger reactor_notify_insert
  after insert on public.generation_jobs
  for each row execute function reactor.notify_generation_job();

drop trigger if exists reactor_notify_status on public.generation_jobs;
create trigger reactor_notify_status
  after update of status on public.generation_jobs
  for each row when (old.status is distinct from new.status)
  execute function reactor.notify_generation_job();

-- Security definer so that, in outbox mode, a client's insert may append to reactor.outbox.
create or replace function reactor.notify_profile() returns trigger
language plpgsql security definer set search_path = pg_catalog, public as $$
declare
  payload text := '{"table":"profiles","op":"INSERT","id":"' || new.id::text
    || '","owner_id":"' || new.id::text || '","status":null,"old_status":null}';
begin
  if current_setting('reactor.notify_mode', true) = 'outbox' then
    insert into reactor.outbox (payload, to_status) values (payload, false);
  else
    perform pg_notify('reactor', payload);
  end if;
  return null;
end
$$;

drop trigger if exists reactor_notify_insert on public.profiles;
create trigger reactor_notify_insert
  after insert on public.profiles
  for each row execute function reactor.notify_profile();
