//! The reactor core (issue 3): notifications, replay, reconnects, several
//! reactors, crashes, retries, dead rows, downloads and shutdown.
mod common;

use common::{
    count, eventually, image_server, start_reactor, succeeded_job, user_with_profile,
    wait_for_count, ChildReactor,
};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

async fn exactly_one_favorites_each(client: &tokio_postgres::Client, profiles: i64) {
    assert_eq!(
        count(
            client,
            "select count(*) from collections where is_default_favorites"
        )
        .await,
        profiles
    );
    assert_eq!(
        count(client, "select count(*) from (select owner_id from collections where is_default_favorites group by owner_id having count(*) > 1) d").await,
        0
    );
    assert_eq!(
        count(client, "select count(*) from profiles p where not exists (select 1 from collections c where c.owner_id = p.id and c.name = 'My Favorites' and c.is_default_favorites)").await,
        0
    );
}

async fn exactly_one_debit_and_render_each(
    client: &tokio_postgres::Client,
    jobs: i64,
    variants_per_job: i64,
) {
    assert_eq!(
        count(
            client,
            "select count(*) from usage_ledger where kind = 'generation_debit'"
        )
        .await,
        jobs
    );
    assert_eq!(
        count(client, "select count(*) from usage_ledger u join generation_jobs j on j.id = u.job_id where u.amount = 1 and u.owner_id = j.owner_id and u.meta->>'jobId' = j.id::text").await,
        jobs
    );
    assert_eq!(count(client, "select count(*) from renders").await, jobs);
    assert_eq!(
        count(client, "select count(distinct job_id) from renders").await,
        jobs
    );
    assert_eq!(
        count(client, "select count(*) from render_variants").await,
        jobs * variants_per_job
    );
}

async fn wait_until(client: &tokio_postgres::Client, what: &str, sql: &str, expected: i64) {
    eventually(what, LONG, || async {
        count(client, sql).await >= expected
    })
    .await;
}

#[tokio::test]
async fn a_profile_insert_gets_its_favorites_collection_through_the_notification() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    // A sweep far away: only the notification can make this happen in time.
    let reactor = start_reactor(&db, storage.path(), &["--sweep-interval", "1h"]).await;
    reactor.wait_ready().await;

    let client = db.client().await;
    let user = user_with_profile(&client).await;
    eventually("favorites collection", Duration::from_secs(10), || async {
        common::favorites_of(&client, user).await == 1
    })
    .await;
    let name: String = client
        .query_one("select name from collections where owner_id = $1", &[&user])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "My Favorites");
    reactor.stop().await;
}

#[tokio::test]
async fn rows_written_while_the_reactor_is_down_are_replayed_exactly_once() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let images = image_server().await;
    let client = db.client().await;
    client
        .batch_execute(
            "insert into auth.users (id) select gen_random_uuid() from generate_series(1, 500);
             insert into profiles (id) select id from auth.users;",
        )
        .await
        .unwrap();
    let owner = common::auth_user(&client).await;
    for i in 0..200 {
        succeeded_job(
            &client,
            owner,
            &[
                images.url(&format!("/ok/{i}-a.jpg")),
                images.url(&format!("/png/{i}-b.png")),
            ],
        )
        .await;
    }

    let reactor = start_reactor(&db, storage.path(), &["--sweep-interval", "1h"]).await;
    wait_until(
        &client,
        "500 favorites",
        "select count(*) from collections",
        500,
    )
    .await;
    wait_until(&client, "200 renders", "select count(*) from renders", 200).await;
    wait_until(
        &client,
        "200 debits",
        "select count(*) from usage_ledger",
        200,
    )
    .await;
    eventually("replay reported", LONG, || async { reactor.status.ready() }).await;
    reactor.stop().await;

    exactly_one_favorites_each(&client, 500).await;
    exactly_one_debit_and_render_each(&client, 200, 2).await;
    // Every variant's image is on disk where its row says, with the content type's extension.
    let paths = common::texts(
        &client,
        "select image_path from render_variants order by image_path",
        &[],
    )
    .await;
    assert_eq!(paths.iter().filter(|p| p.ends_with("/0.jpg")).count(), 200);
    assert_eq!(paths.iter().filter(|p| p.ends_with("/1.png")).count(), 200);
    for path in &paths {
        assert!(path.starts_with("renders/"), "{path}");
        let file = storage.path().join("public").join(path);
        assert!(file.is_file(), "missing {}", file.display());
    }
    assert_eq!(
        count(&client, "select count(*) from reactor.handler_state").await,
        0,
        "no state left behind"
    );
}

