//! Workload 3: live latency, one profile at a time, from the insert's commit
//! to its collection being visible. The measurement itself ([`Probe`]) is
//! also used by the "wal" workload on its own cluster.
use crate::cluster::{Ctx, Db};
use crate::contenders::{Contender, Running};
use crate::measure::percentile;
use crate::report::Results;
use anyhow::{bail, Context as _, Result};
use futures::StreamExt as _;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// Samples thrown away before live latency is recorded (also proves readiness).
const LATENCY_WARMUP: usize = 20;

/// Live latency only: a notification when a collection row commits, so the
/// bench sees "row visible" without polling. The same for every contender.
const DONE_TRIGGER: &str = "
create or replace function public.bench_done() returns trigger language plpgsql as $$
begin
  perform pg_notify('bench_done', new.owner_id::text);
  return null;
end $$;
create trigger bench_done after insert on public.collections
  for each row execute function public.bench_done();";

/// What one latency measurement needs in its database, made before the
/// contender starts: the done trigger, one user per sample, and the bench's
/// own listening connection.
pub(crate) struct Probe {
    users: Vec<uuid::Uuid>,
    arrivals: UnboundedReceiver<(Instant, String)>,
    _listen: Client,
}

impl Probe {
    pub(crate) async fn new(db: &Db, samples: usize) -> Result<Probe> {
        db.client.batch_execute(DONE_TRIGGER).await?;
        let total = (samples + LATENCY_WARMUP) as i64;
        let users: Vec<uuid::Uuid> = db
            .client
            .query(
                "insert into auth.users (id, email)
                 select gen_random_uuid(), 'lat' || g || '@example.test'
                 from generate_series(1, $1::bigint) g returning id",
                &[&total],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();

        // The bench's own listener: the time a notification arrives is taken
        // in the task that reads the socket.
        let (listen, mut conn) = tokio_postgres::connect(&db.url, NoTls).await?;
        let (tx, arrivals) = tokio::sync::mpsc::unbounded_channel::<(Instant, String)>();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(m)) = messages.next().await {
                if let AsyncMessage::Notification(n) = m {
                    if tx.send((Instant::now(), n.payload().to_string())).is_err() {
                        break;
                    }
                }
            }
        });
        listen.batch_execute("listen bench_done").await?;
        Ok(Probe {
            users,
            arrivals,
            _listen: listen,
        })
    }

    /// Inserts one profile at a time while `running` (ready) works, and
    /// returns the latencies in milliseconds, sorted, warm-up dropped.
    /// `phase_ms`: a random extra gap up to this, against a poller's ticks.
    pub(crate) async fn sample(
        mut self,
        db: &Db,
        running: &mut Running,
        key: &str,
        phase_ms: u64,
    ) -> Result<Vec<f64>> {
        let insert = db
            .client
            .prepare("insert into public.profiles (id) values ($1)")
            .await?;
        let mut lat = Vec::with_capacity(self.users.len());
        for (i, user) in self.users.iter().enumerate() {
            let want = user.to_string();
            db.client.execute(&insert, &[user]).await?;
            // The commit was acknowledged: the row is in, the clock starts.
            let t0 = Instant::now();
            let limit = if i < LATENCY_WARMUP { 60 } else { 10 };
            let arrived = loop {
                match tokio::time::timeout(Duration::from_secs(limit), self.arrivals.recv()).await {
                    Ok(Some((at, payload))) if payload == want => break at,
                    Ok(Some(_)) => continue,
                    Ok(None) => bail!("the bench listener closed"),
                    Err(_) => {
                        running.check_alive()?;
                        bail!("{key}: no collection for sample {i} within {limit}s");
                    }
                }
            };
            if i >= LATENCY_WARMUP {
                lat.push(arrived.saturating_duration_since(t0).as_secs_f64() * 1000.0);
            }
            // An idle system between samples, with jitter so no timer phase-locks.
            // Polling modes: a random phase against the poll ticks, or every
            // sample would land at the same point of the interval.
            let phase = if phase_ms > 0 {
                rand::random_range(0..phase_ms)
            } else {
                0
            };
            let gap = 10 + rand::random_range(0..10u64) + phase;
            tokio::time::sleep(Duration::from_millis(gap)).await;
        }
        lat.sort_by(|a, b| a.total_cmp(b));
        Ok(lat)
    }
}

/// Records p50/p90/p99/max and the mean of sorted latencies as `{prefix}.{q}.{key}`.
pub(crate) fn record(res: &mut Results, prefix: &str, key: &str, lat: &[f64]) {
    for (name, q) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("max", 1.0)] {
        res.set(format!("{prefix}.{name}.{key}"), percentile(lat, q));
    }
    res.set(
        format!("{prefix}.mean.{key}"),
        lat.iter().sum::<f64>() / lat.len().max(1) as f64,
    );
}

pub(crate) async fn run(ctx: &Ctx, res: &mut Results) -> Result<()> {
    let samples = ctx.p.samples;
    println!("\n== live latency: {samples} samples, one profile at a time");
    let poll_ms = humantime::parse_duration(&ctx.p.poll_interval)
        .context("BENCH_POLL_INTERVAL")?
        .as_millis() as u64;
    let outbox_ms = humantime::parse_duration(&ctx.p.outbox_poll)
        .context("BENCH_OUTBOX_POLL")?
        .as_millis() as u64;
    let mut contenders = vec![
        Contender::Reactor,
        Contender::ReactorOutbox,
        Contender::ReactorPoll,
    ];
    contenders.extend(ctx.p.peers().into_iter().map(Contender::Peer));
    for who in contenders {
        let key = who.key();
        let db = ctx.fresh_for(&format!("lat_{key}"), &who).await?;
        let probe = Probe::new(&db, samples).await?;
        let mut running = ctx.start(&who, &db, "latency").await?;
        running.ready().await?;
        let phase = match who {
            Contender::ReactorPoll => poll_ms.max(1),
            Contender::ReactorOutbox => outbox_ms.max(1),
            _ => 0,
        };
        let lat = probe.sample(&db, &mut running, &key, phase).await?;
        running.stop().await?;
        ctx.done_with(db).await?;
        record(res, "lat", &key, &lat);
    }
    Ok(())
}
