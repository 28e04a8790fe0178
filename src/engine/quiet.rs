//! Quiet hints under load (notify mode).
//!
//! A transaction that NOTIFYs takes a database-wide lock at commit and holds
//! it through its WAL flush, so under load notifying writers are serialized.
//! When the reactor hears more than REACTOR_QUIET_ABOVE hints a second for a
//! table for a whole second (a burst does not count), it takes that table's quiet lease (reactor.quiet_tables,
//! sql/260_quiet_hints.sql) and turns its quiet switch on: the table's hint
//! triggers then do not run at all (their WHEN condition reads the switch,
//! triggers/300_quiet_switch.sql) and the reactor pages the table's pending
//! rows every REACTOR_QUIET_POLL instead. It renews the lease (every half
//! lease) while the table stays busy, judged from the server's own counters
//! of the table's inserts and updates (pg_stat_all_tables: the writers send
//! nothing any more); once it is not, the lease runs out and writers notify
//! again. Nobody ends a lease early: a quiet table costs polling, not rows.
//!
//! The switch has no clock: every reactor turns off the switch of each table
//! whose lease has run out (at start, every second, and when its own paging
//! of the table ends), then scans the table once more, so a row written
//! before the switch went off is found and every row after it is hinted.
//!
//! Every take is announced on channels `reactor` and `job_status`
//! (`{"reactor_quiet":"<table>","for_ms":…}`). Every reactor that hears it
//! (the holder too) pages the table until the lease ends plus
//! REACTOR_QUIET_GRACE, then scans it once more: a writer whose transaction
//! began inside the lease skipped its hint even if it commits after the
//! lease, and that last scan finds its row; a transaction longer than the
//! grace is found by the periodic sweep (REACTOR_SWEEP_INTERVAL). Hints are
//! only hints: correctness still comes from the pending scans.
//!
//! Event streams (the status feed) hear no per-row events of a quiet table,
//! so every announcement and every end of a quiet tells them to resync.
//!
//! Fail-safe: the lease is the server's clock (`now()`), so a holder that dies
//! or is cut off silences writers until another reactor (or the next to
//! start) sees its lease has run out, a second or so after REACTOR_QUIET_LEASE;
//! while no reactor runs, nobody would hear a hint anyway. The trigger
//! functions read the lease too, so a switch turned off early costs writers a
//! call, never a row. The table is unlogged, so a server crash empties it and
//! the next reactor turns every switch off. Several reactors may run: one
//! holds a table's lease at a time, the others page it on its announcements.
use super::Shared;
use crate::store::db::param;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long hints are counted before a table's rate is judged.
const WINDOW: Duration = Duration::from_millis(100);
/// How many windows in a row a table must be above REACTOR_QUIET_ABOVE
/// before it goes quiet: sustained load (a second of it), not a burst. A
/// multi-row statement is one commit, one NOTIFY lock, and its viewers
/// should see its rows, not a resync.
const SUSTAINED_WINDOWS: u32 = 10;
/// The longest quiet an announcement is believed for (anyone may NOTIFY).
const MAX_ANNOUNCED: Duration = Duration::from_secs(60);
/// Tables considered for a quiet per window, busiest first (anyone may
/// NOTIFY hints naming any number of tables).
const MAX_TAKES_PER_WINDOW: usize = 4;

