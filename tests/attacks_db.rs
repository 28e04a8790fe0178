//! Issue 10, the database side: each attack an attacker with a Supabase client
//! (or a SQL session) tried, performed against a real PostgreSQL.
//!   1. input paths that would have become signed links to others' files;
//!   3. the monthly quota race between a job's success and its debit, and
//!      an outsider squatting an owner's submit lock;
//!   4. cancel_generation_job trusting a claim, and EXECUTE grants.
mod common;

use common::fake_replicate::FakeReplicate;
use common::{
    code_and_message, count, eventually, job_state, jobs_of, start_reactor_with, wait_status,
    TestDb,
};
use serde_json::json;
use std::time::Duration;
use tokio_postgres::Client;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// 1. Input paths
// ---------------------------------------------------------------------------

/// Inserts a compose job as `user` would through supabase-js.
async fn submit_paths(
    client: &mut Client,
    user: Uuid,
    input1: &str,
    input2: &str,
) -> Result<Uuid, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    reactor::store::db::act_as_user(&tx, user).await?;
    let id = tx
        .query_one(
            "insert into generation_jobs (owner_id, mode, input1_path, input2_path)
             values ($1, 'compose', $2, $3) returning id",
            &[&user, &input1, &input2],
        )
        .await?
        .get(0);
    tx.commit().await?;
    Ok(id)
}

/// Paths `me` may not use: someone else's files, other buckets, traversal in
/// every spelling, and things that are not paths at all.
fn bad_paths(me: Uuid, other: Uuid) -> Vec<String> {
    [
        format!("private/{other}/inputs/room.jpg"),
        "billing-exports/2026/all.csv".to_string(),
        "public/renders/1/0.jpg".to_string(),
        format!("{me}/inputs/room.jpg"),
        format!("/private/{me}/inputs/room.jpg"),
        format!("private/{me}"),
        format!("private/{me}/"),
        format!("private/{me}/../{other}/inputs/room.jpg"),
        format!("private/{me}/inputs/.."),
        format!("private/{me}/./inputs/room.jpg"),
        format!("private/{me}/%2e%2e/{other}/inputs/room.jpg"),
        format!("private/{me}/%2E%2E/{other}/inputs/room.jpg"),
        format!("private/{me}/..%2f{other}%2finputs%2froom.jpg"),
        format!("private/{me}/%252e%252e/{other}/inputs/room.jpg"),
        format!("private/{me}//inputs/room.jpg"),
        format!("private/{me}/inputs\\..\\..\\{other}\\room.jpg"),
        format!("private/{me}/inputs/room.jpg?x-id=GetObject"),
        format!("private/{me}/inputs/room.jpg#frag"),
        format!("private/{me}/inputs/room\n.jpg"),
        format!("s3://private/{other}/inputs/room.jpg"),
        "file:///etc/passwd".to_string(),
        "https://".to_string(),
        "https:// evil.example/x.jpg".to_string(),
    ]
    .into()
}

#[tokio::test]
async fn a_client_cannot_submit_an_input_path_outside_its_own_private_prefix() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    let me = common::user_with_profile(&c).await;
    let other = common::user_with_profile(&c).await;
    let mine = format!("private/{me}/inputs/room.jpg");
    for bad in bad_paths(me, other) {
        for (column, input1, input2) in [
            ("input1_path", bad.as_str(), mine.as_str()),
            ("input2_path", mine.as_str(), bad.as_str()),
        ] {
            let err = submit_paths(&mut c, me, input1, input2)
                .await
                .expect_err(&format!("{column} = {bad:?} must be refused"));
            let (code, message) = code_and_message(&err);
            assert_eq!(code, "23514", "{column} = {bad:?}: {message}");
            assert!(
                message.contains(column),
                "the message names {column}: {message}"
            );
            assert_eq!(err.as_db_error().and_then(|d| d.column()), Some(column));
            assert_eq!(jobs_of(&c, me).await, 0, "{column} = {bad:?}: no row");
        }
    }
}

