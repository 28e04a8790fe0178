//! Submit-time rules on generation_jobs (triggers/110_submit_rules.sql): the
//! in-flight rule (PT409), the monthly quota (PT402), the input rules and the
//! per-owner idempotency key, as a Supabase client meets them.
mod common;

use common::{code_and_message, count_with, debit_succeeded_jobs, jobs_of};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::Client;
use uuid::Uuid;

/// A client submission of an `imagine` job (the mode with the fewest inputs).
async fn submit(client: &mut Client, user: Uuid) -> Result<u64, tokio_postgres::Error> {
    common::as_user(
        client,
        user,
        &format!("insert into generation_jobs (owner_id, mode, prompt) values ('{user}', 'imagine', 'a sunny loft')"),
    )
    .await
}

/// Sets every job of `user` to `status` (as the service).
async fn set_status(client: &Client, user: Uuid, status: &str) {
    client
        .execute(
            "update generation_jobs set status = $2 where owner_id = $1",
            &[&user, &status],
        )
        .await
        .expect("service sets status");
}

/// Adds `n` debits of 1 for `user`, dated `at` (an SQL timestamptz expression).
async fn debit(client: &Client, user: Uuid, n: i32, at: &str) {
    client
        .execute(
            &format!(
                "insert into usage_ledger (owner_id, kind, amount, created_at)
                 select $1, 'generation_debit', 1, {at} from generate_series(1, $2)"
            ),
            &[&user, &n],
        )
        .await
        .expect("service writes debits");
}

/// Start of the current UTC calendar month, as SQL.
const MONTH_START_UTC: &str = "(date_trunc('month', now() at time zone 'UTC') at time zone 'UTC')";

// ---------------------------------------------------------------------------
// In-flight rule: PT409
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_second_submission_while_the_first_is_starting_gets_pt409() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    let a = common::user_with_profile(&c).await;
    assert_eq!(submit(&mut c, a).await.expect("first submission"), 1);
    let err = submit(&mut c, a).await.expect_err("second submission");
    let (code, message) = code_and_message(&err);
    assert_eq!(code, "PT409", "{message}");
    assert_eq!(message, "a generation is already in progress");
    assert_eq!(jobs_of(&c, a).await, 1);
}

#[tokio::test]
async fn a_processing_job_also_blocks_a_new_submission_with_pt409() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    let a = common::user_with_profile(&c).await;
    submit(&mut c, a).await.unwrap();
    set_status(&c, a, "processing").await;
    let err = submit(&mut c, a)
        .await
        .expect_err("submission while processing");
    assert_eq!(common::sqlstate(&err), "PT409");
    assert_eq!(jobs_of(&c, a).await, 1);
}

#[tokio::test]
async fn a_job_in_a_terminal_status_does_not_block_a_new_one() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    let a = common::user_with_profile(&c).await;
    let mut expected = 0;
    for terminal in ["succeeded", "failed", "canceled"] {
        submit(&mut c, a)
            .await
            .unwrap_or_else(|e| panic!("after {terminal}: {}", reactor::store::db::describe(&e)));
        expected += 1;
        set_status(&c, a, terminal).await;
    }
    submit(&mut c, a).await.expect("after canceled");
    expected += 1;
    assert_eq!(jobs_of(&c, a).await, expected);
    assert_eq!(
        count_with(
            &c,
            "select count(*) from generation_jobs where owner_id = $1 and status = 'starting'",
            &[&a]
        )
        .await,
        1
    );
}

