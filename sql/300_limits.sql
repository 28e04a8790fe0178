-- Limits shared by every reactor (README, "Limits and fairness"): one row per
-- handler that has a limit configured or was pushed back by its provider.
--
-- * max_in_flight: at most this many live leases of the handler at once. A
--   slot *is* a lease (reactor.handler_state), so it is released in the
--   statement that records the attempt's outcome, and a dead reactor's slots
--   come free when its leases expire.
-- * rate_per_s / burst / tokens / refilled_at: a token bucket, refilled lazily
--   by whoever takes from it (no background job).
-- * paused_until: a 429/503 with Retry-After pauses the handler on every reactor.
-- * per_key / max_in_flight_per_key: at most this many live leases per value
--   of a column of the source row (the value is kept on the lease: limit_key).
--
-- Rows are written by `reactor run` at start from its settings (the last
-- reactor started wins: restart them all to change a limit).
create table if not exists reactor.limits (
  handler text primary key,
  max_in_flight int check (max_in_flight > 0),
  rate_per_s float8 check (rate_per_s > 0),
  burst float8 not null default 1 check (burst >= 1),
  tokens float8 not null default 1,
  refilled_at timestamptz not null default now(),
  paused_until timestamptz,
  max_in_flight_per_key int check (max_in_flight_per_key > 0),
  updated_at timestamptz not null default now()
);

alter table reactor.handler_state add column if not exists limit_key text;

-- Live leases of one handler, counted by every limited claim: the index holds
-- leased rows only (a handful), never the retry-waiting or dead ones.
create index if not exists idx_handler_state_leased on reactor.handler_state (handler, limit_key)
  where lease_owner is not null;

-- Which of the claimable candidates a reactor may claim now for `p_handler`
-- (`p_keys`: each candidate's per-key value, in claim order; nulls when no
-- per_key), and if not all, how long to wait and why ('paused',
-- 'max_in_flight', 'max_in_flight_per_key', 'rate'). `take` holds the granted
-- candidates' positions in `p_keys` (1-based).
-- Locks the handler's limits row until the end of the calling statement, so
-- claims of one limited handler are serialized across reactors for the few
-- milliseconds of one claim statement; live leases are counted after the lock
-- is taken (a volatile function takes a fresh snapshot per statement), so the
-- count sees every claim committed before. Takes one token per granted row.
create or replace function reactor.limit_grant(p_handler text, p_keys text[],
  out take int[], out wait_s float8, out reason text)
language plpgsql volatile
set search_path = pg_catalog, pg_temp
as $$
declare
  l reactor.limits;
  wanted int := coalesce(cardinality(p_keys), 0);
  room int;
  live int;
  available float8;
  per_key jsonb := '{}';
  k text;
  i int;
  n int;
begin
  take := array(select generate_series(1, wanted)); wait_s := 0; reason := null;
  if wanted = 0 then
    return;
  end if;
  select * into l from reactor.limits where handler = p_handler;
  if not found then
    return;
  end if;
  if l.paused_until > now() then
    take := '{}'; wait_s := extract(epoch from l.paused_until - now()); reason := 'paused';
    return;
  end if;
  if l.max_in_flight is null and l.rate_per_s is null and l.max_in_flight_per_key is null then
    return;
  end if;
  select * into l from reactor.limits where handler = p_handler for update;
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
    take := '{}';
    for i in 1 .. wanted loop
      exit when cardinality(take) >= room;
      k := p_keys[i];
      n := coalesce((per_key ->> coalesce(k, '')) ::int, 0);
      if k is null or n < l.max_in_flight_per_key then
        take := take || i;
        if k is not null then
          per_key := per_key || jsonb_build_object(k, n + 1);
        end if;
      elsif reason is null then
        reason := 'max_in_flight_per_key'; wait_s := 0.1;
      end if;
    end loop;
  else
    take := take[1:room];
  end if;
  if l.rate_per_s is not null then
    update reactor.limits set tokens = available - cardinality(take), refilled_at = now()
      where handler = p_handler;
  end if;
end
$$;

-- Gives back tokens granted for rows another reactor claimed in between.
create or replace function reactor.limit_refund(p_handler text, p_tokens int)
returns void
language sql volatile
set search_path = pg_catalog, pg_temp
as $$
  update reactor.limits set tokens = least(burst, tokens + p_tokens)
  where handler = p_handler and rate_per_s is not null and p_tokens > 0;
$$;

revoke all on function reactor.limit_grant(text, text[]) from public;
revoke all on function reactor.limit_refund(text, int) from public;