/// Takes or renews `$1`'s quiet for `$2` ms as holder `$3`, only in notify
/// mode, only for a table with trusted hint triggers (a hint may be forged)
/// and only when it is free, expired or already ours; turns the table's
/// quiet switch on (which its triggers' WHEN condition reads:
/// triggers/300_quiet_switch.sql; its value is the lease's end in seconds,
/// for people reading it), announces it and returns the table's write
/// count. No row: not taken. Never `generation_jobs` while Supabase Realtime
/// is installed: its trigger also broadcasts each row there, and a quiet
/// trigger does not run at all.
const TAKE: &str = "
with taken as (
  insert into reactor.quiet_tables as q (table_name, holder, quiet_until)
  select $1, $3, now() + $2::float8 * interval '1 millisecond'
  where coalesce(nullif(current_setting('reactor.notify_mode', true), ''),
                 (select s.notify_mode from reactor.settings s limit 1), 'notify') = 'notify'
    and exists (select 1 from reactor.hint_triggers h where h.table_name = $1 and h.enabled)
    and ($1 <> 'generation_jobs'
         or to_regprocedure('realtime.send(jsonb,text,text,boolean)') is null)
  on conflict (table_name) do update
    set holder = excluded.holder, quiet_until = excluded.quiet_until
    where q.holder = excluded.holder or q.quiet_until < now()
  returning quiet_until
)
select (select coalesce(sum(n_tup_ins + n_tup_upd), 0)::int8
        from pg_stat_all_tables where relname = $1),
       (select setval(f, floor(extract(epoch from taken.quiet_until))::int8, true)
        from reactor.quiet_switch($1) f where f is not null),
       pg_notify('reactor', $4), pg_notify('job_status', $4)
from taken";

/// Gives up holder `$1`'s quiet leases and turns their switches off: their
/// writers hint again at once. Returns how many.
const RELEASE: &str = "
with gone as (delete from reactor.quiet_tables where holder = $1 returning table_name)
select count(*)::int8, count(setval(f, 0, false)) from gone left join lateral reactor.quiet_switch(gone.table_name) f on true";

/// Turns off the quiet switch of every hinted table with no live lease (run
/// out, given up, or gone with a server crash), as any reactor may: their
/// writers hint again. Returns the tables turned off, to be scanned once
/// more. A take racing with this may find its switch off until its next
/// renewal: writers then call the trigger function, which stays quiet by
/// the lease.
const SWITCH_OFF: &str = "
select h.table_name, setval(f, 0, false)
from (select distinct table_name from reactor.hint_triggers) h
cross join lateral reactor.quiet_switch(h.table_name) f
where f is not null
  and pg_sequence_last_value(f) is not null
  and not exists (select 1 from reactor.quiet_tables q
                  where q.table_name = h.table_name and q.quiet_until > now())";

/// How often every reactor looks for quiet switches left on without a lease.
const SWITCH_CHECK: Duration = Duration::from_secs(1);

/// The table's inserts and updates so far, as the server counts them.
const WRITES: &str = "select coalesce(sum(n_tup_ins + n_tup_upd), 0)::int8
                      from pg_stat_all_tables where relname = $1";

/// A quiet's length as announcements carry it (`for_ms`).
pub(super) fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

/// The payload that says `table` is quiet for `for_ms`: its writers (or in
/// WAL mode, the reactor sending job_status) send no per-row payloads.
pub(super) fn announcement(table: &str, for_ms: i64) -> String {
    serde_json::json!({ "reactor_quiet": table, "for_ms": for_ms }).to_string()
}

/// What every part of the engine shares about quiet tables.
#[derive(Default)]
pub(super) struct Quiet {
    /// Hints heard per table in the current window.
    heard: Mutex<HashMap<String, u64>>,
    /// Tables paged instead of hinted, until when (then one last scan).
    polling: Mutex<HashMap<String, Instant>>,
}

impl Quiet {
    /// A hint for `table` arrived.
    pub(super) fn heard(&self, table: &str) {
        let mut heard = self.heard.lock().unwrap_or_else(|e| e.into_inner());
        match heard.get_mut(table) {
            Some(n) => *n += 1,
            None => {
                heard.insert(table.to_string(), 1);
            }
        }
    }

