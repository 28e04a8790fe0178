//! The work path's hottest statements, prepared once per connection and kept
//! (`reactor::store::db::query_hot`): what is kept on the server, and that a
//! kept statement the session lost, or whose table changed shape, still
//! gives the right answer, also behind a real PgBouncer that moves each
//! statement to another server connection; and that a kept statement is
//! planned for its table as it is, not as it was when first run; and that a
//! claim reads its candidates, not the table, whatever the table's
//! statistics say.
mod common;

use common::{PgBouncer, TestDb};
use reactor::job::handler::{KeyType, Spec};
use reactor::store::db::{param, pool, query_hot};
use reactor::store::pending::{claim_sql, LimitColumns};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(30);

/// The statement the tests run: a lookup by a typed parameter.
const LOOKUP: &str = "select n, label from public.kept where n = $1::int8";

/// A test database with the table the statements read.
async fn db_with_table() -> TestDb {
    let db = common::migrated_db().await;
    db.client()
        .await
        .batch_execute(
            "create table public.kept (n int8 primary key, label text not null);
             insert into public.kept select g, 'row ' || g from generate_series(1, 10) g",
        )
        .await
        .unwrap();
    db
}

/// A pool of one connection to `url`, and that connection.
async fn one_connection(url: &str) -> (deadpool_postgres::Pool, deadpool_postgres::Object) {
    let pool = pool(url, 1, DEADLINE).unwrap();
    let client = pool.get().await.unwrap();
    (pool, client)
}

/// Runs [`LOOKUP`] for `n`; returns the label.
async fn lookup(client: &deadpool_postgres::ClientWrapper, prepare: bool, n: i64) -> String {
    let rows = query_hot(client, prepare, LOOKUP, &[param(&n)])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    rows[0].get("label")
}

