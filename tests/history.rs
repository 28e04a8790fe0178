//! Cost in O(pending), not O(history) (issue 12): the markers that take a
//! handled row out of its handler's pending condition, the partial indexes
//! that serve the pending queries, and the lazy backfill of an existing
//! database. Timings live in bench/; these tests assert the mechanics.
mod common;

use common::{as_user, auth_user, count, eventually, start_reactor, user_with_profile, TestDb};
use reactor::store::migrate::{self, Migration};
use reactor::store::pending::Statements;
use std::time::Duration;
use tokio_postgres::Client;

const LONG: Duration = Duration::from_secs(90);

/// The files this issue added: a database migrated without them is one from before.
/// The marker migrations and every later one (some build on the markers):
/// left out, the rest is the schema of a database from before the markers.
fn is_marker_migration(m: &Migration) -> bool {
    let (dir, file) = m.name.split_once('/').unwrap_or(("", m.name));
    match dir {
        "sql" => file >= "180",
        "triggers" => file >= "170",
        _ => false,
    }
}

/// Succeeded jobs without output, rendered already (so no render is due and
/// the debit is the usage handler's), set-based, one per profile.
async fn succeeded_jobs_for_every_profile(client: &Client) {
    client
        .batch_execute(
            "insert into generation_jobs (owner_id, mode, prompt, status, completed_at, rendered_at)
             select id, 'imagine', 'history', 'succeeded', now(), now() from profiles",
        )
        .await
        .unwrap();
}

/// `n` auth users with profiles, set-based.
async fn profiles(client: &Client, n: i64) {
    client
        .batch_execute(&format!(
            "insert into auth.users (id, email)
               select gen_random_uuid(), 'h' || g || '@example.test' from generate_series(1, {n}) g;
             insert into profiles (id) select id from auth.users
               where not exists (select 1 from profiles p where p.id = auth.users.id);"
        ))
        .await
        .unwrap();
}

/// Every marker is set exactly when its effect exists, and no effect is missing.
async fn assert_markers_match_effects(client: &Client) {
    assert_eq!(
        count(
            client,
            "select count(*) from generation_jobs j where (j.debited_at is not null) <>
               exists (select 1 from usage_ledger u where u.job_id = j.id and u.kind = 'generation_debit')"
        )
        .await,
        0,
        "debited_at is set exactly for the jobs with a debit"
    );
    assert_eq!(
        count(
            client,
            "select count(*) from generation_jobs where status = 'succeeded' and debited_at is null"
        )
        .await,
        0,
        "every succeeded job is debited and marked"
    );
    assert_eq!(
        count(
            client,
            "select count(*) from profiles p where (p.favorites_at is not null) <>
               exists (select 1 from collections c where c.owner_id = p.id and c.is_default_favorites)"
        )
        .await,
        0,
        "favorites_at is set exactly for the profiles with their favorites collection"
    );
    assert_eq!(
        count(
            client,
            "select count(*) from profiles where favorites_at is null"
        )
        .await,
        0,
        "every profile has its favorites"
    );
}

async fn nothing_pending(client: &Client) -> bool {
    count(
        client,
        "select (select count(*) from generation_jobs where status = 'succeeded' and debited_at is null)
              + (select count(*) from profiles where favorites_at is null)",
    )
    .await
        == 0
}

#[tokio::test]
async fn markers_are_set_with_their_effects_and_never_without() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let client = db.client().await;
    profiles(&client, 20).await;
    succeeded_jobs_for_every_profile(&client).await;
    let owner = user_with_profile(&client).await;
    // Never pending for usage: no debit, so no marker either.
    client
        .batch_execute(&format!(
            "insert into generation_jobs (owner_id, mode, prompt, status, error) values
               ('{owner}', 'imagine', 'x', 'failed', 'provider said no'),
               ('{owner}', 'imagine', 'x', 'canceled', null)"
        ))
        .await
        .unwrap();
    let reactor = start_reactor(&db, storage.path(), &[]).await;
    eventually("every marker set", LONG, || nothing_pending(&client)).await;
    assert_markers_match_effects(&client).await;
    assert_eq!(
        count(
            &client,
            "select count(*) from generation_jobs where status in ('failed', 'canceled') and debited_at is not null"
        )
        .await,
        0
    );
    assert_eq!(
        count(&client, "select count(*) from reactor.handler_state").await,
        0,
        "no state is left behind after work"
    );
    reactor.stop().await;
}