#[tokio::test]
async fn another_owners_in_flight_job_does_not_block_a_submission() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    let a = common::user_with_profile(&c).await;
    let b = common::user_with_profile(&c).await;
    submit(&mut c, a).await.unwrap();
    submit(&mut c, b).await.expect("B is not blocked by A");
    assert_eq!(jobs_of(&c, a).await, 1);
    assert_eq!(jobs_of(&c, b).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_submissions_by_one_owner_accept_exactly_one_and_refuse_nineteen_with_pt409(
) {
    const N: usize = 20;
    let db = common::migrated_db().await;
    let c = db.client().await;
    let a = common::user_with_profile(&c).await;

    // Every connection is open and inside its transaction, role and claims
    // set, before any of them inserts: the inserts race for real.
    let barrier = Arc::new(tokio::sync::Barrier::new(N));
    let mut tasks = Vec::new();
    for _ in 0..N {
        let mut conn = db.client().await;
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            let tx = conn.transaction().await?;
            tx.batch_execute("set local role authenticated").await?;
            tx.execute(
                "select set_config('request.jwt.claims', $1, true)",
                &[&serde_json::json!({"sub": a.to_string(), "role": "authenticated"}).to_string()],
            )
            .await?;
            barrier.wait().await;
            tx.execute(
                "insert into generation_jobs (owner_id, mode, prompt) values ($1, 'imagine', 'race')",
                &[&a],
            )
            .await?;
            tx.commit().await
        }));
    }
    let mut accepted = 0;
    let mut refused = Vec::new();
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("submissions finish")
            .expect("task")
        {
            Ok(()) => accepted += 1,
            Err(e) => refused.push(common::sqlstate(&e)),
        }
    }
    assert_eq!(accepted, 1, "refusals: {refused:?}");
    assert_eq!(refused, vec!["PT409".to_string(); N - 1]);
    assert_eq!(jobs_of(&c, a).await, 1);
}

/// A client submission still running (or waiting) on its own connection.
type Pending = tokio::task::JoinHandle<Result<u64, tokio_postgres::Error>>;

/// Starts a client submission on its own connection; returns the task.
async fn submit_in_background(db: &common::TestDb, user: Uuid) -> Pending {
    let mut conn = db.client().await;
    tokio::spawn(async move { submit(&mut conn, user).await })
}

/// Opens a transaction on `conn` and submits a job for `user` in it, uncommitted.
async fn uncommitted_submission(conn: &mut Client, user: Uuid) -> tokio_postgres::Transaction<'_> {
    let tx = conn.transaction().await.unwrap();
    tx.batch_execute("set local role authenticated")
        .await
        .unwrap();
    tx.execute(
        "select set_config('request.jwt.claims', $1, true)",
        &[&serde_json::json!({"sub": user.to_string(), "role": "authenticated"}).to_string()],
    )
    .await
    .unwrap();
    tx.execute(
        "insert into generation_jobs (owner_id, mode, prompt) values ($1, 'imagine', 'first')",
        &[&user],
    )
    .await
    .expect("first submission");
    tx
}

/// Waits until the second submission is blocked on the first one's lock.
async fn wait_until_a_submission_is_blocked(observer: &Client) {
    common::wait_until_one_waits_on_a_lock(
        observer,
        "the second submission waits on the first",
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test]
async fn a_submission_racing_an_uncommitted_one_waits_and_gets_pt409_once_the_first_commits() {
    let db = common::migrated_db().await;
    let observer = db.client().await;
    let a = common::user_with_profile(&observer).await;
    let mut first = db.client().await;
    let tx = uncommitted_submission(&mut first, a).await;

    let second = submit_in_background(&db, a).await;
    wait_until_a_submission_is_blocked(&observer).await;
    assert!(
        !second.is_finished(),
        "the second submission must wait for the first"
    );
    tx.commit().await.unwrap();

    let err = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("second submission finishes")
        .unwrap()
        .expect_err("second submission is refused");
    assert_eq!(common::sqlstate(&err), "PT409");
    assert_eq!(jobs_of(&observer, a).await, 1);
}

#[tokio::test]
async fn a_submission_racing_an_uncommitted_one_is_accepted_once_the_first_rolls_back() {
    let db = common::migrated_db().await;
    let observer = db.client().await;
    let a = common::user_with_profile(&observer).await;
    let mut first = db.client().await;
    let tx = uncommitted_submission(&mut first, a).await;

    let second = submit_in_background(&db, a).await;
    wait_until_a_submission_is_blocked(&observer).await;
    tx.rollback().await.unwrap();

    let n = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("second submission finishes")
        .unwrap()
        .expect("second submission is accepted");
    assert_eq!(n, 1);
    let prompts = common::texts(
        &observer,
        "select prompt from generation_jobs where owner_id = $1",
        &[&a],
    )
    .await;
    assert_eq!(prompts, vec!["a sunny loft".to_string()]);
}

// ---------------------------------------------------------------------------
// Quota: PT402
// ---------------------------------------------------------------------------

/// A user on plan `price_small` ("Small", `limit` generations a month).
async fn user_on_small_plan(c: &Client, limit: i32) -> Uuid {
    c.execute(
        "insert into plans (price_id, name, monthly_generations) values ('price_small', 'Small', $1)",
        &[&limit],
    )
    .await
    .unwrap();
    let a = common::user_with_profile(c).await;
    c.execute(
        "update profiles set price_id = 'price_small' where id = $1",
        &[&a],
    )
    .await
    .unwrap();
    a
}

#[tokio::test]
async fn at_the_plan_limit_a_submission_gets_pt402_naming_the_limit() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    let a = user_on_small_plan(&c, 2).await;

    // One below the limit: allowed.
    debit(&c, a, 1, "now()").await;
    submit(&mut c, a).await.expect("1 of 2 used");
    set_status(&c, a, "succeeded").await;

    debit_succeeded_jobs(&c, a).await;
    let err = submit(&mut c, a).await.expect_err("2 of 2 used");
    let (code, message) = code_and_message(&err);
    assert_eq!(code, "PT402", "{message}");
    assert_eq!(
        message,
        "monthly generation limit reached: 2 of 2 used on plan Small"
    );
    assert_eq!(
        jobs_of(&c, a).await,
        1,
        "the refused submission wrote nothing"
    );
}