#[tokio::test]
async fn a_killed_listener_reconnects_and_catches_up_on_what_it_missed() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let reactor = start_reactor(&db, storage.path(), &["--sweep-interval", "1h"]).await;
    reactor.wait_ready().await;

    let client = db.client().await;
    let writer = {
        let db_url = db.url.clone();
        tokio::spawn(async move {
            let client = reactor::store::db::connect(&db_url).await.unwrap();
            for _ in 0..60 {
                user_with_profile(&client).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed = count(
            &client,
            "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity
             where datname = current_database() and application_name = 'reactor listener') k",
        )
        .await;
        assert_eq!(killed, 1, "exactly one listener connection to kill");
    }
    writer.await.unwrap();
    wait_until(
        &client,
        "60 favorites",
        "select count(*) from collections",
        60,
    )
    .await;
    exactly_one_favorites_each(&client, 60).await;
    eventually("listener back", LONG, || async { reactor.status.ready() }).await;
    reactor.stop().await;
}

#[tokio::test]
async fn three_reactor_processes_on_1000_rows_do_every_effect_exactly_once() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let images = image_server().await;
    let client = db.client().await;
    // Half the work waits before the reactors start, half arrives while they run.
    client
        .batch_execute(
            "insert into auth.users (id) select gen_random_uuid() from generate_series(1, 1000);
             insert into profiles (id) select id from auth.users order by id limit 500;",
        )
        .await
        .unwrap();
    let owner = common::auth_user(&client).await;
    for i in 0..50 {
        succeeded_job(&client, owner, &[images.url(&format!("/ok/early-{i}"))]).await;
    }
    let _reactors: Vec<ChildReactor> = (0..3)
        .map(|_| {
            ChildReactor::spawn(
                &db,
                storage.path(),
                &["--concurrency", "4", "--batch-size", "50"],
            )
        })
        .collect();
    client
        .batch_execute("insert into profiles (id) select id from auth.users u where not exists (select 1 from profiles p where p.id = u.id)")
        .await
        .unwrap();
    for i in 0..50 {
        succeeded_job(&client, owner, &[images.url(&format!("/ok/late-{i}"))]).await;
    }
    wait_until(
        &client,
        "1001 favorites",
        "select count(*) from collections",
        1001,
    )
    .await;
    wait_until(&client, "100 renders", "select count(*) from renders", 100).await;
    wait_until(
        &client,
        "100 debits",
        "select count(*) from usage_ledger",
        100,
    )
    .await;
    // Give duplicates (if there were any) a chance to show up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // 1000 users plus the jobs' owner, all with profiles.
    exactly_one_favorites_each(&client, 1001).await;
    exactly_one_debit_and_render_each(&client, 100, 1).await;
}

#[tokio::test]
async fn kill_9_in_the_middle_of_work_then_restart_loses_nothing_and_doubles_nothing() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let images = image_server().await;
    let client = db.client().await;
    let owner = common::auth_user(&client).await;
    for i in 0..40 {
        succeeded_job(
            &client,
            owner,
            &[
                images.url(&format!("/delay/150/{i}-a")),
                images.url(&format!("/delay/150/{i}-b")),
            ],
        )
        .await;
    }
    let mut first = ChildReactor::spawn(&db, storage.path(), &["--concurrency", "4"]);
    wait_until(&client, "some renders", "select count(*) from renders", 5).await;
    first.kill9();
    let done_before_restart = count(&client, "select count(*) from renders").await;
    assert!(
        done_before_restart < 40,
        "the kill landed after all work was done; slow the work down"
    );
    let leased = count(
        &client,
        "select count(*) from reactor.handler_state where lease_owner is not null",
    )
    .await;
    assert!(
        leased > 0,
        "the killed reactor left leases behind (the case under test)"
    );

    let _second = ChildReactor::spawn(&db, storage.path(), &["--concurrency", "8"]);
    wait_until(&client, "40 renders", "select count(*) from renders", 40).await;
    wait_until(
        &client,
        "40 debits",
        "select count(*) from usage_ledger",
        40,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    exactly_one_debit_and_render_each(&client, 40, 2).await;
    assert_eq!(
        count(&client, "select count(*) from (select render_id, idx from render_variants group by 1, 2 having count(*) > 1) d").await,
        0
    );
}

