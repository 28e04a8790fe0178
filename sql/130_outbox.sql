-- Outbox mode: a way to run without NOTIFY in the writers' transactions.
--
-- Every transaction that sends a NOTIFY takes one cluster-wide lock at commit,
-- so many concurrent writers serialize on it (measured in BENCHMARKS.md). With
--   alter database <db> set reactor.notify_mode = 'outbox';
-- the reactor's triggers append their payload here instead (an unlogged, index-
-- free heap append: no global lock), and a reactor started with
-- REACTOR_OUTBOX_POLL drains it, acts on the hints, and sends the job_status
-- notifications itself, one transaction per batch. Unlogged: a crash empties
-- it, which loses only hints (the sweeps find the work from table state).
create unlogged table if not exists reactor.outbox (
  payload text not null,
  -- Whether the payload also goes to channel job_status.
  to_status boolean not null default true
);
