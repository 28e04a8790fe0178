//! Poll mode (`reactor notify-mode poll`, triggers/270_poll_mode.sql): no
//! trigger hints and no WAL, so the engine pages every handler's pending
//! index each REACTOR_POLL_INTERVAL, as it does when it does not listen.
//!
//! This service watches the switch (one tiny query every [`MODE_CHECK`]) and
//! keeps `Shared::polling` in line with it; every switch it sees (between
//! any two modes, even one that came and went between two reads) starts a
//! scan at once, so no row written while the triggers were off waits for a
//! sweep. Whenever the engine hears no hints (poll mode, or
//! REACTOR_LISTEN=false), it also tells its own job_status feed about the rows
//! it works (see [`Shared::announce`]): the feed checks them against the
//! tables, so the event streams of this reactor show each row it finds and
//! each attempt's outcome.
use super::Shared;
use crate::engine::notification::Change;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// How often the switch is read.
const MODE_CHECK: Duration = Duration::from_secs(2);

/// The switch as this service reads it: whether the database is in poll
/// mode, and which write of reactor.settings it saw (the row's `xmin`: every
/// switch, however made, is a new one).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Switch {
    poll: bool,
    version: String,
}

async fn read_switch(
    client: &tokio_postgres::Client,
) -> Result<Option<Switch>, tokio_postgres::Error> {
    let rows = client
        .query_typed(
            "select notify_mode = 'poll', xmin::text from reactor.settings limit 1",
            &[],
        )
        .await?;
    Ok(rows.first().map(|r| Switch {
        poll: r.get(0),
        version: r.get(1),
    }))
}

impl Shared {
    /// Keeps `polling` in line with the switch until the services stop, and
    /// scans after every switch.
    pub(super) async fn watch_poll_mode(self: Arc<Self>) {
        let mut ticker = tokio::time::interval(MODE_CHECK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen: Option<Switch> = None;
        loop {
            ticker.tick().await;
            let read = self
                .within(async |client| Ok(read_switch(client).await?))
                .await;
            let now = match read {
                Ok(Some(now)) => now,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the notify mode failed; will try again");
                    continue;
                }
            };
            let before = self.polling.swap(now.poll, Ordering::SeqCst);
            if now.poll != before {
                if now.poll {
                    tracing::info!(poll_interval = ?self.cfg.poll_interval, "notify mode poll: paging the pending indexes every REACTOR_POLL_INTERVAL");
                } else {
                    tracing::info!("notify mode no longer poll: back to hints and sweeps");
                }
            }
            // A switch (even one that came and went between two reads) may
            // have left rows without a hint: its ALTER TABLEs waited for
            // every writer that began under the old triggers, so what such a
            // writer left unhinted is committed now, and a scan finds it.
            if seen
                .as_ref()
                .is_some_and(|seen| seen.version != now.version)
            {
                self.scan_all();
            }
            seen = Some(now);
        }
    }

    /// Whether the pending queries run every REACTOR_POLL_INTERVAL: when the
    /// engine does not listen, or the database is in poll mode.
    pub(super) fn polls(&self) -> bool {
        !self.cfg.listen || self.polling.load(Ordering::SeqCst)
    }

    /// When no hint reaches the engine, tells its job_status feed that row
    /// `id` of the handler's table may have changed (the feed reads the row
    /// and sends an event only if its status did; `found`: the row was
    /// just found, never attempted before).
    pub(super) fn announce(&self, table: &str, id: &str, found: bool) {
        if self.polls() {
            self.status_feed.hint(Change {
                table: table.to_string(),
                op: if found { "INSERT" } else { "UPDATE" }.into(),
                id: id.to_string(),
                owner_id: None,
                status: None,
                old_status: None,
            });
        }
    }
}
