-- Keeps the favorites marker (sql/180_pending_markers.sql) true to its fact.
--
-- A deleted (or unflagged) default favorites collection is re-created by the
-- next sweep, as before markers existed: removing it clears its owner's
-- profiles.favorites_at, which makes the profile pending again. Only the
-- service role can do either (RLS and reactor.guard_collection stop clients).
create or replace function reactor.reopen_favorites() returns trigger
language plpgsql security definer set search_path = pg_catalog, public as $$
begin
  update public.profiles set favorites_at = null
  where id = old.owner_id and favorites_at is not null;
  return null;
end
$$;

drop trigger if exists reactor_reopen_favorites_delete on public.collections;
create trigger reactor_reopen_favorites_delete
  after delete on public.collections
  for each row when (old.is_default_favorites)
  execute function reactor.reopen_favorites();

drop trigger if exists reactor_reopen_favorites_unflag on public.collections;
create trigger reactor_reopen_favorites_unflag
  after update of is_default_favorites, owner_id on public.collections
  for each row when (old.is_default_favorites
    and (not new.is_default_favorites or new.owner_id is distinct from old.owner_id))
  execute function reactor.reopen_favorites();

-- A trigger function: nobody calls it (see triggers/139_function_privileges.sql).
revoke all on function reactor.reopen_favorites() from public, anon, authenticated;