#[tokio::test]
async fn a_job_that_succeeds_after_the_replay_is_debited_and_marked() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let client = db.client().await;
    let owner = user_with_profile(&client).await;
    let job: uuid::Uuid = client
        .query_one(
            "insert into generation_jobs (owner_id, mode, prompt, status, error)
             values ($1, 'imagine', 'x', 'failed', 'provider said no') returning id",
            &[&owner],
        )
        .await
        .unwrap()
        .get(0);
    let reactor = start_reactor(&db, storage.path(), &[]).await;
    eventually("replayed", LONG, || async { reactor.status.ready() }).await;
    // An operator corrects the job; it is pending only from now on.
    client
        .execute(
            "update generation_jobs set status = 'succeeded', error = null, rendered_at = now() where id = $1",
            &[&job],
        )
        .await
        .unwrap();
    eventually("the late success debited", LONG, || async {
        count(
            &client,
            &format!("select count(*) from generation_jobs where id = '{job}' and debited_at is not null"),
        )
        .await
            == 1
    })
    .await;
    assert_markers_match_effects(&client).await;
    reactor.stop().await;
}

#[tokio::test]
async fn a_deleted_favorites_collection_comes_back_as_before_markers() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let client = db.client().await;
    let reactor = start_reactor(&db, storage.path(), &[]).await;
    let user = user_with_profile(&client).await;
    let favorites = format!(
        "select count(*) from collections where owner_id = '{user}' and is_default_favorites"
    );
    eventually("favorites created", LONG, || async {
        count(&client, &favorites).await == 1
    })
    .await;
    // The service role may delete it (clients may not); the marker follows.
    client
        .execute("delete from collections where owner_id = $1", &[&user])
        .await
        .unwrap();
    eventually("favorites re-created by a sweep", LONG, || async {
        count(&client, &favorites).await == 1
    })
    .await;
    assert_markers_match_effects(&client).await;
    reactor.stop().await;
}

#[tokio::test]
async fn clients_cannot_set_or_clear_the_markers() {
    let db = common::migrated_db().await;
    let mut client = db.client().await;
    let user = auth_user(&client).await;
    let forged = as_user(
        &mut client,
        user,
        &format!("insert into profiles (id, favorites_at) values ('{user}', now())"),
    )
    .await
    .expect_err("a client may not mark its profile as having favorites");
    assert_eq!(common::sqlstate(&forged), "42501", "{forged}");
    as_user(
        &mut client,
        user,
        &format!("insert into profiles (id) values ('{user}')"),
    )
    .await
    .unwrap();
    let forged = as_user(
        &mut client,
        user,
        &format!("update profiles set favorites_at = now() where id = '{user}'"),
    )
    .await
    .expect_err("a client may not set favorites_at");
    assert_eq!(common::sqlstate(&forged), "42501", "{forged}");
    let forged = as_user(
        &mut client,
        user,
        &format!(
            "insert into generation_jobs (owner_id, mode, prompt, debited_at)
             values ('{user}', 'imagine', 'x', now())"
        ),
    )
    .await
    .expect_err("a client may not submit a job marked as debited");
    assert_eq!(common::sqlstate(&forged), "42501", "{forged}");
    // Nor clear it once the reactor set it (that would only re-run the effect,
    // but the marker is the server's).
    client
        .execute(
            "update profiles set favorites_at = now() where id = $1",
            &[&user],
        )
        .await
        .unwrap();
    let forged = as_user(
        &mut client,
        user,
        &format!("update profiles set favorites_at = null where id = '{user}'"),
    )
    .await
    .expect_err("a client may not clear favorites_at");
    assert_eq!(common::sqlstate(&forged), "42501", "{forged}");
    // Their own profile's other columns stay theirs to update.
    as_user(
        &mut client,
        user,
        &format!("update profiles set updated_at = now() where id = '{user}'"),
    )
    .await
    .unwrap();
}