#[tokio::test]
async fn an_empty_or_blank_input_path_is_refused_naming_the_column() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    let me = common::user_with_profile(&c).await;
    let mine = format!("private/{me}/inputs/room.jpg");
    for blank in ["", "   "] {
        let err = submit_paths(&mut c, me, &mine, blank)
            .await
            .expect_err("blank input2_path");
        let (code, message) = code_and_message(&err);
        assert_eq!(code, "23502", "{message}");
        assert!(message.contains("input2_path"), "{message}");
        // Also where the mode does not need the input at all.
        let tx = c.transaction().await.unwrap();
        reactor::store::db::act_as_user(&tx, me).await.unwrap();
        let err = tx
            .execute(
                "insert into generation_jobs (owner_id, mode, prompt, input1_path)
                 values ($1, 'imagine', 'a loft', $2)",
                &[&me, &blank],
            )
            .await
            .expect_err("blank input1_path on an imagine job");
        tx.rollback().await.unwrap();
        assert_eq!(
            err.as_db_error().and_then(|d| d.column()),
            Some("input1_path")
        );
    }
    assert_eq!(jobs_of(&c, me).await, 0);
}

#[tokio::test]
async fn own_keys_and_http_urls_are_accepted_unchanged() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    for (input1, input2) in [
        (
            "private/{me}/inputs/room.jpg",
            "private/{me}/inputs/sub dir/sofa.v2.png",
        ),
        (
            "https://cdn.example.com/rooms/1.jpg?token=abc",
            "http://127.0.0.1:9/x.jpg",
        ),
    ] {
        let me = common::user_with_profile(&c).await;
        let (input1, input2) = (
            input1.replace("{me}", &me.to_string()),
            input2.replace("{me}", &me.to_string()),
        );
        let id = submit_paths(&mut c, me, &input1, &input2).await.unwrap();
        let row = c
            .query_one(
                "select input1_path, input2_path from generation_jobs where id = $1",
                &[&id],
            )
            .await
            .unwrap();
        assert_eq!(
            (row.get::<_, String>(0), row.get::<_, String>(1)),
            (input1, input2)
        );
    }
}

#[tokio::test]
async fn the_service_is_held_to_the_input_path_rule_too() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    let me = common::user_with_profile(&c).await;
    let other = common::user_with_profile(&c).await;
    let stolen = format!("private/{other}/inputs/room.jpg");

    // As the reactor's own login (no SET ROLE) and as service_role.
    let err = c
        .execute(
            "insert into generation_jobs (owner_id, mode, input1_path) values ($1, 'redesign', $2)",
            &[&me, &stolen],
        )
        .await
        .expect_err("owner login");
    assert_eq!(common::sqlstate(&err), "23514");
    let tx = c.transaction().await.unwrap();
    tx.batch_execute("set local role service_role")
        .await
        .unwrap();
    let err = tx
        .execute(
            "insert into generation_jobs (owner_id, mode, input1_path) values ($1, 'redesign', $2)",
            &[&me, &stolen],
        )
        .await
        .expect_err("service_role");
    tx.rollback().await.unwrap();
    assert_eq!(common::sqlstate(&err), "23514");
    assert_eq!(jobs_of(&c, me).await, 0);

    // Nor may it point an existing job at someone else's file.
    let id: Uuid = c
        .query_one(
            "insert into generation_jobs (owner_id, mode, input1_path, status)
             values ($1, 'redesign', $2, 'failed') returning id",
            &[&me, &format!("private/{me}/inputs/room.jpg")],
        )
        .await
        .unwrap()
        .get(0);
    let err = c
        .execute(
            "update generation_jobs set input1_path = $2 where id = $1",
            &[&id, &stolen],
        )
        .await
        .expect_err("update to a stolen key");
    assert_eq!(common::sqlstate(&err), "23514");
}

