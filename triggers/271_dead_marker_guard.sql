-- profiles.favorites_dead_at (sql/270_dead_markers.sql) records that the
-- favorites handler gave up on the profile; only the reactor sets it (and
-- reactor.retry() clears it). reactor.guard_profile as in
-- triggers/171_profile_marker_guard.sql, with that column guarded like
-- favorites_at: a client cannot hide its row from the handler, or put it back.
create or replace function reactor.guard_profile() returns trigger
language plpgsql as $$
begin
  if current_user in ('anon', 'authenticated') then
    if tg_op = 'INSERT' and new.price_id is not null then
      raise exception 'clients may not set profiles.price_id (billing sets the plan)'
        using errcode = '42501', column = 'price_id', table = 'profiles';
    end if;
    if tg_op = 'UPDATE' and new.price_id is distinct from old.price_id then
      raise exception 'clients may not change profiles.price_id (billing sets the plan)'
        using errcode = '42501', column = 'price_id', table = 'profiles';
    end if;
    if tg_op = 'INSERT' and new.favorites_at is not null then
      raise exception 'clients may not set profiles.favorites_at (the reactor sets it)'
        using errcode = '42501', column = 'favorites_at', table = 'profiles';
    end if;
    if tg_op = 'UPDATE' and new.favorites_at is distinct from old.favorites_at then
      raise exception 'clients may not change profiles.favorites_at (the reactor sets it)'
        using errcode = '42501', column = 'favorites_at', table = 'profiles';
    end if;
    if tg_op = 'INSERT' and new.favorites_dead_at is not null then
      raise exception 'clients may not set profiles.favorites_dead_at (the reactor sets it)'
        using errcode = '42501', column = 'favorites_dead_at', table = 'profiles';
    end if;
    if tg_op = 'UPDATE' and new.favorites_dead_at is distinct from old.favorites_dead_at then
      raise exception 'clients may not change profiles.favorites_dead_at (the reactor sets it)'
        using errcode = '42501', column = 'favorites_dead_at', table = 'profiles';
    end if;
    if tg_op = 'INSERT' then
      new.created_at := now();
    end if;
  end if;
  if tg_op = 'UPDATE' then
    new.created_at := old.created_at;
  end if;
  new.updated_at := now();
  return new;
end
$$;