/// 50,000 handled profiles and jobs created before the markers existed: after
/// the migration every marker is null, and the reactor backfills them in
/// batches (finding each debit and collection already there), creating
/// nothing twice and handling the few rows that really were pending.
#[tokio::test]
async fn an_existing_database_is_backfilled_by_the_reactor_in_batches() {
    const N: i64 = 50_000;
    let db = common::empty_db().await;
    let mut client = db.client().await;
    let before: Vec<Migration> = migrate::MIGRATIONS
        .iter()
        .filter(|m| !is_marker_migration(m))
        .copied()
        .collect();
    migrate::apply(&mut client, &before).await.unwrap();
    profiles(&client, N).await;
    succeeded_jobs_for_every_profile(&client).await;
    client
        .batch_execute(
            "insert into collections (owner_id, name, is_default_favorites)
               select id, 'My Favorites', true from profiles;
             insert into usage_ledger (owner_id, kind, amount, meta, job_id)
               select owner_id, 'generation_debit', 1, jsonb_build_object('jobId', id), id
               from generation_jobs;",
        )
        .await
        .unwrap();
    // Really pending when the migration comes: 7 new profiles and their jobs.
    profiles(&client, 7).await;
    client
        .batch_execute(
            "insert into generation_jobs (owner_id, mode, prompt, status, completed_at, rendered_at)
             select p.id, 'imagine', 'new', 'succeeded', now(), now() from profiles p
             where not exists (select 1 from generation_jobs j where j.owner_id = p.id)",
        )
        .await
        .unwrap();

    let report = migrate::run(&mut client).await.unwrap();
    assert!(
        report
            .applied
            .iter()
            .any(|n| n == "sql/180_pending_markers.sql"),
        "{report:?}"
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from generation_jobs where debited_at is not null"
        )
        .await,
        0,
        "the migration itself touches no existing row"
    );

    let storage = tempfile::tempdir().unwrap();
    let reactor = start_reactor(&db, storage.path(), &[]).await;
    eventually("every marker backfilled", LONG, || nothing_pending(&client)).await;
    assert_markers_match_effects(&client).await;
    assert_eq!(
        count(&client, "select count(*) from usage_ledger").await,
        N + 7,
        "one debit per job: the old ones found, the new ones made"
    );
    assert_eq!(
        count(&client, "select count(*) from collections").await,
        N + 7
    );
    reactor.stop().await;
}

