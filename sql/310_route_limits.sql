-- Limits per route (docs: "Limits and fairness"): an own table routed by job
-- type (`job_type_column` + `http.routes`) may limit each route on its own,
-- in addition to the table's limits, across every reactor together.
--
-- * A route's bucket is a row of reactor.limits named `<handler>[<route>]`,
--   with `of_handler` and `route` set (so the snapshot, /metrics, the
--   dashboard and `reactor status` show it beside the handler's row). Only
--   max_in_flight, rate_per_s, burst and tokens apply to it; a provider's
--   push-back still pauses the whole handler.
-- * A lease keeps its row's route (`limit_route`), counted for a route's
--   max_in_flight like `limit_key` for max_in_flight_per_key.
-- * A candidate held back by its route is not kept first in line: its state
--   row gets `next_attempt_at` (no attempt counted, as for push-back), so
--   pages, sweeps and every reactor pass over it until its turn and the other
--   routes' rows flow at full speed.
alter table reactor.limits add column if not exists of_handler text;
alter table reactor.limits add column if not exists route text;
-- A route's queue of set-aside rows: the next turn not yet promised to one.
alter table reactor.limits add column if not exists next_turn_at timestamptz;
do $$
begin
  if not exists (select 1 from pg_constraint where conname = 'limits_route_of_handler') then
    alter table reactor.limits add constraint limits_route_of_handler
      check ((of_handler is null) = (route is null));
  end if;
end
$$;

alter table reactor.handler_state add column if not exists limit_route text;

-- Live leases of one route, counted by every claim of a limited route.
create index if not exists idx_handler_state_leased_route
  on reactor.handler_state (handler, limit_route)
  where lease_owner is not null and limit_route is not null;

-- Which of the claimable candidates a reactor may claim now for `p_handler`.
-- `p_keys`: each candidate's per-key value, `p_routes`: its route (null when
-- the handler has no route limits), both in claim order. Decides per
-- candidate in one pass, in order: the handler's room (max_in_flight, rate),
-- the candidate's route (slots, tokens), its key (max_in_flight_per_key).
--
-- * take: the granted positions (1-based). One token is taken per granted
--   row from the handler's bucket and from its route's.
-- * wait_s / reason: when the handler's own limits held rows back, how long
--   until it may grant again and which limit ('paused', 'max_in_flight',
--   'max_in_flight_per_key', 'rate'); those rows stay first in line.
-- * held / held_by / held_reason / held_wait: candidates held back by their
--   route (positions), the route's bucket, the limit, and when to offer each
--   again: its turn in the route's queue (next_turn_at, shared by every
--   reactor), half a token apart (rate: two rows offered per token, so one
--   that comes back late leaves no token unused) or 100 ms per cap's worth of
--   rows apart (max_in_flight), so set-aside rows come back about as fast as
--   the route can take them. No turn is promised beyond a minute: a longer
--   backlog comes back after one to two minutes (spread) and queues again.
--
-- Locks the handler's row and the candidates' route rows, in name order, until
-- the end of the calling statement, and counts live leases after the lock.
create or replace function reactor.limit_grant(p_handler text, p_keys text[], p_routes text[],
  out take int[], out wait_s float8, out reason text,
  out held int[], out held_by text[], out held_reason text[], out held_wait float8[])
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  l reactor.limits;
  r reactor.limits;
  wanted int := coalesce(cardinality(p_keys), 0);
  room int;
  live int;
  available float8;
  per_key jsonb := '{}';
  k text;
  i int;
  j int;
  n int;
  -- The candidates' limited routes, by index j.
  r_route text[] := '{}';
  r_bucket text[] := '{}';
  r_cap int[] := '{}';
  r_room int[] := '{}';    -- slots left (null: no cap)
  r_rate float8[] := '{}';
  r_tokens float8[] := '{}'; -- tokens left (null: no rate)
  r_turn timestamptz[] := '{}'; -- the route's next turn to promise
  turn timestamptz;
