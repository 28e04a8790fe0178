-- reactor.settings: switches the database owner may flip without superuser.
--
-- `alter database … set reactor.notify_mode = 'outbox'` needs superuser (or a
-- grant on the parameter), which Supabase's `postgres` role does not have. This
-- one-row table is the switch that role (or any owner of the reactor schema)
-- may use instead:
--   update reactor.settings set notify_mode = 'outbox';   -- or: reactor notify-mode outbox
-- The triggers read it once per firing (a sequential scan of a one-page,
-- one-row table: cheaper than an index lookup). The older database setting
-- still works and, when set, wins: a deployment that already switched with
-- ALTER DATABASE keeps its behaviour, and a session may override the table
-- with SET.
create table if not exists reactor.settings (
  -- Always true: at most one row.
  singleton boolean primary key default true check (singleton),
  notify_mode text not null default 'notify' check (notify_mode in ('notify', 'outbox')),
  updated_at timestamptz not null default now()
);
insert into reactor.settings (singleton) values (true) on conflict do nothing;

-- Clients have no business here (the triggers read it as the reactor schema's
-- owner, being security definer).
revoke all on table reactor.settings from public;

-- The effective mode: the database/session setting when set, else the row.
create or replace function reactor.notify_mode() returns text
language sql stable set search_path = pg_catalog as $$
  select coalesce(
    nullif(current_setting('reactor.notify_mode', true), ''),
    (select notify_mode from reactor.settings limit 1),
    'notify')
$$;
revoke all on function reactor.notify_mode() from public;