    /// Pages `table` until `until` (or longer, if asked already).
    fn poll_until(&self, table: &str, until: Instant) {
        let mut polling = self.polling.lock().unwrap_or_else(|e| e.into_inner());
        let entry = polling.entry(table.to_string()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// The tables to page now, and those whose time just ran out.
    fn due(&self, now: Instant) -> (Vec<String>, Vec<String>) {
        let mut polling = self.polling.lock().unwrap_or_else(|e| e.into_inner());
        let ended: Vec<String> = polling
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(t, _)| t.clone())
            .collect();
        for t in &ended {
            polling.remove(t);
        }
        (polling.keys().cloned().collect(), ended)
    }
}

/// A table whose quiet this reactor holds.
struct Held {
    /// When it was last taken, and the table's write count then.
    taken: Instant,
    writes: i64,
}

impl Shared {
    /// An announcement was heard (or made): page `table` for `for_ms` plus
    /// the grace, and tell event streams to resync.
    pub(super) fn heard_quiet(&self, table: &str, for_ms: u64) {
        let quiet_for = Duration::from_millis(for_ms).min(MAX_ANNOUNCED);
        self.quiet
            .poll_until(table, Instant::now() + quiet_for + self.cfg.quiet_grace);
        self.status_feed.resync();
    }

    /// Asks every handler of `table` for a scan (coalesced with one running).
    fn scan_table(&self, table: &str) {
        for slot in &self.slots {
            if slot.handler.spec.notify_table == table {
                slot.inbox.request_scan();
            }
        }
    }

