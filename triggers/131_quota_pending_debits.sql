-- The quota counts pending debits (replaces reactor.enforce_submit_rules() from
-- triggers/110_submit_rules.sql; only the "used" sum changed). The race it
-- closes: a job commits 'succeeded', and before the reactor writes its debit the
-- owner submits again. The job is no longer in flight (so the in-flight rule
-- lets the submission through) and not yet debited (so the quota missed it):
-- a user at 29 of 30 ended at 31. Every other rule is as in 110.
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

  perform pg_advisory_xact_lock(hashtext('reactor.submit'), hashtext(new.owner_id::text));

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
  -- pending debit: it counts as one. Without it, a submission in the moment
  -- between a job's success and its debit got past the limit. One statement,
  -- so both counts read one snapshot (a debit committing in between is counted
  -- once, not zero times). A pending debit is dated when it is written (now or
  -- later), so it belongs to this month whenever the job ran; the lookback is
  -- bounded (the owner/created_at index) to jobs that can still be undebited
  -- in practice: they run for minutes (the stuck rule), debits follow at once.
  select
    (select coalesce(sum(u.amount), 0) from public.usage_ledger u
     where u.owner_id = new.owner_id and u.kind = 'generation_debit' and u.created_at >= v_month_start)
    + (select count(*) from public.generation_jobs j
       where j.owner_id = new.owner_id and j.created_at >= v_month_start - interval '1 day'
         and j.status = 'succeeded'
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

