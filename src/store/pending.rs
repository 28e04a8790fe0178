//! The SQL that finds and claims a handler's pending rows, generated once from
//! its [`Spec`], and typed operations that run it.
use crate::job::handler::Spec;
use crate::store::db::{param, quote_literal};
use std::time::Duration;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Error, GenericClient};
use uuid::Uuid;

/// The SQL a handler runs, built once from its spec.
///
/// Scans page through the table in key order (keyset pagination). Three details
/// keep a page's cost proportional to the page, not to the table: the first
/// page and the following ones are separate statements (an `$after is null or
/// key > $after` filter cannot become an index range in a generic plan); the
/// pending condition stands at the top level, so a partial index with that
/// predicate (sql/180_pending_markers.sql) holds exactly the candidate rows;
/// and the state condition is wrapped in a scalar subquery, which the planner
/// evaluates per candidate row with an index probe instead of flattening it
/// into an anti-join that walks reactor.handler_state on every page.
#[derive(Debug, Clone)]
pub struct Statements {
    /// Pending rows, no lock: `$1` limit (first page).
    pub pending_first: String,
    /// Pending rows after a key, no lock: `$1` limit, `$2` after-key.
    pub pending_after: String,
    /// Claims the pending rows among `$1` (text[]) that the handler's limits
    /// allow: `$2` owner, `$3` lease seconds (see [`claim_sql`]).
    pub claim: String,
    /// For SQL actions: locks pending rows among `$1` and runs the effect;
    /// one row: how many rows it handled and the highest key among them.
    pub effect_by_ids: Option<String>,
    /// For SQL actions: the same over the first page (`$1` limit) …
    pub effect_first: Option<String>,
    /// … and over the next pages (`$1` limit, `$2` after-key).
    pub effect_after: Option<String>,
    /// Deletes up to `$1` state rows that are neither leased nor dead and
    /// whose row no longer needs the handler (done elsewhere, e.g. by a
    /// webhook, or deleted). Costs O(state rows of the handler), never O(table).
    pub forget: String,
    /// Leased actions with a per-key column: up to `$1` workable rows taking
    /// turns between keys (see [`Statements::with_per_key`]).
    pub fair_page: Option<String>,
    /// For SQL actions with a dead marker (see
    /// [`crate::job::handler::Action::Sql`]): sets it on row `$1`.
    pub mark_dead: Option<String>,
    /// … and on up to `$1` rows recorded dead before the marker existed.
    pub mark_dead_backlog: Option<String>,
}

