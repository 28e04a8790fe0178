//! Leases live only with their work (issue 11): no job is stranded by a short
//! database outage, the stuck rule holds from table state, and
//! reactor.handler_state keeps nothing once the work is done (but dead rows).
//! Outages are real: the test's database refuses connections and every open
//! one is terminated, then it is let back in.
mod common;

use common::fake_replicate::{
    deliver_webhook, signed_webhook, webhook_flags, CreateScript, FakeReplicate,
};
use common::{
    count, eventually, image_server, job_state, start_reactor_with, submit_job, wait_for_count,
    wait_status, TestDb,
};
use serde_json::json;
use std::time::Duration;
use tokio_postgres::Client;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);
const STATE_BUT_DEAD: &str = "select count(*) from reactor.handler_state where dead_at is null";

async fn start(db: &TestDb, storage: &std::path::Path, flags: &[String]) -> common::InProcess {
    let reactor = start_reactor_with(db, storage, flags).await;
    reactor.wait_ready().await;
    reactor
}

/// The database goes away: new connections are refused and open ones end.
async fn outage(admin: &Client, db: &TestDb) {
    admin
        .batch_execute(&format!(
            "alter database {} with allow_connections false",
            db.name
        ))
        .await
        .unwrap();
    admin
        .execute(
            "select pg_terminate_backend(pid) from pg_stat_activity
             where datname = $1 and pid <> pg_backend_pid()",
            &[&db.name],
        )
        .await
        .unwrap();
}

async fn back(admin: &Client, db: &TestDb) {
    admin
        .batch_execute(&format!(
            "alter database {} with allow_connections true",
            db.name
        ))
        .await
        .unwrap();
}

/// One render with its variant and one debit for the job, and no state left
/// for any handler (generation, renders, usage, favorites) but dead rows.
async fn done_once_and_no_state_left(client: &Client, id: Uuid) {
    let render = format!("select count(*) from renders where job_id = '{id}'");
    let variants = format!(
        "select count(*) from render_variants v join renders r on r.id = v.render_id where r.job_id = '{id}'"
    );
    let debit = format!("select count(*) from usage_ledger where job_id = '{id}'");
    eventually("render and debit", LONG, || async {
        count(client, &render).await == 1 && count(client, &debit).await == 1
    })
    .await;
    assert!(count(client, &variants).await >= 1, "variants stored");
    wait_for_count(client, "handler_state empty", STATE_BUT_DEAD, 0).await;
    assert_eq!(count(client, &render).await, 1);
    assert_eq!(count(client, &debit).await, 1);
    assert_eq!(
        count(client, "select count(*) from reactor.handler_state").await,
        0,
        "no dead rows either"
    );
}

/// Issue 11, defect 1: the create reached the provider, then the attempt's
/// outcome could not be recorded because the database was away. Before the
/// fix the heartbeat kept that attempt's lease alive forever.
#[tokio::test]
async fn an_outcome_write_failing_while_the_database_is_away_is_retried_once_it_is_back() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let (fake, images) = (FakeReplicate::start().await, image_server().await);
    // The create is received, then never answered: the attempt ends after the
    // 2 s provider timeout, while the database is away.
    fake.script(&[CreateScript::CreateThenHang]);
    let mut flags = fake.reactor_flags(&["--lease", "6s"]);
    flags.extend(webhook_flags("60s"));
    let reactor = start(&db, storage.path(), &flags).await;
    let admin = db.maintenance_client().await;
    let user = common::user_with_profile(&db.client().await).await;
    let id = submit_job(&db, user, "imagine", "a quiet study")
        .await
        .unwrap();
    eventually("create received", LONG, || async {
        fake.create_calls() == 1
    })
    .await;
    outage(&admin, &db).await;
    // Past the provider timeout: the attempt ended and recording it failed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    back(&admin, &db).await;

    let client = db.client().await;
    eventually("the created prediction adopted", LONG, || async {
        job_state(&client, id).await.1.is_some()
    })
    .await;
    let pid = fake.predictions()[0].id.clone();
    assert_eq!(
        job_state(&client, id).await.1.as_deref(),
        Some(pid.as_str())
    );
    fake.finish(
        &pid,
        "succeeded",
        json!([images.url("/ok/study.jpg")]),
        json!(null),
    );
    wait_status(&client, id, "succeeded").await;
    done_once_and_no_state_left(&client, id).await;
    assert_eq!(fake.create_calls(), 1, "the provider was paid once");
    reactor.stop().await;
}

