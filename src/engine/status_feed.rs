//! What event-stream viewers see: table state, never a channel payload.
//!
//! Anyone with a SQL session can `NOTIFY job_status` (it needs no privilege
//! and cannot be revoked on Supabase), so a payload on that channel is only a
//! hint that a row may have changed. Hints are coalesced by row in a bounded
//! set; a task takes them in batches, reads each row's real status and owner
//! (one query per table per batch) and sends viewers an event only for a row
//! that exists and whose status differs from the last one sent. A forged
//! payload costs a set entry and a slot in a batched primary-key lookup;
//! it never becomes an event, and a flood of them cannot make viewers lag.
//! A row that changes twice before its hint is checked is shown once, in its
//! current state.
//!
//! Which tables can be checked comes from reactor.hint_triggers (the
//! trusted hint triggers, triggers/210_trusted_hint_triggers.sql), never from
//! a trigger's name alone: anyone may create a temporary table with a trigger
//! named like ours. A table whose check fails anyway (dropped, renamed) is
//! forgotten and looked up again, and never holds back the others.
use crate::engine::notification::Change;
use crate::job::handler::KeyType;
use crate::store::db::{param, quote_ident};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, watch, Notify};
use tokio_util::sync::CancellationToken;

/// Rows waiting to be checked; hints beyond this are dropped (counted, and
/// every event stream told to resync).
const MAX_PENDING: usize = 100_000;
/// Rows checked per query.
const BATCH: usize = 5_000;
/// How long one batch's check may wait on the database (past it the
/// connection is closed: a silent network would hold it forever).
const CHECK_DEADLINE: Duration = Duration::from_secs(30);
/// How long hints are collected before a batch is checked.
const WINDOW: Duration = Duration::from_millis(10);
/// Rows whose last sent status is remembered (then forgotten all at once:
/// the worst case is one repeated event).
const MAX_REMEMBERED: usize = 100_000;
/// How often the watched tables are looked up again when a hint names an unknown one.
const SOURCES_REFRESH: Duration = Duration::from_secs(10);

type RowKey = (String, String);

/// Where a table's status events can be verified.
#[derive(Debug, Clone, PartialEq)]
struct Source {
    /// The name hints carry (without schema).
    name: String,
    /// The table as SQL (`regclass` text, quoted as needed).
    table: String,
    key: String,
    key_type: KeyType,
    status: String,
    owner: Option<String>,
}

/// The key type of a watched table, from its column's SQL type (None: a type
/// the feed does not follow). Integers of every width are read as bigint.
fn key_type_of(sql_type: &str) -> Option<KeyType> {
    match sql_type {
        "uuid" => Some(KeyType::Uuid),
        "smallint" | "integer" | "bigint" => Some(KeyType::Bigint),
        "text" => Some(KeyType::Text),
        t if t.starts_with("character varying") => Some(KeyType::Text),
        _ => None,
    }
}

impl Source {
    fn generation_jobs() -> Source {
        Source {
            name: "generation_jobs".into(),
            table: "public.generation_jobs".into(),
            key: "id".into(),
            key_type: KeyType::Uuid,
            status: "status".into(),
            owner: Some("owner_id".into()),
        }
    }

    /// Reads `ids`' key, status and owner, as text.
    fn select(&self) -> String {
        let owner = self.owner.as_deref().map_or("null".to_string(), |o| {
            format!("t.{}::text", quote_ident(o))
        });
        format!(
            "select t.{key}::text, t.{status}::text, {owner} from {table} t
             where t.{key} = any($1::text[]::{key_type}[])",
            key = quote_ident(&self.key),
            status = quote_ident(&self.status),
            table = self.table,
            key_type = self.key_type.sql(),
        )
    }
}

/// Tables `reactor.watch_table` set up: name, table, trigger arguments
/// (key, status, owner columns) and the key's type.
const WATCHED: &str = "
select h.table_name, h.tbl::text, h.args, format_type(a.atttypid, a.atttypmod)
from reactor.hint_triggers h
join pg_attribute a on a.attrelid = h.tbl
 and a.attname = split_part(encode(h.args, 'escape'), '\\000', 1)
 and a.attnum > 0 and not a.attisdropped
where h.trigger_name = 'reactor_watch_status'";

fn watched_source(name: String, table: String, args: &[u8], key_type: &str) -> Option<Source> {
    let mut parts = args
        .split(|b| *b == 0)
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let key = parts.next()?;
    let status = parts.next()?;
    let owner = parts.next().filter(|o| !o.is_empty());
    Some(Source {
        name,
        table,
        key,
        key_type: key_type_of(key_type)?,
        status,
        owner,
    })
}