#[tokio::test]
async fn a_download_failing_twice_then_succeeding_is_retried_to_a_render() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let images = image_server().await;
    let client = db.client().await;
    let owner = common::auth_user(&client).await;
    let job = succeeded_job(&client, owner, &[images.url("/flaky/2/x.jpg")]).await;
    let reactor = start_reactor(&db, storage.path(), &["--max-attempts", "5"]).await;
    wait_until(
        &client,
        "render after retries",
        "select count(*) from renders",
        1,
    )
    .await;
    assert_eq!(
        images.hits("/flaky/2/x.jpg"),
        3,
        "two failures, then the success"
    );
    assert_eq!(count(&client, &format!("select count(*) from render_variants v join renders r on r.id = v.render_id where r.job_id = '{job}'")).await, 1);
    wait_for_count(
        &client,
        "state cleared",
        "select count(*) from reactor.handler_state",
        0,
    )
    .await;
    reactor.stop().await;
}

/// Makes inserting the default collection fail for `owner`: for the first
/// `times` attempts (counted by a sequence, which a rollback does not undo),
/// or always when `times` is null.
async fn inject_favorites_failure(
    client: &tokio_postgres::Client,
    owner: uuid::Uuid,
    times: Option<i64>,
) {
    client
        .batch_execute(&format!(
            "create sequence injected_failures;
             create function inject_failure() returns trigger language plpgsql as $$
             begin
               if new.owner_id = '{owner}' and ({limit} is null or nextval('injected_failures') <= {limit}) then
                 raise exception 'injected failure for %', new.owner_id;
               end if;
               return new;
             end $$;
             create trigger inject_failure before insert on collections
               for each row execute function inject_failure();",
            limit = times.map(|t| t.to_string()).unwrap_or_else(|| "null".into()),
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_sql_handler_failing_twice_then_succeeding_is_retried_without_blocking_others() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let client = db.client().await;
    let flaky = common::auth_user(&client).await;
    inject_favorites_failure(&client, flaky, Some(2)).await;
    let reactor = start_reactor(&db, storage.path(), &["--max-attempts", "5"]).await;
    reactor.wait_ready().await;
    client
        .execute("insert into profiles (id) values ($1)", &[&flaky])
        .await
        .unwrap();
    let others: Vec<uuid::Uuid> = {
        let mut v = Vec::new();
        for _ in 0..5 {
            v.push(user_with_profile(&client).await);
        }
        v
    };
    wait_until(
        &client,
        "all six collections",
        "select count(*) from collections",
        6,
    )
    .await;
    let attempts: i64 = count(&client, "select nextval('injected_failures')").await;
    assert_eq!(
        attempts, 4,
        "two injected failures, then one success (nextval above is the 4th call)"
    );
    assert_eq!(others.len(), 5);
    wait_for_count(
        &client,
        "state cleared",
        "select count(*) from reactor.handler_state",
        0,
    )
    .await;
    reactor.stop().await;
}

#[tokio::test]
async fn a_row_failing_forever_ends_dead_with_its_error_and_is_not_retried() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let client = db.client().await;
    let doomed = common::auth_user(&client).await;
    inject_favorites_failure(&client, doomed, None).await;
    client
        .execute("insert into profiles (id) values ($1)", &[&doomed])
        .await
        .unwrap();
    let fine = user_with_profile(&client).await;
    let reactor = start_reactor(&db, storage.path(), &["--max-attempts", "3"]).await;
    wait_for_count(
        &client,
        "dead row",
        "select count(*) from reactor.handler_state where dead_at is not null",
        1,
    )
    .await;
    let row = client
        .query_one(
            "select handler, row_id, attempts, last_error from reactor.handler_state",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "favorites");
    assert_eq!(row.get::<_, String>(1), doomed.to_string());
    assert_eq!(row.get::<_, i32>(2), 3);
    assert!(
        row.get::<_, String>(3).contains("injected failure"),
        "last error recorded"
    );
    assert_eq!(
        count(
            &client,
            &format!("select count(*) from collections where owner_id = '{fine}'")
        )
        .await,
        1
    );
    // Sweeps keep running (1s): a dead row is not attempted again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        count(
            &client,
            "select attempts::bigint from reactor.handler_state"
        )
        .await,
        3
    );
    assert_eq!(
        count(
            &client,
            &format!("select count(*) from collections where owner_id = '{doomed}'")
        )
        .await,
        0
    );

    // Retrying a dead row (the manual's recipe, docs/src/operations.md) brings it back.
    client
        .batch_execute("drop trigger inject_failure on collections")
        .await
        .unwrap();
    client
        .execute(
            "select reactor.retry('favorites', $1)",
            &[&doomed.to_string()],
        )
        .await
        .unwrap();
    wait_until(
        &client,
        "retried row handled",
        &format!("select count(*) from collections where owner_id = '{doomed}'"),
        1,
    )
    .await;
    reactor.stop().await;
}

