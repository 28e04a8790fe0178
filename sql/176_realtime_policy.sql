-- Supabase Realtime: let a signed-in user read the broadcasts of their own
-- private topic 'job_status:<uid>' (sent by reactor.notify_generation_job()
-- through realtime.send), and nobody else's.
--
-- Realtime authorizes a private channel by inserting a probe row into
-- realtime.messages (topic = the channel's topic, extension = 'broadcast'),
-- switching to the client's role and JWT claims, and selecting the row back
-- under the table's policies; the transaction is rolled back. Without a
-- SELECT policy no client may join. Ours matches the row's topic against the
-- caller's uid (evaluated once per statement through the sub-selects).
--
-- The realtime schema may appear after the reactor migrated (Realtime enabled
-- later), so this is a function: this file calls it once, and `reactor
-- migrate` calls it on every run. Idempotent; a no-op without Realtime.
create or replace function reactor.install_realtime_policy() returns text
language plpgsql set search_path = pg_catalog as $$
begin
  if to_regclass('realtime.messages') is null then
    return 'no realtime.messages table: nothing to do';
  end if;
  if exists (select 1 from pg_policies
             where schemaname = 'realtime' and tablename = 'messages'
               and policyname = 'reactor_job_status_owner_read') then
    return 'policy reactor_job_status_owner_read on realtime.messages already installed';
  end if;
  create policy reactor_job_status_owner_read on realtime.messages
    for select to authenticated
    using (
      extension = 'broadcast'
      and topic = 'job_status:' || (select auth.uid())::text
    );
  return 'installed policy reactor_job_status_owner_read on realtime.messages';
exception
when duplicate_object then
  -- A concurrent migrate created it first.
  return 'policy reactor_job_status_owner_read on realtime.messages already installed';
when insufficient_privilege then
  -- Realtime stays optional: say what is missing instead of failing the migration.
  return 'warning: cannot create the policy on realtime.messages (' || sqlerrm
    || '); run reactor migrate as its owner (on Supabase: postgres) so clients can join job_status:<uid>';
end
$$;
revoke all on function reactor.install_realtime_policy() from public;

select reactor.install_realtime_policy();
