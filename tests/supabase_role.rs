//! The reactor as Supabase's `postgres` role runs it: no superuser after the
//! set-up (see src/sandbox/supabase_like.rs for the role's shape), Realtime's read
//! authorization on realtime.messages, the outbox switch, foreign policies,
//! and the one-file schema for the Supabase CLI.
mod common;

use common::{count, eventually, favorites_of, submit_job, succeeded_with_render, TestDb};
use reactor::store::migrate::{self, MigrateError, Options};
use reactor::store::notify_mode::{self, Mode};
use std::time::Duration;
use tokio_postgres::Client;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(30);

/// A fresh database owned by a new Supabase-`postgres`-like role; the
/// returned TestDb connects as that role.
async fn supabase_db() -> TestDb {
    let db = common::empty_db().await;
    let role = format!("owner_{}", Uuid::new_v4().simple());
    let url = reactor::sandbox::supabase_like::prepare(common::server_url().await, &db.name, &role)
        .await
        .expect("Supabase-like set-up");
    TestDb { url, name: db.name }
}

/// The superuser's connection to the same database (set-up only).
async fn superuser(db: &TestDb) -> Client {
    let url = common::with_dbname(common::server_url().await, &db.name);
    reactor::store::db::connect(&url).await.unwrap()
}

async fn migrate_as_owner(db: &TestDb) -> migrate::Report {
    let mut client = db.client().await;
    migrate::run(&mut client)
        .await
        .expect("migrate as the owner")
}

#[tokio::test]
async fn migrate_and_run_work_as_a_role_shaped_like_supabase_postgres() {
    let db = supabase_db().await;
    let client = db.client().await;
    let row = client
        .query_one(
            "select rolsuper, rolbypassrls, rolcreaterole, rolcreatedb from pg_roles where rolname = current_user",
            &[],
        )
        .await
        .unwrap();
    let attrs: (bool, bool, bool, bool) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(
        attrs,
        (false, true, true, true),
        "NOSUPERUSER BYPASSRLS CREATEROLE CREATEDB"
    );

    let first = migrate_as_owner(&db).await;
    assert_eq!(first.applied.len(), migrate::MIGRATIONS.len());
    let again = migrate_as_owner(&db).await;
    assert!(again.applied.is_empty(), "{:?}", again.applied);
    let owner: String = client
        .query_one("select tableowner::text from pg_tables where schemaname = 'public' and tablename = 'generation_jobs'", &[])
        .await
        .unwrap()
        .get(0);
    let me: String = client
        .query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, me, "the role owns what it creates");

    let storage = tempfile::tempdir().unwrap();
    let reactor = common::start_reactor(&db, storage.path(), &[]).await;
    let user = common::user_with_profile(&client).await;
    eventually("favorites for the new profile", LONG, || async {
        favorites_of(&client, user).await == 1
    })
    .await;
    let job = submit_job(&db, user, "imagine", "a bright loft")
        .await
        .unwrap();
    eventually("the job succeeds with a render", LONG, || async {
        succeeded_with_render(&client, job).await == 1
    })
    .await;
    reactor.stop().await;
}

#[tokio::test]
async fn the_owner_switches_outbox_mode_on_and_off_without_superuser() {
    let db = supabase_db().await;
    migrate_as_owner(&db).await;
    let client = db.client().await;
    // What the old switch does for this role, and why the table exists.
    let refused = client
        .batch_execute(&format!(
            "alter database {} set reactor.notify_mode = 'outbox'",
            db.name
        ))
        .await
        .expect_err("ALTER DATABASE SET is superuser-only");
    assert_eq!(common::sqlstate(&refused), "42501");

    assert_eq!(
        notify_mode::show(&client).await.unwrap().effective,
        "notify"
    );
    let on = notify_mode::set(&client, Mode::Outbox).await.unwrap();
    assert_eq!(on.effective, "outbox");
    let user = common::user_with_profile(&client).await;
    assert_eq!(
        count(&client, "select count(*) from reactor.outbox").await,
        1
    );

    // The start-up replay may handle that first profile before the outbox is
    // drained; once the reactor is ready, sweeps an hour apart leave only the
    // outbox to bring a new profile's hint.
    let storage = tempfile::tempdir().unwrap();
    let reactor = common::start_reactor(
        &db,
        storage.path(),
        &["--outbox-poll", "100ms", "--sweep-interval", "1h"],
    )
    .await;
    eventually("the first profile handled", LONG, || async {
        favorites_of(&client, user).await == 1
    })
    .await;
    eventually("reactor ready", LONG, || async { reactor.status.ready() }).await;
    let through_outbox = common::user_with_profile(&client).await;
    eventually("favorites through the outbox", LONG, || async {
        favorites_of(&client, through_outbox).await == 1
    })
    .await;
    eventually("the outbox drained", LONG, || async {
        count(&client, "select count(*) from reactor.outbox").await == 0
    })
    .await;

    let off = notify_mode::set(&client, Mode::Notify).await.unwrap();
    assert_eq!(off.effective, "notify");
    let second = common::user_with_profile(&client).await;
    assert_eq!(
        count(&client, "select count(*) from reactor.outbox").await,
        0,
        "back to NOTIFY"
    );
    eventually("favorites through NOTIFY", LONG, || async {
        favorites_of(&client, second).await == 1
    })
    .await;
    reactor.stop().await;
}