/// Issue 11: the completion webhook arrives while the database is away and
/// is refused; the job is still finished, by polling once the grace is over,
/// and no state is left behind for the job.
#[tokio::test]
async fn a_webhook_refused_during_an_outage_is_made_up_for_by_polling_after_the_grace() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let (fake, images) = (FakeReplicate::start().await, image_server().await);
    let mut flags = fake.reactor_flags(&[]);
    flags.extend(webhook_flags("4s"));
    let reactor = start(&db, storage.path(), &flags).await;
    let admin = db.maintenance_client().await;
    let client = db.client().await;
    let user = common::user_with_profile(&client).await;
    let id = submit_job(&db, user, "imagine", "a quiet study")
        .await
        .unwrap();
    wait_status(&client, id, "processing").await;
    let prediction = fake.predictions()[0].clone();
    let hook = prediction.webhook.clone().expect("webhook registered");

    outage(&admin, &db).await;
    let done = fake.finish(
        &prediction.id,
        "succeeded",
        json!([images.url("/ok/hook.jpg")]),
        json!(null),
    );
    let at = chrono::Utc::now().timestamp();
    let (body, headers) = signed_webhook(&done.json(), "msg_outage", at);
    let status = deliver_webhook(&hook, body, &headers).await;
    assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::sleep(Duration::from_secs(1)).await;
    back(&admin, &db).await;

    // Nobody delivers the webhook again: polling finds the completion.
    let client = db.client().await;
    wait_status(&client, id, "succeeded").await;
    done_once_and_no_state_left(&client, id).await;
    assert_eq!(fake.create_calls(), 1);
    reactor.stop().await;
}

/// The reactor's instance id, read from the lease of a job whose create hangs.
async fn instance_holding_a_hung_job(db: &TestDb, fake: &FakeReplicate) -> (Uuid, Uuid, i64) {
    let client = db.client().await;
    let user = common::user_with_profile(&client).await;
    let id = submit_job(db, user, "imagine", "a quiet study")
        .await
        .unwrap();
    eventually("create received", LONG, || async {
        fake.create_calls() == 1
    })
    .await;
    let row = client
        .query_one(
            "select lease_owner, lease_token from reactor.handler_state
             where handler = 'generation' and row_id = $1",
            &[&id.to_string()],
        )
        .await
        .unwrap();
    (id, row.get(0), row.get(1))
}

#[tokio::test]
async fn the_heartbeat_renews_running_work_but_not_a_lease_whose_task_is_gone() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let fake = FakeReplicate::start().await;
    fake.script(&[CreateScript::CreateThenHang]);
    let reactor = start(
        &db,
        storage.path(),
        // The hung create stays in flight for the whole test.
        &fake.reactor_flags(&["--provider-timeout", "1h", "--lease", "2s"]),
    )
    .await;
    let (hung, owner, token) = instance_holding_a_hung_job(&db, &fake).await;
    // A lease this reactor holds in the table but no task of it works on
    // (as left by an attempt whose outcome could not be recorded).
    let orphan = Uuid::new_v4().to_string();
    let client = db.client().await;
    client
        .execute(
            "insert into reactor.handler_state (handler, row_id, lease_owner, lease_token, lease_expires_at)
             values ('generation', $1, $2, 1, now() + interval '2 seconds')",
            &[&orphan, &owner],
        )
        .await
        .unwrap();
    let orphan_state = format!(
        "select count(*) from reactor.handler_state where row_id = '{orphan}' and lease_expires_at > now()"
    );
    wait_for_count(&client, "the orphaned lease expired", &orphan_state, 0).await;
    // The hung attempt's lease is still this reactor's, never re-claimed.
    let row = client
        .query_one(
            "select lease_owner, lease_token, lease_expires_at > now() from reactor.handler_state
             where handler = 'generation' and row_id = $1",
            &[&hung.to_string()],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Uuid>(0), owner);
    assert_eq!(row.get::<_, i64>(1), token);
    assert!(
        row.get::<_, bool>(2),
        "a running attempt's lease is renewed"
    );
    assert_eq!(fake.create_calls(), 1);
    reactor.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), reactor.handle).await;
}

#[tokio::test]
async fn the_stuck_sweep_fails_an_in_flight_job_nobody_holds_a_claim_on() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let fake = FakeReplicate::start().await;
    let client = db.client().await;
    let user = common::user_with_profile(&client).await;
    let id = submit_job(&db, user, "imagine", "a quiet study")
        .await
        .unwrap();
    // In flight at the provider, and leased for an hour by a reactor that is
    // gone: no attempt will run for it, so no attempt can time it out.
    client
        .execute(
            "update generation_jobs set status = 'processing', prediction_id = 'pred-gone',
               submit_started_at = now() where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    client
        .execute(
            "insert into reactor.handler_state (handler, row_id, lease_owner, lease_token, lease_expires_at)
             values ('generation', $1, $2, 7, now() + interval '1 hour')",
            &[&id.to_string(), &Uuid::new_v4()],
        )
        .await
        .unwrap();
    let reactor = start(
        &db,
        storage.path(),
        &fake.reactor_flags(&["--stuck-after", "2s", "--late-window", "5s"]),
    )
    .await;
    wait_status(&client, id, "failed").await;
    assert_eq!(job_state(&client, id).await.2.as_deref(), Some("timed out"));
    assert_eq!(fake.create_calls(), 0);
    // Its prediction may still succeed within the late window: still in flight.
    let err = submit_job(&db, user, "imagine", "a quiet study")
        .await
        .expect_err("followed for a late success");
    assert_eq!(common::sqlstate(&err), "PT409");
    // Once the window has ended (even with the lease still held) the owner may
    // submit again.
    eventually(
        "a submission accepted after the late window",
        LONG,
        || async {
            submit_job(&db, user, "imagine", "a quiet study")
                .await
                .is_ok()
        },
    )
    .await;
    reactor.stop().await;
}

