-- Submit rules with the money holes closed (replaces
-- reactor.enforce_submit_rules() from triggers/131_quota_pending_debits.sql;
-- the input and idempotency rules are as there):
--
-- * The lock: the owner's row of reactor.submit_locks (sql/200), which no
--   outsider can take, instead of an advisory lock keyed on the public user id
--   that any login could hold to stall the owner's submissions.
-- * In flight: a timed-out job whose prediction is still followed
--   (followed_until in the future, sql/201) may still succeed, so it counts as
--   in flight. Before, the owner of a plan of 1 submitted again the moment the
--   stuck rule failed job A, and A's late success gave a second generation.
--   Both lookups are served by partial indexes keyed on the owner
--   (idx_jobs_in_flight_owner, idx_jobs_followed_owner): O(in flight).
-- * Pending debits: debits are written when a job is rendered (sql/202), so
--   a succeeded job can stay undebited for as long as its render takes; they
--   are looked up in idx_jobs_undebited_owner, with no lookback bound.
--
-- clock_timestamp(), not now(): a late success is refused from the moment its
-- window ends (reactor.lock_submissions orders it with this submission), and
-- the check here must use the same clock, not the transaction's start.
create or replace function reactor.enforce_submit_rules() returns trigger
language plpgsql security definer set search_path = pg_catalog, public as $$
declare
  v_plan text;
  v_limit int;
  v_used bigint;
  v_month_start timestamptz := date_trunc('month', now() at time zone 'UTC') at time zone 'UTC';
begin
  if new.mode in ('redesign', 'staging', 'compose') and coalesce(btrim(new.input1_path), '') = '' then
    raise exception 'input1_path is required for mode %', new.mode
      using errcode = 'not_null_violation', column = 'input1_path', table = 'generation_jobs';
  end if;
  if new.mode = 'compose' and coalesce(btrim(new.input2_path), '') = '' then
    raise exception 'input2_path is required for mode compose'
      using errcode = 'not_null_violation', column = 'input2_path', table = 'generation_jobs';
  end if;
  if new.mode = 'imagine' and coalesce(btrim(new.prompt), '') = '' then
    raise exception 'prompt is required for mode imagine'
      using errcode = 'not_null_violation', column = 'prompt', table = 'generation_jobs';
  end if;

  -- Only a submission (a job that will cost a generation) is rate-ruled; rows
  -- written in a terminal state (imports, backfills by the service) are not.
  if new.status not in ('starting', 'processing') then
    return new;
  end if;

  perform reactor.lock_submissions(new.owner_id);

  -- Checked before the in-flight rule: a client retrying a submission must learn
  -- that its earlier job exists, not that "a generation is in progress".
  if new.idempotency_key is not null and exists (
    select 1 from public.generation_jobs
    where owner_id = new.owner_id and idempotency_key = new.idempotency_key
  ) then
    raise exception 'a job with this idempotency_key already exists for this owner'
      using errcode = 'unique_violation', constraint = 'uniq_jobs_owner_idem', table = 'generation_jobs';
  end if;

  if exists (
    select 1 from public.generation_jobs
    where owner_id = new.owner_id and status in ('starting', 'processing')
  ) then
    raise exception 'a generation is already in progress'
      using errcode = 'PT409', hint = 'wait for the running job to finish (or cancel it)';
  end if;

  if exists (
    select 1 from public.generation_jobs
    where owner_id = new.owner_id and followed_until is not null and followed_until > clock_timestamp()
  ) then
    raise exception 'a generation is already in progress: a timed-out job may still finish'
      using errcode = 'PT409',
            hint = 'its late result is accepted for a while after the timeout; submit again when it has ended';
  end if;

  select p.name, p.monthly_generations into v_plan, v_limit
  from public.plans p
  where p.price_id = (select pr.price_id from public.profiles pr where pr.id = new.owner_id);
  if not found then
    select p.name, p.monthly_generations into v_plan, v_limit
    from public.plans p where p.is_default;
  end if;
  if not found then
    raise exception 'no plan applies: set profiles.price_id or mark one plan is_default'
      using errcode = 'PT402';
  end if;

  -- Debits decide, and a succeeded job whose debit is not written yet is a
  -- pending debit: it counts as one (it may still be rendered and debited; one
  -- whose render dies for good becomes 'failed' and stops counting). One
  -- statement, so both counts read one snapshot (a debit committing in between
  -- is counted once, not zero times). A pending debit is dated when it is
  -- written, so it belongs to this month whenever the job ran. The not-exists
  -- covers jobs debited before the debited_at marker existed.
  select
    (select coalesce(sum(u.amount), 0) from public.usage_ledger u
     where u.owner_id = new.owner_id and u.kind = 'generation_debit' and u.created_at >= v_month_start)
    + (select count(*) from public.generation_jobs j
       where j.owner_id = new.owner_id
         and j.status = 'succeeded' and j.output is not null and j.debited_at is null
         and not exists (select 1 from public.usage_ledger d
                         where d.job_id = j.id and d.kind = 'generation_debit'))
  into v_used;

  if v_used >= v_limit then
    raise exception 'monthly generation limit reached: % of % used on plan %', v_used, v_limit, v_plan
      using errcode = 'PT402', hint = 'the limit resets at the start of the next UTC month';
  end if;
  return new;
end
$$;

-- A trigger function: nobody calls it (see triggers/139_function_privileges.sql).
revoke all on function reactor.enforce_submit_rules() from public, anon, authenticated;