begin
  take := array(select generate_series(1, wanted)); wait_s := 0; reason := null;
  held := '{}'; held_by := '{}'; held_reason := '{}'; held_wait := '{}';
  if wanted = 0 then
    return;
  end if;
  select * into l from reactor.limits where handler = p_handler;
  if found and l.paused_until > now() then
    take := '{}'; wait_s := extract(epoch from l.paused_until - now()); reason := 'paused';
    return;
  end if;
  if (l.max_in_flight is null and l.rate_per_s is null and l.max_in_flight_per_key is null)
    and not exists (select 1 from reactor.limits x
                    where x.of_handler = p_handler and x.route = any(p_routes)) then
    return;
  end if;
  l := null;
  for r in select * from reactor.limits x
           where x.handler = p_handler or (x.of_handler = p_handler and x.route = any(p_routes))
           order by x.handler for update loop
    if r.route is null then
      l := r;
    else
      r_route := r_route || r.route;
      r_bucket := r_bucket || r.handler;
      r_cap := r_cap || r.max_in_flight;
      r_rate := r_rate || r.rate_per_s;
      r_turn := r_turn || coalesce(r.next_turn_at, now());
      if r.max_in_flight is null then
        r_room := r_room || null::int;
      else
        select count(*) into live from reactor.handler_state
          where handler = p_handler and limit_route = r.route
            and lease_owner is not null and lease_expires_at > now();
        r_room := r_room || greatest(r.max_in_flight - live, 0);
      end if;
      if r.rate_per_s is null then
        r_tokens := r_tokens || null::float8;
      else
        r_tokens := r_tokens || least(r.burst,
          r.tokens + greatest(0, extract(epoch from now() - r.refilled_at)) * r.rate_per_s);
      end if;
    end if;
  end loop;
  room := wanted;
  if l.max_in_flight is not null then
    select count(*) into live from reactor.handler_state
      where handler = p_handler and lease_owner is not null and lease_expires_at > now();
    if live + wanted > l.max_in_flight then
      room := greatest(l.max_in_flight - live, 0); reason := 'max_in_flight'; wait_s := 0.1;
    end if;
  end if;
  if l.rate_per_s is not null then
    available := least(l.burst,
      l.tokens + greatest(0, extract(epoch from now() - l.refilled_at)) * l.rate_per_s);
    if floor(available) < room then
      room := floor(available)::int; reason := 'rate';
      wait_s := greatest(wait_s, (1 - (available - room)) / l.rate_per_s);
    end if;
  end if;
  if l.max_in_flight_per_key is not null then
    select coalesce(jsonb_object_agg(limit_key, c), '{}') into per_key from (
      select s.limit_key, count(*) as c from reactor.handler_state s
      where s.handler = p_handler and s.lease_owner is not null and s.lease_expires_at > now()
        and s.limit_key = any(p_keys)
      group by s.limit_key) counted;
  end if;
  take := '{}';
  for i in 1 .. wanted loop
    exit when cardinality(take) >= room;
    j := array_position(r_route, p_routes[i]);
    if j is not null and (r_room[j] = 0 or r_tokens[j] < 1) then
      held := held || i;
      held_by := held_by || r_bucket[j];
      if r_room[j] = 0 then
        held_reason := held_reason || 'max_in_flight'::text;
        turn := greatest(r_turn[j], now() + interval '100 ms');
        r_turn[j] := turn + make_interval(secs => 0.1 / r_cap[j]);
      else
        held_reason := held_reason || 'rate'::text;
        turn := greatest(r_turn[j], now() + make_interval(secs => (1 - r_tokens[j]) / r_rate[j]));
        r_turn[j] := turn + make_interval(secs => 0.5 / r_rate[j]);
      end if;
      if turn > now() + interval '1 minute' then
        turn := now() + interval '1 minute' * (1 + random());
        r_turn[j] := now() + interval '1 minute';
      end if;
      held_wait := held_wait || extract(epoch from turn - now())::float8;
      continue;
    end if;
    if l.max_in_flight_per_key is not null then
      k := p_keys[i];
      n := coalesce((per_key ->> coalesce(k, '')) ::int, 0);
      if k is not null and n >= l.max_in_flight_per_key then
        if reason is null then
          reason := 'max_in_flight_per_key'; wait_s := 0.1;
        end if;
        continue;
      end if;
      if k is not null then
        per_key := per_key || jsonb_build_object(k, n + 1);
      end if;
    end if;
    take := take || i;
    if j is not null then
      r_room[j] := r_room[j] - 1;
      r_tokens[j] := r_tokens[j] - 1;
    end if;
  end loop;
  if l.rate_per_s is not null then
    update reactor.limits set tokens = available - cardinality(take), refilled_at = now()
      where handler = p_handler;
  end if;
  for j in 1 .. coalesce(cardinality(r_route), 0) loop
    update reactor.limits set
        tokens = coalesce(r_tokens[j], tokens),
        refilled_at = case when r_rate[j] is not null then now() else refilled_at end,
        next_turn_at = r_turn[j]
      where handler = r_bucket[j]
        and (r_rate[j] is not null or next_turn_at is distinct from r_turn[j]);
  end loop;
end
$$;

-- The handler-only grant of sql/300_limits.sql, kept for reactors not yet
-- upgraded: the same decision, without routes.
create or replace function reactor.limit_grant(p_handler text, p_keys text[],
  out take int[], out wait_s float8, out reason text)
language sql volatile
set search_path = pg_catalog, pg_temp
as $$
  select g.take, g.wait_s, g.reason from reactor.limit_grant(p_handler, p_keys, null::text[]) g;
$$;

revoke all on function reactor.limit_grant(text, text[], text[]) from public;
revoke all on function reactor.limit_grant(text, text[]) from public;
