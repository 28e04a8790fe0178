//! Generation (issue 4): provider submission, polling, webhooks, rate limits,
//! outages, stuck jobs, cancel, and never paying twice — against a loopback
//! fake of Replicate's API and a real PostgreSQL.
mod common;

use common::fake_replicate::{
    deliver_webhook, signed_webhook, webhook_flags, CreateScript, FakeReplicate, WEBHOOK_SECRET,
};
use common::{
    count, eventually, image_server, job_state, start_reactor, start_reactor_with, submit_job,
    wait_for_count, wait_status, ChildReactor, TestDb,
};
use serde_json::json;
use std::time::Duration;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);

async fn wait_prediction(fake: &FakeReplicate, n: usize) -> String {
    eventually("prediction created at the provider", LONG, || async {
        fake.predictions().len() >= n
    })
    .await;
    fake.predictions()[n - 1].id.clone()
}

async fn one_render_one_debit(client: &tokio_postgres::Client, id: Uuid) {
    let render = format!("select count(*) from renders where job_id = '{id}'");
    wait_for_count(client, "render", &render, 1).await;
    let debit = format!("select count(*) from usage_ledger where job_id = '{id}'");
    wait_for_count(client, "debit", &debit, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(client, &render).await, 1);
    assert_eq!(count(client, &debit).await, 1);
}

#[tokio::test]
async fn a_submitted_job_is_created_polled_to_success_and_rendered_and_debited_once() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let (fake, images) = (FakeReplicate::start().await, image_server().await);
    let flags = fake.reactor_flags(&[]);
    let reactor = start_reactor_with(&db, storage.path(), &flags).await;
    let client = db.client().await;
    let user = common::user_with_profile(&client).await;
    let id = submit_job(&db, user, "redesign", "warm light")
        .await
        .unwrap();

    let pid = wait_prediction(&fake, 1).await;
    wait_status(&client, id, "processing").await;
    assert_eq!(
        job_state(&client, id).await.1.as_deref(),
        Some(pid.as_str()),
        "prediction id saved"
    );
    let input = &fake.predictions()[0].input;
    assert_eq!(
        input["image_input"],
        json!(["https://inputs.example/room.jpg"])
    );
    assert!(input["prompt"].as_str().unwrap().contains("warm light"));
    assert!(
        fake.predictions()[0].webhook.is_none(),
        "no public URL: no webhook"
    );

    fake.finish(
        &pid,
        "succeeded",
        json!([images.url("/ok/a.jpg"), images.url("/ok/b.jpg")]),
        json!(null),
    );
    wait_status(&client, id, "succeeded").await;
    one_render_one_debit(&client, id).await;
    let completed: bool = client
        .query_one(
            "select completed_at is not null and output = $2 from generation_jobs where id = $1",
            &[
                &id,
                &json!([images.url("/ok/a.jpg"), images.url("/ok/b.jpg")]),
            ],
        )
        .await
        .unwrap()
        .get(0);
    assert!(completed, "completed_at and output set");
    assert_eq!(fake.create_calls(), 1);
    reactor.stop().await;
}

/// A reactor with webhooks on (no polling for an hour) and its webhook URL.
async fn webhook_reactor(
    db: &TestDb,
    storage: &std::path::Path,
    fake: &FakeReplicate,
) -> (common::InProcess, String) {
    let mut flags = fake.reactor_flags(&[]);
    flags.extend(webhook_flags("1h"));
    let reactor = start_reactor_with(db, storage, &flags).await;
    let hook = format!("http://{}/webhooks/replicate", reactor.http_addr);
    (reactor, hook)
}

