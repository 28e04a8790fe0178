//! Statements on `reactor.limits` (sql/300_limits.sql): a handler's limits
//! written at start, token refunds, and what `/metrics`,
//! the dashboard and `reactor status` show. The grant itself runs inside the
//! claim statement ([`crate::store::pending::Statements::claim`]).
use crate::job::limits::Limits;
use crate::store::db::param;
use tokio_postgres::GenericClient;

/// Writes `handler`'s limits (every reactor does at start; the last one
/// started wins). Without limits the settings are cleared, a push-back pause
/// is kept. The bucket keeps its tokens, at most the new burst.
pub async fn register(
    db: &impl GenericClient,
    handler: &str,
    limits: &Limits,
) -> Result<(), tokio_postgres::Error> {
    let rate = limits.rate.map(|r| r.per_second);
    let burst = limits.rate.map(|r| r.burst).unwrap_or(1.0);
    if !limits.any() {
        db.execute_typed(
            "update reactor.limits set max_in_flight = null, rate_per_s = null,
               max_in_flight_per_key = null, updated_at = now()
             where handler = $1 and (max_in_flight is not null or rate_per_s is not null
               or max_in_flight_per_key is not null)",
            &[param(&handler)],
        )
        .await?;
        return Ok(());
    }
    db.execute_typed(
        "insert into reactor.limits as l
           (handler, max_in_flight, rate_per_s, burst, tokens, max_in_flight_per_key)
         values ($1, $2, $3, $4, $4, $5)
         on conflict (handler) do update set
           max_in_flight = excluded.max_in_flight,
           rate_per_s = excluded.rate_per_s,
           burst = excluded.burst,
           tokens = least(l.tokens, excluded.burst),
           max_in_flight_per_key = excluded.max_in_flight_per_key,
           updated_at = now()",
        &[
            param(&handler),
            param(&limits.max_in_flight),
            param(&rate),
            param(&burst),
            param(&limits.max_in_flight_per_key),
        ],
    )
    .await?;
    Ok(())
}

/// Gives back `tokens` granted for rows another reactor claimed in between.
pub async fn refund(
    db: &impl GenericClient,
    handler: &str,
    tokens: i32,
) -> Result<(), tokio_postgres::Error> {
    db.execute_typed(
        "select reactor.limit_refund($1, $2)",
        &[param(&handler), param(&tokens)],
    )
    .await?;
    Ok(())
}

/// One handler's limits and where they stand now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LimitState {
    pub handler: String,
    pub max_in_flight: Option<i32>,
    pub in_flight: i64,
    pub rate_per_s: Option<f64>,
    pub burst: f64,
    /// Tokens in the bucket now (refilled to this instant).
    pub tokens: Option<f64>,
    pub max_in_flight_per_key: Option<i32>,
    /// Seconds the handler stays paused by its provider's push-back.
    pub paused_for_s: Option<f64>,
}

/// Every handler's limits and where they stand (a few rows; each in-flight
/// count is a probe of the leased-rows index).
pub async fn snapshot(db: &impl GenericClient) -> Result<Vec<LimitState>, tokio_postgres::Error> {
    let rows = db
        .query_typed(
            "select l.handler, l.max_in_flight,
               (select count(*) from reactor.handler_state s
                 where s.handler = l.handler and s.lease_owner is not null
                   and s.lease_expires_at > now()),
               l.rate_per_s, l.burst,
               case when l.rate_per_s is not null then least(l.burst, l.tokens
                 + greatest(0, extract(epoch from now() - l.refilled_at)) * l.rate_per_s) end,
               l.max_in_flight_per_key,
               case when l.paused_until > now()
                 then extract(epoch from l.paused_until - now())::float8 end
             from reactor.limits l order by l.handler",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| LimitState {
            handler: r.get(0),
            max_in_flight: r.get(1),
            in_flight: r.get(2),
            rate_per_s: r.get(3),
            burst: r.get(4),
            tokens: r.get(5),
            max_in_flight_per_key: r.get(6),
            paused_for_s: r.get(7),
        })
        .collect())
}

/// One line for `reactor status`: in flight, rate, tokens, per-key cap, pause.
pub fn describe(l: &LimitState) -> String {
    let mut line = format!("{:<24} {} in flight", l.handler, l.in_flight);
    if let Some(max) = l.max_in_flight {
        line.push_str(&format!(" (max {max})"));
    }
    if let (Some(rate), Some(tokens)) = (l.rate_per_s, l.tokens) {
        line.push_str(&format!(
            "  rate {:.2}/min, burst {}, {tokens:.1} token(s) now",
            rate * 60.0,
            l.burst
        ));
    }
    if let Some(per_key) = l.max_in_flight_per_key {
        line.push_str(&format!("  max {per_key} per key"));
    }
    if let Some(paused) = l.paused_for_s {
        line.push_str(&format!("  paused by the provider for {paused:.1} s more"));
    }
    line
}

/// Sets the `reactor_limit_*` gauges from a snapshot.
pub fn record_gauges(states: &[LimitState]) {
    for s in states {
        let h = s.handler.clone();
        metrics::gauge!("reactor_limit_in_flight", "handler" => h.clone()).set(s.in_flight as f64);
        if let Some(max) = s.max_in_flight {
            metrics::gauge!("reactor_limit_max_in_flight", "handler" => h.clone()).set(max as f64);
        }
        if let Some(tokens) = s.tokens {
            metrics::gauge!("reactor_limit_tokens", "handler" => h.clone()).set(tokens);
        }
        metrics::gauge!("reactor_limit_paused_seconds", "handler" => h)
            .set(s.paused_for_s.unwrap_or(0.0));
    }
}
