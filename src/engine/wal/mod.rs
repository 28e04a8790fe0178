//! WAL mode (`reactor notify-mode wal`): hints from logical decoding instead
//! of triggers, so writers pay nothing but the WAL they write anyway.
//!
//! While the database's reactor.settings says 'wal', each reactor holds a
//! replication connection ([`replication`]) with a **temporary** logical
//! replication slot (pgoutput, publication "reactor", see
//! sql/190_wal_mode.sql) and streams from it; an ordinary connection beside it
//! watches the switch. A temporary slot belongs to its session: it is dropped
//! when the reactor stops, is killed, or loses the connection, so a stopped
//! reactor never makes the server keep WAL. After
//! every (re)connection the engine replays from table state (`Connected`), so
//! what was written while no slot existed is found by the sweep: the stream
//! is only a hint, as notifications are.
//!
//! Hints are derived as the triggers derive them: every insert, and every
//! update whose status differs from the last status this reactor decoded for
//! the row (the publication carries only key, owner and status columns, with
//! the default replica identity, so the old row is not in the WAL; a row not
//! seen since start gives an update hint with no old status). They go to the
//! same sink as notifications: `Change` for handlers and `Status` for the
//! job_status feed. One reactor at a time (the holder of the lease in
//! reactor.wal_sender, see [`broadcast`]) also sends what the triggers sent
//! for clients elsewhere: `NOTIFY job_status` and, on Supabase, the Realtime
//! broadcast.
mod broadcast;
mod busy;
pub(crate) mod pgoutput;
pub(crate) mod replication;

use crate::engine::listener::{Event, EventSink};
use crate::engine::notification::Change;
use crate::store::db::{describe, parse_url, DbError};
use broadcast::Broadcaster;
use deadpool_postgres::Pool;
use pgoutput::{Message, Value};
use replication::{Frame, Replication};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

/// `application_name` of the slot's connection.
pub const APPLICATION_NAME: &str = "reactor wal";
/// The publication sql/190_wal_mode.sql maintains.
pub const PUBLICATION: &str = "reactor";
/// Slot names start with this (then a random suffix per connection).
pub const SLOT_PREFIX: &str = "reactor_wal_";
/// How often the stream loop wakes while no frame arrives (to send what the
/// broadcaster gathered, to confirm, to look at the mode).
const TICK: Duration = Duration::from_millis(100);
/// How often the position read is confirmed to the server (sooner when it
/// asks). Each confirmation is work for the walsender: by hand at 32
/// writers, confirming every 100 ms cost it 2–3 µs an insert more than
/// once a second (as `pg_recvlogical` does); a second holds back a second
/// of WAL.
const CONFIRM: Duration = Duration::from_secs(1);
/// How often a running slot checks that the database is still in wal mode.
pub(super) const MODE_CHECK: Duration = Duration::from_secs(2);
/// How long the mode check may take: past it the server is taken for gone
/// (a silent network loses no TCP connection), and the reactor reconnects.
const MODE_CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// When each hint is handed to the engine a second time. The walsender may
/// send a commit the moment its WAL is flushed, a moment before the writer's
/// transaction is visible to other sessions; a claim made in that moment
/// finds nothing. Handlers are idempotent: the second look at a handled row
/// finds nothing to do.
const SECOND_LOOK: Duration = Duration::from_millis(500);
/// Hints waiting for their second look, at most (then the oldest are
/// dropped: the sweeps find what they pointed at).
const MAX_SECOND_LOOKS: usize = 100_000;
/// How long a session may take to end after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often a reactor not in wal mode looks at the switch.
const IDLE_CHECK: Duration = Duration::from_secs(5);
/// Rows whose last decoded status is remembered (then forgotten at once: the
/// worst case is one extra hint).
const MAX_REMEMBERED: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error(
        "notify mode is wal but the server has wal_level = {0}: logical decoding needs wal_level = logical \
         (set it in postgresql.conf and restart; Supabase projects have it). Until then the reactor works from \
         sweeps only; switch back with `reactor notify-mode notify`"
    )]
    WalLevel(String),
    #[error(
        "notify mode is wal but role {0} may not create replication slots: it needs the REPLICATION attribute \
         (`alter role {0} replication`; Supabase's postgres role has it). Until then the reactor works from \
         sweeps only"
    )]
    NoReplication(String),
    #[error(
        "notify mode is wal but the server has no free replication slot (max_replication_slots = {0}, all in \
         use; each running reactor needs one): raise max_replication_slots or drop unused slots \
         (select * from pg_replication_slots). Until then the reactor works from sweeps only"
    )]
    NoFreeSlot(String),
    #[error(
        "notify mode is wal but publication \"reactor\" does not exist: switch with `reactor notify-mode wal` \
         (it creates the publication)"
    )]
    NoPublication,
    #[error(
        "notify mode is wal but the server at the database URL does not take replication connections \
         ({0}): is a pooler in between? WAL mode needs a direct connection to Postgres (on Supabase, \
         the direct connection string). Until then the reactor works from sweeps only"
    )]
    NotReplication(String),
    #[error("wal hints: {0}")]
    Db(String),
}