#[tokio::test]
async fn a_signed_webhook_completes_the_job_and_replays_have_the_effect_of_one() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let (fake, images) = (FakeReplicate::start().await, image_server().await);
    let (reactor, hook) = webhook_reactor(&db, storage.path(), &fake).await;
    let client = db.client().await;
    let user = common::user_with_profile(&client).await;
    let id = submit_job(&db, user, "imagine", "a loft").await.unwrap();
    let pid = wait_prediction(&fake, 1).await;
    let registered = fake.predictions()[0].webhook.clone().unwrap();
    assert_eq!(registered, format!("{hook}?job_id={id}"));

    let done = fake.finish(
        &pid,
        "succeeded",
        json!(images.url("/ok/w.jpg")),
        json!(null),
    );
    let now = chrono::Utc::now().timestamp();
    let (body, headers) = signed_webhook(&done.json(), "msg_1", now);
    for _ in 0..3 {
        assert_eq!(
            deliver_webhook(&registered, body.clone(), &headers).await,
            reqwest::StatusCode::OK
        );
    }
    wait_status(&client, id, "succeeded").await;
    one_render_one_debit(&client, id).await;
    reactor.stop().await;
}

#[tokio::test]
async fn bad_or_stale_signatures_are_refused_with_401_and_change_nothing() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let (fake, images) = (FakeReplicate::start().await, image_server().await);
    let (reactor, hook) = webhook_reactor(&db, storage.path(), &fake).await;
    let client = db.client().await;
    let user = common::user_with_profile(&client).await;
    let id = submit_job(&db, user, "imagine", "a den").await.unwrap();
    let pid = wait_prediction(&fake, 1).await;
    wait_status(&client, id, "processing").await;
    let done = fake.finish(
        &pid,
        "succeeded",
        json!([images.url("/ok/x.jpg")]),
        json!(null),
    );
    let now = chrono::Utc::now().timestamp();

    let (body, mut headers) = signed_webhook(&done.json(), "msg_2", now);
    headers[2].1 = "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into();
    assert_eq!(
        deliver_webhook(&hook, body, &headers).await,
        reqwest::StatusCode::UNAUTHORIZED,
        "forged"
    );
    let (body, _) = signed_webhook(&done.json(), "msg_3", now);
    assert_eq!(
        deliver_webhook(&hook, body, &[]).await,
        reqwest::StatusCode::UNAUTHORIZED,
        "unsigned"
    );
    let (body, headers) = signed_webhook(&done.json(), "msg_4", now - 600);
    assert_eq!(
        deliver_webhook(&hook, body, &headers).await,
        reqwest::StatusCode::UNAUTHORIZED,
        "stale"
    );
    let (_, headers) = signed_webhook(&done.json(), "msg_5", now);
    let tampered = done.json().to_string().replace("succeeded", "failed");
    assert_eq!(
        deliver_webhook(&hook, tampered, &headers).await,
        reqwest::StatusCode::UNAUTHORIZED,
        "tampered body"
    );
    let (garbage, headers) = signed_webhook(&json!({"hello": "world"}), "msg_6", now);
    assert_eq!(
        deliver_webhook(&hook, garbage, &headers).await,
        reqwest::StatusCode::BAD_REQUEST,
        "signed garbage"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        job_state(&client, id).await.0,
        "processing",
        "nothing changed"
    );
    // An unknown prediction is acknowledged (so Replicate stops retrying) and ignored.
    let mut unknown = done.json();
    unknown["id"] = json!("pred_unknown");
    let (body, headers) = signed_webhook(&unknown, "msg_7", now);
    assert_eq!(
        deliver_webhook(&hook, body, &headers).await,
        reqwest::StatusCode::OK
    );
    assert_eq!(job_state(&client, id).await.0, "processing");
    reactor.stop().await;
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after_and_creates_exactly_one_prediction() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let fake = FakeReplicate::start().await;
    fake.script(&[CreateScript::RateLimited(Some(1))]);
    let flags = fake.reactor_flags(&[]);
    let reactor = start_reactor_with(&db, storage.path(), &flags).await;
    let client = db.client().await;
    let user = common::user_with_profile(&client).await;
    let id = submit_job(&db, user, "imagine", "a study").await.unwrap();
    wait_prediction(&fake, 1).await;
    wait_status(&client, id, "processing").await;
    let times = fake.create_times();
    assert_eq!(times.len(), 2, "one refused create, one real");
    assert!(
        times[1] - times[0] >= Duration::from_millis(950),
        "waited for Retry-After: {:?}",
        times[1] - times[0]
    );
    assert_eq!(fake.predictions().len(), 1);
    reactor.stop().await;
}

