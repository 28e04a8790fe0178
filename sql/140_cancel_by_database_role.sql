-- cancel_generation_job() takes its authority from the database role, never
-- from a claim (replaces the function from sql/100_generation.sql). It used to
-- treat auth.role() = 'service_role' as the service; auth.role() reads
-- request.jwt.claim(s), settings any session may set, so
--   set role authenticated;
--   select set_config('request.jwt.claim.role', 'service_role', false);
--   select cancel_generation_job('<someone else''s job>');
-- canceled anyone's job.
--
-- Inside a security definer function current_user is the function's owner, so
-- the caller is read from the "role" setting: the role PostgREST (or anyone)
-- switched to with SET ROLE, which only a member of that role can do, or the
-- login role (session_user) when there was no SET ROLE. The caller acts for
-- the service when that role may update generation_jobs itself (service_role,
-- the table's owner, a superuser); anyone else may cancel only the jobs whose
-- owner_id is their auth.uid().
create or replace function reactor.invoking_role() returns name
language sql stable set search_path = pg_catalog as $$
  select case when current_setting('role') = 'none' then session_user
              else current_setting('role')::name end
$$;
revoke all on function reactor.invoking_role() from public, anon, authenticated;

create or replace function public.cancel_generation_job(job_id uuid) returns text
language plpgsql security definer set search_path = pg_catalog, public as $$
declare
  j public.generation_jobs%rowtype;
  acts_for_service boolean :=
    has_table_privilege(reactor.invoking_role(), 'public.generation_jobs', 'UPDATE');
begin
  select * into j from public.generation_jobs g where g.id = job_id for update;
  if not found or (auth.uid() is distinct from j.owner_id and not acts_for_service) then
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
-- Signed-in users and the service only. Revoked from anon by name: on Supabase
-- the default privileges of schema public grant EXECUTE on every new function
-- to anon and authenticated, which "revoke ... from public" leaves in place.
revoke all on function public.cancel_generation_job(uuid) from public, anon;
grant execute on function public.cancel_generation_job(uuid) to authenticated, service_role;
