//! Quiet job_status payloads in WAL mode, as in notify mode.
//!
//! In notify mode a table above REACTOR_QUIET_ABOVE hints a second, for a
//! whole second, goes quiet: its writers send no per-row payloads, and
//! `{"reactor_quiet":"<table>","for_ms":…}` on job_status tells clients that
//! listen there to reload instead (src/engine/quiet.rs). In WAL mode no
//! writer sends anything; the reactor holding the sender lease sends each
//! decoded row's payload itself ([`super::broadcast`]), one `NOTIFY` per row,
//! which under load costs the writers' server about as much as the decoding.
//! So the same threshold applies to what it sends: a table above it in two
//! whole seconds in a row gets the announcement instead of its rows'
//! payloads, repeated every half REACTOR_QUIET_LEASE while it stays at half
//! the threshold or more, and its per-row payloads resume once the announced
//! time ran out. Rates are judged over whole seconds, not notify mode's
//! 100-ms windows: decoded rows arrive in bursts whenever the walsender gets
//! the CPU, so on a busy server a steady load leaves 100-ms windows empty.
//! Two seconds in a row keep a single large statement from counting.
//!
//! Only channel job_status is quiet: the reactor's own event streams
//! (`/v1/events`) are fed from the WAL and keep every row, so do the
//! Realtime broadcasts (they are per owner's topic, not a shared channel),
//! and no table needs paging (every reactor decodes every row).
use crate::engine::quiet::{announcement, lease_ms};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long rows are counted before a table's rate is judged.
const WINDOW: Duration = Duration::from_secs(1);
/// How many windows in a row a table must be above the threshold.
const SUSTAINED_WINDOWS: u32 = 2;

pub(super) struct Busy {
    /// Rows a second above which a table goes quiet (0: never).
    above: u64,
    /// How long one announcement lasts.
    lease: Duration,
    window: Instant,
    /// Rows decoded per table in the current window.
    counts: HashMap<String, u64>,
    /// Windows in a row each table was above the threshold.
    streaks: HashMap<String, u32>,
    /// Quiet tables, until when.
    quiet: HashMap<String, Instant>,
}

/// What a window's end changed.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Rolled {
    /// Announcements to send: tables that went quiet or stay quiet.
    pub(super) announcements: Vec<String>,
    /// Tables that went quiet now.
    pub(super) went_quiet: Vec<String>,
    /// Tables whose quiet ran out now.
    pub(super) ended: Vec<String>,
}

impl Busy {
    pub(super) fn new(above: u64, lease: Duration) -> Self {
        Busy {
            above,
            lease,
            window: Instant::now(),
            counts: HashMap::new(),
            streaks: HashMap::new(),
            quiet: HashMap::new(),
        }
    }

    /// Counts a decoded row of `table`: whether its payload is sent.
    pub(super) fn count(&mut self, table: &str, now: Instant) -> bool {
        match self.counts.get_mut(table) {
            Some(n) => *n += 1,
            None => {
                self.counts.insert(table.to_string(), 1);
            }
        }
        self.quiet.get(table).is_none_or(|until| *until <= now)
    }

