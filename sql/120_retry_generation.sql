-- reactor.retry() also for the generation handler: a job that failed because
-- its submission gave up (dead, and no prediction was ever attached) goes back
-- to 'starting' so the reactor submits it again (reconciling first if an
-- earlier attempt may have created a prediction).
create or replace function reactor.retry(p_handler text, p_row_id text) returns boolean
language plpgsql as $$
declare
  found_state boolean;
  was_dead boolean;
begin
  select dead_at is not null into was_dead
    from reactor.handler_state where handler = p_handler and row_id = p_row_id;
  delete from reactor.handler_state where handler = p_handler and row_id = p_row_id;
  found_state := found;
  if p_handler = 'generation' and coalesce(was_dead, false) then
    update public.generation_jobs
      set status = 'starting', error = null, completed_at = null
      where id::text = p_row_id and status = 'failed' and prediction_id is null;
  end if;
  perform pg_notify('reactor', json_build_object('reactor_retry', p_handler, 'id', p_row_id)::text);
  return found_state;
end
$$;
revoke all on function reactor.retry(text, text) from public;
