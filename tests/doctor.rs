//! `reactor doctor` against real deployments: a healthy one passes, and each
//! test breaks one thing and finds it named (with a fix) in `--json` output
//! and in the exit code.
mod common;

use common::fake_replicate::{FakeReplicate, WEBHOOK_SECRET};
use common::{PgBouncer, Pki, TestDb};
use reactor::sandbox::cluster::LocalPostgres;
use serde_json::Value;
use std::path::Path;

const ADMIN_TOKEN: &str = "a-long-random-admin-token-for-the-doctor-test";

/// What one run of `reactor doctor --json` printed and how it exited.
struct Outcome {
    success: bool,
    checks: Vec<Value>,
    stderr: String,
}

impl Outcome {
    /// Every line named `check`.
    fn lines(&self, check: &str) -> Vec<&Value> {
        self.checks.iter().filter(|c| c["check"] == check).collect()
    }

    /// The status of the (only) line named `check`.
    fn status(&self, check: &str) -> &str {
        let lines = self.lines(check);
        assert_eq!(lines.len(), 1, "one {check} line in {:#?}", self.checks);
        lines[0]["status"].as_str().expect("status is a string")
    }

    fn message(&self, check: &str) -> String {
        self.lines(check)[0]["message"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn fix(&self, check: &str) -> String {
        self.lines(check)[0]["fix"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn failed(&self) -> Vec<&str> {
        self.checks
            .iter()
            .filter(|c| c["status"] == "failed")
            .map(|c| c["check"].as_str().unwrap())
            .collect()
    }
}

/// Flags of a healthy deployment on `url`: fake Replicate with a good token
/// and webhooks, storage in `storage`, admin token and JWT secret set.
fn healthy_flags(url: &str, storage: &Path, replicate: &FakeReplicate) -> Vec<String> {
    let mut flags: Vec<String> = [
        "--database-url",
        url,
        "--storage-url",
        &storage.display().to_string(),
        "--listen-check-timeout",
        "3s",
        "--public-url",
        "https://reactor.example.com",
        "--replicate-webhook-secret",
        WEBHOOK_SECRET,
        "--admin-token",
        ADMIN_TOKEN,
        "--supabase-jwt-secret",
        "super-secret-jwt-token-with-at-least-32-characters",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    flags.extend(replicate.reactor_flags(&[]));
    flags
}

/// Runs the reactor binary's `doctor --json` with `flags` (and no
/// environment that could configure it otherwise).
async fn doctor(flags: &[String]) -> Outcome {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_reactor"))
        .arg("doctor")
        .arg("--json")
        .args(flags)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .await
        .expect("run reactor doctor");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let checks: Vec<Value> = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON array ({e}): {stdout}"));
    for c in &checks {
        for field in ["check", "status", "message"] {
            assert!(c[field].is_string(), "{field} in {c}");
        }
        assert!(c.get("fix").is_some(), "fix in {c}");
        assert!(
            ["ok", "warning", "failed"].contains(&c["status"].as_str().unwrap()),
            "{c}"
        );
        assert_eq!(
            c["status"] == "ok",
            c["fix"].is_null(),
            "a fix exactly when not ok: {c}"
        );
    }
    Outcome {
        success: output.status.success(),
        checks,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Doctor on a migrated database with everything else healthy, after `change`
/// (SQL run as the superuser on the test database).
async fn healthy_db_then(change: &str) -> (TestDb, Outcome) {
    let db = common::migrated_db().await;
    if !change.is_empty() {
        db.client().await.batch_execute(change).await.unwrap();
    }
    let storage = tempfile::tempdir().unwrap();
    let replicate = FakeReplicate::start().await;
    let outcome = doctor(&healthy_flags(&db.url, storage.path(), &replicate)).await;
    (db, outcome)
}

fn assert_failed_with_exit_1(outcome: &Outcome, check: &str) {
    assert_eq!(
        outcome.status(check),
        "failed",
        "{check} in {:#?}",
        outcome.checks
    );
    assert!(!outcome.fix(check).is_empty());
    assert!(!outcome.success, "a failed check exits non-zero");
    assert!(outcome.stderr.contains("failed"), "{}", outcome.stderr);
}

#[tokio::test]
async fn a_healthy_deployment_passes_and_leaves_nothing_behind() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let replicate = FakeReplicate::start().await;
    let outcome = doctor(&healthy_flags(&db.url, storage.path(), &replicate)).await;
    assert!(
        outcome.failed().is_empty(),
        "nothing fails: {:#?}",
        outcome.checks
    );
    assert!(outcome.success, "exit 0: {}", outcome.stderr);
    for check in [
        "connection",
        "pooler",
        "schema",
        "migration checksums",
        "notify mode",
        "hint triggers",
        "listen",
        "client privileges",
        "foreign policies",
        "storage",
        "provider",
        "webhook",
        "admin token",
        "jwt",
    ] {
        assert_eq!(
            outcome.status(check),
            "ok",
            "{check}: {:#?}",
            outcome.checks
        );
    }
    // The test cluster: a superuser over loopback without TLS.
    assert_eq!(outcome.status("role"), "warning");
    assert!(outcome.fix("role").contains("Supabase"));
    assert_eq!(outcome.status("tls"), "warning");
    assert!(outcome.message("provider").contains("token accepted"));
    // The storage probe was deleted: no file is left (directories may be).
    let files: Vec<_> = walk(storage.path());
    assert!(files.is_empty(), "probe left behind: {files:?}");
    // Nothing was written to the database: still no rows the reactor keeps.
    let client = db.client().await;
    assert_eq!(
        common::count(&client, "select count(*) from reactor.handler_state").await,
        0
    );
    assert_eq!(
        common::count(&client, "select count(*) from pg_replication_slots").await,
        0
    );
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test]
async fn the_checklist_for_people_has_a_line_per_check_and_the_fix() {
    let db = common::empty_db().await;
    let storage = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_reactor"))
        .args(["doctor", "--provider", "local", "--database-url", &db.url])
        .arg("--storage-url")
        .arg(storage.path())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(
        text.lines()
            .any(|l| l.starts_with("failed") && l.contains("schema") && l.contains("not migrated")),
        "{text}"
    );
    assert!(text.contains("fix: run `reactor migrate`"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("ok") && l.contains("local provider (placeholder images)")),
        "{text}"
    );
}

#[tokio::test]
async fn a_database_not_migrated_fails_the_schema_check() {
    let db = common::empty_db().await;
    let storage = tempfile::tempdir().unwrap();
    let replicate = FakeReplicate::start().await;
    let outcome = doctor(&healthy_flags(&db.url, storage.path(), &replicate)).await;
    assert_failed_with_exit_1(&outcome, "schema");
    assert!(outcome.message("schema").contains("not migrated"));
    assert!(outcome.fix("schema").contains("reactor migrate"));
}

#[tokio::test]
async fn an_edited_migration_fails_the_checksum_check() {
    let name = reactor::store::migrate::MIGRATIONS[3].name;
    let (_db, outcome) = healthy_db_then(&format!(
        "update reactor.schema_migrations set checksum = repeat('0', 64) where name = '{name}'"
    ))
    .await;
    assert_failed_with_exit_1(&outcome, "migration checksums");
    assert!(outcome.message("migration checksums").contains(name));
    assert_eq!(outcome.status("schema"), "ok", "all are still recorded");
}

#[tokio::test]
async fn a_missing_migration_fails_the_schema_check() {
    let name = reactor::store::migrate::MIGRATIONS.last().unwrap().name;
    let (_db, outcome) = healthy_db_then(&format!(
        "delete from reactor.schema_migrations where name = '{name}'"
    ))
    .await;
    assert_failed_with_exit_1(&outcome, "schema");
    assert!(outcome.message("schema").contains(name));
}

#[tokio::test]
async fn a_role_without_bypassrls_fails_the_role_check() {
    let db = common::migrated_db().await;
    let role = format!("no_bypass_{}", uuid::Uuid::new_v4().simple());
    db.client()
        .await
        .batch_execute(&format!(
            "create role {role} login nosuperuser nobypassrls; grant usage on schema reactor to {role}"
        ))
        .await
        .unwrap();
    let mut url = url::Url::parse(&db.url).unwrap();
    url.set_username(&role).unwrap();
    let storage = tempfile::tempdir().unwrap();
    let replicate = FakeReplicate::start().await;
    let outcome = doctor(&healthy_flags(url.as_str(), storage.path(), &replicate)).await;
    assert_failed_with_exit_1(&outcome, "role");
    assert!(outcome.message("role").contains("BYPASSRLS"));
    assert!(outcome.fix("role").contains("bypassrls"));
}

#[tokio::test]
async fn the_supabase_shaped_role_passes_the_role_check() {
    let db = common::empty_db().await;
    let role = format!("owner_{}", uuid::Uuid::new_v4().simple());
    let url = reactor::sandbox::supabase_like::prepare(common::server_url().await, &db.name, &role)
        .await
        .unwrap();
    let mut client = reactor::store::db::connect(&url).await.unwrap();
    reactor::store::migrate::run(&mut client).await.unwrap();
    let storage = tempfile::tempdir().unwrap();
    let replicate = FakeReplicate::start().await;
    let outcome = doctor(&healthy_flags(&url, storage.path(), &replicate)).await;
    assert_eq!(outcome.status("role"), "ok", "{:#?}", outcome.checks);
    assert!(outcome.message("role").contains("NOSUPERUSER BYPASSRLS"));
    assert!(outcome.failed().is_empty(), "{:#?}", outcome.checks);
    assert!(outcome.success);
}

#[tokio::test]
async fn wal_mode_without_wal_level_logical_fails() {
    // The switch refuses on this server (wal_level = replica), so the row is
    // written as a server with wal_level = logical would have left it, then
    // restarted with another level: without firing its trigger.
    let (_db, outcome) = healthy_db_then(
        "set session_replication_role = replica;
         update reactor.settings set notify_mode = 'wal';
         reset session_replication_role;",
    )
    .await;
    assert!(outcome.message("notify mode").contains("wal"));
    assert_failed_with_exit_1(&outcome, "wal level");
    assert!(outcome.fix("wal level").contains("wal_level = logical"));
    // The role (a superuser) may replicate; the test cluster has free slots.
    assert_eq!(outcome.status("replication role"), "ok");
    assert_eq!(outcome.status("replication slot"), "ok");
}

#[tokio::test]
async fn poll_mode_wants_every_hint_trigger_off_and_names_the_interval() {
    let (db, outcome) = healthy_db_then("update reactor.settings set notify_mode = 'poll'").await;
    assert_eq!(outcome.status("notify mode"), "ok");
    assert!(
        outcome.message("notify mode").contains("poll")
            && outcome
                .message("notify mode")
                .contains("REACTOR_POLL_INTERVAL"),
        "{}",
        outcome.message("notify mode")
    );
    assert_eq!(outcome.status("hint triggers"), "ok");
    assert!(outcome
        .message("hint triggers")
        .contains("disabled, as poll mode wants"));

    // One trigger turned back on behind the switch's back: writers pay again.
    db.client()
        .await
        .batch_execute("alter table public.profiles enable trigger reactor_notify_insert")
        .await
        .unwrap();
    let storage = tempfile::tempdir().unwrap();
    let replicate = FakeReplicate::start().await;
    let outcome = doctor(&healthy_flags(&db.url, storage.path(), &replicate)).await;
    assert_failed_with_exit_1(&outcome, "hint triggers");
    assert!(outcome
        .message("hint triggers")
        .starts_with("poll mode, but 1 of"));
    assert!(outcome.fix("hint triggers").contains("apply_notify_mode"));
}

#[tokio::test]
async fn behind_pgbouncer_in_transaction_mode_with_listen_on_fails() {
    let db = common::migrated_db().await;
    let bouncer = PgBouncer::start(&db, "transaction").await;
    let storage = tempfile::tempdir().unwrap();
    let replicate = FakeReplicate::start().await;
    let outcome = doctor(&healthy_flags(
        &bouncer.url(&db),
        storage.path(),
        &replicate,
    ))
    .await;
    assert_failed_with_exit_1(&outcome, "pooler");
    assert!(outcome.fix("pooler").contains("REACTOR_LISTEN=false"));
    assert!(outcome.fix("pooler").contains("5432"));

    let mut poll_only = healthy_flags(&bouncer.url(&db), storage.path(), &replicate);
    poll_only.extend(["--listen".to_string(), "false".to_string()]);
    let outcome = doctor(&poll_only).await;
    assert_eq!(outcome.status("pooler"), "ok", "{:#?}", outcome.checks);
    assert_eq!(outcome.status("listen"), "ok");
    assert!(outcome.failed().is_empty(), "{:#?}", outcome.checks);
}

#[tokio::test]
async fn behind_pgbouncer_in_session_mode_listen_works() {
    let db = common::migrated_db().await;
    let bouncer = PgBouncer::start(&db, "session").await;
    let storage = tempfile::tempdir().unwrap();
    let replicate = FakeReplicate::start().await;
    let outcome = doctor(&healthy_flags(
        &bouncer.url(&db),
        storage.path(),
        &replicate,
    ))
    .await;
    assert_eq!(outcome.status("pooler"), "ok", "{:#?}", outcome.checks);
    assert_eq!(outcome.status("listen"), "ok");
}

#[tokio::test]
async fn tls_require_is_not_verified_and_verify_full_is() {
    let pki = Pki::new();
    let server = LocalPostgres::start_with(&pki.server_options(&[]))
        .await
        .unwrap();
    let port = url::Url::parse(&server.url("postgres"))
        .unwrap()
        .port()
        .unwrap();
    let url = |query: &str| {
        format!("postgres://postgres@localhost:{port}/postgres?hostaddr=127.0.0.1&{query}")
    };
    let mut client = reactor::store::db::connect(&url("sslmode=require"))
        .await
        .unwrap();
    reactor::store::migrate::run(&mut client).await.unwrap();
    let storage = tempfile::tempdir().unwrap();
    let replicate = FakeReplicate::start().await;

    let outcome = doctor(&healthy_flags(
        &url("sslmode=require"),
        storage.path(),
        &replicate,
    ))
    .await;
    assert_eq!(outcome.status("tls"), "warning", "{:#?}", outcome.checks);
    assert!(outcome.message("tls").contains("not verified"));
    assert!(outcome.fix("tls").contains("verify-full"));

    let verified = url(&format!(
        "sslmode=verify-full&sslrootcert={}",
        pki.ca().display()
    ));
    let outcome = doctor(&healthy_flags(&verified, storage.path(), &replicate)).await;
    assert_eq!(outcome.status("tls"), "ok", "{:#?}", outcome.checks);
    assert!(outcome.message("tls").contains("verified"));
}

#[tokio::test]
async fn storage_that_cannot_be_written_fails() {
    let db = common::migrated_db().await;
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the storage directory would have to be.
    let blocker = dir.path().join("not-a-directory");
    std::fs::write(&blocker, b"x").unwrap();
    let replicate = FakeReplicate::start().await;
    let outcome = doctor(&healthy_flags(
        &db.url,
        &blocker.join("storage"),
        &replicate,
    ))
    .await;
    assert_failed_with_exit_1(&outcome, "storage");
    assert!(outcome.fix("storage").contains("REACTOR_STORAGE_URL"));
}

#[tokio::test]
async fn a_refused_provider_token_and_an_unknown_model_fail() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let replicate = FakeReplicate::start().await;
    let mut flags = healthy_flags(&db.url, storage.path(), &replicate);
    flags.extend([
        "--replicate-api-token".to_string(),
        "r8_revoked".to_string(),
    ]);
    let outcome = doctor(&flags).await;
    assert_failed_with_exit_1(&outcome, "provider");
    assert!(
        outcome.message("provider").contains("refused the token"),
        "{}",
        outcome.message("provider")
    );
    assert!(outcome.fix("provider").contains("REPLICATE_API_TOKEN"));

    let mut flags = healthy_flags(&db.url, storage.path(), &replicate);
    flags.extend([
        "--replicate-model".to_string(),
        "nobody/no-such-model".to_string(),
    ]);
    let outcome = doctor(&flags).await;
    assert_failed_with_exit_1(&outcome, "provider");
    assert!(outcome
        .message("provider")
        .contains("no model nobody/no-such-model"));
    assert!(outcome.fix("provider").contains("REPLICATE_MODEL"));
}

#[tokio::test]
async fn a_public_url_without_webhook_secret_fails() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let replicate = FakeReplicate::start().await;
    let mut flags = healthy_flags(&db.url, storage.path(), &replicate);
    let at = flags
        .iter()
        .position(|f| f == "--replicate-webhook-secret")
        .unwrap();
    flags.drain(at..at + 2);
    let outcome = doctor(&flags).await;
    assert_failed_with_exit_1(&outcome, "webhook");
    assert!(outcome.fix("webhook").contains("REPLICATE_WEBHOOK_SECRET"));
}

#[tokio::test]
async fn a_database_that_never_answers_is_a_failed_line_not_a_hang() {
    // Accepts connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let storage = tempfile::tempdir().unwrap();
    let replicate = FakeReplicate::start().await;
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable");
    let outcome = doctor(&healthy_flags(&url, storage.path(), &replicate)).await;
    assert_failed_with_exit_1(&outcome, "connection");
    // Either the connection's own connect_timeout (10 s by default) or the
    // check's deadline names the silence.
    let message = outcome.message("connection");
    assert!(
        message.contains("no answer within") || message.contains("did not answer"),
        "{message}"
    );
    // The checks that need no database still ran.
    assert_eq!(outcome.status("storage"), "ok");
    assert_eq!(outcome.status("provider"), "ok");
}
