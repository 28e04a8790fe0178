//! Outages of minutes leave no dead work: storage unwritable (the local
//! folder, and S3 itself gone) and the provider answering 503, for five
//! minutes, while jobs run. Once everything is back, every job is rendered
//! and debited once, and no prediction is paid twice.
//!
//! The outages run at once in one test, so the suite grows by one outage.
//! moto's S3 server comes from PyPI (`pip install 'moto[server]'`).
mod common;

use common::fake_replicate::FakeReplicate;
use common::{count, eventually, image_server, start_reactor, start_reactor_with, submit_job};
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

/// How long each outage lasts: the five minutes.
const OUTAGE: Duration = Duration::from_secs(300);
/// How long after an outage the work must be done (backoff is capped at a minute).
const RECOVERY: Duration = Duration::from_secs(150);

/// Retries as a deployment has them by default (the test harness's are faster),
/// with the test harness's attempt limit of 3: without budgets every row
/// would be dead within seconds of the outage's start.
const DEFAULT_RETRY: [&str; 4] = ["--retry-backoff", "2s", "--retry-backoff-max", "1m"];

/// A storage folder that can be made unwritable, even for root: the folder is
/// moved away and a regular file put at its path, so every write under it
/// fails with an I/O error.
struct Folder {
    path: PathBuf,
    away: PathBuf,
}

impl Folder {
    fn new(parent: &Path) -> Folder {
        let path = parent.join("storage");
        std::fs::create_dir(&path).unwrap();
        Folder {
            away: parent.join("storage.away"),
            path,
        }
    }

    fn break_it(&self) {
        std::fs::rename(&self.path, &self.away).unwrap();
        std::fs::write(&self.path, b"not a folder").unwrap();
    }

    fn mend(&self) {
        std::fs::remove_file(&self.path).unwrap();
        std::fs::rename(&self.away, &self.path).unwrap();
    }
}

/// moto's S3 server on a fixed loopback port; can be stopped and started
/// again there (an S3 outage). Stopped when dropped.
struct Moto {
    child: Option<std::process::Child>,
    port: u16,
    endpoint: String,
}

impl Moto {
    async fn start() -> Moto {
        let port = common::free_port();
        let mut moto = Moto {
            child: None,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        moto.up().await;
        moto
    }

    /// Starts the server (empty, as moto keeps nothing) with bucket `public`.
    async fn up(&mut self) {
        let child = std::process::Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (pip install 'moto[server]')");
        self.child = Some(child);
        let http = reqwest::Client::new();
        eventually("moto answers", Duration::from_secs(30), || async {
            http.get(&self.endpoint).send().await.is_ok()
        })
        .await;
        let created = http
            .put(format!("{}/public", self.endpoint))
            .send()
            .await
            .expect("create bucket");
        assert!(created.status().is_success(), "{}", created.status());
    }

    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        self.down();
    }
}