impl Statements {
    /// `sql_effect` and `mark`: an SQL action's statements (see [`crate::job::handler::Action::Sql`]).
    pub fn build(spec: &Spec, sql_effect: Option<&str>, mark: Option<&str>) -> Self {
        let Spec {
            name,
            table,
            key,
            key_type,
            pending,
            ..
        } = spec;
        let kt = key_type.sql();
        let handler = quote_literal(name);
        // A row is workable if it needs the handler and is not dead, waiting
        // for its retry, or leased.
        let workable = format!(
            "({pending})
             and (select not exists (select 1 from reactor.handler_state s
               where s.handler = {handler} and s.row_id = t.{key}::text
                 and (s.dead_at is not null or s.next_attempt_at > now() or s.lease_expires_at > now())))"
        );
        let after = format!("t.{key} > $2::text::{kt}");
        let page = |filter: &str| {
            format!(
                "select t.{key}::text from {table} t
                 where {filter} and {workable}
                 order by t.{key} limit $1"
            )
        };
        let claim = claim_sql(spec, LimitColumns::default());
        // The picked rows by their tuple ids: a join with `picked` lets the
        // planner hash the whole table on every page (measured: a seq scan
        // of 50k profiles, 38 of a page's 57 ms), and a lookup by key walks
        // the key's index once a row. The ids are stable: `picked` holds
        // the rows locked, and a locked row can only be updated by the lock's
        // own transaction (for a row updated before the lock, the lock
        // returns its newest version, with that version's id).
        let marked = mark
            .map(|mark| {
                format!(
                    "marked as (update {table} m set {mark}
                       where m.ctid = any(array(select tid from picked))),"
                )
            })
            .unwrap_or_default();
        let effect = |filter: &str, order_limit: &str| {
            sql_effect.map(|effect| {
                format!(
                    "with picked as (
                       select t.{key} as id, t.ctid as tid, t as src from {table} t
                       where {filter} and {workable}
                       {order_limit}
                       for no key update of t skip locked
                     ),
                     effect as ({effect}),
                     {marked}
                     cleared as (
                       delete from reactor.handler_state s using picked p
                       where s.handler = {handler} and s.row_id = p.id::text
                     )
                     select count(*), (select id::text from picked order by id desc limit 1)
                     from picked"
                )
            })
        };
        let order_limit = format!("order by t.{key} limit $1");
        // Not leased (an expired lease's work is gone), not dead, and the row
        // is not pending: probed per state row through the table's key.
        let forgettable = format!(
            "s.handler = {handler} and s.dead_at is null
             and (s.lease_expires_at is null or s.lease_expires_at <= now())"
        );
        let forget = format!(
            "with stale as (
               select s.row_id from reactor.handler_state s
               where {forgettable}
                 and (select not exists (select 1 from {table} t
                   where t.{key} = s.row_id::{kt} and ({pending})))
               limit $1
             )
             delete from reactor.handler_state s using stale
             where s.row_id = stale.row_id and {forgettable}"
        );
        Statements {
            pending_first: page("true"),
            pending_after: page(&after),
            claim,
            effect_by_ids: effect(&format!("t.{key} = any($1::text[]::{kt}[])"), ""),
            effect_first: effect("true", &order_limit),
            effect_after: effect(&after, &order_limit),
            forget,
            fair_page: None,
            mark_dead: None,
            mark_dead_backlog: None,
        }
    }

    /// With the statements that set dead marker `column` (a nullable
    /// timestamp of the source row that the pending condition requires null).
    pub fn with_dead_marker(mut self, spec: &Spec, column: &str) -> Self {
        let Spec {
            name,
            table,
            key,
            key_type,
            ..
        } = spec;
        let kt = key_type.sql();
        let handler = quote_literal(name);
        self.mark_dead = Some(format!(
            "update {table} t set {column} = now()
             where t.{key} = $1::text::{kt} and t.{column} is null"
        ));
        self.mark_dead_backlog = Some(format!(
            "with todo as (
               select t.{key} as id from reactor.handler_state s
               join {table} t on t.{key} = s.row_id::{kt}
               where s.handler = {handler} and s.dead_at is not null and t.{column} is null
               limit $1
             )
             update {table} t set {column} = now() from todo
             where t.{key} = todo.id and t.{column} is null"
        ));
        self
    }

    /// Sets the dead marker of row `id` (no-op without one); true if it was set.
    pub async fn mark_dead(&self, db: &impl GenericClient, id: &str) -> Result<bool, Error> {
        match &self.mark_dead {
            Some(sql) => Ok(db.execute_typed(sql, &[param(&id)]).await? > 0),
            None => Ok(false),
        }
    }

    /// Sets the dead marker of up to `limit` rows recorded dead without it;
    /// returns how many.
    pub async fn mark_dead_backlog(
        &self,
        db: &impl GenericClient,
        limit: i64,
    ) -> Result<u64, Error> {
        match &self.mark_dead_backlog {
            Some(sql) => db.execute_typed(sql, &[param(&limit)]).await,
            None => Ok(0),
        }
    }

    /// With the claim statement of a leased handler whose limits read columns
    /// of the row (see [`LimitColumns`]).
    pub fn with_limit_columns(mut self, spec: &Spec, columns: LimitColumns) -> Self {
        self.claim = claim_sql(spec, columns);
        self
    }

    /// The statements of a leased handler whose rows carry a key (an owner, a
    /// customer) in `column`: pages take turns between keys (and claims keep
    /// the key on the lease, see [`Statements::with_limit_columns`]).
    ///
    /// A fair page walks the distinct keys of pending rows (a loose index
    /// scan: one index probe per key, at most `$1` keys), takes each key's
    /// first `ceil($1 / keys)` workable rows, and interleaves them: the first
    /// row of every key, then the second… So a key with one pending row waits
    /// at most one page behind a key with thousands. Each probe is served by
    /// an index on (`column`, key) restricted to pending rows (README,
    /// "Limits and fairness"); the page costs O(`$1`) index probes.
    pub fn with_per_key(mut self, spec: &Spec, column: &str) -> Self {
        let Spec {
            name,
            table,
            key,
            pending,
            ..
        } = spec;
        let handler = quote_literal(name);
        let col = crate::store::db::quote_ident(column);
        // A scalar subquery: probed per candidate row (see `Statements`).
        let workable = format!(
            "(select not exists (select 1 from reactor.handler_state s
               where s.handler = {handler} and s.row_id = t.{key}::text
                 and (s.dead_at is not null or s.next_attempt_at > now() or s.lease_expires_at > now())))"
        );
        let rows_of = |which: &str| {
            format!(
                "select t.{key}::text as id, row_number() over (order by t.{key}) as turn
                 from {table} t where ({pending}) and {which} and {workable}
                 order by t.{key} limit (select per from share)"
            )
        };
        self.fair_page = Some(format!(
            "with recursive keys(v) as (
               (select t.{col} from {table} t where ({pending}) and t.{col} is not null
                order by t.{col} limit 1)
               union all
               select (select t.{col} from {table} t where ({pending}) and t.{col} > k.v
                       order by t.{col} limit 1)
               from keys k where k.v is not null
             ),
             owners as (select v from keys where v is not null limit $1),
             share as (select greatest(1, ceil($1::float8 / greatest(1, (select count(*) from owners) + 1)))::int as per)
             select r.id from (
               select o.v::text as v, x.id, x.turn from owners o cross join lateral ({by_key}) x
               union all
               select null, x.id, x.turn from ({no_key}) x
             ) r
             order by r.turn, r.v nulls last limit $1",
            by_key = rows_of(&format!("t.{col} = o.v")),
            no_key = rows_of(&format!("t.{col} is null")),
        ));
        self
    }

    /// A fair page (see [`Statements::with_per_key`]): up to `limit` keys.
    pub async fn fair_page(
        &self,
        db: &impl GenericClient,
        limit: i64,
    ) -> Result<Vec<String>, Error> {
        let sql = self.fair_page.as_deref().expect("a per-key handler");
        Ok(keys(&db.query_typed(sql, &[param(&limit)]).await?))
    }

    /// The pending-page statement for a page that starts after `after` (or at the start).
    fn pending_sql(&self, after: Option<&str>) -> &str {
        match after {
            None => &self.pending_first,
            Some(_) => &self.pending_after,
        }
    }

    /// One page of pending rows (no lock): up to `limit` keys after `after`.
    pub async fn pending_page(
        &self,
        db: &impl GenericClient,
        limit: i64,
        after: Option<&str>,
    ) -> Result<Vec<String>, Error> {
        let rows = db
            .query_typed(self.pending_sql(after), &page_params(&limit, &after))
            .await?;
        Ok(keys(&rows))
    }

    /// SQL actions: runs the effect over one page of pending rows.
    pub async fn effect_page(
        &self,
        db: &impl GenericClient,
        limit: i64,
        after: Option<&str>,
    ) -> Result<ScannedPage, Error> {
        let sql = match after {
            None => self.effect_first.as_deref(),
            Some(_) => self.effect_after.as_deref(),
        };
        let row = db
            .query_typed_one(sql.expect("SQL action"), &page_params(&limit, &after))
            .await?;
        Ok(ScannedPage::from_row(&row))
    }

    /// SQL actions: runs the effect over the pending rows among `ids` and
    /// returns how many it handled.
    pub async fn effect_by_ids(
        &self,
        db: &impl GenericClient,
        ids: &[String],
    ) -> Result<usize, Error> {
        let sql = self.effect_by_ids.as_deref().expect("SQL action");
        let row = db.query_typed_one(sql, &[param(&ids)]).await?;
        Ok(ScannedPage::from_row(&row).handled)
    }

    /// Leased actions: claims the pending rows among `ids` for `owner`, for
    /// `lease`, as far as the handler's limits allow (`prepare`: see
    /// [`crate::store::db::query_hot`]).
    pub async fn claim(
        &self,
        db: &deadpool_postgres::ClientWrapper,
        prepare: bool,
        ids: &[String],
        owner: Uuid,
        lease: Duration,
    ) -> Result<ClaimBatch, Error> {
        let secs = lease.as_secs_f64();
        let params = [param(&ids), param(&owner), param(&secs)];
        let rows = crate::store::db::query_hot(db, prepare, &self.claim, &params).await?;
        let mut batch = ClaimBatch::default();
        let wait = |row: &tokio_postgres::Row| {
            Duration::from_secs_f64(row.get::<_, f64>(4).clamp(0.0, 3600.0))
        };
        for row in &rows {
            match (
                row.get::<_, Option<String>>(0),
                row.get::<_, Option<i64>>(1),
            ) {
                (Some(row_id), Some(token)) => batch.claims.push(Claim {
                    row_id,
                    token,
                    attempts: row.get(2),
                }),
                (Some(row_id), None) => batch.held.push(Held {
                    row_id,
                    limit: row.get(6),
                    reason: row.get(5),
                    wait: wait(row),
                }),
                (None, _) => {
                    batch.granted = row.get::<_, i32>(3) as usize;
                    batch.lost_routes = row.get(7);
                    let reason: Option<String> = row.get(5);
                    batch.limited = reason.map(|reason| Limited {
                        reason,
                        wait: wait(row),
                    });
                }
            }
        }
        Ok(batch)
    }

    /// Drops up to `limit` state rows that need nothing more (see [`Statements::forget`]).
    pub async fn forget(&self, db: &impl GenericClient, limit: i64) -> Result<u64, Error> {
        db.execute_typed(&self.forget, &[param(&limit)]).await
    }
}