/// More failed creates than REACTOR_MAX_ATTEMPTS (3 in tests): an outage is
/// retried up to the stuck rule's deadline, so the job is submitted once the
/// provider answers again, exactly once.
#[tokio::test]
async fn an_outage_longer_than_the_attempt_limit_does_not_fail_the_job_and_it_is_submitted_once_after(
) {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let fake = FakeReplicate::start().await;
    fake.script(&vec![CreateScript::ServerError; 5]);
    let flags = fake.reactor_flags(&["--retry-backoff", "200ms"]);
    let reactor = start_reactor_with(&db, storage.path(), &flags).await;
    let client = db.client().await;
    let user = common::user_with_profile(&client).await;
    let id = submit_job(&db, user, "imagine", "a porch").await.unwrap();
    wait_prediction(&fake, 1).await;
    wait_status(&client, id, "processing").await;
    assert_eq!(fake.create_calls(), 6, "five refused creates, one real");
    assert_eq!(fake.predictions().len(), 1);
    assert_eq!(
        count(
            &client,
            "select count(*) from reactor.handler_state where dead_at is not null"
        )
        .await,
        0
    );
    reactor.stop().await;
}

/// An outage that outlasts the stuck rule: the rule decides, the job fails
/// as timed out, nothing was created and nothing is debited.
#[tokio::test]
async fn an_outage_past_the_stuck_deadline_fails_the_job_as_timed_out_and_creates_nothing() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let fake = FakeReplicate::start().await;
    fake.set_down(true);
    let flags = fake.reactor_flags(&["--retry-backoff", "200ms", "--stuck-after", "3s"]);
    let reactor = start_reactor_with(&db, storage.path(), &flags).await;
    let client = db.client().await;
    let user = common::user_with_profile(&client).await;
    let id = submit_job(&db, user, "imagine", "a porch").await.unwrap();
    wait_status(&client, id, "failed").await;
    let (_, prediction, error) = job_state(&client, id).await;
    assert!(prediction.is_none());
    assert_eq!(error.as_deref(), Some("timed out"));
    assert!(
        fake.refused_while_down() > 3,
        "retried past the attempt limit"
    );
    assert!(fake.predictions().is_empty());
    assert_eq!(count(&client, "select count(*) from usage_ledger").await, 0);
    reactor.stop().await;
}

#[tokio::test]
async fn a_provider_reported_failure_fails_the_job_with_its_message_and_no_debit() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let fake = FakeReplicate::start().await;
    let flags = fake.reactor_flags(&[]);
    let reactor = start_reactor_with(&db, storage.path(), &flags).await;
    let client = db.client().await;
    let user = common::user_with_profile(&client).await;
    let id = submit_job(&db, user, "imagine", "a cellar").await.unwrap();
    let pid = wait_prediction(&fake, 1).await;
    fake.finish(&pid, "failed", json!(null), json!("NSFW content detected"));
    wait_status(&client, id, "failed").await;
    assert_eq!(
        job_state(&client, id).await.2.as_deref(),
        Some("NSFW content detected")
    );

    // "aborted" is Replicate's fourth terminal status: stored as failed, with the reason.
    let second = submit_job(&db, user, "imagine", "an attic").await.unwrap();
    let pid = wait_prediction(&fake, 2).await;
    fake.finish(&pid, "aborted", json!(null), json!(null));
    wait_status(&client, second, "failed").await;
    assert!(job_state(&client, second)
        .await
        .2
        .unwrap()
        .contains("aborted"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&client, "select count(*) from usage_ledger").await, 0);
    assert_eq!(count(&client, "select count(*) from renders").await, 0);
    reactor.stop().await;
}

