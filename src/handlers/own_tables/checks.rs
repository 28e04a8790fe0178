//! The periodic checks of own tables (every sweep interval): the table
//! matches REACTOR_CONFIG, it is watched, its pending query is served by an
//! index, rows whose job type has no route are reported, and a dead row whose
//! failure was not yet written to its table gets it.
use super::sql::pending_index_sql;
use super::TableHandler;
use crate::store::db::param;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What was checked once already, per table.
#[derive(Debug, Clone, Default)]
struct CheckState {
    watch_checked: bool,
    index_checked: bool,
}

/// Checks `tables` every `interval` until `shutdown`.
pub(super) async fn run(
    tables: Vec<Arc<TableHandler>>,
    pool: deadpool_postgres::Pool,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let mut state = vec![CheckState::default(); tables.len()];
    let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        for (table, state) in tables.iter().zip(state.iter_mut()) {
            if let Err(e) = table.check(&pool, state).await {
                tracing::warn!(table = %table.cfg.name, error = %e, "checking own table failed");
            }
        }
    }
}

impl TableHandler {
    async fn check(
        &self,
        pool: &deadpool_postgres::Pool,
        state: &mut CheckState,
    ) -> Result<(), String> {
        if let Err(e) = self.verify(pool).await {
            tracing::error!(table = %self.cfg.name, error = %e, "rows of this table are not worked until it matches REACTOR_CONFIG");
            return Ok(());
        }
        let mut client = pool.get().await.map_err(|e| e.to_string())?;
        let describe = |e: tokio_postgres::Error| crate::store::db::describe(&e);
        if !state.watch_checked {
            let watched: i64 = client
                .query_typed_one(
                    "select count(*) from pg_trigger
                     where tgrelid = $1::text::regclass
                       and tgname in ('reactor_watch_insert', 'reactor_watch_status')",
                    &[param(&self.spec.table)],
                )
                .await
                .map_err(describe)?
                .get(0);
            if watched < 2 {
                tracing::warn!(
                    table = %self.cfg.name,
                    "the table is not watched, so new rows wait for the next sweep; run: select reactor.watch_table('{}', '{}')",
                    self.cfg.name.replace('\'', "''"),
                    self.cfg.status.column.replace('\'', "''"),
                );
            }
            state.watch_checked = true;
        }
        if !state.index_checked {
            self.check_pending_index(&mut client).await?;
            state.index_checked = true;
        }
        if let Some(sql) = &self.sql.unrouted {
            for row in client.query_typed(sql, &[]).await.map_err(describe)? {
                let job_type: Option<String> = row.get(0);
                let rows: i64 = row.get(1);
                tracing::warn!(
                    table = %self.cfg.name,
                    job_type = %job_type.as_deref().unwrap_or("(null)"),
                    rows,
                    "job_type has no route in REACTOR_CONFIG (http.routes): these rows stay pending until one is added"
                );
            }
        }
        let repaired = client
            .query_typed(&self.sql.repair_dead, &[param(&self.name)])
            .await
            .map_err(describe)?;
        for row in repaired {
            let id: String = row.get(0);
            tracing::warn!(table = %self.cfg.name, %id, "a given-up row now has the failed value and its error");
        }
        Ok(())
    }

    /// Warns, with the statement that fixes it, when the pending query would
    /// read the whole table: sweeps and polls would then cost O(history).
    /// Asked of the planner with sequential scans disabled, so a small table
    /// (where a scan is the cheaper plan) gives the same answer as a big one.
    async fn check_pending_index(
        &self,
        client: &mut deadpool_postgres::Client,
    ) -> Result<(), String> {
        let describe = |e: tokio_postgres::Error| crate::store::db::describe(&e);
        // A transaction, so the setting ends with it (dropped: rolled back).
        let tx = client.transaction().await.map_err(describe)?;
        tx.batch_execute("set local enable_seqscan = off")
            .await
            .map_err(describe)?;
        let explain = format!(
            "explain (format json) select t.{} from {} t where {}",
            self.spec.key, self.spec.table, self.spec.pending
        );
        let plan: serde_json::Value = tx.query_one(&explain, &[]).await.map_err(describe)?.get(0);
        drop(tx);
        let partial: Vec<String> = client
            .query_typed(
                "select c.relname::text from pg_index i join pg_class c on c.oid = i.indexrelid
                 where i.indrelid = $1::text::regclass and i.indpred is not null",
                &[param(&self.spec.table)],
            )
            .await
            .map_err(describe)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if index_served(&plan[0]["Plan"], &self.cfg.table, &partial) {
            tracing::info!(table = %self.cfg.name, "the pending query is served by an index");
        } else {
            tracing::warn!(
                table = %self.cfg.name,
                "the pending query reads the whole table, so every sweep and poll costs as much as the table's history; run: {}",
                pending_index_sql(&self.cfg)
            );
        }
        Ok(())
    }
}

/// Whether every scan of `table` in an EXPLAIN (format json) plan node reads
/// an index range or a partial index (one of `partial`), not the whole table.
fn index_served(node: &serde_json::Value, table: &str, partial: &[String]) -> bool {
    let index_ok = |n: &serde_json::Value| {
        n.get("Index Cond").is_some()
            || n["Index Name"]
                .as_str()
                .is_some_and(|i| partial.iter().any(|p| p == i))
    };
    let children = node["Plans"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let this_ok = match node["Node Type"].as_str().unwrap_or("") {
        "Seq Scan" | "Tid Scan" | "Tid Range Scan" => node["Relation Name"] != table,
        "Index Scan" | "Index Only Scan" if node["Relation Name"] == table => index_ok(node),
        "Bitmap Index Scan" => index_ok(node),
        _ => true,
    };
    this_ok && children.iter().all(|c| index_served(c, table, partial))
}