    /// Ends the window if it is over, judging each table's rate.
    pub(super) fn roll(&mut self, now: Instant) -> Rolled {
        let mut rolled = Rolled::default();
        let elapsed = now.duration_since(self.window);
        if elapsed < WINDOW {
            return rolled;
        }
        self.window = now;
        let counts = std::mem::take(&mut self.counts);
        if self.above == 0 {
            return rolled;
        }
        let rate = |table: &str| {
            counts
                .get(table)
                .map_or(0.0, |n| *n as f64 / elapsed.as_secs_f64())
        };
        let above = self.above as f64;
        self.streaks.retain(|table, _| rate(table) >= above);
        for table in counts.keys().filter(|t| rate(t) >= above) {
            *self.streaks.entry(table.clone()).or_insert(0) += 1;
        }
        let for_ms = lease_ms(self.lease);
        for (table, streak) in &self.streaks {
            if *streak >= SUSTAINED_WINDOWS && !self.quiet.contains_key(table) {
                self.quiet.insert(table.clone(), now + self.lease);
                rolled.announcements.push(announcement(table, for_ms));
                rolled.went_quiet.push(table.clone());
            }
        }
        for (table, until) in self.quiet.iter_mut() {
            let left = until.saturating_duration_since(now);
            if left <= self.lease / 2 && rate(table) >= above / 2.0 {
                // Half the rate that made it quiet keeps it quiet (no
                // flapping), also with a lease shorter than a window.
                *until = now + self.lease;
                rolled.announcements.push(announcement(table, for_ms));
            } else if left.is_zero() {
                rolled.ended.push(table.clone());
            }
        }
        for table in &rolled.ended {
            self.quiet.remove(table);
        }
        rolled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `rows` of `table` over `windows` windows from `start`; the
    /// instant after the last window, and every window's result.
    fn feed(
        busy: &mut Busy,
        table: &str,
        rows_per_window: u64,
        windows: u32,
        start: Instant,
    ) -> (Instant, Vec<(Rolled, u64)>) {
        let mut now = start;
        let mut out = Vec::new();
        for _ in 0..windows {
            let sent = (0..rows_per_window)
                .filter(|_| busy.count(table, now))
                .count() as u64;
            now += WINDOW;
            out.push((busy.roll(now), sent));
        }
        (now, out)
    }

    #[test]
    fn two_seconds_of_load_make_a_table_quiet_a_burst_does_not() {
        let start = Instant::now();
        let mut busy = Busy::new(200, Duration::from_secs(3));
        busy.window = start;
        // One second of 1,000 rows (a multi-row statement): not sustained.
        let (now, rolled) = feed(&mut busy, "t", 1000, 1, start);
        assert!(rolled[0].0.went_quiet.is_empty());
        let (now, _) = feed(&mut busy, "t", 0, 1, now);
        // 300 rows a second for two seconds: quiet.
        let (now, rolled) = feed(&mut busy, "t", 300, SUSTAINED_WINDOWS, now);
        let last = &rolled.last().unwrap().0;
        assert_eq!(last.went_quiet, vec!["t".to_string()]);
        let said: Vec<serde_json::Value> = last
            .announcements
            .iter()
            .map(|a| serde_json::from_str(a).unwrap())
            .collect();
        assert_eq!(
            said,
            vec![serde_json::json!({"reactor_quiet": "t", "for_ms": 3000})]
        );
        assert!(
            rolled.iter().all(|(_, sent)| *sent == 300),
            "sent until quiet"
        );
        // While quiet, nothing of it is sent; another table still is.
        assert!(!busy.count("t", now));
        assert!(busy.count("other", now));
    }

    #[test]
    fn a_quiet_table_is_renewed_while_busy_and_ends_when_not() {
        let start = Instant::now();
        let lease = Duration::from_secs(2);
        let mut busy = Busy::new(100, lease);
        busy.window = start;
        let (now, _) = feed(&mut busy, "t", 150, SUSTAINED_WINDOWS, start);
        // At half the rate it stays quiet: renewed (announced again) each half lease.
        let (now, rolled) = feed(&mut busy, "t", 60, 3, now);
        let renewals = rolled
            .iter()
            .filter(|(r, _)| !r.announcements.is_empty())
            .count();
        assert!((2..=3).contains(&renewals), "{renewals} renewals in 3 s");
        assert!(rolled
            .iter()
            .all(|(r, sent)| r.ended.is_empty() && *sent == 0));
        // Below half the rate, its quiet runs out and its rows are sent again.
        let (_, rolled) = feed(&mut busy, "t", 1, 5, now);
        let ended_at = rolled
            .iter()
            .position(|(r, _)| r.ended == vec!["t".to_string()])
            .expect("the quiet ends");
        assert!(ended_at <= 2, "ended after {ended_at} windows");
        assert!(rolled[ended_at + 1..].iter().all(|(_, sent)| *sent == 1));
    }

    #[test]
    fn a_lease_shorter_than_a_window_is_renewed_while_busy() {
        let start = Instant::now();
        let mut busy = Busy::new(100, Duration::from_millis(500));
        busy.window = start;
        let (_, rolled) = feed(&mut busy, "t", 150, SUSTAINED_WINDOWS + 3, start);
        assert!(rolled.iter().all(|(r, _)| r.ended.is_empty()), "{rolled:?}");
        assert!(rolled[SUSTAINED_WINDOWS as usize..]
            .iter()
            .all(|(r, _)| !r.announcements.is_empty()));
    }

    #[test]
    fn zero_never_quiets() {
        let start = Instant::now();
        let mut busy = Busy::new(0, Duration::from_secs(3));
        busy.window = start;
        let (_, rolled) = feed(&mut busy, "t", 10_000, 5, start);
        assert!(rolled
            .iter()
            .all(|(r, sent)| *r == Rolled::default() && *sent == 10_000));
    }
}