pub(super) fn db(e: tokio_postgres::Error) -> WalError {
    WalError::Db(describe(&e))
}

impl From<DbError> for WalError {
    fn from(e: DbError) -> Self {
        WalError::Db(e.to_string())
    }
}

/// What a table's changes mean as hints.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TableHints {
    key: String,
    status: Option<String>,
    /// Owner column; `None` with `owner_is_key` for profiles.
    owner: Option<String>,
    owner_is_key: bool,
    /// Status changes are hints too (profiles: inserts only).
    updates: bool,
    /// Also sent to the job_status feed.
    status_feed: bool,
    /// Also broadcast to Realtime (generation_jobs, as its trigger did).
    realtime: bool,
}

/// The tables whose changes are hints, by (schema, name): the built-in ones
/// and those watched with reactor.watch_table (their trigger arguments name
/// the columns, whether the triggers are enabled or not). Only the triggers
/// of reactor.hint_triggers count: a look-alike on a stranger's table is not
/// a watched table.
async fn hinted_tables(client: &Client) -> Result<HashMap<(String, String), TableHints>, WalError> {
    let mut tables = HashMap::new();
    tables.insert(
        ("public".into(), "generation_jobs".into()),
        TableHints {
            key: "id".into(),
            status: Some("status".into()),
            owner: Some("owner_id".into()),
            owner_is_key: false,
            updates: true,
            status_feed: true,
            realtime: true,
        },
    );
    tables.insert(
        ("public".into(), "profiles".into()),
        TableHints {
            key: "id".into(),
            status: None,
            owner: None,
            owner_is_key: true,
            updates: false,
            status_feed: false,
            realtime: false,
        },
    );
    let rows = client
        .query_typed(
            "select schema_name, table_name, args from reactor.hint_triggers
             where trigger_name = 'reactor_watch_status'",
            &[],
        )
        .await
        .map_err(db)?;
    for row in rows {
        let args: Vec<u8> = row.get(2);
        let mut parts = args
            .split(|b| *b == 0)
            .map(|p| String::from_utf8_lossy(p).into_owned());
        let (Some(key), Some(status)) = (parts.next(), parts.next()) else {
            continue;
        };
        let owner = parts.next().filter(|o| !o.is_empty());
        tables.insert(
            (row.get(0), row.get(1)),
            TableHints {
                key,
                status: Some(status),
                owner,
                owner_is_key: false,
                updates: true,
                status_feed: true,
                realtime: false,
            },
        );
    }
    Ok(tables)
}

/// A relation as decoded, with where its hint columns are.
struct Known {
    name: String,
    hints: Option<(TableHints, Columns)>,
}

struct Columns {
    key: usize,
    status: Option<usize>,
    owner: Option<usize>,
}

/// One hint decoded from the WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    pub change: Change,
    pub status_feed: bool,
    pub realtime: bool,
}

/// Turns pgoutput messages into hints.
#[derive(Default)]
pub struct Decoder {
    tables: HashMap<(String, String), TableHints>,
    relations: HashMap<u32, Known>,
    last_status: HashMap<(u32, String), Option<String>>,
    /// A relation arrived that is not a hinted table (yet): look them up again.
    pub stale: bool,
}

impl Decoder {
    fn set_tables(&mut self, tables: HashMap<(String, String), TableHints>) {
        self.tables = tables;
        self.stale = false;
    }