#[tokio::test]
async fn a_stuck_job_times_out_then_a_late_success_still_renders_and_debits_once() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let (fake, images) = (FakeReplicate::start().await, image_server().await);
    let mut flags = fake.reactor_flags(&[]);
    flags.extend(["--stuck-after", "1s"].map(String::from));
    let reactor = start_reactor_with(&db, storage.path(), &flags).await;
    let client = db.client().await;
    let user = common::user_with_profile(&client).await;
    let id = submit_job(&db, user, "imagine", "a gym").await.unwrap();
    let pid = wait_prediction(&fake, 1).await;
    wait_status(&client, id, "failed").await;
    assert_eq!(job_state(&client, id).await.2.as_deref(), Some("timed out"));
    assert_eq!(count(&client, "select count(*) from usage_ledger").await, 0);

    fake.finish(
        &pid,
        "succeeded",
        json!([images.url("/ok/late.jpg")]),
        json!(null),
    );
    wait_status(&client, id, "succeeded").await;
    assert_eq!(
        job_state(&client, id).await.2,
        None,
        "the timeout error is gone"
    );
    one_render_one_debit(&client, id).await;
    reactor.stop().await;
}

/// Jobs of `user` that were delivered (rendered) and those debited.
async fn delivered_and_debited(client: &tokio_postgres::Client, user: Uuid) -> (i64, i64) {
    let delivered = common::count_with(
        client,
        "select count(*) from renders where owner_id = $1",
        &[&user],
    )
    .await;
    let debited = common::count_with(
        client,
        "select count(*) from usage_ledger where owner_id = $1 and kind = 'generation_debit'",
        &[&user],
    )
    .await;
    (delivered, debited)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_job_racing_new_submissions_and_its_late_success_never_delivers_above_the_plan()
{
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let (fake, images) = (FakeReplicate::start().await, image_server().await);
    let mut flags = fake.reactor_flags(&[]);
    flags.extend(["--stuck-after", "1s", "--late-window", "6s"].map(String::from));
    let reactor = start_reactor_with(&db, storage.path(), &flags).await;
    let client = db.client().await;
    let user = common::user_on_plan(&client, 1).await;

    // The owner keeps submitting, as an impatient client would.
    let stop = tokio_util::sync::CancellationToken::new();
    let submitter = tokio::spawn({
        let (stop, db) = (
            stop.clone(),
            common::TestDb {
                url: db.url.clone(),
                name: db.name.clone(),
            },
        );
        async move {
            let mut refusals = std::collections::BTreeSet::new();
            while !stop.is_cancelled() {
                if let Err(e) = submit_job(&db, user, "imagine", "again").await {
                    refusals.insert(common::sqlstate(&e));
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            refusals
        }
    });
    // Job A: its prediction outlasts the stuck rule.
    let first = wait_prediction(&fake, 1).await;
    let job_of_first =
        format!("select count(*) from generation_jobs where prediction_id = '{first}'");
    wait_for_count(&client, "A's prediction saved", &job_of_first, 1).await;
    let a: Uuid = client
        .query_one(
            "select id from generation_jobs where prediction_id = $1",
            &[&first],
        )
        .await
        .unwrap()
        .get(0);
    wait_status(&client, a, "failed").await;
    assert_eq!(job_state(&client, a).await.2.as_deref(), Some("timed out"));
    // Submissions go on while A is followed; then A succeeds late. Any other
    // prediction that got created succeeds at once.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for p in fake.predictions() {
        fake.finish(
            &p.id,
            "succeeded",
            json!([images.url(&format!("/ok/{}.jpg", p.id))]),
            json!(null),
        );
    }
    wait_status(&client, a, "succeeded").await;
    one_render_one_debit(&client, a).await;
    // Past the late window, still submitting.
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.cancel();
    let refusals = submitter.await.unwrap();
    for p in fake.predictions() {
        fake.finish(
            &p.id,
            "succeeded",
            json!([images.url(&format!("/ok/{}.jpg", p.id))]),
            json!(null),
        );
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    assert_eq!(
        delivered_and_debited(&client, user).await,
        (1, 1),
        "a plan of 1: one generation delivered and debited"
    );
    assert_eq!(
        fake.predictions().len(),
        1,
        "the provider ran one prediction"
    );
    assert_eq!(common::jobs_of(&client, user).await, 1);
    assert!(
        refusals.contains("PT409") && refusals.contains("PT402"),
        "in flight while followed, then over the plan: {refusals:?}"
    );
    reactor.stop().await;
}

#[tokio::test]
async fn a_success_after_the_late_window_is_refused_and_the_prediction_canceled() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let (fake, images) = (FakeReplicate::start().await, image_server().await);
    let mut flags = fake.reactor_flags(&[]);
    flags.extend(webhook_flags("1h"));
    flags.extend(["--stuck-after", "1s", "--late-window", "3s"].map(String::from));
    let reactor = start_reactor_with(&db, storage.path(), &flags).await;
    let client = db.client().await;
    let user = common::user_on_plan(&client, 2).await;
    let a = submit_job(&db, user, "imagine", "a porch").await.unwrap();
    let pid = wait_prediction(&fake, 1).await;
    wait_status(&client, a, "failed").await;
    let err = submit_job(&db, user, "imagine", "too soon")
        .await
        .expect_err("a followed job is in flight");
    assert_eq!(common::sqlstate(&err), "PT409");

    // The window ends: the reactor cancels the prediction and stops following.
    eventually(
        "the prediction canceled at the window's end",
        LONG,
        || async { fake.predictions()[0].canceled },
    )
    .await;
    wait_for_count(
        &client,
        "no longer followed",
        &format!(
            "select count(*) from generation_jobs where id = '{a}' and followed_until is null"
        ),
        1,
    )
    .await;
    let b = submit_job(&db, user, "imagine", "again")
        .await
        .expect("A can no longer deliver: not in flight");

    // A success for A arrives anyway (the provider finished before the
    // cancel reached it): refused, never delivered, never debited.
    let late = fake.finish(
        &pid,
        "succeeded",
        json!([images.url("/ok/too-late.jpg")]),
        json!(null),
    );
    let hook = late.webhook.clone().unwrap();
    let (body, headers) = signed_webhook(&late.json(), "msg_late", chrono::Utc::now().timestamp());
    assert_eq!(
        deliver_webhook(&hook, body, &headers).await,
        reqwest::StatusCode::OK
    );
    let second = wait_prediction(&fake, 2).await;
    let done = fake.finish(
        &second,
        "succeeded",
        json!([images.url("/ok/b.jpg")]),
        json!(null),
    );
    let (body, headers) = signed_webhook(&done.json(), "msg_b", chrono::Utc::now().timestamp());
    let hook = done.webhook.clone().unwrap();
    assert_eq!(
        deliver_webhook(&hook, body, &headers).await,
        reqwest::StatusCode::OK
    );
    wait_status(&client, b, "succeeded").await;
    one_render_one_debit(&client, b).await;

    assert_eq!(job_state(&client, a).await.0, "failed");
    assert_eq!(
        images.hits("/ok/too-late.jpg"),
        0,
        "A's pictures never fetched"
    );
    assert_eq!(delivered_and_debited(&client, user).await, (1, 1));
    reactor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_create_and_save_never_creates_a_second_prediction() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let (fake, images) = (FakeReplicate::start().await, image_server().await);
    // The first create is recorded by the provider, but its answer never comes.
    fake.script(&[CreateScript::CreateThenHang]);
    let mut flags = fake.reactor_flags(&[]);
    // Webhooks on: every create carries the job id in its webhook URL, the
    // proof that lets a later attempt adopt what this one created.
    flags.extend(
        [
            "--provider-timeout",
            "30s",
            "--public-url",
            "http://127.0.0.1:9",
            "--replicate-webhook-secret",
            WEBHOOK_SECRET,
            "--webhook-grace",
            "0s",
        ]
        .map(String::from),
    );
    let mut first = ChildReactor::spawn_with(&db, storage.path(), &flags);
    let client = db.client().await;
    let user = common::user_with_profile(&client).await;
    let id = submit_job(&db, user, "imagine", "a sauna").await.unwrap();
    wait_prediction(&fake, 1).await;
    // Killed after "prediction created", before "prediction id saved".
    first.kill9();
    let (status, prediction, _) = job_state(&client, id).await;
    assert_eq!((status.as_str(), prediction), ("starting", None));

    let _second = ChildReactor::spawn_with(&db, storage.path(), &flags);
    eventually("prediction adopted", LONG, || async {
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
        json!([images.url("/ok/s.jpg")]),
        json!(null),
    );
    wait_status(&client, id, "succeeded").await;
    one_render_one_debit(&client, id).await;
    assert_eq!(fake.predictions().len(), 1, "the provider was paid once");
    assert_eq!(fake.create_calls(), 1);
}

/// A job whose create was interrupted (marked, no prediction id), inserted as
/// the service would find it after a crash.
async fn interrupted_job(
    client: &tokio_postgres::Client,
    owner: Uuid,
    prompt: &str,
    status: &str,
) -> Uuid {
    client
        .query_one(
            "insert into generation_jobs (owner_id, mode, prompt, room_type, style, input1_path, status, submit_started_at)
             values ($1, 'imagine', $2, 'living room', 'scandinavian', 'https://inputs.example/room.jpg', $3, now())
             returning id",
            &[&owner, &prompt, &status],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn an_interrupted_submission_never_adopts_another_users_prediction_with_the_same_input() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let fake = FakeReplicate::start().await;
    let flags = fake.reactor_flags(&[]);
    let reactor = start_reactor_with(&db, storage.path(), &flags).await;
    let client = db.client().await;
    let (bob, alice) = (
        common::user_with_profile(&client).await,
        common::user_with_profile(&client).await,
    );
    let bobs = submit_job(&db, bob, "imagine", "a sauna").await.unwrap();
    let bobs_prediction = wait_prediction(&fake, 1).await;
    wait_status(&client, bobs, "processing").await;
    // Alice's identical job, whose create may or may not have gone through.
    let alices = interrupted_job(&client, alice, "a sauna", "starting").await;
    wait_status(&client, alices, "failed").await;
    let (_, prediction, error) = job_state(&client, alices).await;
    assert_eq!(
        prediction, None,
        "Bob's prediction was not attached to Alice's job"
    );
    let error = error.unwrap();
    assert!(error.contains("could not be proven"), "{error}");
    assert_eq!(fake.create_calls(), 1, "nothing created for Alice either");
    assert_eq!(
        job_state(&client, bobs).await.1.as_deref(),
        Some(bobs_prediction.as_str())
    );
    reactor.stop().await;
}

#[tokio::test]
async fn a_signed_webhook_cannot_be_pointed_at_another_job_with_job_id() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let (fake, images) = (FakeReplicate::start().await, image_server().await);
    let (reactor, hook) = webhook_reactor(&db, storage.path(), &fake).await;
    let client = db.client().await;
    let (owner, victim) = (
        common::user_with_profile(&client).await,
        common::user_with_profile(&client).await,
    );
    let id = submit_job(&db, owner, "imagine", "a den").await.unwrap();
    let pid = wait_prediction(&fake, 1).await;
    wait_status(&client, id, "processing").await;
    // The victim's job waits for its own prediction (processing, id not yet saved:
    // the reactor leaves it to its webhook).
    let victims = interrupted_job(&client, victim, "a porch", "processing").await;
    let done = fake.finish(
        &pid,
        "succeeded",
        json!([images.url("/ok/den.jpg")]),
        json!(null),
    );
    let now = chrono::Utc::now().timestamp();
    // A validly signed delivery for another prediction (no job has it yet),
    // sent to ?job_id=<victim>: once as Replicate shaped it (its webhook URL
    // names the owner's job), once without a webhook URL in the body.
    let mut orphan = done.json();
    orphan["id"] = json!("pred_orphan");
    let mut bare = orphan.clone();
    bare.as_object_mut().unwrap().remove("webhook");
    for (n, body) in [orphan, bare].into_iter().enumerate() {
        let (body, headers) = signed_webhook(&body, &format!("msg_hint_{n}"), now);
        assert_eq!(
            deliver_webhook(&format!("{hook}?job_id={victims}"), body, &headers).await,
            reqwest::StatusCode::OK
        );
    }
    // The real delivery, also pointed at the victim: it completes the owner's job only.
    let (body, headers) = signed_webhook(&done.json(), "msg_real", now);
    assert_eq!(
        deliver_webhook(&format!("{hook}?job_id={victims}"), body, &headers).await,
        reqwest::StatusCode::OK
    );
    wait_status(&client, id, "succeeded").await;
    assert_eq!(
        job_state(&client, victims).await,
        ("processing".to_string(), None, None),
        "the victim's job is untouched"
    );
    reactor.stop().await;
}

#[tokio::test]
async fn an_owner_cancels_their_job_at_the_provider_and_others_are_refused() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let fake = FakeReplicate::start().await;
    let flags = fake.reactor_flags(&[]);
    let reactor = start_reactor_with(&db, storage.path(), &flags).await;
    let mut client = db.client().await;
    let owner = common::user_with_profile(&client).await;
    let stranger = common::user_with_profile(&client).await;
    let id = submit_job(&db, owner, "imagine", "a barn").await.unwrap();
    wait_prediction(&fake, 1).await;
    wait_status(&client, id, "processing").await;

    let err = common::as_user(
        &mut client,
        stranger,
        &format!("select cancel_generation_job('{id}')"),
    )
    .await
    .unwrap_err();
    assert_eq!(common::sqlstate(&err), "PT404");
    assert_eq!(job_state(&client, id).await.0, "processing");

    common::as_user(
        &mut client,
        owner,
        &format!("select cancel_generation_job('{id}')"),
    )
    .await
    .unwrap();
    wait_status(&client, id, "canceled").await;
    assert!(fake.predictions()[0].canceled, "canceled at the provider");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&client, "select count(*) from usage_ledger").await, 0);

    // A finished job is left as it is.
    let finished: Uuid = client
        .query_one(
            "insert into generation_jobs (owner_id, mode, prompt, status) values ($1, 'imagine', 'x', 'failed') returning id",
            &[&owner],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cancel_as(&db, owner, finished).await.unwrap(), "failed");
    reactor.stop().await;

    // A job nothing was sent for (no reactor running) is canceled on the spot.
    let waiting = submit_job(&db, owner, "imagine", "a shed").await.unwrap();
    assert_eq!(cancel_as(&db, owner, waiting).await.unwrap(), "canceled");
    assert_eq!(job_state(&client, waiting).await.0, "canceled");
    assert_eq!(
        fake.create_calls(),
        1,
        "nothing more was sent to the provider"
    );
}