/// The statements prepared on `client`'s own server session.
async fn kept_here(client: &deadpool_postgres::ClientWrapper) -> Vec<String> {
    client
        .query_typed("select statement from pg_prepared_statements", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn a_hot_statement_is_prepared_once_per_connection_and_only_when_asked() {
    let db = db_with_table().await;
    let (_pool, client) = one_connection(&db.url).await;

    assert_eq!(lookup(&client, false, 3).await, "row 3");
    assert!(kept_here(&client).await.is_empty(), "unnamed: nothing kept");

    for n in 1..=5 {
        assert_eq!(lookup(&client, true, n).await, format!("row {n}"));
    }
    assert_eq!(kept_here(&client).await, vec![LOOKUP.to_string()]);
    assert_eq!(client.statement_cache.size(), 1);
}

/// The session's `plan_cache_mode`.
async fn plan_cache_mode(client: &deadpool_postgres::ClientWrapper) -> String {
    client
        .query_one("show plan_cache_mode", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_kept_statement_the_session_lost_runs_unnamed_then_is_prepared_again() {
    // What an operator's DEALLOCATE does, and a pooler's reset (DISCARD
    // ALL), which also resets the session's settings.
    for reset in ["deallocate all", "discard all"] {
        let db = db_with_table().await;
        let (_pool, client) = one_connection(&db.url).await;
        let other = "select count(*) from public.kept where n <= $1::int8";
        let n = 3i64;
        query_hot(&client, true, other, &[param(&n)]).await.unwrap();
        assert_eq!(lookup(&client, true, 1).await, "row 1");

        client.batch_execute(reset).await.unwrap();
        assert!(kept_here(&client).await.is_empty());
        assert_eq!(lookup(&client, true, 2).await, "row 2", "{reset}");
        assert_eq!(lookup(&client, true, 4).await, "row 4", "{reset}");
        assert_eq!(kept_here(&client).await, vec![LOOKUP.to_string()]);
        assert_eq!(
            plan_cache_mode(&client).await,
            "force_custom_plan",
            "kept statements after {reset} are planned on every run again"
        );
    }
}

#[tokio::test]
async fn a_kept_statement_whose_table_changed_shape_answers_with_the_new_shape() {
    let db = db_with_table().await;
    let (_pool, client) = one_connection(&db.url).await;
    let every_column = "select * from public.kept where n = $1::int8";
    let n = 1i64;
    let before = query_hot(&client, true, every_column, &[param(&n)])
        .await
        .unwrap();
    assert_eq!(before[0].len(), 2);

    // The server refuses the kept statement ("cached plan must not change
    // result type"): it is forgotten and the statement runs anew.
    db.client()
        .await
        .batch_execute("alter table public.kept add column added text default 'new'")
        .await
        .unwrap();
    for _ in 0..2 {
        let after = query_hot(&client, true, every_column, &[param(&n)])
            .await
            .unwrap();
        assert_eq!(after[0].len(), 3);
        assert_eq!(after[0].get::<_, String>("added"), "new");
    }
}

/// A claim's shape: the rows among some keys, joined by key.
const BY_KEYS: &str = "select count(*) from unnest($1::text[]) k(id) \
                       join public.grows t on t.n = k.id::int8";

// PostgreSQL switches a prepared statement to one generic plan after five
// runs when that looks no dearer, and keeps it until the table is analyzed
// again: in the benchmark, a claim's plan made while its table was nearly
// empty scanned the whole table on every claim for a minute as a backlog
// arrived. A kept statement is planned on every run instead.
#[tokio::test]
async fn a_kept_statement_is_planned_on_every_run_never_with_a_generic_plan() {
    let db = common::migrated_db().await;
    let (_pool, client) = one_connection(&db.url).await;
    client
        .batch_execute(
            "create table public.grows (n int8 primary key) with (autovacuum_enabled = off)",
        )
        .await
        .unwrap();
    let keys = vec!["1".to_string(), "2".to_string()];
    for _ in 0..10 {
        query_hot(&client, true, BY_KEYS, &[param(&keys)])
            .await
            .unwrap();
    }
    // A backlog arrives; no ANALYZE has run since.
    client
        .batch_execute("insert into public.grows select g from generate_series(1, 100000) g")
        .await
        .unwrap();
    let rows = query_hot(&client, true, BY_KEYS, &[param(&keys)])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 2);

    assert_eq!(plan_cache_mode(&client).await, "force_custom_plan");
    let plans = client
        .query_one(
            "select generic_plans, custom_plans from pg_prepared_statements where statement = $1",
            &[&BY_KEYS],
        )
        .await
        .unwrap();
    assert_eq!(
        (plans.get::<_, i64>(0), plans.get::<_, i64>(1)),
        (0, 11),
        "(generic plans, custom plans) of the kept statement"
    );
}

/// The engine keeps statements only once its listener proved that every
/// connection keeps its session. Should a transaction-mode pooler pass that
/// proof by luck, each statement still answers right: PgBouncer here runs
/// the Bind on another server connection than the Parse.
#[tokio::test]
async fn behind_a_transaction_mode_pooler_a_hot_statement_still_answers_right() {
    let db = db_with_table().await;
    let bouncer = PgBouncer::start(&db, "transaction").await;
    let (_pool, client) = one_connection(&bouncer.url(&db)).await;
    for n in 1..=10 {
        assert_eq!(lookup(&client, true, n).await, format!("row {n}"));
    }
}

// Multi-threaded: PgBouncer's shutdown (when `bouncer` is dropped) waits
// for its session-mode client to disconnect, which another thread does.
#[tokio::test(flavor = "multi_thread")]
async fn behind_a_session_mode_pooler_a_hot_statement_is_kept() {
    let db = db_with_table().await;
    let bouncer = PgBouncer::start(&db, "session").await;
    let (pool, client) = one_connection(&bouncer.url(&db)).await;
    for n in 1..=10 {
        assert_eq!(lookup(&client, true, n).await, format!("row {n}"));
    }
    assert_eq!(kept_here(&client).await, vec![LOOKUP.to_string()]);
    drop(client);
    pool.close();
}

/// Rows of `table` that the scans in an EXPLAIN (analyze, format json) plan
/// node read: those they returned and those their filters removed, over all
/// their loops.
fn rows_read(node: &serde_json::Value, table: &str) -> f64 {
    let own = if node["Relation Name"] == table {
        let loops = node["Actual Loops"].as_f64().unwrap_or(0.0);
        let per_loop = node["Actual Rows"].as_f64().unwrap_or(0.0)
            + node["Rows Removed by Filter"].as_f64().unwrap_or(0.0);
        per_loop * loops
    } else {
        0.0
    };
    let children = node["Plans"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    own + children.iter().map(|c| rows_read(c, table)).sum::<f64>()
}

/// A job table's usual state before a burst: analyzed while every row was
/// done, so its statistics say nothing is pending; then 20,000 rows arrive
/// and autovacuum has not analyzed it again. A claim of six candidates must
/// read at most six rows, not the whole pending index (which is what a plain
/// join was planned as: a hash of every pending row).
#[tokio::test]
async fn a_claim_probes_its_candidates_when_the_statistics_say_nothing_is_pending() {
    let db = common::migrated_db().await;
    let client = db.client().await;
    client
        .batch_execute(
            "create table public.burst (id bigserial primary key, status text not null)
               with (autovacuum_enabled = false);
             create index burst_pending on public.burst (id) where status in ('pending', 'processing');
             insert into public.burst (status) select 'done' from generate_series(1, 20000);
             analyze public.burst;
             insert into public.burst (status) select 'pending' from generate_series(1, 20000);",
        )
        .await
        .unwrap();
    let spec = Spec {
        name: "http:public.burst".into(),
        table: "public.burst".into(),
        notify_table: "burst".into(),
        key: "id".into(),
        key_type: KeyType::Bigint,
        pending: "t.status in ('pending', 'processing')".into(),
        statuses: None,
    };
    let claim = claim_sql(&spec, LimitColumns::default());
    // Three pending rows, a done one, one that does not exist, a repeat.
    let ids: Vec<String> = ["40000", "25000", "20001", "7", "99999", "25000"]
        .map(String::from)
        .to_vec();
    let owner = uuid::Uuid::new_v4();
    let lease_secs = 30.0f64;
    let plan: serde_json::Value = client
        .query_typed(
            &format!("explain (analyze, format json) {claim}"),
            &[param(&ids), param(&owner), param(&lease_secs)],
        )
        .await
        .unwrap()[0]
        .get(0);
    let read = rows_read(&plan[0]["Plan"], "burst");
    assert!(
        read <= 6.0,
        "the claim read {read} rows of the table for 6 candidates; plan: {plan:#}"
    );
    let mut claimed: Vec<String> = client
        .query(
            "select row_id from reactor.handler_state where handler = $1 and lease_owner = $2",
            &[&spec.name, &owner],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    claimed.sort();
    assert_eq!(claimed, ["20001", "25000", "40000"]);
}