async fn dead_render_error(client: &tokio_postgres::Client) -> (i32, String) {
    wait_for_count(client, "dead render", "select count(*) from reactor.handler_state where handler = 'renders' and dead_at is not null", 1).await;
    let row = client
        .query_one(
            "select attempts, last_error from reactor.handler_state where handler = 'renders'",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

#[tokio::test]
async fn a_gone_output_image_ends_the_render_fails_the_job_saying_why_and_debits_nothing() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let images = image_server().await;
    let client = db.client().await;
    let owner = common::user_on_plan(&client, 1).await;
    let job = succeeded_job(
        &client,
        owner,
        &[
            images.url("/ok/first.jpg"),
            images.url("/missing/second.jpg"),
        ],
    )
    .await;
    // Succeeded, not yet delivered: a pending debit, so the plan of 1 is full.
    let err = common::submit_job(&db, owner, "imagine", "another")
        .await
        .expect_err("the pending debit counts");
    assert_eq!(common::sqlstate(&err), "PT402");
    let reactor = start_reactor(&db, storage.path(), &[]).await;
    let (attempts, error) = dead_render_error(&client).await;
    assert_eq!(attempts, 1, "a 404 is not retried");
    assert!(error.contains("gone") && error.contains("404"), "{error}");
    let shown = common::wait_status(&client, job, "failed").await.unwrap();
    assert!(
        shown.contains("could not be stored")
            && shown.contains("not charged")
            && shown.contains("gone"),
        "{shown}"
    );
    assert!(
        !shown.contains("http://"),
        "no URL in the owner's error: {shown}"
    );
    assert_eq!(count(&client, "select count(*) from renders").await, 0);
    assert_eq!(
        count(&client, "select count(*) from render_variants").await,
        0
    );
    // Never delivered, never debited: the owner may use the generation.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(count(&client, "select count(*) from usage_ledger").await, 0);
    common::submit_job(&db, owner, "imagine", "another")
        .await
        .expect("nothing was used");
    reactor.stop().await;
}

#[tokio::test]
async fn a_non_image_output_ends_the_render_at_once() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let images = image_server().await;
    let client = db.client().await;
    let owner = common::auth_user(&client).await;
    succeeded_job(&client, owner, &[images.url("/html/page")]).await;
    let reactor = start_reactor(&db, storage.path(), &["--max-attempts", "3"]).await;
    let (attempts, error) = dead_render_error(&client).await;
    assert_eq!(
        attempts, 1,
        "a body that is not an image does not get better"
    );
    assert!(
        error.contains("not an image") && error.contains("text/html"),
        "{error}"
    );
    assert_eq!(images.hits("/html/page"), 1);
    assert_eq!(count(&client, "select count(*) from renders").await, 0);
    reactor.stop().await;
}

#[tokio::test]
async fn an_oversized_output_fails_with_the_limit_named() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let images = image_server().await;
    let client = db.client().await;
    let owner = common::auth_user(&client).await;
    succeeded_job(&client, owner, &[images.url("/big/huge.jpg")]).await;
    let reactor = start_reactor(
        &db,
        storage.path(),
        &["--max-attempts", "1", "--max-image-bytes", "1048576"],
    )
    .await;
    let (_, error) = dead_render_error(&client).await;
    assert!(error.contains("REACTOR_MAX_IMAGE_BYTES"), "{error}");
    assert_eq!(count(&client, "select count(*) from renders").await, 0);
    reactor.stop().await;
}

