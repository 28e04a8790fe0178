-- Nobody but the owner executes the reactor's functions directly. Trigger
-- functions fire without an EXECUTE privilege, and the operator functions
-- (reactor.retry, watch_table, unwatch_table) are for the reactor's own login.
-- Revoked from anon and authenticated by name as well as from public, because
-- Supabase's default privileges grant EXECUTE to them explicitly. The one
-- function clients call is public.cancel_generation_job (sql/140).
revoke all on function
  reactor.guard_generation_job(),
  reactor.guard_profile(),
  reactor.guard_collection(),
  reactor.enforce_submit_rules(),
  reactor.notify_generation_job(),
  reactor.notify_profile(),
  reactor.notify_watched_row(),
  reactor.retry(text, text),
  reactor.watch_table(regclass, text, text),
  reactor.unwatch_table(regclass)
from public, anon, authenticated;