/// An older version left a state row behind for every job it ran. The sweep
/// removes them (in batches), keeping dead rows and rows still waiting.
#[tokio::test]
async fn state_left_behind_for_finished_rows_is_removed_and_dead_or_waiting_rows_stay() {
    const JOBS: i64 = 2500;
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let client = db.client().await;
    let user = common::user_with_profile(&client).await;
    client
        .execute(
            "insert into generation_jobs (owner_id, mode, prompt, status, completed_at)
             select $1, 'imagine', 'old ' || g, 'canceled', now() from generate_series(1, $2::int8) g",
            &[&user, &JOBS],
        )
        .await
        .unwrap();
    // Half postponed (as a webhook-finished job left it), half with a lease of a
    // reactor that is gone; one dead row.
    client
        .batch_execute(&format!(
            "insert into reactor.handler_state (handler, row_id, lease_owner, lease_token, lease_expires_at, next_attempt_at)
             select 'generation', id::text,
                    case when n % 2 = 0 then '{ghost}'::uuid end, n,
                    case when n % 2 = 0 then now() + interval '1 second' end,
                    case when n % 2 = 1 then now() + interval '5 minutes' end
             from (select id, row_number() over (order by id) as n from generation_jobs) j;
             update reactor.handler_state set dead_at = now(), attempts = 3, last_error = 'gave up'
             where row_id = (select min(row_id) from reactor.handler_state);",
            ghost = Uuid::new_v4()
        ))
        .await
        .unwrap();
    // A pending job waiting for its retry keeps its state.
    let waiting = submit_job(
        &db,
        common::user_with_profile(&client).await,
        "imagine",
        "a quiet study",
    )
    .await
    .unwrap();
    client
        .execute(
            "insert into reactor.handler_state (handler, row_id, attempts, last_error, next_attempt_at)
             values ('generation', $1, 1, 'provider unavailable', now() + interval '1 hour')",
            &[&waiting.to_string()],
        )
        .await
        .unwrap();
    assert_eq!(
        count(&client, "select count(*) from reactor.handler_state").await,
        JOBS + 1
    );

    let fake = FakeReplicate::start().await;
    let reactor = start(&db, storage.path(), &fake.reactor_flags(&[])).await;
    wait_for_count(
        &client,
        "left-behind state removed",
        "select count(*) from reactor.handler_state",
        2,
    )
    .await;
    assert_eq!(
        count(
            &client,
            "select count(*) from reactor.handler_state where dead_at is not null"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &client,
            &format!("select count(*) from reactor.handler_state where row_id = '{waiting}' and attempts = 1")
        )
        .await,
        1
    );
    assert_eq!(
        fake.create_calls(),
        0,
        "the waiting job is not retried early"
    );
    reactor.stop().await;
}

/// After renders (one retried, one dead), usage and favorites have done their
/// work, handler_state holds the dead row and nothing else.
#[tokio::test]
async fn after_the_work_is_done_only_dead_rows_stay_in_handler_state() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let images = image_server().await;
    let client = db.client().await;
    let owner = common::user_with_profile(&client).await;
    let retried = common::succeeded_job(&client, owner, &[images.url("/flaky/1/a.jpg")]).await;
    let dead = common::succeeded_job(&client, owner, &[images.url("/missing/b.jpg")]).await;
    let reactor = start(&db, storage.path(), &[]).await;
    let rendered = format!("select count(*) from renders where job_id = '{retried}'");
    wait_for_count(&client, "the retried job rendered", &rendered, 1).await;
    let dead_state = format!(
        "select count(*) from reactor.handler_state
         where handler = 'renders' and row_id = '{dead}' and dead_at is not null"
    );
    wait_for_count(&client, "the missing image's render dead", &dead_state, 1).await;
    // The dead render's job is not delivered, so it is not debited.
    eventually("one debit and the default collection", LONG, || async {
        count(&client, "select count(*) from usage_ledger").await == 1
            && count(
                &client,
                "select count(*) from collections where is_default_favorites",
            )
            .await
                == 1
    })
    .await;
    wait_for_count(
        &client,
        "only the dead row left",
        "select count(*) from reactor.handler_state",
        1,
    )
    .await;
    assert_eq!(count(&client, &dead_state).await, 1);
    assert_eq!(images.hits("/flaky/1/a.jpg"), 2, "one retry");
    reactor.stop().await;
}
