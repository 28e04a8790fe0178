-- Quiet hints under load (notify mode): while a reactor is already paging a
-- table's pending rows, the table's writers skip NOTIFY.
--
-- Why: a transaction that NOTIFYs takes, at commit, a database-wide lock that
-- it holds through its commit's WAL flush, so notifying commits are
-- serialized and lose group commit (measured: 32 durable writers kept 0.15
-- of their rate). Hints only make the reactor react sooner; under load it is
-- already busy with the table and can page its pending index instead.
--
-- A row here says: until quiet_until, writers of tables named table_name
-- send no hint (triggers/260_quiet_hints.sql reads it, one primary-key
-- lookup per row, never a write). The reactor that takes the row (holder)
-- renews it while the table stays busy and announces every take on channels
-- "reactor" and "job_status":
--   {"reactor_quiet":"<table>","for_ms":<how long it stays quiet>}
-- Every reactor that hears it polls the table's handlers until then (plus a
-- grace, then one last scan); see src/engine/quiet.rs.
--
-- It fails safe:
--   * a lease, not a flag: a holder that dies (kill -9, a partition) stops
--     renewing and writers notify again once quiet_until has passed;
--   * UNLOGGED: a crash of the server empties it (unlogged tables are reset
--     by crash recovery, and are empty on a promoted replica), so a crash can
--     never leave writers silent;
--   * writers compare with now(), their own transaction's start.
-- Keyed by the table's name as hints carry it (no schema): two tables of the
-- same name in different schemas go quiet together, which costs only latency.
create unlogged table if not exists reactor.quiet_tables (
  table_name text primary key,
  -- The reactor session that took it (a random token per reactor process).
  holder uuid not null,
  quiet_until timestamptz not null
);

revoke all on table reactor.quiet_tables from public, anon, authenticated;