#[derive(Default)]
struct Sources {
    list: Vec<Source>,
    loaded: Option<Instant>,
}

pub struct StatusFeed {
    sender: broadcast::Sender<Change>,
    /// Counts the times hints were dropped: every stream that sees it change
    /// tells its viewer to `resync` (events may be missing).
    dropped: watch::Sender<u64>,
    /// Rows hinted at, with whether any hint said INSERT.
    pending: Mutex<HashMap<RowKey, bool>>,
    wake: Notify,
    /// The status last sent per row.
    sent: Mutex<HashMap<RowKey, String>>,
    sources: Mutex<Sources>,
}

impl StatusFeed {
    pub fn new(sender: broadcast::Sender<Change>) -> Self {
        StatusFeed {
            sender,
            dropped: watch::Sender::new(0),
            pending: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            sent: Mutex::new(HashMap::new()),
            sources: Mutex::new(Sources {
                list: vec![Source::generation_jobs()],
                loaded: None,
            }),
        }
    }

    /// A payload heard on channel job_status: remembered as a row to check.
    /// Never blocks and never grows without bound. With no event stream open
    /// it is dropped at once: a stream shows what changes after it opened,
    /// so checking rows nobody watches would only cost the database a query
    /// per batch.
    pub fn hint(&self, change: Change) {
        if self.sender.receiver_count() == 0 {
            return;
        }
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let inserted = change.op == "INSERT";
        let len = pending.len();
        match pending.get_mut(&(change.table.clone(), change.id.clone())) {
            Some(insert) => *insert |= inserted,
            None if len >= MAX_PENDING => {
                drop(pending);
                metrics::counter!("reactor_status_hints_dropped_total").increment(1);
                self.hints_lost();
                return;
            }
            None => {
                pending.insert((change.table, change.id), inserted);
            }
        }
        drop(pending);
        self.wake.notify_one();
    }

    /// Changes whenever hints were lost (dropped at the cap, or their check
    /// failed): a stream that sees it change must tell its viewer to resync.
    pub fn losses(&self) -> watch::Receiver<u64> {
        self.dropped.subscribe()
    }

    /// Tells every event stream to resync: a table went quiet or its quiet
    /// ended (src/engine/quiet.rs), so per-row events of it are missing.
    pub(crate) fn resync(&self) {
        self.hints_lost();
    }