/// A timeout is an outage: retried past the attempt limit until the render's
/// budget (REACTOR_RENDER_RETRY_FOR after the job completed) is spent.
#[tokio::test]
async fn a_slow_image_server_times_out_the_attempt_and_it_is_retried_for_the_renders_budget() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let images = image_server().await;
    let client = db.client().await;
    let owner = common::auth_user(&client).await;
    succeeded_job(&client, owner, &[images.url("/slow/x.jpg")]).await;
    let reactor = start_reactor(
        &db,
        storage.path(),
        &[
            "--max-attempts",
            "1",
            "--download-timeout",
            "500ms",
            "--retry-backoff",
            "200ms",
            "--render-retry-for",
            "4s",
        ],
    )
    .await;
    let (attempts, error) = dead_render_error(&client).await;
    assert!(attempts >= 3, "{attempts} attempts");
    assert!(error.contains("timed out"), "{error}");
    assert_eq!(images.hits("/slow/x.jpg"), attempts as u32);
    reactor.stop().await;
}

#[tokio::test]
async fn malformed_and_foreign_payloads_are_ignored_and_later_work_still_happens() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let reactor = start_reactor(&db, storage.path(), &["--sweep-interval", "1h"]).await;
    reactor.wait_ready().await;
    let client = db.client().await;
    for payload in [
        "garbage",
        "{}",
        r#"{"table":"profiles","op":"INSERT","id":"not-a-uuid"}"#,
        r#"{"table":"profiles","op":"DROP","id":"00000000-0000-0000-0000-000000000000"}"#,
        r#"{"table":"unknown_table","op":"INSERT","id":"00000000-0000-0000-0000-000000000000"}"#,
        r#"{"reactor_ping":"someone-else:1"}"#,
    ] {
        client
            .execute("select pg_notify('reactor', $1)", &[&payload])
            .await
            .unwrap();
    }
    let user = user_with_profile(&client).await;
    wait_until(
        &client,
        "favorites after garbage",
        &format!("select count(*) from collections where owner_id = '{user}'"),
        1,
    )
    .await;
    assert!(
        !reactor.handle.is_finished(),
        "the reactor is still running"
    );
    reactor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_work_releases_leases_and_exits_zero() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let images = image_server().await;
    let client = db.client().await;
    let owner = common::auth_user(&client).await;
    succeeded_job(&client, owner, &[images.url("/delay/1500/a.jpg")]).await;
    let mut reactor = ChildReactor::spawn(&db, storage.path(), &[]);
    eventually("download started", LONG, || async {
        images.hits("/delay/1500/a.jpg") == 1
    })
    .await;
    // terminate() blocks this thread: the image server runs on the other one.
    let status = reactor.terminate();
    assert!(status.success(), "exit status {status}");
    assert_eq!(
        count(&client, "select count(*) from renders").await,
        1,
        "in-flight render finished before exit"
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from reactor.handler_state where lease_owner is not null"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_render_its_owner_deleted_is_not_created_again() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let images = image_server().await;
    let mut client = db.client().await;
    let owner = user_with_profile(&client).await;
    let job = succeeded_job(&client, owner, &[images.url("/ok/keep.jpg")]).await;
    let reactor = start_reactor(&db, storage.path(), &[]).await;
    wait_until(&client, "render", "select count(*) from renders", 1).await;
    common::as_user(
        &mut client,
        owner,
        &format!("delete from renders where job_id = '{job}'"),
    )
    .await
    .unwrap();
    assert_eq!(
        count(&client, "select count(*) from render_variants").await,
        0,
        "variants cascade"
    );
    // Several sweeps (1s in tests) pass; the job stays rendered, with no render.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(count(&client, "select count(*) from renders").await, 0);
    assert_eq!(images.hits("/ok/keep.jpg"), 1, "not downloaded again");
    reactor.stop().await;
}

#[tokio::test]
async fn failed_and_canceled_jobs_are_never_debited_or_rendered() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let client = db.client().await;
    let owner = common::auth_user(&client).await;
    client
        .batch_execute(&format!(
            "insert into generation_jobs (owner_id, mode, prompt, status, error) values
               ('{owner}', 'imagine', 'x', 'failed', 'provider said no'),
               ('{owner}', 'imagine', 'x', 'canceled', null)"
        ))
        .await
        .unwrap();
    let reactor = start_reactor(&db, storage.path(), &[]).await;
    eventually("replayed", LONG, || async { reactor.status.ready() }).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&client, "select count(*) from usage_ledger").await, 0);
    assert_eq!(count(&client, "select count(*) from renders").await, 0);
    reactor.stop().await;
}

