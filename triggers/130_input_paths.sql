-- Input paths: what a job's input1_path / input2_path may name. The reactor
-- turns a storage key into a URL the provider fetches (signed with the
-- service's storage keys, or under REACTOR_INPUT_BASE_URL), so a key must be
-- one of the job owner's own uploads: `private/<owner_id>/…` (the upload layout
-- of the storage spec). An http(s) URL is passed to the provider as it is and
-- never signed. Everything else is refused, for everyone (clients, service_role,
-- the reactor's own login), at insert and whenever these columns are written.
-- The reactor checks again before signing (rows from before this rule).

-- Why `path` may not be an input of a job owned by `owner`; null when it may.
create or replace function reactor.input_path_problem(path text, owner uuid) returns text
language plpgsql immutable set search_path = pg_catalog as $$
declare
  own_prefix text := 'private/' || owner::text || '/';
  segment text;
begin
  if path is null or path ~ '^https?://[^/?#[:space:][:cntrl:]]+([/?#][^[:space:][:cntrl:]]*)?$' then
    return null;
  end if;
  if left(path, length(own_prefix)) is distinct from own_prefix then
    return format('must be an http(s) URL or a key under %s (the owner''s own uploads)', own_prefix);
  end if;
  -- Characters that decode, escape or end a path on the way to a URL: traversal
  -- spelled %2e%2e or ..%2f, a backslash, a query or fragment, control characters.
  if path ~ '[%\\?#[:cntrl:]]' then
    return 'may not contain %, \, ?, # or control characters';
  end if;
  if length(path) = length(own_prefix) then
    return format('must name a file under %s', own_prefix);
  end if;
  foreach segment in array string_to_array(substr(path, length(own_prefix) + 1), '/') loop
    if segment in ('', '.', '..') then
      return format('must be a key under %s without empty, "." or ".." segments', own_prefix);
    end if;
  end loop;
  return null;
end
$$;

-- Security definer so that a client's insert may use reactor.input_path_problem
-- (clients have no access to schema reactor); it reads only the new row.
create or replace function reactor.check_input_paths() returns trigger
language plpgsql security definer set search_path = pg_catalog, public as $$
declare
  col text;
  path text;
  problem text;
begin
  foreach col in array array['input1_path', 'input2_path'] loop
    path := case col when 'input1_path' then new.input1_path else new.input2_path end;
    -- Blank is "missing", as the submit rules say for required inputs: 23502.
    if path is not null and btrim(path) = '' then
      raise exception '% is empty (leave it null when the job has no such input)', col
        using errcode = 'not_null_violation', column = col, table = 'generation_jobs';
    end if;
    problem := reactor.input_path_problem(path, new.owner_id);
    if problem is not null then
      -- 23514: PostgREST answers 400 with this message.
      raise exception '% %', col, problem
        using errcode = 'check_violation', column = col, table = 'generation_jobs',
              constraint = 'generation_jobs_input_paths';
    end if;
  end loop;
  return new;
end
$$;

-- After the client guard (10: owner and status), before the submit rules (20:
-- the per-owner lock and quota), so a bad path is refused before any of that.
drop trigger if exists reactor_15_input_paths on public.generation_jobs;
create trigger reactor_15_input_paths
  before insert or update of input1_path, input2_path, owner_id on public.generation_jobs
  for each row execute function reactor.check_input_paths();

revoke all on function reactor.input_path_problem(text, uuid) from public, anon, authenticated;
revoke all on function reactor.check_input_paths() from public, anon, authenticated;