/// What one claim got: the claimed rows, how many the limits granted, and
/// whether a limit held some back.
#[derive(Debug, Default)]
pub struct ClaimBatch {
    pub claims: Vec<Claim>,
    /// Rows the limits granted (tokens taken); more than `claims` when
    /// another reactor claimed some in between.
    pub granted: usize,
    /// The route of each granted row with a route that another reactor
    /// claimed first (a route with a rate took a token for it).
    pub lost_routes: Vec<String>,
    pub limited: Option<Limited>,
    /// Rows held back by their route's limits: set aside until their turn
    /// (`next_attempt_at`), so they no longer stand in the other routes' way.
    pub held: Vec<Held>,
}

/// A row its route's limit held back, and by which: `limit` is the route's
/// bucket (`<handler>[<route>]`), `reason` and `wait` as in [`Limited`].
#[derive(Debug, Clone)]
pub struct Held {
    pub row_id: String,
    pub limit: String,
    pub reason: String,
    pub wait: Duration,
}

/// Columns of the row that a leased handler's limits read, kept on the lease:
/// `per_key` (for `max_in_flight_per_key`) and `route` (the job type, for the
/// limits of each route).
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitColumns<'a> {
    pub per_key: Option<&'a str>,
    pub route: Option<&'a str>,
}