/// The plan of `sql` (with `params`) under a generic plan, as the engine's
/// cached statements end up using.
async fn plan(
    client: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> String {
    client
        .batch_execute("set plan_cache_mode = force_generic_plan")
        .await
        .unwrap();
    let rows = client
        .query(&format!("explain {sql}"), params)
        .await
        .unwrap_or_else(|e| panic!("explain {sql}: {e}"));
    rows.iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A database with 200,000 handled profiles and jobs, analyzed.
async fn big_handled_history() -> TestDb {
    let db = common::migrated_db().await;
    let client = db.client().await;
    profiles(&client, 200_000).await;
    client
        .batch_execute(
            "insert into generation_jobs (owner_id, mode, prompt, status, output, completed_at,
                                          rendered_at, debited_at)
               select id, 'imagine', 'history', 'succeeded', '[\"http://x/1.jpg\"]', now(), now(), now()
               from profiles;
             -- Old timed-out jobs, long out of the late window.
             insert into generation_jobs (owner_id, mode, prompt, status, error, prediction_id, created_at)
               select id, 'imagine', 'history', 'failed', 'timed out', 'p' || id, now() - interval '30 days'
               from profiles limit 50000;
             update profiles set favorites_at = now();
             -- Objects of deleted renders a community item still names (held):
             -- never pending, however many.
             insert into reactor.deleted_objects (render_id, path, held)
               select gen_random_uuid(), 'renders/held/' || n || '.jpg', true
               from generate_series(1, 50000) n;
             analyze;",
        )
        .await
        .unwrap();
    db
}

#[tokio::test]
async fn every_builtin_pending_page_is_served_by_its_partial_index() {
    let db = big_handled_history().await;
    let client = db.client().await;
    let expected = [
        (
            "generation",
            vec!["idx_jobs_in_flight_owner", "idx_jobs_followed_owner"],
        ),
        ("renders", vec!["idx_jobs_pending_renders"]),
        ("usage", vec!["idx_jobs_usage_workable"]),
        ("favorites", vec!["idx_profiles_favorites_workable"]),
        ("deleted_objects", vec!["idx_deleted_objects_pending"]),
    ];
    let handlers = [
        reactor::handlers::usage::handler(),
        reactor::handlers::favorites::handler(),
    ];
    let limit = 500i64;
    for spec in reactor::http::ops::builtin_specs() {
        let after = match spec.key_type {
            reactor::job::handler::KeyType::Bigint => "0".to_string(),
            _ => uuid::Uuid::nil().to_string(),
        };
        let (_, indexes) = expected
            .iter()
            .find(|(name, _)| *name == spec.name)
            .expect("every built-in handler is checked");
        let sql_action = handlers.iter().find_map(|h| match &h.action {
            reactor::job::handler::Action::Sql { effect, mark, .. } if h.spec.name == spec.name => {
                Some((effect.clone(), mark.clone()))
            }
            _ => None,
        });
        let statements = match &sql_action {
            Some((effect, mark)) => Statements::build(&spec, Some(effect), mark.as_deref()),
            None => Statements::build(&spec, None, None),
        };
        let mut checked = vec![
            (
                "pending_first",
                plan(&client, &statements.pending_first, &[&limit]).await,
            ),
            (
                "pending_after",
                plan(&client, &statements.pending_after, &[&limit, &after]).await,
            ),
        ];
        if let (Some(first), Some(next)) = (&statements.effect_first, &statements.effect_after) {
            checked.push(("effect_first", plan(&client, first, &[&limit]).await));
            checked.push(("effect_after", plan(&client, next, &[&limit, &after]).await));
        }
        for (what, plan) in checked {
            for table in [
                "generation_jobs",
                "profiles",
                "collections",
                "usage_ledger",
                "deleted_objects",
            ] {
                assert!(
                    !plan.contains(&format!("Seq Scan on {table}")),
                    "{} {what} scans {table}:\n{plan}",
                    spec.name
                );
            }
            for index in indexes {
                assert!(
                    plan.contains(index),
                    "{} {what} does not use {index}:\n{plan}",
                    spec.name
                );
            }
        }
    }
}

/// A backlog (every row pending) is drained page by page: each page marks its
/// rows by key, never by hashing the whole table. Joined with `picked`, the
/// marker update of a 50k backlog read every profile on every page.
#[tokio::test]
async fn a_backlog_page_marks_its_rows_by_key_not_by_scanning_the_table() {
    let db = common::migrated_db().await;
    let client = db.client().await;
    profiles(&client, 50_000).await;
    succeeded_jobs_for_every_profile(&client).await;
    client.batch_execute("analyze").await.unwrap();
    let limit = 500i64;
    let after = uuid::Uuid::nil().to_string();
    for handler in [
        reactor::handlers::usage::handler(),
        reactor::handlers::favorites::handler(),
    ] {
        let reactor::job::handler::Action::Sql { effect, mark, .. } = &handler.action else {
            unreachable!("usage and favorites are SQL actions")
        };
        let statements = Statements::build(&handler.spec, Some(effect), mark.as_deref());
        for (what, sql, params) in [
            (
                "effect_first",
                statements.effect_first.clone(),
                vec![&limit as &(dyn tokio_postgres::types::ToSql + Sync)],
            ),
            (
                "effect_after",
                statements.effect_after.clone(),
                vec![&limit as _, &after as _],
            ),
        ] {
            let plan = plan(&client, &sql.expect("an SQL action"), &params).await;
            for table in ["generation_jobs", "profiles"] {
                assert!(
                    !plan.contains(&format!("Seq Scan on {table}")),
                    "{} {what} scans {table}:\n{plan}",
                    handler.spec.name
                );
            }
        }
    }
}

/// The plans of every statement `sql` runs, nested ones included (the submit
/// rules run in a trigger), as auto_explain reports them.
async fn nested_plans(db: &TestDb, sql: &str) -> Vec<String> {
    use futures::StreamExt as _;
    let config: tokio_postgres::Config = db.url.parse().unwrap();
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
    let (sender, mut plans) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notice(notice) = message {
                let _ = sender.send(notice.message().to_string());
            }
        }
    });
    client
        .batch_execute(
            "load 'auto_explain';
             set auto_explain.log_min_duration = 0;
             set auto_explain.log_nested_statements = on;
             set client_min_messages = log;
             -- What plpgsql ends up running after a few calls.
             set plan_cache_mode = force_generic_plan;",
        )
        .await
        .unwrap();
    client.batch_execute(sql).await.unwrap();
    drop(client);
    reader.await.unwrap();
    let mut out = Vec::new();
    while let Ok(plan) = plans.try_recv() {
        out.push(plan);
    }
    out
}

#[tokio::test]
async fn every_per_submit_query_reads_only_the_owners_month() {
    let db = common::migrated_db().await;
    let client = db.client().await;
    // 1,000 owners with 50 handled jobs and debits each, spread over a year.
    profiles(&client, 1_000).await;
    client
        .batch_execute(
            "insert into generation_jobs (owner_id, mode, prompt, status, created_at, debited_at, idempotency_key)
               select p.id, 'imagine', 'history', 'succeeded', now() - g * interval '7 days', now(), gen_random_uuid()
               from profiles p, generate_series(1, 50) g;
             insert into usage_ledger (owner_id, kind, amount, meta, job_id, created_at)
               select owner_id, 'generation_debit', 1, jsonb_build_object('jobId', id), id, created_at
               from generation_jobs;
             analyze;",
        )
        .await
        .unwrap();
    let owner: uuid::Uuid = client
        .query_one("select id from profiles limit 1", &[])
        .await
        .unwrap()
        .get(0);
    let plans = nested_plans(
        &db,
        &format!(
            "insert into generation_jobs (owner_id, mode, prompt, idempotency_key)
             values ('{owner}', 'imagine', 'one more', gen_random_uuid())"
        ),
    )
    .await;
    let quota = plans
        .iter()
        .find(|p| p.contains("from public.usage_ledger"))
        .unwrap_or_else(|| panic!("the quota sum was explained: {plans:#?}"));
    // The month is a range of the owner's index, not a filter over their history.
    assert!(
        quota.lines().any(|l| l.contains("Index Cond")
            && l.contains("owner_id")
            && l.contains("created_at >=")),
        "{quota}"
    );
    for plan in &plans {
        for table in ["generation_jobs", "usage_ledger", "profiles"] {
            assert!(
                !plan.contains(&format!("Seq Scan on {table}")),
                "a per-submit statement scans {table}:\n{plan}"
            );
        }
    }
}

