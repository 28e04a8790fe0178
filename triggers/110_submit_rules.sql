-- Submit-time rules for generation_jobs (seed 004 section 5), checked inside
-- the database so that every path in (supabase-js, psql, an edge function)
-- obeys them. PostgREST turns SQLSTATE PT409 into HTTP 409 and PT402 into 402.
--
-- Race safety: submissions of one owner are serialized by a transaction-level
-- advisory lock, and each check below is its own statement, so under READ
-- COMMITTED it sees the job a concurrent submitter committed while we waited.
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

  select coalesce(sum(amount), 0) into v_used
  from public.usage_ledger
  where owner_id = new.owner_id and kind = 'generation_debit' and created_at >= v_month_start;

  if v_used >= v_limit then
    raise exception 'monthly generation limit reached: % of % used on plan %', v_used, v_limit, v_plan
      using errcode = 'PT402', hint = 'the limit resets at the start of the next UTC month';
  end if;
  return new;
end
$$;

drop trigger if exists reactor_20_submit_rules on public.generation_jobs;
create trigger reactor_20_submit_rules
  before insert on public.generation_jobs
  for each row execute function reactor.enforce_submit_rules();