/// A limit that held rows back: which (`paused`, `max_in_flight`,
/// `max_in_flight_per_key`, `rate`) and how long until it may grant again.
#[derive(Debug, Clone)]
pub struct Limited {
    pub reason: String,
    pub wait: Duration,
}

/// The claim statement of a leased handler: the candidates among `$1` that
/// are pending and claimable (not leased, waiting or dead), in the order of
/// `$1`; `reactor.limit_grant` picks those the handler's limits and their
/// routes' allow (one primary-key probe when there are none); they are leased
/// to `$2` for `$3` seconds. The `columns` the limits read are kept on the
/// lease. Candidates held back by their route wait in `handler_state` until
/// their turn (`next_attempt_at`, no attempt counted), so pages and other
/// reactors pass over them. Rows returned: each claimed row (row_id, token,
/// attempts); each held row (row_id, no token, its wait, the limit and the
/// route's bucket); last (row_id null) the grant: how many were granted, the
/// wait and the limit of the handler's own that held rows back, and the
/// routes of granted rows another reactor claimed first (their tokens go
/// back).
///
/// Each candidate is one probe of the table's key, whatever the table's
/// statistics say: the probe is a lateral subquery that filters on the key
/// alone (`offset 0` keeps the planner from merging it into the join or
/// pushing the pending condition into it, so the pending index is out of its
/// reach). A plain join let a table analyzed while nothing was pending — a
/// job table's usual state before a burst — be planned as a hash of its whole
/// pending index, every row of it probed against `handler_state`: measured 56
/// ms a claim with 70k rows pending (0.3 ms as a probe), so a busy table's
/// claims slowed to about 80 rows a second until autovacuum analyzed it.
pub fn claim_sql(spec: &Spec, columns: LimitColumns) -> String {
    let Spec {
        name,
        table,
        key,
        key_type,
        pending,
        ..
    } = spec;
    let kt = key_type.sql();
    let handler = quote_literal(name);
    let column = |c: Option<&str>| {
        c.map(|c| format!("t.{}::text", crate::store::db::quote_ident(c)))
            .unwrap_or_else(|| "null::text".into())
    };
    let (limit_key, limit_route) = (column(columns.per_key), column(columns.route));
    let routes = match columns.route {
        Some(_) => "array(select limit_route from cand order by n)",
        None => "null::text[]",
    };
    format!(
        "with cand as materialized (
           select t.{key}::text as row_id, {limit_key} as limit_key, {limit_route} as limit_route,
                  row_number() over (order by ids.o)::int as n
           from (select distinct on (u.id) u.id, u.o
                 from unnest($1::text[]) with ordinality as u(id, o) order by u.id, u.o) ids
           cross join lateral (select * from {table} p where p.{key} = ids.id::{kt} offset 0) t
           where ({pending})
             and (select not exists (select 1 from reactor.handler_state s
               where s.handler = {handler} and s.row_id = t.{key}::text
                 and (s.dead_at is not null or s.next_attempt_at > now() or s.lease_expires_at > now())))
         ),
         g as materialized (
           select * from reactor.limit_grant({handler},
             array(select limit_key from cand order by n), {routes})
         ),
         claimed as (
           insert into reactor.handler_state as s
             (handler, row_id, lease_owner, lease_token, lease_expires_at, updated_at,
              limit_key, limit_route)
           select {handler}, c.row_id, $2, 1, now() + make_interval(secs => $3), now(),
                  c.limit_key, c.limit_route
           from cand c, g where c.n = any(g.take)
           on conflict (handler, row_id) do update set
             lease_owner = excluded.lease_owner,
             lease_token = s.lease_token + 1,
             lease_expires_at = excluded.lease_expires_at,
             limit_key = excluded.limit_key,
             limit_route = excluded.limit_route,
             updated_at = now()
           where s.dead_at is null
             and (s.next_attempt_at is null or s.next_attempt_at <= now())
             and (s.lease_expires_at is null or s.lease_expires_at <= now())
           returning row_id, lease_token, attempts
         ),
         holds as (
           select c.row_id, h.bucket, h.reason, h.wait_s
           from g cross join lateral
             unnest(g.held, g.held_by, g.held_reason, g.held_wait) as h(n, bucket, reason, wait_s)
           join cand c on c.n = h.n
         ),
         held as (
           insert into reactor.handler_state as s (handler, row_id, next_attempt_at, updated_at)
           select {handler}, h.row_id, now() + make_interval(secs => h.wait_s), now() from holds h
           on conflict (handler, row_id) do update set
             next_attempt_at = excluded.next_attempt_at,
             updated_at = now()
           where s.dead_at is null
             and (s.lease_expires_at is null or s.lease_expires_at <= now())
           returning row_id
         )
         select row_id, lease_token, attempts, null::int, null::float8, null::text, null::text,
                null::text[]
         from claimed
         union all
         select h.row_id, null, null, null, h.wait_s, h.reason, h.bucket, null
         from holds h join held using (row_id)
         union all
         select null, null, null, cardinality(g.take), g.wait_s, g.reason, null,
                array(select c.limit_route from cand c
                      where c.n = any(g.take) and c.limit_route is not null
                        and c.row_id not in (select row_id from claimed))
         from g"
    )
}