/// `supabase.rpc('cancel_generation_job', { job_id })` as `user`.
async fn cancel_as(db: &TestDb, user: Uuid, id: Uuid) -> Result<String, tokio_postgres::Error> {
    let mut client = db.client().await;
    let tx = client.transaction().await?;
    reactor::store::db::act_as_user(&tx, user).await?;
    let status: String = tx
        .query_one("select cancel_generation_job($1)", &[&id])
        .await?
        .get(0);
    tx.commit().await?;
    Ok(status)
}

#[tokio::test]
async fn the_local_provider_runs_the_whole_pipeline_offline() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let reactor = start_reactor(&db, storage.path(), &[]).await;
    let client = db.client().await;
    let user = common::user_with_profile(&client).await;
    let id = submit_job(&db, user, "staging", "cozy").await.unwrap();
    wait_status(&client, id, "succeeded").await;
    one_render_one_debit(&client, id).await;
    let paths = common::texts(&client, "select v.image_path from render_variants v join renders r on r.id = v.render_id where r.job_id = $1 order by v.idx", &[&id]).await;
    assert_eq!(paths.len(), 2);
    let mut variants = Vec::new();
    for path in paths {
        let bytes = std::fs::read(storage.path().join("public").join(&path)).unwrap();
        let image = image::load_from_memory(&bytes).expect("a real JPEG");
        assert_eq!((image.width(), image.height()), (768, 512));
        variants.push(image.to_rgb8());
    }
    // Like a real provider's outputs, the two variants are different pictures.
    let differing = variants[0]
        .pixels()
        .zip(variants[1].pixels())
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        differing > 768 * 512 / 10,
        "variants look alike: {differing}"
    );
    reactor.stop().await;
}
