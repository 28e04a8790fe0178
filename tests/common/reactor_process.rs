//! Running the reactor under test: in the test process, or as the `reactor`
//! binary in a child process.

use super::TestDb;

/// A local TCP port that was free a moment ago (for a server the test starts
/// and must know the address of beforehand).
pub fn free_port() -> u16 {
    reactor::sandbox::cluster::free_port().expect("a free local port")
}

/// Flags for a test reactor: fast sweeps, retries and leases so tests are quick.
pub fn reactor_flags(db: &TestDb, storage: &std::path::Path) -> Vec<String> {
    [
        "--database-url",
        &db.url,
        "--storage-url",
        &storage.display().to_string(),
        "--retry-backoff",
        "50ms",
        "--max-attempts",
        "3",
        "--lease",
        "3s",
        "--sweep-interval",
        "1s",
        "--listen-check-interval",
        "1s",
        "--listen-check-timeout",
        "3s",
        "--download-timeout",
        "2s",
        "--shutdown-grace",
        "10s",
        "--provider",
        "local",
        "--local-delay",
        "200ms",
        "--provider-poll",
        "50ms",
        "--http-addr",
        "127.0.0.1:0",
        // The tests' image servers listen on loopback.
        "--allow-private-downloads",
        "127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A reactor running inside the test process.
pub struct InProcess {
    pub shutdown: tokio_util::sync::CancellationToken,
    pub http_addr: std::net::SocketAddr,
    pub handle: tokio::task::JoinHandle<Result<(), reactor::engine::EngineError>>,
    pub status: std::sync::Arc<reactor::engine::Readiness>,
}

impl InProcess {
    /// Waits (up to a minute) until the reactor reports ready.
    pub async fn wait_ready(&self) {
        super::eventually(
            "reactor ready",
            std::time::Duration::from_secs(60),
            || async { self.status.ready() },
        )
        .await;
    }

    /// SIGTERM equivalent: stop and wait for a clean exit.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.handle
            .await
            .expect("reactor task")
            .expect("reactor exits cleanly");
    }
}

/// Starts the built-in handlers in-process with `reactor_flags` plus `extra`.
pub async fn start_reactor(db: &TestDb, storage: &std::path::Path, extra: &[&str]) -> InProcess {
    start_in_process(db, storage, extra.iter().map(|s| s.to_string())).await
}

/// `start_reactor` for flags built as `String`s (e.g. by
/// `FakeReplicate::reactor_flags`).
pub async fn start_reactor_with(
    db: &TestDb,
    storage: &std::path::Path,
    extra: &[String],
) -> InProcess {
    start_in_process(db, storage, extra.iter().cloned()).await
}

async fn start_in_process(
    db: &TestDb,
    storage: &std::path::Path,
    extra: impl Iterator<Item = String>,
) -> InProcess {
    let mut flags = reactor_flags(db, storage);
    flags.extend(extra);
    let cfg = reactor::config::RunConfig::from_flags(flags).expect("test flags");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let app = reactor::app::start(cfg, shutdown.clone())
        .await
        .expect("start reactor");
    InProcess {
        shutdown,
        http_addr: app.http_addr,
        handle: app.handle,
        status: app.readiness,
    }
}

/// The `reactor` binary as a child process (killed when dropped).
pub struct ChildReactor {
    pub child: std::process::Child,
}

/// Everything the reactor binaries started with `storage` have logged so far
/// (their `reactor-*.log` files there), without terminal colours.
pub fn child_logs(storage: &std::path::Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(storage).expect("the storage folder") {
        let path = entry.expect("a directory entry").path();
        let ours = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("reactor-"));
        if ours && path.extension().is_some_and(|e| e == "log") {
            text.push_str(&String::from_utf8_lossy(
                &std::fs::read(&path).unwrap_or_default(),
            ));
        }
    }
    strip_ansi(&text)
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl ChildReactor {
    pub fn spawn(db: &TestDb, storage: &std::path::Path, extra: &[&str]) -> Self {
        Self::spawn_flags(db, storage, extra.iter().map(|s| s.to_string()))
    }

    /// `spawn` for flags built as `String`s.
    pub fn spawn_with(db: &TestDb, storage: &std::path::Path, extra: &[String]) -> Self {
        Self::spawn_flags(db, storage, extra.iter().cloned())
    }

    fn spawn_flags(
        db: &TestDb,
        storage: &std::path::Path,
        extra: impl Iterator<Item = String>,
    ) -> Self {
        let mut flags = reactor_flags(db, storage);
        flags.extend(extra);
        let log = std::fs::File::create(
            storage.join(format!("reactor-{}.log", uuid::Uuid::new_v4().simple())),
        )
        .expect("log file");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_reactor"))
            .arg("run")
            .args(flags)
            .env("RUST_LOG", "info,reactor=debug,tokio_postgres=warn")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn reactor binary");
        ChildReactor { child }
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("wait for reactor")
    }
}

impl Drop for ChildReactor {
    fn drop(&mut self) {
        self.kill9();
    }
}