/// Writes a starting job the way a row from before the rule exists: with the
/// table's triggers off (as a restore or logical replication writes rows).
async fn insert_bypassing_triggers(c: &mut Client, owner: Uuid, input1: &str) -> Uuid {
    let tx = c.transaction().await.unwrap();
    tx.batch_execute("set local session_replication_role = replica")
        .await
        .unwrap();
    let id = tx
        .query_one(
            "insert into generation_jobs (owner_id, mode, input1_path) values ($1, 'redesign', $2) returning id",
            &[&owner, &input1],
        )
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    id
}

#[tokio::test]
async fn the_reactor_refuses_to_prefix_a_key_outside_the_job_owners_prefix_and_sends_nothing() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let fake = FakeReplicate::start().await;
    let base = "http://127.0.0.1:9/storage/v1/object/public";
    let flags = fake.reactor_flags(&["--input-base-url", base]);
    let reactor = start_reactor_with(&db, storage.path(), &flags).await;
    let mut c = db.client().await;
    let victim = common::user_with_profile(&c).await;
    let thief = common::user_with_profile(&c).await;

    let stolen = format!("private/{victim}/inputs/room.jpg");
    for bad in [stolen.as_str(), "billing-exports/2026/all.csv"] {
        let id = insert_bypassing_triggers(&mut c, thief, bad).await;
        let error = wait_status(&c, id, "failed").await.unwrap_or_default();
        assert!(
            error.contains("input1_path") && error.contains(&format!("private/{thief}/")),
            "a clear error naming the rule: {error}"
        );
        assert_eq!(fake.create_calls(), 0, "nothing was sent to the provider");
    }

    // The job owner's own key is prefixed; an http(s) URL passes unchanged.
    let own = format!("private/{thief}/inputs/room.jpg");
    let url = "https://cdn.example.com/rooms/1.jpg?token=abc";
    for (i, (input, expected)) in [
        (own.as_str(), format!("{base}/{own}")),
        (url, url.to_string()),
    ]
    .into_iter()
    .enumerate()
    {
        let user = common::user_with_profile(&c).await;
        let input = input.replace(&thief.to_string(), &user.to_string());
        let expected = expected.replace(&thief.to_string(), &user.to_string());
        let tx = c.transaction().await.unwrap();
        reactor::store::db::act_as_user(&tx, user).await.unwrap();
        tx.execute(
            "insert into generation_jobs (owner_id, mode, input1_path) values ($1, 'redesign', $2)",
            &[&user, &input],
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        eventually("prediction created", LONG, || async {
            fake.predictions().len() > i
        })
        .await;
        assert_eq!(
            fake.predictions()[i].input["image_input"],
            json!([expected])
        );
    }
    reactor.stop().await;
}

#[tokio::test]
async fn a_provider_error_never_copies_a_signed_url_or_query_string_into_the_job() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let fake = FakeReplicate::start().await;
    let flags = fake.reactor_flags(&[]);
    let reactor = start_reactor_with(&db, storage.path(), &flags).await;
    let mut c = db.client().await;
    let user = common::user_with_profile(&c).await;
    let id = submit_paths(
        &mut c,
        user,
        "https://cdn.example.com/a.jpg",
        "https://cdn.example.com/b.jpg",
    )
    .await
    .unwrap();
    eventually("prediction created", LONG, || async {
        !fake.predictions().is_empty()
    })
    .await;
    let pid = fake.predictions()[0].id.clone();
    fake.finish(
        &pid,
        "failed",
        serde_json::Value::Null,
        json!("could not download https://s3.example/private/u/in.jpg?X-Amz-Credential=AKID&X-Amz-Signature=abc123: 403"),
    );
    let error = wait_status(&c, id, "failed").await.unwrap_or_default();
    for secret in ["X-Amz", "AKID", "abc123", "?", "s3.example/private"] {
        assert!(!error.contains(secret), "{secret:?} leaked into {error:?}");
    }
    assert!(error.contains("could not download"), "{error}");
    reactor.stop().await;
}

// ---------------------------------------------------------------------------
// 3. The quota race
// ---------------------------------------------------------------------------

