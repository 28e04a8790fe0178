-- Operator functions (not granted to clients).

-- Brings a dead (or backing-off) row back: forgets its failed attempts and
-- tells running reactors to look at it now. Returns whether there was state.
--   select reactor.retry('renders', '<job id>');
--   select reactor.retry(handler, row_id) from reactor.handler_state where dead_at is not null;
create or replace function reactor.retry(p_handler text, p_row_id text) returns boolean
language plpgsql as $$
declare
  found_state boolean;
begin
  delete from reactor.handler_state where handler = p_handler and row_id = p_row_id;
  found_state := found;
  perform pg_notify('reactor', json_build_object('reactor_retry', p_handler, 'id', p_row_id)::text);
  return found_state;
end
$$;
revoke all on function reactor.retry(text, text) from public;
