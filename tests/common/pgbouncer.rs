//! A real PgBouncer (Debian's) in front of a test's database, in session or
//! transaction mode, handing out its server connections in turn
//! (`server_round_robin`) as a busy production pooler does.
use super::{eventually, TestDb};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// A PgBouncer in front of the test's cluster, stopped when dropped (or when
/// this process ends: a shell holds it and stops it when its stdin closes).
pub struct PgBouncer {
    pub port: u16,
    _dir: tempfile::TempDir,
    watchdog: Child,
    stdin: Option<ChildStdin>,
}

const WATCHDOG: &str = r#"
"$@" &
pid=$!
read -r _ || true
kill -INT "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
"#;

fn pgbouncer_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("pgbouncer").is_file() {
                return dir.join("pgbouncer");
            }
        }
    }
    let debian = PathBuf::from("/usr/sbin/pgbouncer");
    assert!(
        debian.is_file(),
        "pgbouncer is not installed (Debian: apt-get install pgbouncer; .ci/run does it)"
    );
    debian
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PgBouncer {
    pub async fn start(db: &TestDb, pool_mode: &str) -> Self {
        let server = url::Url::parse(&db.url).unwrap();
        let port = super::free_port();
        let dir = tempfile::tempdir().unwrap();
        let ini = dir.path().join("pgbouncer.ini");
        // In session mode each client connection holds a server connection
        // for as long as it is open: the pool must fit every connection the
        // reactor opens (REACTOR_CONCURRENCY + handlers + 2 pooled, the
        // listener, the test's own), or the surplus waits in PgBouncer's
        // queue. In transaction mode a few servers are shared in turn.
        let pool_size = if pool_mode == "session" { 40 } else { 8 };
        std::fs::write(dir.path().join("userlist.txt"), "\"postgres\" \"\"\n").unwrap();
        std::fs::write(
            &ini,
            format!(
                "[databases]\n\
                 * = host=127.0.0.1 port={server_port}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {userlist}\n\
                 pool_mode = {pool_mode}\n\
                 default_pool_size = {pool_size}\n\
                 min_pool_size = 4\n\
                 server_round_robin = 1\n\
                 max_client_conn = 200\n",
                server_port = server.port().unwrap(),
                userlist = dir.path().join("userlist.txt").display(),
            ),
        )
        .unwrap();
        // PgBouncer refuses to run as root: as root, it runs as postgres (as
        // the throwaway clusters do).
        let mut command = Command::new("sh");
        command.arg("-c").arg(WATCHDOG).arg("pgbouncer-watchdog");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(status.success());
            command.args([
                "setpriv",
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ]);
        }
        command.arg(pgbouncer_binary()).arg(&ini);
        let mut watchdog = command
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        let stdin = watchdog.stdin.take();
        let bouncer = PgBouncer {
            port,
            _dir: dir,
            watchdog,
            stdin,
        };
        let url = bouncer.url(db);
        eventually("pgbouncer accepts connections", LONG, || async {
            match reactor::store::db::connect(&url).await {
                Ok(client) => client.simple_query("select 1").await.is_ok(),
                Err(_) => false,
            }
        })
        .await;
        bouncer
    }

    /// `db`'s URL through this pooler.
    pub fn url(&self, db: &TestDb) -> String {
        let mut url = url::Url::parse(&db.url).unwrap();
        url.set_port(Some(self.port)).unwrap();
        format!("{url}?sslmode=disable")
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        let _ = self.watchdog.wait();
    }
}