#[tokio::test]
async fn the_notify_mode_command_switches_and_names_an_overriding_database_setting() {
    let db = supabase_db().await;
    migrate_as_owner(&db).await;
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_reactor"))
            .arg("notify-mode")
            .args(args)
            .env("DATABASE_URL", &db.url)
            .output()
            .expect("run reactor notify-mode")
    };
    let out = cli(&["outbox"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("notify mode: outbox"));
    let shown = cli(&[]);
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("notify mode: outbox (reactor.settings)")
    );

    // The old database setting, where someone set it, wins; the command says so.
    superuser(&db)
        .await
        .batch_execute(&format!(
            "alter database {} set reactor.notify_mode = 'notify'",
            db.name
        ))
        .await
        .unwrap();
    let overridden = cli(&["outbox"]);
    assert!(!overridden.status.success());
    let stderr = String::from_utf8_lossy(&overridden.stderr);
    assert!(
        stderr.contains("database setting reactor.notify_mode overrides"),
        "{stderr}"
    );
    let bad = cli(&["loud"]);
    assert!(!bad.status.success(), "an unknown mode is refused");
}

/// A Realtime schema as Supabase Realtime's migrations leave it (partitioned
/// messages owned by a realtime admin role the database owner belongs to,
/// realtime.topic() and realtime.send()), written for this test.
async fn install_realtime(db: &TestDb) {
    let owner: String = db
        .client()
        .await
        .query_one("select current_user::text", &[])
        .await
        .unwrap()
        .get(0);
    let su = superuser(db).await;
    su.batch_execute(&format!(
        "do $r$ begin
           create role realtime_admin_test nologin noinherit;
         exception when duplicate_object or unique_violation then null;
         end $r$;
         grant realtime_admin_test to {owner};
         create schema realtime;
         grant usage on schema realtime to anon, authenticated, service_role, {owner};
         create table realtime.messages (
           id uuid not null default gen_random_uuid(),
           topic text not null,
           extension text not null,
           payload jsonb,
           event text,
           private boolean default false,
           updated_at timestamp not null default now(),
           inserted_at timestamp not null default now(),
           primary key (id, inserted_at)
         ) partition by range (inserted_at);
         create table realtime.messages_all partition of realtime.messages default;
         alter table realtime.messages enable row level security;
         alter table realtime.messages owner to realtime_admin_test;
         grant select, update on realtime.messages to anon, authenticated, service_role, {owner};
         create function realtime.topic() returns text language sql stable as
           $f$ select nullif(current_setting('realtime.topic', true), '')::text $f$;
         create function realtime.send(payload jsonb, event text, topic text, private boolean default true)
         returns void language plpgsql as $f$
         begin
           perform set_config('realtime.topic', topic, true);
           insert into realtime.messages (payload, event, topic, private, extension)
           values (payload, event, topic, private, 'broadcast');
         end $f$;
         alter function realtime.send(jsonb, text, text, boolean) owner to realtime_admin_test;
         grant execute on function realtime.send(jsonb, text, text, boolean) to {owner};"
    ))
    .await
    .expect("realtime schema");
}

/// Realtime's read check for a private channel: as its (superuser) connection,
/// insert a probe message, switch to the client's role and claims, select the
/// probe back under RLS, roll back.
async fn realtime_may_read(db: &TestDb, role: &str, sub: Option<Uuid>, topic: &str) -> bool {
    let mut su = superuser(db).await;
    let tx = su.transaction().await.unwrap();
    let probe: Uuid = tx
        .query_one(
            "insert into realtime.messages (topic, extension) values ($1, 'broadcast') returning id",
            &[&topic],
        )
        .await
        .unwrap()
        .get(0);
    let sub = sub.map(|s| s.to_string()).unwrap_or_default();
    let claims = serde_json::json!({"sub": sub, "role": role}).to_string();
    tx.execute(
        "select set_config('role', $1, true), set_config('realtime.topic', $2, true),
                set_config('request.jwt.claims', $3, true), set_config('request.jwt.claim.sub', $4, true),
                set_config('request.jwt.claim.role', $1, true)",
        &[&role, &topic, &claims, &sub],
    )
    .await
    .unwrap();
    let seen = tx
        .query("select id from realtime.messages where id = $1", &[&probe])
        .await
        .unwrap()
        .len()
        == 1;
    tx.rollback().await.unwrap();
    seen
}