#[tokio::test]
async fn poll_only_mode_works_without_listen() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let reactor = start_reactor(
        &db,
        storage.path(),
        &["--listen", "false", "--poll-interval", "200ms"],
    )
    .await;
    let client = db.client().await;
    let user = user_with_profile(&client).await;
    wait_until(
        &client,
        "favorites by polling",
        &format!("select count(*) from collections where owner_id = '{user}'"),
        1,
    )
    .await;
    assert_eq!(
        count(&client, "select count(*) from pg_stat_activity where datname = current_database() and application_name = 'reactor listener'").await,
        0,
        "no listener connection in poll-only mode"
    );
    reactor.stop().await;
}

#[tokio::test]
async fn a_transaction_mode_pooler_port_is_refused_with_a_clear_error() {
    let storage = tempfile::tempdir().unwrap();
    let cfg = reactor::config::RunConfig::from_flags([
        "--database-url",
        "postgres://postgres@127.0.0.1:6543/postgres",
        "--storage-url",
        &storage.path().display().to_string(),
        "--provider",
        "local",
        "--http-addr",
        "127.0.0.1:0",
    ])
    .unwrap();
    let app = reactor::app::start(cfg, Default::default()).await.unwrap();
    let err = app.handle.await.unwrap().unwrap_err().to_string();
    assert!(
        err.contains("6543") && err.contains("REACTOR_LISTEN=false"),
        "{err}"
    );
}

#[tokio::test]
async fn an_unmigrated_database_is_refused_with_a_clear_error() {
    let db = common::empty_db().await;
    let storage = tempfile::tempdir().unwrap();
    let reactor = start_reactor(&db, storage.path(), &[]).await;
    let err = reactor.handle.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("reactor migrate"), "{err}");
}

#[tokio::test]
async fn outbox_mode_works_without_notify_in_the_writers_transactions() {
    use futures::StreamExt as _;
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let admin = db.client().await;
    admin
        .batch_execute(&format!(
            "alter database {} set reactor.notify_mode = 'outbox'",
            db.name
        ))
        .await
        .unwrap();
    let (listener, mut connection) = db
        .url
        .parse::<tokio_postgres::Config>()
        .unwrap()
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    listener
        .batch_execute("LISTEN reactor; LISTEN job_status")
        .await
        .unwrap();

    let reactor = start_reactor(
        &db,
        storage.path(),
        &["--sweep-interval", "1h", "--outbox-poll", "50ms"],
    )
    .await;
    reactor.wait_ready().await;
    // Sessions opened after ALTER DATABASE write to the outbox.
    let client = db.client().await;
    let user = user_with_profile(&client).await;
    let images = image_server().await;
    let job = succeeded_job(&client, user, &[images.url("/ok/outbox.jpg")]).await;
    wait_until(
        &client,
        "favorites via the outbox",
        &format!("select count(*) from collections where owner_id = '{user}'"),
        1,
    )
    .await;
    wait_until(
        &client,
        "render and debit via the outbox (a debit comes with the delivery)",
        &format!("select count(*) from usage_ledger where job_id = '{job}'"),
        1,
    )
    .await;
    assert_eq!(
        count(&client, "select count(*) from reactor.outbox").await,
        0,
        "drained"
    );

    // job_status still reaches listeners (sent by the reactor); the writers sent nothing on "reactor".
    let deadline = tokio::time::Instant::now() + LONG;
    let mut saw_status = false;
    while !saw_status {
        let (channel, payload) = tokio::time::timeout_at(deadline, heard.recv())
            .await
            .expect("job_status in time")
            .unwrap();
        assert!(
            !(channel == "reactor" && payload.contains(&user.to_string())),
            "a writer notified: {payload}"
        );
        saw_status = channel == "job_status" && payload.contains(&job.to_string());
    }
    while let Ok((channel, payload)) = heard.try_recv() {
        assert!(
            !(channel == "reactor" && payload.contains(&user.to_string())),
            "a writer notified: {payload}"
        );
    }
    reactor.stop().await;
}
