-- WAL mode: which reactor sends job_status NOTIFY and the Realtime broadcast
-- (src/engine/wal/broadcast.rs).
--
-- One reactor at a time sends them. That used to be the holder of a session
-- advisory lock, but advisory-lock keys are global to a database and any login
-- may take any key: an outsider holding it silenced job_status and Realtime in
-- WAL mode for as long as it liked. This one-row lease can only be taken by
-- roles that may update it (the reactor's own role, which owns it).
--
-- A reactor takes the lease when it is free or expired and renews it while it
-- sends; each send checks, in the same statement, that the lease is still its
-- own and unexpired, so a reactor that stalled past its lease cannot send
-- beside the one that took over. A stopping reactor releases it. Times are the
-- server's clock (now()), so reactors' clocks do not matter. No session holds
-- a lock or a transaction open for this.
create table if not exists reactor.wal_sender (
  -- Always true: at most one row.
  singleton boolean primary key default true check (singleton),
  -- A random token per sending session; null when nobody has held it yet.
  holder uuid,
  expires_at timestamptz not null default '-infinity'
);
insert into reactor.wal_sender (singleton) values (true) on conflict do nothing;

revoke all on table reactor.wal_sender from public, anon, authenticated;