/// A plan of `limit` generations a month; returns its price id.
async fn plan(c: &Client, limit: i32) -> String {
    let price = format!("price_{}", Uuid::new_v4().simple());
    c.execute(
        "insert into plans (price_id, name, monthly_generations) values ($1, $1, $2)",
        &[&price, &limit],
    )
    .await
    .unwrap();
    price
}

/// A user on `price` with one generation debited this month and one job
/// processing; returns (user, the processing job).
async fn user_one_below_two(c: &Client, price: &str) -> (Uuid, Uuid) {
    let user = common::user_with_profile(c).await;
    c.execute(
        "update profiles set price_id = $2 where id = $1",
        &[&user, &price],
    )
    .await
    .unwrap();
    let done = common::succeeded_job(c, user, &["https://x.example/0.jpg".into()]).await;
    debit(c, done).await;
    let running: Uuid = c
        .query_one(
            "insert into generation_jobs (owner_id, mode, prompt, status) values ($1, 'imagine', 'x', 'processing') returning id",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    (user, running)
}

async fn debit(c: &Client, job: Uuid) {
    c.execute(
        "insert into usage_ledger (owner_id, kind, amount, job_id)
         select owner_id, 'generation_debit', 1, id from generation_jobs where id = $1",
        &[&job],
    )
    .await
    .unwrap();
}

async fn succeed(c: &Client, job: Uuid) -> Result<u64, tokio_postgres::Error> {
    c.execute(
        "update generation_jobs set status = 'succeeded', output = '[\"https://x.example/1.jpg\"]', completed_at = now()
         where id = $1",
        &[&job],
    )
    .await
}

async fn submit_imagine(c: &mut Client, user: Uuid) -> Result<u64, tokio_postgres::Error> {
    common::as_user(
        c,
        user,
        &format!("insert into generation_jobs (owner_id, mode, prompt) values ('{user}', 'imagine', 'a loft')"),
    )
    .await
}

#[tokio::test]
async fn a_succeeded_job_not_yet_debited_counts_against_the_quota() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    let price = plan(&c, 2).await;
    let (user, running) = user_one_below_two(&c, &price).await;
    // The job succeeds; its debit has not been written (no reactor running).
    succeed(&c, running).await.unwrap();
    let err = submit_imagine(&mut c, user)
        .await
        .expect_err("1 debited + 1 pending = 2 of 2");
    let (code, message) = code_and_message(&err);
    assert_eq!(code, "PT402", "{message}");
    assert!(message.contains("2 of 2"), "{message}");
    // Once debited, it is counted once, not twice.
    debit(&c, running).await;
    let err = submit_imagine(&mut c, user).await.expect_err("2 of 2");
    assert!(code_and_message(&err).1.contains("2 of 2"), "{err}");
    assert_eq!(jobs_of(&c, user).await, 2);

    // Failed and canceled jobs are never debited, so they never count.
    let (user, running) = user_one_below_two(&c, &price).await;
    c.execute(
        "update generation_jobs set status = 'failed', completed_at = now() where id = $1",
        &[&running],
    )
    .await
    .unwrap();
    submit_imagine(&mut c, user).await.expect("1 of 2 used");
}

#[tokio::test]
async fn success_racing_a_submission_never_ends_above_the_plan() {
    let db = common::migrated_db().await;
    let service = db.client().await;
    let mut client = db.client().await;
    let setup = db.client().await;
    let price = plan(&setup, 2).await;
    let mut accepted = 0;
    for _ in 0..120 {
        let (user, running) = user_one_below_two(&setup, &price).await;
        let (a, b) = (rand::random_range(0..3u64), rand::random_range(0..3u64));
        let (succeeded, submitted) = tokio::join!(
            async {
                tokio::time::sleep(Duration::from_micros(a * 300)).await;
                succeed(&service, running).await
            },
            async {
                tokio::time::sleep(Duration::from_micros(b * 300)).await;
                submit_imagine(&mut client, user).await
            }
        );
        succeeded.unwrap();
        if let Ok(n) = submitted {
            accepted += n;
        }
        // Whatever got in succeeds and is debited, as the reactor would do.
        setup
            .execute(
                "update generation_jobs set status = 'succeeded', output = '[\"https://x.example/2.jpg\"]', completed_at = now()
                 where owner_id = $1 and status in ('starting', 'processing')",
                &[&user],
            )
            .await
            .unwrap();
        common::debit_succeeded_jobs(&setup, user).await;
        let used = count(
            &setup,
            &format!("select coalesce(sum(amount), 0)::bigint from usage_ledger where owner_id = '{user}'"),
        )
        .await;
        assert!(used <= 2, "{used} generations used on a plan of 2");
    }
    assert_eq!(accepted, 0, "no submission could get past a pending debit");
}

