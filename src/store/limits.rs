//! Statements on `reactor.limits` (sql/300_limits.sql, routes in
//! sql/310_route_limits.sql): a handler's and its routes' limits written at
//! start, token refunds, and what `/metrics`, the dashboard and `reactor
//! status` show. The grant itself runs inside the
//! claim statement ([`crate::store::pending::Statements::claim`]).
use crate::job::limits::{route_bucket, Limits, Rate};
use crate::store::db::param;
use tokio_postgres::GenericClient;

/// Writes `handler`'s limits and its routes' (every reactor does at start;
/// the last one started wins). Without limits the settings are cleared, a
/// push-back pause is kept; routes no longer limited lose their rows. A
/// bucket keeps its tokens, at most the new burst.
pub async fn register(
    db: &impl GenericClient,
    handler: &str,
    limits: &Limits,
) -> Result<(), tokio_postgres::Error> {
    let mut routes: Vec<&str> = Vec::new();
    for (route, limit) in limits.routes.iter().flat_map(|r| &r.of) {
        if limit.any() {
            let bucket = Bucket {
                max_in_flight: limit.max_in_flight,
                rate: limit.rate,
                max_in_flight_per_key: None,
                route: Some((handler, route)),
            };
            write_bucket(db, &route_bucket(handler, route), &bucket).await?;
            routes.push(route);
        }
    }
    db.execute_typed(
        "delete from reactor.limits where of_handler = $1 and route <> all($2)",
        &[param(&handler), param(&routes)],
    )
    .await?;
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
    let bucket = Bucket {
        max_in_flight: limits.max_in_flight,
        rate: limits.rate,
        max_in_flight_per_key: limits.max_in_flight_per_key,
        route: None,
    };
    write_bucket(db, handler, &bucket).await
}

/// The settings of one `reactor.limits` row: a handler's, or (with `route`:
/// the handler and the route) one route's.
struct Bucket<'a> {
    max_in_flight: Option<i32>,
    rate: Option<Rate>,
    max_in_flight_per_key: Option<i32>,
    route: Option<(&'a str, &'a str)>,
}

async fn write_bucket(
    db: &impl GenericClient,
    name: &str,
    bucket: &Bucket<'_>,
) -> Result<(), tokio_postgres::Error> {
    let rate = bucket.rate.map(|r| r.per_second);
    let burst = bucket.rate.map(|r| r.burst).unwrap_or(1.0);
    let (of_handler, route) = bucket.route.unzip();
    db.execute_typed(
        "insert into reactor.limits as l
           (handler, max_in_flight, rate_per_s, burst, tokens, max_in_flight_per_key,
            of_handler, route)
         values ($1, $2, $3, $4, $4, $5, $6, $7)
         on conflict (handler) do update set
           max_in_flight = excluded.max_in_flight,
           rate_per_s = excluded.rate_per_s,
           burst = excluded.burst,
           tokens = least(l.tokens, excluded.burst),
           max_in_flight_per_key = excluded.max_in_flight_per_key,
           of_handler = excluded.of_handler,
           route = excluded.route,
           updated_at = now()",
        &[
            param(&name),
            param(&bucket.max_in_flight),
            param(&rate),
            param(&burst),
            param(&bucket.max_in_flight_per_key),
            param(&of_handler),
            param(&route),
        ],
    )
    .await?;
    Ok(())
}

/// Gives back the tokens granted for rows another reactor claimed in
/// between: `tokens` to `handler`'s bucket, and one to a route's bucket for
/// each of those rows of the route (`routes`, a route once per row). One
/// statement per bucket, so no refund holds two buckets' locks at once.
pub async fn refund(
    db: &impl GenericClient,
    handler: &str,
    tokens: i32,
    routes: &[String],
) -> Result<(), tokio_postgres::Error> {
    let mut per_route: std::collections::BTreeMap<&str, i32> = Default::default();
    for route in routes {
        *per_route.entry(route).or_default() += 1;
    }
    let buckets = std::iter::once((handler.to_string(), tokens)).chain(
        per_route
            .into_iter()
            .map(|(r, n)| (route_bucket(handler, r), n)),
    );
    for (bucket, tokens) in buckets {
        db.execute_typed(
            "select reactor.limit_refund($1, $2)",
            &[param(&bucket), param(&tokens)],
        )
        .await?;
    }
    Ok(())
}

/// One handler's (or route's: `handler` is then `<handler>[<route>]`) limits
/// and where they stand now.
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

/// Every handler's and route's limits and where they stand (a few rows; each
/// in-flight count is a probe of a leased-rows index).
pub async fn snapshot(db: &impl GenericClient) -> Result<Vec<LimitState>, tokio_postgres::Error> {
    let rows = db
        .query_typed(
            "select l.handler, l.max_in_flight,
               (select count(*) from reactor.handler_state s
                 where s.handler = coalesce(l.of_handler, l.handler) and s.lease_owner is not null
                   and s.lease_expires_at > now()
                   and (l.route is null or s.limit_route = l.route)),
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