#[tokio::test]
async fn realtime_lets_only_the_owner_read_their_job_status_topic() {
    let db = supabase_db().await;
    migrate_as_owner(&db).await;
    // Realtime enabled after the reactor migrated: no policy yet, nobody may join.
    install_realtime(&db).await;
    let client = db.client().await;
    let owner = common::user_with_profile(&client).await;
    let other = common::user_with_profile(&client).await;
    let topic = format!("job_status:{owner}");
    assert!(!realtime_may_read(&db, "authenticated", Some(owner), &topic).await);

    // The next migrate notices Realtime and installs the policy (once).
    let report = migrate_as_owner(&db).await;
    assert!(report.applied.is_empty());
    assert_eq!(
        report.realtime.as_deref(),
        Some("installed policy reactor_job_status_owner_read on realtime.messages")
    );
    assert!(migrate_as_owner(&db)
        .await
        .realtime
        .unwrap()
        .contains("already installed"));

    assert!(
        realtime_may_read(&db, "authenticated", Some(owner), &topic).await,
        "the owner"
    );
    assert!(
        !realtime_may_read(&db, "authenticated", Some(other), &topic).await,
        "another user"
    );
    assert!(!realtime_may_read(&db, "anon", None, &topic).await, "anon");

    // The trigger's broadcast lands on that topic.
    let job = submit_job(&db, owner, "imagine", "a bright loft")
        .await
        .unwrap();
    let sent = count(
        &superuser(&db).await,
        &format!(
            "select count(*) from realtime.messages where topic = '{topic}' and private
             and extension = 'broadcast' and event = 'status' and payload ->> 'id' = '{job}'"
        ),
    )
    .await;
    assert_eq!(sent, 1);
}

/// Supabase's starter "user management" profiles table, with its public read policy.
const STARTER_PROFILES: &str = "
    create table public.profiles (
      id uuid not null references auth.users on delete cascade primary key,
      updated_at timestamptz,
      username text unique,
      avatar_url text
    );
    alter table public.profiles enable row level security;
    create policy \"Public profiles are viewable by everyone.\" on public.profiles
      for select using (true);";

#[tokio::test]
async fn a_foreign_permissive_policy_is_named_and_refused_and_nothing_changes() {
    let db = supabase_db().await;
    let mut client = db.client().await;
    client
        .batch_execute(reactor::store::migrate::MIGRATIONS[0].sql)
        .await
        .unwrap();
    client.batch_execute(STARTER_PROFILES).await.unwrap();

    let err = migrate::run(&mut client).await.expect_err("refused");
    let MigrateError::ForeignPolicies(ref found) = err else {
        panic!("{err}");
    };
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].name, "Public profiles are viewable by everyone.");
    let message = err.to_string();
    assert!(
        message.contains("\"Public profiles are viewable by everyone.\" on public.profiles"),
        "{message}"
    );
    assert!(
        message.contains("lets public SELECT rows where true"),
        "{message}"
    );
    assert!(message.contains("--allow-foreign-policies"), "{message}");
    assert_eq!(
        count(
            &client,
            "select count(*) from pg_tables where schemaname = 'reactor'"
        )
        .await,
        0,
        "nothing was applied"
    );
}

#[tokio::test]
async fn foreign_policies_are_kept_with_a_warning_when_allowed() {
    let db = supabase_db().await;
    let mut client = db.client().await;
    client
        .batch_execute(reactor::store::migrate::MIGRATIONS[0].sql)
        .await
        .unwrap();
    client.batch_execute(STARTER_PROFILES).await.unwrap();
    let report = migrate::run_with(
        &mut client,
        Options {
            allow_foreign_policies: true,
        },
    )
    .await
    .expect("allowed");
    assert_eq!(report.applied.len(), migrate::MIGRATIONS.len());
    assert_eq!(report.foreign_policies.len(), 1);
    // Now that the reactor added price_id, the warning says it is exposed.
    let again = migrate::run_with(
        &mut client,
        Options {
            allow_foreign_policies: true,
        },
    )
    .await
    .unwrap();
    assert!(
        again.foreign_policies[0].to_string().contains("price_id"),
        "{}",
        again.foreign_policies[0]
    );
    assert_eq!(
        count(&client, "select count(*) from pg_policies where policyname = 'Public profiles are viewable by everyone.'").await,
        1
    );
}

#[tokio::test]
async fn the_printed_schema_applied_by_hand_counts_as_migrated() {
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_reactor"))
        .args(["migrate", "--print"])
        .env_remove("DATABASE_URL")
        .output()
        .expect("reactor migrate --print");
    assert!(
        printed.status.success(),
        "{}",
        String::from_utf8_lossy(&printed.stderr)
    );
    let script = String::from_utf8(printed.stdout).unwrap();
    assert_eq!(script, migrate::script());

    // As the Supabase CLI applies a migration file: one batch, as the owner.
    let db = supabase_db().await;
    let mut client = db.client().await;
    client
        .batch_execute(&script)
        .await
        .expect("apply the printed schema");
    let report = migrate::run(&mut client)
        .await
        .expect("migrate after the file");
    assert!(report.applied.is_empty(), "re-applied {:?}", report.applied);
    assert_eq!(report.skipped, migrate::MIGRATIONS.len());

    let storage = tempfile::tempdir().unwrap();
    let reactor = common::start_reactor(&db, storage.path(), &[]).await;
    eventually("the reactor is ready", LONG, || async {
        reactor.status.ready()
    })
    .await;
    let user = common::user_with_profile(&client).await;
    eventually("favorites", LONG, || async {
        favorites_of(&client, user).await == 1
    })
    .await;
    reactor.stop().await;
}