/// Jobs with exactly one render and one debit each, no debit without a
/// render, and no dead row.
async fn all_rendered_and_debited_once(client: &tokio_postgres::Client, jobs: &[Uuid]) {
    for id in jobs {
        let render = format!("select count(*) from renders where job_id = '{id}'");
        eventually(&format!("render of job {id}"), RECOVERY, || async {
            count(client, &render).await == 1
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in jobs {
        let debits = count(
            client,
            &format!("select count(*) from usage_ledger where job_id = '{id}'"),
        )
        .await;
        assert_eq!(debits, 1, "job {id}: one debit");
    }
    assert_eq!(
        count(
            client,
            "select count(*) from usage_ledger l
             where not exists (select 1 from renders r where r.job_id = l.job_id)"
        )
        .await,
        0,
        "no debit without a render"
    );
    assert_eq!(
        count(
            client,
            "select count(*) from reactor.handler_state where dead_at is not null"
        )
        .await,
        0,
        "no dead row"
    );
}

/// Local storage unwritable and the provider answering 503, for five minutes.
async fn local_storage_and_provider_outage() {
    let db = common::migrated_db().await;
    let scratch = tempfile::tempdir().unwrap();
    let folder = Folder::new(scratch.path());
    let (fake, images) = (FakeReplicate::start().await, image_server().await);
    let reactor = start_reactor_with(&db, &folder.path, &fake.reactor_flags(&DEFAULT_RETRY)).await;
    let client = db.client().await;

    // Storage goes first: jobs succeed at the provider but cannot be stored.
    folder.break_it();
    let started = tokio::time::Instant::now();
    let mut jobs = Vec::new();
    for n in 0..3 {
        // One job in flight per owner (the submit rules): one owner each.
        let user = common::user_with_profile(&client).await;
        jobs.push(
            submit_job(&db, user, "imagine", &format!("stored later {n}"))
                .await
                .unwrap(),
        );
    }
    let finisher = {
        let (fake, images) = (fake.clone(), images.base.clone());
        tokio::spawn(async move {
            // The provider completes every prediction it was given.
            loop {
                for p in fake.predictions() {
                    if p.status == "starting" {
                        let output = serde_json::json!([format!("{images}/ok/{}.jpg", p.id)]);
                        fake.finish(&p.id, "succeeded", output, serde_json::Value::Null);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    eventually("jobs succeeded", Duration::from_secs(60), || async {
        count(
            &client,
            "select count(*) from generation_jobs where status = 'succeeded'",
        )
        .await
            == 3
    })
    .await;

    // Then the provider: jobs submitted now cannot be created.
    fake.set_down(true);
    for n in 0..3 {
        // One job in flight per owner (the submit rules): one owner each.
        let user = common::user_with_profile(&client).await;
        jobs.push(
            submit_job(&db, user, "imagine", &format!("created later {n}"))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep_until(started + OUTAGE).await;
    assert!(fake.refused_while_down() > 3, "the reactor kept asking");
    assert_eq!(
        count(&client, "select count(*) from renders").await,
        0,
        "nothing stored during the outage"
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from generation_jobs where status = 'failed'"
        )
        .await,
        0,
        "no job failed for the outage"
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from reactor.handler_state where dead_at is not null"
        )
        .await,
        0,
        "no row dead during the outage"
    );
    folder.mend();
    fake.set_down(false);

    all_rendered_and_debited_once(&client, &jobs).await;
    assert_eq!(
        fake.predictions().len(),
        jobs.len(),
        "one prediction per job"
    );
    for (job, creates) in fake.creates_per_job() {
        assert_eq!(creates, 1, "job {job} created once");
    }
    finisher.abort();
    reactor.stop().await;
}

/// The S3 server gone for five minutes (then back, empty but for its bucket).
async fn s3_outage() {
    let mut moto = Moto::start().await;
    // The only test in this binary: the process environment is its own.
    for (name, value) in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
    ] {
        std::env::set_var(name, value);
    }
    let db = common::migrated_db().await;
    let images = image_server().await;
    let scratch = tempfile::tempdir().unwrap();
    let mut flags = vec!["--storage-url", "s3://public"];
    flags.extend(DEFAULT_RETRY);
    let reactor = start_reactor(&db, scratch.path(), &flags).await;
    let client = db.client().await;
    let user = common::user_with_profile(&client).await;

    moto.down();
    let started = tokio::time::Instant::now();
    let mut jobs = Vec::new();
    for n in 0..3 {
        let output = [images.url(&format!("/ok/s3-{n}.jpg"))];
        jobs.push(common::succeeded_job(&client, user, &output).await);
    }
    tokio::time::sleep_until(started + OUTAGE).await;
    assert_eq!(count(&client, "select count(*) from renders").await, 0);
    assert_eq!(
        count(
            &client,
            "select count(*) from reactor.handler_state where dead_at is not null"
        )
        .await,
        0,
        "no row dead during the S3 outage"
    );
    moto.up().await;

    all_rendered_and_debited_once(&client, &jobs).await;
    reactor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_minutes_of_storage_and_provider_outage_leave_no_dead_work() {
    tokio::join!(local_storage_and_provider_outage(), s3_outage());
}