/// A row claimed by [`Statements::claim`].
#[derive(Debug, Clone)]
pub struct Claim {
    pub row_id: String,
    pub token: i64,
    /// Failed attempts before this one.
    pub attempts: i32,
}

/// Parameters of a page statement: the limit, and the key to start after (if any).
fn page_params<'a>(
    limit: &'a i64,
    after: &'a Option<&'a str>,
) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    match after {
        None => vec![param(limit)],
        Some(after) => vec![param(limit), param(after)],
    }
}

/// What a page of a scan did: for an SQL action only the count and the last
/// key come back from the server, not every key (a page is thousands of rows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedPage {
    /// Rows handled (for a leased action: found and handed to the work).
    pub handled: usize,
    /// The highest key among them (key order), where the next page starts.
    pub last: Option<String>,
}

impl ScannedPage {
    /// A page of `keys` in key order.
    pub fn of_keys(mut keys: Vec<String>) -> Self {
        ScannedPage {
            handled: keys.len(),
            last: keys.pop(),
        }
    }

    fn from_row(row: &tokio_postgres::Row) -> Self {
        ScannedPage {
            handled: row.get::<_, i64>(0) as usize,
            last: row.get(1),
        }
    }
}

/// The first column (a key as text) of every row.
fn keys(rows: &[tokio_postgres::Row]) -> Vec<String> {
    rows.iter().map(|r| r.get(0)).collect()
}
