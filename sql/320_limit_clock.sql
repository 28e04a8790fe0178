-- A bucket's clock is the moment its lock is taken (clock_timestamp()), no
-- longer the claim statement's start (now()). A claim statement that began
-- before another's and waited behind it for the bucket's lock set
-- refilled_at back to its own start, so the next grant refilled the stretch
-- between the two a second time: every wait for the lock handed out its
-- length in extra tokens (a statement that waited 1 s for a bucket of 10/s
-- gave the next claim a whole burst more). refilled_at now never moves back,
-- and live leases and turns are counted at the same moment.
--
-- Otherwise reactor.limit_grant as in sql/310_route_limits.sql, which
-- documents what it decides and returns; the two-argument form there calls
-- this one. held_wait stays relative to the statement's now(), which the
-- claim adds it to.
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
  locked_at timestamptz; -- when the buckets were locked: refills, leases and turns are counted to it
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
  perform 1 from reactor.limits x
    where x.handler = p_handler or (x.of_handler = p_handler and x.route = any(p_routes))
    order by x.handler for update;
  locked_at := clock_timestamp();
  l := null;
  for r in select * from reactor.limits x
           where x.handler = p_handler or (x.of_handler = p_handler and x.route = any(p_routes))
           order by x.handler loop
    if r.route is null then
      l := r;
    else
      r_route := r_route || r.route;
      r_bucket := r_bucket || r.handler;
      r_cap := r_cap || r.max_in_flight;
      r_rate := r_rate || r.rate_per_s;
      r_turn := r_turn || coalesce(r.next_turn_at, locked_at);
      if r.max_in_flight is null then
        r_room := r_room || null::int;
      else
        select count(*) into live from reactor.handler_state
          where handler = p_handler and limit_route = r.route
            and lease_owner is not null and lease_expires_at > locked_at;
        r_room := r_room || greatest(r.max_in_flight - live, 0);
      end if;
      if r.rate_per_s is null then
        r_tokens := r_tokens || null::float8;
      else
        r_tokens := r_tokens || least(r.burst,
          r.tokens + greatest(0, extract(epoch from locked_at - r.refilled_at)) * r.rate_per_s);
      end if;
    end if;
  end loop;
  room := wanted;
  if l.max_in_flight is not null then
    select count(*) into live from reactor.handler_state
      where handler = p_handler and lease_owner is not null and lease_expires_at > locked_at;
    if live + wanted > l.max_in_flight then
      room := greatest(l.max_in_flight - live, 0); reason := 'max_in_flight'; wait_s := 0.1;
    end if;
  end if;
  if l.rate_per_s is not null then
    available := least(l.burst,
      l.tokens + greatest(0, extract(epoch from locked_at - l.refilled_at)) * l.rate_per_s);
    if floor(available) < room then
      room := floor(available)::int; reason := 'rate';
      wait_s := greatest(wait_s, (1 - (available - room)) / l.rate_per_s);
    end if;
  end if;
  if l.max_in_flight_per_key is not null then
    select coalesce(jsonb_object_agg(limit_key, c), '{}') into per_key from (
      select s.limit_key, count(*) as c from reactor.handler_state s
      where s.handler = p_handler and s.lease_owner is not null and s.lease_expires_at > locked_at
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
        turn := greatest(r_turn[j], locked_at + interval '100 ms');
        r_turn[j] := turn + make_interval(secs => 0.1 / r_cap[j]);
      else
        held_reason := held_reason || 'rate'::text;
        turn := greatest(r_turn[j], locked_at + make_interval(secs => (1 - r_tokens[j]) / r_rate[j]));
        r_turn[j] := turn + make_interval(secs => 0.5 / r_rate[j]);
      end if;
      if turn > locked_at + interval '1 minute' then
        turn := locked_at + interval '1 minute' * (1 + random());
        r_turn[j] := locked_at + interval '1 minute';
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
    update reactor.limits
      set tokens = available - cardinality(take), refilled_at = greatest(refilled_at, locked_at)
      where handler = p_handler;
  end if;
  for j in 1 .. coalesce(cardinality(r_route), 0) loop
    update reactor.limits set
        tokens = coalesce(r_tokens[j], tokens),
        refilled_at = case when r_rate[j] is not null then greatest(refilled_at, locked_at)
                           else refilled_at end,
        next_turn_at = r_turn[j]
      where handler = r_bucket[j]
        and (r_rate[j] is not null or next_turn_at is distinct from r_turn[j]);
  end loop;
end
$$;

revoke all on function reactor.limit_grant(text, text[], text[]) from public;