    fn hints_lost(&self) {
        self.dropped.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Checks hints against the tables until shutdown.
    pub async fn run(
        self: std::sync::Arc<Self>,
        pool: deadpool_postgres::Pool,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.wake.notified() => {}
            }
            tokio::time::sleep(WINDOW).await;
            loop {
                let batch = self.take(BATCH);
                if batch.is_empty() {
                    break;
                }
                metrics::counter!("reactor_status_rows_checked_total")
                    .increment(batch.len() as u64);
                let checked = crate::store::db::within(&pool, CHECK_DEADLINE, async |client| {
                    self.check(client, batch).await
                })
                .await;
                if let Err(e) = checked {
                    // The hints are lost; the next change of those rows brings them back.
                    tracing::warn!(error = %e, "checking job_status hints failed");
                    self.hints_lost();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn take(&self, n: usize) -> Vec<(RowKey, bool)> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<RowKey> = pending.keys().take(n).cloned().collect();
        keys.into_iter()
            .filter_map(|k| pending.remove_entry(&k))
            .collect()
    }

    async fn check(
        &self,
        client: &deadpool_postgres::Client,
        batch: Vec<(RowKey, bool)>,
    ) -> Result<(), crate::store::db::DbError> {
        let sources = self.sources(client, &batch).await;
        let mut by_source: HashMap<usize, Vec<(String, bool)>> = HashMap::new();
        for ((table, id), inserted) in batch {
            for (i, source) in sources.iter().enumerate() {
                if source.name == table && source.key_type.accepts(&id) {
                    by_source.entry(i).or_default().push((id.clone(), inserted));
                }
            }
        }
        for (i, ids) in by_source {
            let source = &sources[i];
            if let Err(e) = self.check_source(client, source, &ids).await {
                // Its hints are lost (the next change of those rows brings
                // them back); the other tables' are not.
                tracing::warn!(table = %source.table, error = %e, "checking job_status hints failed; the table is looked up again");
                self.forget(source);
            }
        }
        Ok(())
    }

    /// Reads the rows `ids` name in one table and sends what changed.
    async fn check_source(
        &self,
        client: &deadpool_postgres::Client,
        source: &Source,
        ids: &[(String, bool)],
    ) -> Result<(), String> {
        let keys: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
        let rows = client
            .query_typed(&source.select(), &[param(&keys)])
            .await
            .map_err(|e| crate::store::db::describe(&e))?;
        let inserted: HashMap<&str, bool> =
            ids.iter().map(|(id, ins)| (id.as_str(), *ins)).collect();
        for row in rows {
            let id: String = row.get(0);
            let status: Option<String> = row.get(1);
            let owner: Option<String> = row.get(2);
            let insert = inserted.get(id.as_str()).copied().unwrap_or(false);
            self.send_if_changed(&source.name, id, status, owner, insert);
        }
        Ok(())
    }

    /// Drops a table whose check failed from the cache, so the next hint
    /// naming it looks the watched tables up again at once: a table that is
    /// gone stays gone, one watched again is found.
    fn forget(&self, failed: &Source) {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.list.retain(|s| s != failed);
        sources.loaded = None;
    }

    /// Sends the row's state unless it is what was last sent for it.
    fn send_if_changed(
        &self,
        table: &str,
        id: String,
        status: Option<String>,
        owner_id: Option<String>,
        inserted: bool,
    ) {
        let key = (table.to_string(), id);
        let status_text = status.clone().unwrap_or_default();
        let old_status = {
            let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
            if sent.get(&key) == Some(&status_text) {
                return;
            }
            if sent.len() >= MAX_REMEMBERED {
                sent.clear();
            }
            sent.insert(key.clone(), status_text)
        };
        let op = if inserted && old_status.is_none() {
            "INSERT"
        } else {
            "UPDATE"
        };
        // No subscriber is fine.
        let _ = self.sender.send(Change {
            table: key.0,
            op: op.into(),
            id: key.1,
            owner_id,
            status,
            old_status,
        });
    }

    /// The tables hints can be checked against; looked up again (at most every
    /// SOURCES_REFRESH, or at once after a table failed) when a hint names a
    /// table not known yet, or a known one with a key of another type.
    async fn sources(
        &self,
        client: &deadpool_postgres::Client,
        batch: &[(RowKey, bool)],
    ) -> Vec<Source> {
        let (known, stale) = {
            let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
            // A known name with a key of another type may be a table
            // re-created since it was looked up.
            let unknown = batch.iter().any(|((table, id), _)| {
                !sources
                    .list
                    .iter()
                    .any(|s| &s.name == table && s.key_type.accepts(id))
            });
            let stale = unknown
                && sources
                    .loaded
                    .is_none_or(|t| t.elapsed() >= SOURCES_REFRESH);
            (sources.list.clone(), stale)
        };
        if !stale {
            return known;
        }
        let mut list = vec![Source::generation_jobs()];
        match client.query_typed(WATCHED, &[]).await {
            Ok(rows) => list.extend(rows.into_iter().filter_map(|r| {
                watched_source(r.get(0), r.get(1), r.get::<_, &[u8]>(2), r.get(3))
            })),
            Err(e) => {
                tracing::warn!(error = %crate::store::db::describe(&e), "looking up watched tables failed")
            }
        }
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.list = list.clone();
        sources.loaded = Some(Instant::now());
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_table_trigger_arguments_name_the_columns() {
        let s = watched_source(
            "image_jobs".into(),
            "image_jobs".into(),
            b"id\0status\0user_id\0",
            "uuid",
        )
        .unwrap();
        assert_eq!(
            (s.key.as_str(), s.status.as_str(), s.owner.as_deref()),
            ("id", "status", Some("user_id"))
        );
        let s = watched_source("t".into(), "t".into(), b"k\0state\0\0", "bigint").unwrap();
        assert_eq!((s.owner, s.key_type), (None, KeyType::Bigint));
        assert!(watched_source("t".into(), "t".into(), b"k\0s\0\0", "point").is_none());
    }

    #[test]
    fn ids_that_cannot_be_keys_never_reach_sql() {
        assert!(!KeyType::Uuid.accepts("1; drop table x"));
        assert!(!KeyType::Bigint.accepts("12a"));
        assert!(KeyType::Bigint.accepts("12"));
        assert!(KeyType::Text.accepts("anything"));
    }
}