#[tokio::test]
async fn debits_dated_last_utc_month_do_not_count_so_the_owner_may_submit_again() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    // Far from UTC, so a month computed in the session's time zone would differ.
    c.batch_execute("set timezone = 'Pacific/Kiritimati'")
        .await
        .unwrap();
    let a = user_on_small_plan(&c, 2).await;
    debit(&c, a, 2, "now()").await;
    let err = submit(&mut c, a).await.expect_err("at the limit");
    assert_eq!(common::sqlstate(&err), "PT402");

    // The same debits, a moment before this UTC month began.
    c.execute(
        &format!("update usage_ledger set created_at = {MONTH_START_UTC} - interval '1 microsecond' where owner_id = $1"),
        &[&a],
    )
    .await
    .unwrap();
    assert_eq!(submit(&mut c, a).await.expect("a new month"), 1);

    // And a month further back still.
    set_status(&c, a, "succeeded").await;
    c.execute(
        "update usage_ledger set created_at = now() - interval '1 month' - interval '1 day' where owner_id = $1",
        &[&a],
    )
    .await
    .unwrap();
    assert_eq!(submit(&mut c, a).await.expect("debits two months old"), 1);
    assert_eq!(jobs_of(&c, a).await, 2);
}

#[tokio::test]
async fn a_debit_dated_exactly_at_the_start_of_the_utc_month_counts() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    c.batch_execute("set timezone = 'Etc/GMT+12'")
        .await
        .unwrap();
    let a = user_on_small_plan(&c, 1).await;
    debit(&c, a, 1, MONTH_START_UTC).await;
    let err = submit(&mut c, a)
        .await
        .expect_err("the debit is this month's");
    assert_eq!(common::sqlstate(&err), "PT402");
    assert_eq!(jobs_of(&c, a).await, 0);
}

#[tokio::test]
async fn an_unknown_or_missing_price_id_falls_back_to_the_default_plan() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    c.execute(
        "update plans set monthly_generations = 3 where price_id = 'free'",
        &[],
    )
    .await
    .unwrap();
    let unknown = common::user_with_profile(&c).await;
    c.execute(
        "update profiles set price_id = 'price_discontinued' where id = $1",
        &[&unknown],
    )
    .await
    .unwrap();
    let null_price = common::user_with_profile(&c).await;
    let no_profile = common::auth_user(&c).await;

    for user in [unknown, null_price, no_profile] {
        debit(&c, user, 2, "now()").await;
        submit(&mut c, user).await.expect("2 of 3 used");
        set_status(&c, user, "succeeded").await;
        debit_succeeded_jobs(&c, user).await;
        let err = submit(&mut c, user).await.expect_err("3 of 3 used");
        let (code, message) = code_and_message(&err);
        assert_eq!(code, "PT402", "{message}");
        assert_eq!(
            message,
            "monthly generation limit reached: 3 of 3 used on plan Free"
        );
        assert_eq!(jobs_of(&c, user).await, 1);
    }
}

