//! The SQL of one own table: its pending condition, and every statement its
//! handler runs (claim, read, write-back, retry count, give-up, repair,
//! unrouted rows), with names quoted exactly as written in REACTOR_CONFIG and
//! values as literals.
use crate::handlers::table_config::{TableConfig, Target};
use crate::job::handler::Spec;
use crate::job::lease::held_cte;
use crate::store::db::{quote_ident, quote_literal};

/// The SQL the handler of one table runs, built once from its config.
#[derive(Debug)]
pub(super) struct TableSql {
    /// `$1` key, `$2`–`$5` the lease ([`held_cte`]): fenced, pending →
    /// processing, and one row: whether the lease is held, the row as JSON
    /// text and its job type (nulls when no longer pending).
    pub(super) claim: String,
    /// `$1` key, then `$2` result (if a result column), then the URL (if a
    /// URL column), then the lease ([`held_cte`]): fenced, the succeeded
    /// value and the answer, and the lease's state row dropped. One row:
    /// whether the lease is held, and the rows written back (0 or 1).
    pub(super) succeed: String,
    /// `$1` key: one more failed attempt in the retry column.
    pub(super) count_failure: Option<String>,
    /// `$1` key, `$2` error, `$3` handler: the failed value and the error, and
    /// the dead state is dropped.
    pub(super) give_up: String,
    /// Every dead row of `$1` handler whose failure is not on its row yet.
    pub(super) repair_dead: String,
    /// Rows waiting with a job type that has no route: (type, count).
    pub(super) unrouted: Option<String>,
}

impl TableSql {
    /// Every statement with what it is for, to check them against the table.
    pub(super) fn all(&self) -> Vec<(&'static str, &str)> {
        let mut all = vec![
            ("claim", self.claim.as_str()),
            ("success", &self.succeed),
            ("give-up", &self.give_up),
            ("repair", &self.repair_dead),
        ];
        if let Some(sql) = &self.count_failure {
            all.push(("retry count", sql));
        }
        if let Some(sql) = &self.unrouted {
            all.push(("unrouted", sql));
        }
        all
    }
}

/// The rows the handler of a table works on.
pub(super) fn spec(cfg: &TableConfig, name: &str) -> Spec {
    Spec {
        name: name.to_string(),
        table: format!("{}.{}", quote_ident(&cfg.schema), quote_ident(&cfg.table)),
        notify_table: cfg.table.clone(),
        key: quote_ident(&cfg.key),
        key_type: cfg.key_type,
        pending: pending(cfg, "t."),
        // Our own claim (→ processing) needs no hint; a processing row is
        // recovered by replay and sweeps.
        statuses: Some(vec![cfg.status.pending.clone()]),
    }
}

/// The pending condition, its columns prefixed with `prefix` (`t.` or nothing).
pub(super) fn pending(cfg: &TableConfig, prefix: &str) -> String {
    let status = format!("{prefix}{}", quote_ident(&cfg.status.column));
    let mut sql = format!(
        "{status} in ({}, {})",
        quote_literal(&cfg.status.pending),
        quote_literal(&cfg.status.processing)
    );
    sql.push_str(&routed(cfg, prefix));
    sql
}

/// ` and <prefix>job_type in (…)` when rows are routed by job type, else nothing.
fn routed(cfg: &TableConfig, prefix: &str) -> String {
    match (&cfg.job_type_column, &cfg.http.target) {
        (Some(column), Target::Routes(routes)) => format!(
            " and {prefix}{} in ({})",
            quote_ident(column),
            routed_types(routes)
        ),
        _ => String::new(),
    }
}