// 3b. The submit lock: nobody but the submit rules and the reactor can hold it.

/// A login with no grants at all, connected to `db`.
async fn nobody(db: &TestDb, admin: &Client) -> Client {
    let role = format!("nobody_{}", Uuid::new_v4().simple());
    admin
        .batch_execute(&format!("create role {role} login"))
        .await
        .unwrap();
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_username(&role).unwrap();
    reactor::store::db::connect(url.as_str()).await.unwrap()
}

#[tokio::test]
async fn a_login_with_no_grants_cannot_stall_an_owners_submissions() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    let user = common::user_with_profile(&c).await;
    let squatter = nobody(&db, &c).await;
    // The old submit lock: an advisory key anyone can compute from the
    // public user id, held in an open transaction.
    squatter
        .batch_execute(&format!(
            "begin; select pg_advisory_xact_lock(hashtext('reactor.submit'), hashtext('{user}'))"
        ))
        .await
        .unwrap();
    // The owner's submission goes through (a stall would hit the timeout).
    let tx = c.transaction().await.unwrap();
    tx.batch_execute("set local statement_timeout = '5s'")
        .await
        .unwrap();
    reactor::store::db::act_as_user(&tx, user).await.unwrap();
    tx.execute(
        "insert into generation_jobs (owner_id, mode, prompt) values (auth.uid(), 'imagine', 'a loft')",
        &[],
    )
    .await
    .expect("not stalled by the squatter");
    tx.commit().await.unwrap();
    squatter.batch_execute("rollback").await.unwrap();

    // The lock now used is out of the squatter's reach, and of other users'.
    for attempt in [
        format!("select reactor.lock_submissions('{user}')"),
        "select 1 from reactor.submit_locks for key share".to_string(),
    ] {
        let err = squatter.batch_execute(&attempt).await.expect_err(&attempt);
        assert_eq!(common::sqlstate(&err), "42501", "{attempt}: {err}");
        let other = common::user_with_profile(&c).await;
        let err = common::as_user(&mut c, other, &attempt)
            .await
            .expect_err(&attempt);
        assert_eq!(
            common::sqlstate(&err),
            "42501",
            "{attempt} as a user: {err}"
        );
    }
}

// ---------------------------------------------------------------------------
// 4. cancel_generation_job and EXECUTE grants
// ---------------------------------------------------------------------------

async fn starting_job(c: &Client, owner: Uuid) -> Uuid {
    c.query_one(
        "insert into generation_jobs (owner_id, mode, prompt) values ($1, 'imagine', 'a barn') returning id",
        &[&owner],
    )
    .await
    .unwrap()
    .get(0)
}

async fn status(c: &Client, id: Uuid) -> String {
    job_state(c, id).await.0
}