#[tokio::test]
async fn without_any_applicable_plan_a_submission_gets_pt402() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    c.execute("update plans set is_default = false", &[])
        .await
        .unwrap();
    let a = common::user_with_profile(&c).await;
    let err = submit(&mut c, a).await.expect_err("no plan");
    let (code, message) = code_and_message(&err);
    assert_eq!(code, "PT402", "{message}");
    assert!(message.contains("no plan applies"), "{message}");
    assert_eq!(jobs_of(&c, a).await, 0);
}

// ---------------------------------------------------------------------------
// Input rules: 23502 naming the field
// ---------------------------------------------------------------------------

/// Submits `columns`/`values` for `mode` and asserts 23502 naming `field`, and no row.
async fn assert_input_rule(mode: &str, columns: &str, values: &str, field: &str) {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    let a = common::user_with_profile(&c).await;
    let err = common::as_user(
        &mut c,
        a,
        &format!("insert into generation_jobs (owner_id, mode{columns}) values ('{a}', '{mode}'{values})"),
    )
    .await
    .expect_err("missing input");
    let (code, message) = code_and_message(&err);
    assert_eq!(code, "23502", "{mode}: {message}");
    assert!(
        message.contains(field),
        "{mode}: message must name {field}: {message}"
    );
    assert_eq!(err.as_db_error().and_then(|d| d.column()), Some(field));
    assert_eq!(jobs_of(&c, a).await, 0);
}

#[tokio::test]
async fn redesign_without_input1_path_is_refused_naming_input1_path() {
    assert_input_rule("redesign", "", "", "input1_path").await;
}

#[tokio::test]
async fn staging_without_input1_path_is_refused_naming_input1_path() {
    assert_input_rule("staging", ", prompt", ", 'a bedroom'", "input1_path").await;
}

#[tokio::test]
async fn compose_without_input1_path_is_refused_naming_input1_path() {
    assert_input_rule(
        "compose",
        ", input2_path",
        ", 'https://inputs.example/2.jpg'",
        "input1_path",
    )
    .await;
}

#[tokio::test]
async fn compose_without_input2_path_is_refused_naming_input2_path() {
    assert_input_rule(
        "compose",
        ", input1_path",
        ", 'https://inputs.example/1.jpg'",
        "input2_path",
    )
    .await;
}

#[tokio::test]
async fn imagine_without_prompt_is_refused_naming_prompt() {
    assert_input_rule(
        "imagine",
        ", input1_path",
        ", 'https://inputs.example/1.jpg'",
        "prompt",
    )
    .await;
}

#[tokio::test]
async fn a_blank_required_input_counts_as_missing() {
    assert_input_rule("redesign", ", input1_path", ", '   '", "input1_path").await;
    assert_input_rule("imagine", ", prompt", ", ''", "prompt").await;
}

#[tokio::test]
async fn each_mode_with_its_required_inputs_is_accepted() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    for (mode, columns, values) in [
        ("redesign", "input1_path", "'https://inputs.example/1.jpg'"),
        ("staging", "input1_path", "'https://inputs.example/1.jpg'"),
        (
            "compose",
            "input1_path, input2_path",
            "'https://inputs.example/1.jpg', 'https://inputs.example/2.jpg'",
        ),
        ("imagine", "prompt", "'a sunny loft'"),
    ] {
        let a = common::user_with_profile(&c).await;
        let n = common::as_user(
            &mut c,
            a,
            &format!("insert into generation_jobs (owner_id, mode, {columns}) values ('{a}', '{mode}', {values})"),
        )
        .await
        .unwrap_or_else(|e| panic!("{mode}: {}", reactor::store::db::describe(&e)));
        assert_eq!(n, 1, "{mode}");
        assert_eq!(
            count_with(
                &c,
                "select count(*) from generation_jobs where owner_id = $1 and mode = $2",
                &[&a, &mode]
            )
            .await,
            1
        );
    }
}

