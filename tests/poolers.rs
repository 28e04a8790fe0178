//! The reactor behind a real PgBouncer (Debian's, 1.18), in session and in
//! transaction mode, doing the whole pipeline: profile → favorites, a job with
//! the local provider → succeeded, its render, its debit.
//!
//! PgBouncer here keeps several idle server connections and hands them out in
//! turn (`server_round_robin`), as a busy production pooler does: in
//! transaction mode, consecutive statements of one client then really run on
//! different server connections, so nothing that lives on one (a named
//! prepared statement, a LISTEN) can pass by luck.
mod common;

use common::{eventually, wait_for_count, ChildReactor, PgBouncer, TestDb};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// The reactor binary, connected through `bouncer`, with its log in `storage`.
fn reactor_behind(
    bouncer: &PgBouncer,
    db: &TestDb,
    storage: &std::path::Path,
    extra: &[&str],
) -> ChildReactor {
    let through = TestDb {
        url: bouncer.url(db),
        name: db.name.clone(),
    };
    ChildReactor::spawn(&through, storage, extra)
}

/// Profile → favorites; a job → succeeded, one render with its images, one debit.
async fn whole_pipeline(db: &TestDb) {
    let client = db.client().await;
    let user = common::user_with_profile(&client).await;
    wait_for_count(
        &client,
        "favorites for the new profile",
        &format!(
            "select count(*) from collections where owner_id = '{user}' and is_default_favorites"
        ),
        1,
    )
    .await;
    let job = common::submit_job(db, user, "staging", "cozy")
        .await
        .unwrap();
    let succeeded =
        format!("select count(*) from generation_jobs where id = '{job}' and status = 'succeeded'");
    wait_for_count(&client, "the job succeeded", &succeeded, 1).await;
    let variants = format!(
        "select count(*) from render_variants v join renders r on r.id = v.render_id where r.job_id = '{job}'"
    );
    wait_for_count(&client, "its render with two images", &variants, 2).await;
    let debit = format!("select count(*) from usage_ledger where job_id = '{job}'");
    wait_for_count(&client, "its debit", &debit, 1).await;
}

#[tokio::test]
async fn session_mode_runs_the_whole_pipeline_with_listen() {
    let db = common::migrated_db().await;
    let bouncer = PgBouncer::start(&db, "session").await;
    let storage = tempfile::tempdir().unwrap();
    // Sweeps once an hour: after the start-up replay, only notifications drive the work.
    let mut reactor = reactor_behind(&bouncer, &db, storage.path(), &["--sweep-interval", "1h"]);
    eventually("the listener hears itself", LONG, || async {
        common::child_logs(storage.path()).contains("listening on channel reactor")
    })
    .await;
    whole_pipeline(&db).await;
    assert!(reactor.terminate().success());
    let log = common::child_logs(storage.path());
    assert!(!log.contains("pooler"), "{log}");
    assert!(!log.contains("prepared statement"), "{log}");
}

#[tokio::test]
async fn transaction_mode_with_listen_off_runs_the_whole_pipeline() {
    let db = common::migrated_db().await;
    let bouncer = PgBouncer::start(&db, "transaction").await;
    let storage = tempfile::tempdir().unwrap();
    let mut reactor = reactor_behind(&bouncer, &db, storage.path(), &["--listen", "false"]);
    whole_pipeline(&db).await;
    assert!(reactor.terminate().success());
    let log = common::child_logs(storage.path());
    assert!(!log.contains("prepared statement"), "{log}");
}

#[tokio::test]
async fn transaction_mode_with_listen_on_is_named_and_polling_does_the_work() {
    let db = common::migrated_db().await;
    let bouncer = PgBouncer::start(&db, "transaction").await;
    let storage = tempfile::tempdir().unwrap();
    // Sweeps once an hour: the work below gets done only if the reactor
    // notices that LISTEN is deaf here and polls instead.
    let mut reactor = reactor_behind(&bouncer, &db, storage.path(), &["--sweep-interval", "1h"]);
    eventually("the pooler is named in the log", LONG, || async {
        common::child_logs(storage.path()).contains("transaction-mode pooler")
    })
    .await;
    whole_pipeline(&db).await;
    assert!(
        reactor.child.try_wait().unwrap().is_none(),
        "still running: {}",
        common::child_logs(storage.path())
    );
    assert!(reactor.terminate().success());
    let log = common::child_logs(storage.path());
    assert!(log.contains("polling"), "{log}");
    assert!(!log.contains("prepared statement"), "{log}");
}

/// WAL mode streams on a replication connection, which PgBouncer cannot
/// carry: the reactor says what to change, and the sweeps do the work meanwhile.
#[tokio::test]
async fn wal_mode_behind_a_pooler_names_the_cause_and_sweeps_do_the_work() {
    let server =
        reactor::sandbox::cluster::LocalPostgres::start_with(&reactor::sandbox::cluster::Options {
            settings: vec![("wal_level".into(), "logical".into())],
            files: vec![],
        })
        .await
        .expect("a throwaway Postgres with wal_level = logical");
    let name = format!("reactor_pooled_wal_{}", uuid::Uuid::new_v4().simple());
    reactor::store::db::connect(&server.url("postgres"))
        .await
        .unwrap()
        .batch_execute(&format!("create database {name}"))
        .await
        .unwrap();
    let db = TestDb {
        url: server.url(&name),
        name,
    };
    let mut client = db.client().await;
    reactor::store::migrate::run(&mut client).await.unwrap();
    reactor::store::notify_mode::set(&client, reactor::store::notify_mode::Mode::Wal)
        .await
        .unwrap();
    let bouncer = PgBouncer::start(&db, "session").await;
    let storage = tempfile::tempdir().unwrap();
    let mut reactor = reactor_behind(&bouncer, &db, storage.path(), &[]);
    eventually("the cause is named in the log", LONG, || async {
        common::child_logs(storage.path()).contains("does not take replication connections")
    })
    .await;
    whole_pipeline(&db).await;
    assert!(reactor.terminate().success());
    assert!(
        common::child_logs(storage.path()).contains("direct connection"),
        "{}",
        common::child_logs(storage.path())
    );
}