/// The submit rule "one job in flight per owner" reads only the owner's
/// in-flight jobs, also when the statistics were taken with none in flight and
/// a burst has put thousands of other users' jobs in flight since.
#[tokio::test]
async fn the_in_flight_rule_reads_only_the_owners_jobs_in_flight() {
    let db = common::migrated_db().await;
    let client = db.client().await;
    profiles(&client, 1_000).await;
    client
        .batch_execute(
            "insert into generation_jobs (owner_id, mode, prompt, status, debited_at)
               select p.id, 'imagine', 'history', 'succeeded', now()
               from profiles p, generate_series(1, 20) g;
             analyze;
             -- The burst, after the statistics: written as the service would
             -- import them (the submit rules allow one per owner).
             set session_replication_role = replica;
             insert into generation_jobs (owner_id, mode, prompt, status)
               select p.id, 'imagine', 'burst', 'processing'
               from profiles p, generate_series(1, 5) g;
             set session_replication_role = origin;",
        )
        .await
        .unwrap();
    profiles(&client, 1).await;
    let owner: uuid::Uuid = client
        .query_one(
            "select id from profiles p
             where not exists (select 1 from generation_jobs j where j.owner_id = p.id)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let plans = nested_plans(
        &db,
        &format!(
            "insert into generation_jobs (owner_id, mode, prompt)
             values ('{owner}', 'imagine', 'one more')"
        ),
    )
    .await;
    let in_flight = plans
        .iter()
        .find(|p| p.contains("status in ('starting', 'processing')") && !p.contains("insert"))
        .unwrap_or_else(|| panic!("the in-flight rule was explained: {plans:#?}"));
    assert!(
        in_flight
            .lines()
            .any(|l| l.contains("Index Cond") && l.contains("owner_id")),
        "the in-flight rule filters other users' jobs instead of looking up the owner's:\n{in_flight}"
    );
}

/// The manual's advice for big tables (docs/src/schema.md): add the columns and build the partial
/// indexes concurrently before `reactor migrate`, which then skips them.
#[tokio::test]
async fn the_manuals_concurrent_index_statements_run_before_the_migration_and_it_skips_them() {
    let readme = include_str!("../docs/src/schema.md");
    let start = readme
        .find("-- Instant: a nullable column without a default rewrites nothing.")
        .expect("the manual's statements (docs/src/schema.md)");
    let block = &readme[start..start + readme[start..].find("```").expect("end of block")];
    let statements: Vec<String> = block
        .split(';')
        .map(|s| {
            s.lines()
                .filter(|l| !l.trim_start().starts_with("--"))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .filter(|s| !s.trim().is_empty())
        .collect();
    assert_eq!(statements.len(), 12, "{statements:#?}");

    let db = common::empty_db().await;
    let mut client = db.client().await;
    let before: Vec<Migration> = migrate::MIGRATIONS
        .iter()
        .filter(|m| !is_marker_migration(m))
        .copied()
        .collect();
    migrate::apply(&mut client, &before).await.unwrap();
    let partial_indexes = "select count(*) from pg_index
         where indrelid in ('public.generation_jobs'::regclass, 'public.profiles'::regclass)
           and indpred is not null and indisvalid";
    let partial_before = count(&client, partial_indexes).await;
    for statement in &statements {
        // One by one, outside a transaction, as CONCURRENTLY requires.
        client
            .simple_query(statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
    let report = migrate::run(&mut client).await.unwrap();
    assert!(
        report
            .applied
            .iter()
            .any(|n| n == "sql/180_pending_markers.sql"),
        "{report:?}"
    );
    // The migration made no second copy: the manual names its indexes.
    assert_eq!(count(&client, partial_indexes).await, partial_before + 6);
}
