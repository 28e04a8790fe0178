//! In WAL mode no trigger sends what dashboards and Supabase clients listen
//! to, so one reactor at a time sends it from what it decodes:
//! `NOTIFY job_status`, and where `realtime.send` exists the Realtime
//! broadcast the generation trigger sent (topic `job_status:<owner>`).
//!
//! The sender is the holder of a session advisory lock on the reactor's
//! `reactor wal` connection; the others try to take it over now and then.
//! Payloads are gathered for up to [`WINDOW`] and sent in one statement, so a
//! burst of single-row writers costs the database a statement per window,
//! not one per commit.
use super::{db, Hint, WalError, MODE_CHECK};
use crate::store::db::{describe, param};
use deadpool_postgres::Pool;
use std::time::Duration;
use tokio::time::Instant;
use tokio_postgres::Client;

/// How long payloads wait to be sent together.
pub(super) const WINDOW: Duration = Duration::from_millis(10);
/// Session advisory lock of the reactor that sends job_status/Realtime.
const SENDER_LOCK: i64 = 0x7265_6163_746f_7277; // "reactorw"

pub(super) struct Broadcaster {
    pool: Pool,
    /// This reactor holds the lock.
    sender: bool,
    /// When this reactor last tried to take the lock.
    tried: Option<Instant>,
    /// Whether `realtime.send` exists, looked up once per session.
    realtime: Option<bool>,
    status: Vec<String>,
    to_realtime: Vec<String>,
    since: Option<Instant>,
}

impl Broadcaster {
    pub(super) fn new(pool: Pool) -> Self {
        Broadcaster {
            pool,
            sender: false,
            tried: None,
            realtime: None,
            status: Vec::new(),
            to_realtime: Vec::new(),
            since: None,
        }
    }

    /// Queues what `hints` mean for clients elsewhere.
    pub(super) fn add(&mut self, hints: &[Hint]) {
        for hint in hints.iter().filter(|h| h.status_feed) {
            let payload = serde_json::to_string(&hint.change).unwrap_or_default();
            if hint.realtime {
                self.to_realtime.push(payload.clone());
            }
            self.status.push(payload);
            self.since.get_or_insert_with(Instant::now);
        }
    }

    /// When what is queued is due to be sent (None: nothing is queued).
    pub(super) fn due(&self) -> Option<Instant> {
        self.since.map(|t| t + WINDOW)
    }

    /// Sends what is queued if it is due and this reactor is the sender
    /// (taking over if the lock is free, tried at most every [`MODE_CHECK`]);
    /// otherwise another reactor sends it, and it is dropped here.
    pub(super) async fn flush_due(&mut self, client: &Client) -> Result<(), WalError> {
        if self.due().is_none_or(|due| due > Instant::now()) {
            return Ok(());
        }
        self.since = None;
        let status = std::mem::take(&mut self.status);
        let to_realtime = std::mem::take(&mut self.to_realtime);
        if !self.sender && self.tried.is_none_or(|t| t.elapsed() >= MODE_CHECK) {
            self.tried = Some(Instant::now());
            self.sender = client
                .query_typed("select pg_try_advisory_lock($1)", &[param(&SENDER_LOCK)])
                .await
                .map_err(db)?
                .first()
                .is_some_and(|r| r.get(0));
        }
        if self.sender {
            if let Err(e) = self.send(client, &status, &to_realtime).await {
                tracing::warn!(error = %e, "wal hints: sending job_status/Realtime failed");
            }
        }
        Ok(())
    }

    async fn send(
        &mut self,
        client: &Client,
        status: &[String],
        to_realtime: &[String],
    ) -> Result<(), String> {
        if self.realtime.is_none() {
            let exists = client
                .query_typed(
                    "select to_regprocedure('realtime.send(jsonb,text,text,boolean)') is not null",
                    &[],
                )
                .await
                .map_err(|e| describe(&e))?
                .first()
                .is_some_and(|r| r.get(0));
            self.realtime = Some(exists);
        }
        let pooled = self.pool.get().await.map_err(|e| e.to_string())?;
        pooled
            .query_typed(
                "with sent as (select pg_notify('job_status', p) from unnest($1::text[]) p)
                 select count(*) from sent",
                &[param(&status)],
            )
            .await
            .map_err(|e| describe(&e))?;
        if self.realtime == Some(true) && !to_realtime.is_empty() {
            pooled
                .query_typed(
                    "with sent as (
                       select realtime.send(p::jsonb, 'status', 'job_status:' || (p::jsonb ->> 'owner_id'), true)
                       from unnest($1::text[]) p)
                     select count(*) from sent",
                    &[param(&to_realtime)],
                )
                .await
                .map_err(|e| describe(&e))?;
        }
        Ok(())
    }
}