#[tokio::test]
async fn a_session_claiming_service_role_cannot_cancel_anothers_job() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    let victim = common::user_with_profile(&c).await;
    let attacker = common::user_with_profile(&c).await;
    let job = starting_job(&c, victim).await;

    for forge in [
        "select set_config('request.jwt.claim.role', 'service_role', false)".to_string(),
        format!(
            "select set_config('request.jwt.claims', '{}', false)",
            json!({"sub": attacker.to_string(), "role": "service_role"})
        ),
    ] {
        let tx = c.transaction().await.unwrap();
        tx.batch_execute("set local role authenticated")
            .await
            .unwrap();
        tx.execute(
            "select set_config('request.jwt.claim.sub', $1, false)",
            &[&attacker.to_string()],
        )
        .await
        .unwrap();
        tx.batch_execute(&forge).await.unwrap();
        let err = tx
            .query_one("select cancel_generation_job($1)", &[&job])
            .await
            .expect_err("a forged claim gives no authority");
        tx.rollback().await.unwrap();
        assert_eq!(common::sqlstate(&err), "PT404", "{forge}");
        assert_eq!(status(&c, job).await, "starting");
    }

    // Real authority still works: the service_role role, and the reactor's login.
    let tx = c.transaction().await.unwrap();
    tx.batch_execute("set local role service_role")
        .await
        .unwrap();
    let s: String = tx
        .query_one("select cancel_generation_job($1)", &[&job])
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    assert_eq!(s, "canceled");
    let other = common::user_with_profile(&c).await;
    let job = starting_job(&c, other).await;
    let s: String = c
        .query_one("select cancel_generation_job($1)", &[&job])
        .await
        .unwrap()
        .get(0);
    assert_eq!(s, "canceled");
}

/// A database migrated the way it is on Supabase: default privileges grant
/// every new table and function in schema public to anon and authenticated.
async fn supabase_like_db() -> TestDb {
    let db = common::empty_db().await;
    let c = db.client().await;
    c.batch_execute(
        "do $$ declare r text; begin
           foreach r in array array['anon', 'authenticated', 'service_role'] loop
             if not exists (select 1 from pg_roles where rolname = r) then
               begin execute format('create role %I nologin noinherit', r);
               exception when duplicate_object or unique_violation then null; end;
             end if;
           end loop;
         end $$;
         alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
         alter default privileges in schema public grant all on functions to anon, authenticated, service_role;
         alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;",
    )
    .await
    .unwrap();
    drop(c);
    let mut c = db.client().await;
    reactor::store::migrate::run(&mut c).await.expect("migrate");
    db
}

/// Functions the migrations install in public and reactor that `role` may execute.
async fn executable_by(c: &Client, role: &str) -> Vec<String> {
    common::texts(c, "select p.oid::regprocedure::text from pg_proc p
         where p.pronamespace in ('public'::regnamespace, 'reactor'::regnamespace)
           and not exists (select 1 from pg_depend d
                           where d.classid = 'pg_proc'::regclass and d.objid = p.oid and d.deptype = 'e')
           and has_function_privilege($1, p.oid, 'EXECUTE')
         order by 1",
        &[&role]).await
}

#[tokio::test]
async fn on_supabase_default_privileges_anon_may_execute_nothing_and_clients_only_cancel() {
    let db = supabase_like_db().await;
    let mut c = db.client().await;
    assert_eq!(executable_by(&c, "anon").await, Vec::<String>::new());
    assert_eq!(
        executable_by(&c, "authenticated").await,
        vec!["cancel_generation_job(uuid)".to_string()]
    );

    let tx = c.transaction().await.unwrap();
    tx.batch_execute("set local role anon").await.unwrap();
    let err = tx
        .query_one("select cancel_generation_job(gen_random_uuid())", &[])
        .await
        .expect_err("anon may not call it");
    tx.rollback().await.unwrap();
    assert_eq!(common::sqlstate(&err), "42501");

    // Tables: anon reads only the public catalogue.
    let readable = common::texts(&c, "select c.oid::regclass::text from pg_class c
             where c.relnamespace in ('public'::regnamespace, 'reactor'::regnamespace)
               and c.relkind in ('r', 'p', 'v', 'm')
               and has_table_privilege('anon', c.oid, 'SELECT, INSERT, UPDATE, DELETE, TRUNCATE, REFERENCES, TRIGGER')
             order by 1",
            &[]).await;
    assert_eq!(
        readable,
        vec!["community_collections", "community_items", "plans"]
    );
}