    /// The hint in one message, if any.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<Hint>, pgoutput::DecodeError> {
        let (relation, new, op) = match pgoutput::decode(data)? {
            Message::Relation(r) => {
                let hints = self
                    .tables
                    .get(&(r.schema.clone(), r.name.clone()))
                    .and_then(|h| {
                        let at = |c: &str| r.columns.iter().position(|x| x == c);
                        let columns = Columns {
                            key: at(&h.key)?,
                            status: h.status.as_deref().and_then(at),
                            owner: h.owner.as_deref().and_then(at),
                        };
                        Some((h.clone(), columns))
                    });
                if hints.is_none() {
                    self.stale = true;
                }
                self.relations.insert(
                    r.id,
                    Known {
                        name: r.name,
                        hints,
                    },
                );
                return Ok(None);
            }
            Message::Insert { relation, new } => (relation, new, "INSERT"),
            Message::Update { relation, new } => (relation, new, "UPDATE"),
            Message::Other(_) => return Ok(None),
        };
        let Some(Known {
            name,
            hints: Some((hints, columns)),
        }) = self.relations.get(&relation)
        else {
            return Ok(None);
        };
        if op == "UPDATE" && !hints.updates {
            return Ok(None);
        }
        let text = |i: Option<usize>| match i.and_then(|i| new.get(i)) {
            Some(Value::Text(s)) => Some(s.clone()),
            _ => None,
        };
        let Some(id) = text(Some(columns.key)) else {
            return Ok(None);
        };
        let status = text(columns.status);
        let old_status = if columns.status.is_some() {
            if self.last_status.len() >= MAX_REMEMBERED {
                self.last_status.clear();
            }
            let previous = self
                .last_status
                .insert((relation, id.clone()), status.clone());
            if op == "UPDATE" && previous.as_ref() == Some(&status) {
                return Ok(None);
            }
            previous.flatten()
        } else {
            None
        };
        let owner_id = if hints.owner_is_key {
            Some(id.clone())
        } else {
            text(columns.owner)
        };
        Ok(Some(Hint {
            change: Change {
                table: name.clone(),
                op: op.into(),
                id,
                owner_id,
                status,
                old_status: if op == "UPDATE" { old_status } else { None },
            },
            status_feed: hints.status_feed,
            realtime: hints.realtime,
        }))
    }
}

/// Checks what a slot needs, with a plain error for each missing piece.
pub async fn preflight(client: &Client) -> Result<(), WalError> {
    let row = client
        .query_typed(
            "select current_setting('wal_level'),
                    (select rolreplication or rolsuper from pg_roles where rolname = current_user),
                    current_user::text,
                    exists (select 1 from pg_publication where pubname = 'reactor')",
            &[],
        )
        .await
        .map_err(db)?
        .into_iter()
        .next()
        .ok_or_else(|| WalError::Db("no row".into()))?;
    let wal_level: String = row.get(0);
    if wal_level != "logical" {
        return Err(WalError::WalLevel(wal_level));
    }
    if !row.get::<_, bool>(1) {
        return Err(WalError::NoReplication(row.get(2)));
    }
    if !row.get::<_, bool>(3) {
        return Err(WalError::NoPublication);
    }
    Ok(())
}

/// Opens a replication connection and creates this session's temporary slot
/// on it; the slot lives as long as the connection.
pub async fn open_slot(url: &str) -> Result<(Replication, String), WalError> {
    let user = || {
        parse_url(url)
            .ok()
            .and_then(|c| c.get_user().map(str::to_string))
            .unwrap_or_else(|| "the reactor's role".into())
    };
    let refused = |e: DbError| match e.code() {
        Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => WalError::NoReplication(user()),
        // PgBouncer refuses the start-up parameter; a pooler that drops it
        // gives an ordinary session, where replication commands are syntax errors.
        Some(c) if *c == SqlState::PROTOCOL_VIOLATION || *c == SqlState::SYNTAX_ERROR => {
            WalError::NotReplication(e.to_string())
        }
        Some(c)
            if *c == SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE
                && e.to_string().contains("wal_level") =>
        {
            WalError::WalLevel("below logical".into())
        }
        _ => e.into(),
    };
    let mut replication = Replication::connect(url, APPLICATION_NAME)
        .await
        .map_err(refused)?;
    let slot = format!("{SLOT_PREFIX}{}", uuid::Uuid::new_v4().simple());
    let create =
        format!("CREATE_REPLICATION_SLOT \"{slot}\" TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT");
    match replication.command(&create).await {
        Ok(_) => Ok((replication, slot)),
        Err(e) if e.code() == Some(&SqlState::CONFIGURATION_LIMIT_EXCEEDED) => {
            let max = replication
                .command("SHOW max_replication_slots")
                .await
                .ok()
                .and_then(|rows| rows.into_iter().next().flatten())
                .unwrap_or_else(|| "?".into());
            Err(WalError::NoFreeSlot(max))
        }
        Err(e) => Err(refused(e)),
    }
}