    /// Pages quiet tables, and takes and renews quiet leases, until stopped.
    pub(super) async fn quiet(self: Arc<Self>) {
        let mut held: HashMap<String, Held> = HashMap::new();
        // Tables another holder (or another mode) refused us, until when.
        let mut refused: HashMap<String, Instant> = HashMap::new();
        let mut ticker = tokio::time::interval(self.cfg.quiet_poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut window = Instant::now();
        // Windows in a row each table was above the threshold.
        let mut streaks: HashMap<String, u32> = HashMap::new();
        let mut switches_checked: Option<Instant> = None;
        loop {
            ticker.tick().await;
            let now = Instant::now();
            let (paged, mut ended) = self.quiet.due(now);
            for table in &paged {
                self.scan_table(table);
            }
            // Before the last scans: a row written before its table's switch
            // went off is found by them, every row after it is hinted.
            if !ended.is_empty() || switches_checked.is_none_or(|t| now - t >= SWITCH_CHECK) {
                switches_checked = Some(now);
                for table in self.switch_off().await {
                    if !ended.contains(&table) {
                        ended.push(table);
                    }
                }
            }
            for table in &ended {
                tracing::debug!(%table, "quiet ended: writers hint again; one last scan");
                self.scan_table(table);
                self.status_feed.resync();
            }
            if now.duration_since(window) < WINDOW {
                continue;
            }
            let elapsed = now.duration_since(window).as_secs_f64();
            window = now;
            let heard =
                std::mem::take(&mut *self.quiet.heard.lock().unwrap_or_else(|e| e.into_inner()));
            refused.retain(|_, until| *until > now);
            let above = self.cfg.quiet_above as f64;
            if self.cfg.quiet_above > 0 {
                let above_now: HashMap<String, u64> = heard
                    .into_iter()
                    .filter(|(_, n)| *n as f64 / elapsed >= above)
                    .collect();
                streaks.retain(|t, _| above_now.contains_key(t));
                let mut busy: Vec<(String, u64)> = above_now
                    .into_iter()
                    .filter(|(t, _)| {
                        let streak = streaks.entry(t.clone()).or_insert(0);
                        *streak += 1;
                        *streak >= SUSTAINED_WINDOWS
                            && !held.contains_key(t)
                            && !refused.contains_key(t)
                    })
                    .collect();
                busy.sort_by_key(|b| std::cmp::Reverse(b.1));
                for (table, _) in busy.into_iter().take(MAX_TAKES_PER_WINDOW) {
                    self.take_or_renew(&table, &mut held, &mut refused).await;
                }
            }
            let renew_after = self.cfg.quiet_lease / 2;
            let due: Vec<String> = held
                .iter()
                .filter(|(_, h)| h.taken.elapsed() >= renew_after)
                .map(|(t, _)| t.clone())
                .collect();
            for table in due {
                let Some(h) = held.get(&table) else { continue };
                let writes = self
                    .within(async |client| {
                        Ok(client
                            .query_typed_one(WRITES, &[param(&table.as_str())])
                            .await?
                            .get::<_, i64>(0))
                    })
                    .await;
                let rate = match writes {
                    Ok(w) => (w - h.writes) as f64 / h.taken.elapsed().as_secs_f64(),
                    Err(e) => {
                        tracing::warn!(%table, error = %e, "reading a quiet table's writes failed; its quiet runs out");
                        0.0
                    }
                };
                // Half the rate that made it quiet keeps it quiet (no flapping).
                if rate >= above / 2.0 {
                    self.take_or_renew(&table, &mut held, &mut refused).await;
                } else {
                    tracing::info!(%table, writes_per_second = rate, "table no longer busy: its quiet runs out and writers hint again");
                    held.remove(&table);
                }
            }
        }
    }

    /// Takes (or renews) `table`'s quiet; on refusal, leaves it to its holder
    /// for a third of a lease.
    async fn take_or_renew(
        &self,
        table: &str,
        held: &mut HashMap<String, Held>,
        refused: &mut HashMap<String, Instant>,
    ) {
        let for_ms = lease_ms(self.cfg.quiet_lease);
        let announcement = announcement(table, for_ms);
        let taken = self
            .within(async |client| {
                Ok(client
                    .query_typed(
                        TAKE,
                        &[
                            param(&table),
                            param(&for_ms),
                            param(&self.instance),
                            param(&announcement.as_str()),
                        ],
                    )
                    .await?
                    .first()
                    .map(|r| r.get::<_, i64>(0)))
            })
            .await;
        match taken {
            Ok(Some(writes)) => {
                if !held.contains_key(table) {
                    tracing::info!(%table, lease = ?self.cfg.quiet_lease, "table busy: its writers go quiet, its pending rows are paged");
                }
                held.insert(
                    table.to_string(),
                    Held {
                        taken: Instant::now(),
                        writes,
                    },
                );
                // Our own announcement may not come back (listener reconnecting).
                self.heard_quiet(table, for_ms as u64);
            }
            Ok(None) => {
                held.remove(table);
                refused.insert(table.to_string(), Instant::now() + self.cfg.quiet_lease / 3);
            }
            Err(e) => {
                tracing::warn!(%table, error = %e, "taking a table's quiet failed; its writers keep hinting");
                held.remove(table);
                refused.insert(table.to_string(), Instant::now() + self.cfg.quiet_lease / 3);
            }
        }
    }

    /// Turns off the quiet switches left on without a live lease
    /// ([`SWITCH_OFF`]); returns their tables. A failure is logged and
    /// retried at the next check.
    async fn switch_off(&self) -> Vec<String> {
        let switched = self
            .within(async |client| {
                Ok(client
                    .query_typed(SWITCH_OFF, &[])
                    .await?
                    .iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>())
            })
            .await;
        match switched {
            Ok(tables) => tables,
            Err(e) => {
                tracing::warn!(error = %e, "turning off quiet switches whose lease ran out failed; tried again in a second");
                Vec::new()
            }
        }
    }

    /// Gives up this reactor's quiet leases (at shutdown): writers hint again at once.
    pub(super) async fn release_quiet(&self) -> Result<u64, super::error::ServiceError> {
        self.within(async |client| {
            let released: i64 = client
                .query_typed_one(RELEASE, &[param(&self.instance)])
                .await?
                .get(0);
            Ok(released as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_is_paged_until_its_latest_deadline_then_ends_once() {
        let quiet = Quiet::default();
        let now = Instant::now();
        quiet.poll_until("t", now + Duration::from_secs(2));
        quiet.poll_until("t", now + Duration::from_secs(1));
        assert_eq!(quiet.due(now), (vec!["t".to_string()], vec![]));
        let later = now + Duration::from_secs(2);
        assert_eq!(quiet.due(later), (vec![], vec!["t".to_string()]));
        assert_eq!(quiet.due(later), (vec![], vec![]));
    }
}
