-- Supabase compatibility: on plain Postgres, create the pieces of Supabase the
-- schema relies on (schema auth, auth.users, auth.uid(), auth.role(), auth.jwt()
-- and the roles anon / authenticated / service_role). Each piece is created
-- only where it is missing, so on a real Supabase database this changes nothing.
do $compat$
declare
  r text;
begin
  foreach r in array array['anon', 'authenticated', 'service_role'] loop
    if not exists (select 1 from pg_roles where rolname = r) then
      begin
        -- Roles are cluster-wide: parallel migrations of sibling databases may
        -- race to create them, so "already there" is success.
        if r = 'service_role' then
          execute format('create role %I nologin noinherit bypassrls', r);
        else
          execute format('create role %I nologin noinherit', r);
        end if;
      exception when duplicate_object or unique_violation then
        null;
      end;
    end if;
  end loop;

  if to_regnamespace('auth') is null then
    create schema auth;
    grant usage on schema auth to anon, authenticated, service_role;
  end if;

  if to_regclass('auth.users') is null then
    create table auth.users (
      id uuid primary key default gen_random_uuid(),
      email text,
      raw_user_meta_data jsonb,
      created_at timestamptz not null default now()
    );
  end if;

  -- The same definitions Supabase uses: the JWT claims PostgREST puts into
  -- request.jwt.claims (and the older per-claim settings).
  if to_regprocedure('auth.uid()') is null then
    create function auth.uid() returns uuid language sql stable as $f$
      select coalesce(
        nullif(current_setting('request.jwt.claim.sub', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
      )::uuid
    $f$;
    grant execute on function auth.uid() to anon, authenticated, service_role;
  end if;

  if to_regprocedure('auth.role()') is null then
    create function auth.role() returns text language sql stable as $f$
      select coalesce(
        nullif(current_setting('request.jwt.claim.role', true), ''),
        (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
      )::text
    $f$;
    grant execute on function auth.role() to anon, authenticated, service_role;
  end if;

  if to_regprocedure('auth.jwt()') is null then
    create function auth.jwt() returns jsonb language sql stable as $f$
      select coalesce(
        nullif(current_setting('request.jwt.claim', true), ''),
        nullif(current_setting('request.jwt.claims', true), '')
      )::jsonb
    $f$;
    grant execute on function auth.jwt() to anon, authenticated, service_role;
  end if;

  grant usage on schema public to anon, authenticated, service_role;
end
$compat$;
