-- What the generation handler needs (README: "Generation").

-- Set (and committed) just before the reactor asks the provider to create a
-- prediction. A job with this set and no prediction_id may have a prediction
-- at the provider already: the reactor reconciles instead of paying twice.
alter table public.generation_jobs add column if not exists submit_started_at timestamptz;
-- Set by cancel_generation_job(); the reactor cancels at the provider.
alter table public.generation_jobs add column if not exists cancel_requested_at timestamptz;

-- cancel_generation_job(job_id): an owner cancels their own in-flight job
-- (Supabase RPC: supabase.rpc('cancel_generation_job', { job_id })). Returns the
-- job's status after the call: 'canceled', 'canceling' (the reactor is
-- canceling the prediction at the provider), or the terminal status it already had.
-- Someone else's job (or no job) raises PT404, which PostgREST answers with 404.
create or replace function public.cancel_generation_job(job_id uuid) returns text
language plpgsql security definer set search_path = pg_catalog, public as $$
declare
  j public.generation_jobs%rowtype;
begin
  select * into j from public.generation_jobs g where g.id = job_id for update;
  if not found or (auth.uid() is distinct from j.owner_id and auth.role() is distinct from 'service_role') then
    raise exception 'no generation job % of yours', job_id using errcode = 'PT404';
  end if;
  if j.status not in ('starting', 'processing') then
    return j.status;
  end if;
  if j.prediction_id is null and j.submit_started_at is null then
    -- Nothing was sent to the provider: cancel right here.
    update public.generation_jobs g
      set status = 'canceled', cancel_requested_at = now(), completed_at = now()
      where g.id = job_id;
    return 'canceled';
  end if;
  update public.generation_jobs g
    set cancel_requested_at = coalesce(g.cancel_requested_at, now())
    where g.id = job_id;
  perform pg_notify('reactor',
    '{"table":"generation_jobs","op":"UPDATE","id":"' || j.id::text || '","owner_id":"' || j.owner_id::text
    || '","status":' || to_json(j.status)::text || ',"old_status":' || to_json(j.status)::text || '}');
  return 'canceling';
end
$$;
revoke all on function public.cancel_generation_job(uuid) from public;
grant execute on function public.cancel_generation_job(uuid) to authenticated, service_role;