// ---------------------------------------------------------------------------
// Idempotency key: 23505
// ---------------------------------------------------------------------------

async fn submit_with_key(
    c: &mut Client,
    user: Uuid,
    key: Uuid,
) -> Result<u64, tokio_postgres::Error> {
    common::as_user(
        c,
        user,
        &format!(
            "insert into generation_jobs (owner_id, mode, prompt, idempotency_key) values ('{user}', 'imagine', 'x', '{key}')"
        ),
    )
    .await
}

fn assert_idempotency_violation(err: &tokio_postgres::Error) {
    assert_eq!(
        common::sqlstate(err),
        "23505",
        "{}",
        reactor::store::db::describe(err)
    );
    assert_eq!(
        err.as_db_error().and_then(|d| d.constraint()),
        Some("uniq_jobs_owner_idem"),
        "the client can tell which rule it hit"
    );
}

#[tokio::test]
async fn a_reused_idempotency_key_raises_unique_violation_even_while_the_first_job_is_in_flight() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    let a = common::user_with_profile(&c).await;
    let key = Uuid::new_v4();
    submit_with_key(&mut c, a, key).await.expect("first");
    let err = submit_with_key(&mut c, a, key)
        .await
        .expect_err("retry while starting");
    assert_idempotency_violation(&err);
    // A different key at the same moment meets the in-flight rule instead.
    let err = submit_with_key(&mut c, a, Uuid::new_v4())
        .await
        .expect_err("new key while starting");
    assert_eq!(common::sqlstate(&err), "PT409");
    assert_eq!(jobs_of(&c, a).await, 1);
}

#[tokio::test]
async fn a_reused_idempotency_key_raises_unique_violation_after_the_first_job_finished() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    let a = common::user_with_profile(&c).await;
    let key = Uuid::new_v4();
    submit_with_key(&mut c, a, key).await.expect("first");
    set_status(&c, a, "succeeded").await;
    let err = submit_with_key(&mut c, a, key)
        .await
        .expect_err("retry after success");
    assert_idempotency_violation(&err);
    assert_eq!(jobs_of(&c, a).await, 1);
}

#[tokio::test]
async fn an_idempotency_key_is_per_owner() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    let a = common::user_with_profile(&c).await;
    let b = common::user_with_profile(&c).await;
    let key = Uuid::new_v4();
    submit_with_key(&mut c, a, key).await.expect("A");
    submit_with_key(&mut c, b, key)
        .await
        .expect("B with the same key");
    assert_eq!(
        count_with(
            &c,
            "select count(*) from generation_jobs where idempotency_key = $1",
            &[&key]
        )
        .await,
        2
    );
}

// ---------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_service_inserting_a_succeeded_job_is_exempt_from_the_in_flight_and_quota_rules() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    let a = user_on_small_plan(&c, 1).await;
    submit(&mut c, a).await.expect("in flight");
    debit(&c, a, 1, "now()").await;
    assert_eq!(
        common::sqlstate(&submit(&mut c, a).await.unwrap_err()),
        "PT409"
    );

    c.execute(
        "insert into generation_jobs (owner_id, mode, prompt, status, completed_at) values ($1, 'imagine', 'imported', 'succeeded', now())",
        &[&a],
    )
    .await
    .expect("service import of a finished job");
    assert_eq!(
        count_with(
            &c,
            "select count(*) from generation_jobs where owner_id = $1 and status = 'succeeded' and prompt = 'imported'",
            &[&a]
        )
        .await,
        1
    );
    assert_eq!(jobs_of(&c, a).await, 2);
}

#[tokio::test]
async fn the_services_own_starting_insert_obeys_the_in_flight_rule() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    let a = common::user_with_profile(&c).await;
    submit(&mut c, a).await.unwrap();
    let err = c
        .execute(
            "insert into generation_jobs (owner_id, mode, prompt) values ($1, 'imagine', 'service')",
            &[&a],
        )
        .await
        .expect_err("every path obeys the in-flight rule");
    assert_eq!(common::sqlstate(&err), "PT409");
    assert_eq!(jobs_of(&c, a).await, 1);
}