fn routed_types(routes: &std::collections::BTreeMap<String, String>) -> String {
    routes
        .keys()
        .map(|t| quote_literal(t))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The index that makes a table's pending query O(pending rows): its key,
/// restricted to the pending rows.
pub(super) fn pending_index_sql(cfg: &TableConfig) -> String {
    let mut name = format!("{}_reactor_pending", cfg.table);
    while name.len() > 63 {
        name.pop();
    }
    format!(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON {}.{} ({}) WHERE {}",
        quote_ident(&name),
        quote_ident(&cfg.schema),
        quote_ident(&cfg.table),
        quote_ident(&cfg.key),
        pending(cfg, "")
    )
}

impl TableSql {
    pub(super) fn new(cfg: &TableConfig) -> TableSql {
        let table = format!("{}.{}", quote_ident(&cfg.schema), quote_ident(&cfg.table));
        let key = quote_ident(&cfg.key);
        let by_key = format!("{key} = $1::text::{}", cfg.key_type.sql());
        let status = quote_ident(&cfg.status.column);
        let in_flight = format!(
            "{status} in ({}, {})",
            quote_literal(&cfg.status.pending),
            quote_literal(&cfg.status.processing)
        );
        let routed = routed(cfg, "t.");
        let job_type = cfg
            .job_type_column
            .as_deref()
            .map(|c| format!("t.{}::text", quote_ident(c)))
            .unwrap_or_else(|| "null::text".into());

        let mut sets = vec![format!(
            "{status} = {}",
            quote_literal(&cfg.status.succeeded)
        )];
        let mut n = 1;
        if let Some(c) = &cfg.result_column {
            n += 1;
            sets.push(format!(
                "{c} = coalesce(${n}::jsonb, {c})",
                c = quote_ident(c)
            ));
        }
        if let Some(c) = &cfg.url_column {
            n += 1;
            sets.push(format!(
                "{c} = coalesce(${n}::text, {c})",
                c = quote_ident(c)
            ));
        }
        let error = quote_ident(&cfg.error_column);
        let failed = quote_literal(&cfg.status.failed);
        let row = format!("to_jsonb(t)::text as body, {job_type} as job_type");

        TableSql {
            // A processing row (a reactor died mid-request) is not updated,
            // only read: the statement's snapshot holds it as it is.
            claim: format!(
                "with {held},
                 claimed as (
                   update {table} t set {status} = {}
                   where t.{by_key} and t.{status} = {}{routed} and exists (select from held)
                   returning {row}),
                 processing as (
                   select {row} from {table} t
                   where t.{by_key} and t.{in_flight}{routed} and exists (select from held)
                     and not exists (select from claimed))
                 select (select count(*) from held) > 0, r.body, r.job_type
                 from (select 1) one
                 left join (select * from claimed union all select * from processing) r on true",
                quote_literal(&cfg.status.processing),
                quote_literal(&cfg.status.pending),
                held = held_cte(2),
            ),
            succeed: format!(
                "with {held},
                 written as (
                   update {table} set {} where {by_key} and {in_flight} and exists (select from held)
                   returning 1),
                 released as (
                   delete from reactor.handler_state s using held h
                   where s.handler = h.handler and s.row_id = h.row_id)
                 select (select count(*) from held) > 0, (select count(*) from written)",
                sets.join(", "),
                held = held_cte(n + 1),
            ),
            count_failure: cfg.retry_column.as_ref().map(|c| {
                let c = quote_ident(c);
                format!("update {table} set {c} = coalesce({c}, 0) + 1 where {by_key}")
            }),
            give_up: format!(
                "with row_failed as (
                   update {table} set {status} = {failed}, {error} = $2::text
                   where {by_key} and {in_flight}
                 )
                 delete from reactor.handler_state
                 where handler = $3::text and row_id = $1::text and dead_at is not null"
            ),
            repair_dead: format!(
                "with dead as (
                   delete from reactor.handler_state
                   where handler = $1::text and dead_at is not null
                   returning row_id, last_error
                 )
                 update {table} t set {status} = {failed}, {error} = dead.last_error
                 from dead
                 where t.{key} = dead.row_id::{kt} and t.{in_flight}
                 returning t.{key}::text",
                kt = cfg.key_type.sql(),
            ),
            unrouted: match (&cfg.job_type_column, &cfg.http.target) {
                (Some(column), Target::Routes(routes)) => Some(format!(
                    "select t.{c}::text, count(*) from {table} t
                     where t.{in_flight} and (t.{c} is null or t.{c} not in ({}))
                     group by 1 order by 1",
                    routed_types(routes),
                    c = quote_ident(column),
                )),
                _ => None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::table_config::parse;
    use std::path::Path;

    fn table(extra: &str, http: &str) -> TableConfig {
        let text = format!(
            r#"[[table]]
               name = "public.Jobs"
               succeeded = "completed"
               failed = "failed"
               error_column = "error"
               {extra}
               [table.http]
               secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
               {http}"#
        );
        parse(&text, Path::new("t.toml"), None, 5)
            .unwrap()
            .remove(0)
    }

    #[test]
    fn names_are_quoted_exactly_as_written_and_values_are_literals() {
        let t = table("pending = \"it's new\"", "url = \"http://h/\"");
        let s = spec(&t, &t.handler_name());
        assert_eq!(s.table, "\"public\".\"Jobs\"");
        assert_eq!(s.notify_table, "Jobs");
        assert_eq!(s.pending, "t.\"status\" in ('it''s new', 'processing')");
        assert_eq!(s.statuses, Some(vec!["it's new".to_string()]));
    }

    #[test]
    fn with_a_job_type_column_only_routed_types_are_pending() {
        let t = table(
            "job_type_column = \"job_type\"",
            "routes = { b = \"http://h/b\", a = \"http://h/a\" }",
        );
        assert_eq!(
            pending(&t, "t."),
            "t.\"status\" in ('pending', 'processing') and t.\"job_type\" in ('a', 'b')"
        );
        let sql = TableSql::new(&t);
        assert!(
            sql.claim.contains("and t.\"job_type\" in ('a', 'b')"),
            "{}",
            sql.claim
        );
        assert!(sql.unrouted.unwrap().contains("not in ('a', 'b')"));
    }

    #[test]
    fn the_success_statement_numbers_only_configured_columns() {
        let t = table("url_column = \"image_url\"", "url = \"http://h/\"");
        let sql = TableSql::new(&t);
        assert!(
            sql.succeed.contains("\"image_url\" = coalesce($2::text"),
            "{}",
            sql.succeed
        );
        // The lease follows: $3 to $6.
        assert!(
            sql.succeed.contains("lease_token = $6::int8"),
            "{}",
            sql.succeed
        );
        assert!(!sql.succeed.contains("$7"), "{}", sql.succeed);
        assert!(sql.count_failure.is_none());
        let t = table(
            "url_column = \"u\"\nresult_column = \"r\"\nretry_column = \"n\"",
            "url = \"http://h/\"",
        );
        let sql = TableSql::new(&t);
        assert!(
            sql.succeed.contains("\"r\" = coalesce($2::jsonb"),
            "{}",
            sql.succeed
        );
        assert!(
            sql.succeed.contains("\"u\" = coalesce($3::text"),
            "{}",
            sql.succeed
        );
        assert!(sql
            .count_failure
            .unwrap()
            .contains("\"n\" = coalesce(\"n\", 0) + 1"));
    }
}