/// Whether the database is in wal mode.
async fn wal_mode(client: &Client) -> Result<bool, WalError> {
    let rows = client
        .query_typed(
            "select coalesce((select notify_mode = 'wal' from reactor.settings limit 1), false)",
            &[],
        )
        .await
        .map_err(db)?;
    Ok(rows.first().is_some_and(|r| r.get(0)))
}

pub struct WalSource {
    pub url: String,
    pub pool: Pool,
    pub sink: EventSink,
    /// REACTOR_QUIET_ABOVE and REACTOR_QUIET_LEASE, for the job_status
    /// payloads this reactor sends (src/engine/wal/busy.rs).
    pub quiet_above: u64,
    pub quiet_lease: Duration,
}

enum End {
    Shutdown,
    NotWalMode,
}

/// How far a session got before it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Connecting or watching the switch (not in wal mode).
    Idle,
    /// In wal mode, making the slot.
    Starting,
    /// Hints were flowing.
    Streaming,
}

impl WalSource {
    /// Follows the database's switch until shutdown: holds a slot while the
    /// mode is wal, reconnects (and so replays) after any failure.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        // Whether the engine was told hints are not flowing (not ready).
        let mut deaf = false;
        loop {
            // After shutdown a session ends by itself, dropping its slot; one
            // stuck connecting to an unreachable server is given up on.
            let given_up = async {
                shutdown.cancelled().await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            };
            let ended = tokio::select! {
                ended = self.session(&shutdown, &mut deaf) => ended,
                _ = given_up => return,
            };
            let wait = match ended {
                Ok(End::Shutdown) => return,
                Ok(End::NotWalMode) => {
                    backoff = Duration::from_millis(100);
                    backoff
                }
                Err((e, Phase::Idle)) => {
                    // Not in wal mode (or not known yet): the listener owns readiness.
                    tracing::warn!(error = %e, retry_in = ?backoff, "watching the notify-mode switch failed; reconnecting");
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    wait
                }
                Err((e, phase)) => {
                    (self.sink)(Event::Disconnected);
                    deaf = true;
                    if phase == Phase::Streaming {
                        backoff = Duration::from_millis(100);
                    }
                    tracing::error!(error = %e, retry_in = ?backoff, "wal hints stopped; reconnecting");
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    wait
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One connection: Err carries how far it got.
    async fn session(
        &self,
        shutdown: &CancellationToken,
        deaf: &mut bool,
    ) -> Result<End, (WalError, Phase)> {
        let (client, connection) = crate::store::db::connect_raw(&self.url, Some(APPLICATION_NAME))
            .await
            .map_err(|e| (e.into(), Phase::Idle))?;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %describe(&e), "wal connection closed");
            }
        });
        let result = self.stream(&client, shutdown, deaf).await;
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
        result
    }

    async fn stream(
        &self,
        client: &Client,
        shutdown: &CancellationToken,
        deaf: &mut bool,
    ) -> Result<End, (WalError, Phase)> {
        // Not in wal mode: watch the switch on this one connection.
        while !bounded(wal_mode(client))
            .await
            .map_err(|e| (e, Phase::Idle))?
        {
            if std::mem::take(deaf) {
                // Hints flow through the triggers again: replay what was missed.
                (self.sink)(Event::Connected);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(End::Shutdown),
                _ = tokio::time::sleep(IDLE_CHECK) => {}
            }
        }
        let early = |e| (e, Phase::Starting);
        preflight(client).await.map_err(early)?;
        let (mut replication, slot) = open_slot(&self.url).await.map_err(early)?;
        let mut decoder = Decoder::default();
        let started = async {
            decoder.set_tables(hinted_tables(client).await?);
            replication
                .start(&slot, PUBLICATION)
                .await
                .map_err(WalError::from)
        };
        if let Err(e) = started.await {
            replication.close(&slot).await;
            return Err(early(e));
        }
        tracing::info!(%slot, "wal hints: streaming publication {PUBLICATION} from a temporary slot");
        (self.sink)(Event::Connected);
        *deaf = false;
        let mut broadcaster =
            Broadcaster::new(self.pool.clone(), self.quiet_above, self.quiet_lease);
        let result = self
            .follow(
                client,
                &mut replication,
                &mut decoder,
                &mut broadcaster,
                shutdown,
            )
            .await
            .map_err(|e| (e, Phase::Streaming));
        broadcaster.release(client).await;
        // The slot is dropped before this returns (SIGTERM included).
        replication.close(&slot).await;
        result
    }

    /// Turns the stream into hints until shutdown, the end of wal mode or a
    /// failure. The server's position is confirmed as it is read, so the
    /// slot holds back no more WAL than the last [`CONFIRM`] interval.
    async fn follow(
        &self,
        client: &Client,
        replication: &mut Replication,
        decoder: &mut Decoder,
        broadcaster: &mut Broadcaster,
        shutdown: &CancellationToken,
    ) -> Result<End, WalError> {
        let mut ticks = tokio::time::interval(TICK);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut received, mut confirmed) = (0u64, 0u64);
        let mut last_confirmed = Instant::now();
        let mut second_looks: VecDeque<(Instant, Change)> = VecDeque::new();
        let mut checked = Instant::now();
        let mut tables_loaded = Instant::now();
        loop {
            let due = broadcaster.due();
            let mut frame = tokio::select! {
                _ = shutdown.cancelled() => return Ok(End::Shutdown),
                frame = replication.next() => Some(frame?),
                _ = ticks.tick() => None,
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => None,
            };
            // Everything already read is one batch: one broadcast for a burst.
            let mut hints = Vec::new();
            let mut reply = false;
            while let Some(f) = frame {
                match f {
                    Frame::XLogData { end, data } => {
                        received = received.max(end);
                        match decoder.feed(&data) {
                            Ok(Some(hint)) => hints.push(hint),
                            Ok(None) => {}
                            Err(e) => tracing::warn!(error = %e, "wal hints: skipping a message"),
                        }
                    }
                    Frame::Keepalive { end, reply: asked } => {
                        received = received.max(end);
                        reply |= asked;
                    }
                }
                frame = replication.next_buffered()?;
            }
            if decoder.stale && tables_loaded.elapsed() >= MODE_CHECK {
                // A table joined the publication (reactor.watch_table) since
                // the list was read: its rows were skipped, the replay finds them.
                decoder.set_tables(hinted_tables(client).await?);
                tables_loaded = Instant::now();
                decoder.relations.clear();
                (self.sink)(Event::Connected);
            }
            self.deliver(&hints);
            let now = Instant::now();
            while second_looks.front().is_some_and(|(at, _)| *at <= now) {
                if let Some((_, change)) = second_looks.pop_front() {
                    (self.sink)(Event::Change(change));
                }
            }
            let later = now + SECOND_LOOK;
            second_looks.extend(hints.iter().map(|h| (later, h.change.clone())));
            if second_looks.len() > MAX_SECOND_LOOKS {
                second_looks.drain(..second_looks.len() - MAX_SECOND_LOOKS);
            }
            broadcaster.add(&hints);
            bounded(broadcaster.flush_due(client)).await?;
            if reply || (received > confirmed && last_confirmed.elapsed() >= CONFIRM) {
                replication.confirm(received).await?;
                confirmed = received;
                last_confirmed = Instant::now();
            }
            if checked.elapsed() >= MODE_CHECK {
                checked = Instant::now();
                if !bounded(wal_mode(client)).await? {
                    tracing::info!("notify mode is no longer wal: dropping the slot");
                    // Rows decoded by nobody since the last batch: replay.
                    (self.sink)(Event::Connected);
                    return Ok(End::NotWalMode);
                }
            }
        }
    }

    /// Hands hints to the engine at once.
    fn deliver(&self, hints: &[Hint]) {
        metrics::counter!("reactor_wal_hints_total").increment(hints.len() as u64);
        for hint in hints {
            (self.sink)(Event::Change(hint.change.clone()));
            if hint.status_feed {
                (self.sink)(Event::Status(hint.change.clone()));
            }
        }
    }
}

/// `statement` on the control connection, given up after
/// [`MODE_CHECK_TIMEOUT`]: a silent network loses no TCP connection, so a
/// server that does not answer is taken for gone, and the reactor reconnects.
async fn bounded<T>(
    statement: impl std::future::Future<Output = Result<T, WalError>>,
) -> Result<T, WalError> {
    tokio::time::timeout(MODE_CHECK_TIMEOUT, statement)
        .await
        .map_err(|_| {
            WalError::Db(format!(
                "the server did not answer within {MODE_CHECK_TIMEOUT:?}"
            ))
        })?
}
