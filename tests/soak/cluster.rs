//! A PostgreSQL cluster the soak owns, so it can crash it: `pg_ctl -m
//! immediate stop`, then start it again on the same port (clients reconnect
//! to the same address). Started like `reactor::sandbox::cluster` starts its servers
//! (as user `postgres` when we are root); each server process sits under a
//! small shell watchdog that stops it when this process exits, even by
//! `kill -9`. Dropping the cluster stops the server and deletes its files.
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs the server until stdin closes, then stops it (fast shutdown).
/// synchronous_commit stays on: with it off, a crash loses the last commits
/// (the soak would blame the reactor for rows the server forgot); fsync=off
/// is safe because only the server crashes, never the machine.
const WATCHDOG: &str = r#"
set -u
bindir=$1; dir=$2; port=$3; shift 3
"$@" "$bindir/postgres" -D "$dir/data" -p "$port" -k "$dir" -c listen_addresses=127.0.0.1 \
  -c fsync=off -c full_page_writes=off -c max_connections=200 \
  -c shared_buffers=64MB >>"$dir/server.log" 2>&1 &
pid=$!
read -r _ || true
kill -INT "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
"#;

pub struct SoakCluster {
    bindir: PathBuf,
    dir: PathBuf,
    pub port: u16,
    /// The prefix that runs a command as `postgres` (empty when not root).
    as_postgres: Vec<String>,
    server: Option<(Child, ChildStdin)>,
}

impl SoakCluster {
    /// initdb a fresh cluster on a free loopback port and start it.
    pub async fn start() -> Self {
        let bindir = reactor::sandbox::cluster::find_bindir().expect("PostgreSQL server binaries");
        let dir =
            std::env::temp_dir().join(format!("reactor-soak-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("cluster directory");
        let as_postgres: Vec<String> = if reactor::sandbox::cluster::is_root() {
            run(Command::new("chown").arg("postgres").arg(&dir));
            [
                "setpriv",
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ]
            .map(String::from)
            .to_vec()
        } else {
            vec![]
        };
        let mut cluster = SoakCluster {
            port: reactor::sandbox::cluster::free_port().expect("free port"),
            bindir,
            dir,
            as_postgres,
            server: None,
        };
        let initdb = cluster.bindir.join("initdb");
        let data = cluster.dir.join("data");
        run(cluster.command(&initdb).args([
            "-D",
            &data.display().to_string(),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]));
        cluster.boot().await;
        cluster
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Starts the server (after `start` or a crash) and waits until it answers.
    pub async fn boot(&mut self) {
        assert!(self.server.is_none(), "the server is already running");
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("reactor-soak-pg")
            .arg(&self.bindir)
            .arg(&self.dir)
            .arg(self.port.to_string())
            .args(&self.as_postgres)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the PostgreSQL watchdog");
        let stdin = watchdog.stdin.take().expect("watchdog stdin");
        self.server = Some((watchdog, stdin));
        let deadline = Instant::now() + Duration::from_secs(60);
        while reactor::store::db::connect(&self.url("postgres"))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the soak's PostgreSQL did not come up within 60 s; see {}",
                self.dir.join("server.log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A crash: `pg_ctl -m immediate stop` (no checkpoint, clients cut off).
    pub fn crash(&mut self) {
        let pg_ctl = self.bindir.join("pg_ctl");
        let data = self.dir.join("data").display().to_string();
        run(self
            .command(&pg_ctl)
            .args(["-D", &data, "-m", "immediate", "-w", "stop"]));
        self.stop_watchdog();
    }

    fn stop_watchdog(&mut self) {
        if let Some((mut watchdog, mut stdin)) = self.server.take() {
            let _ = stdin.write_all(b"stop\n");
            drop(stdin);
            let _ = watchdog.wait();
        }
    }

    fn command(&self, program: &std::path::Path) -> Command {
        let mut command = match self.as_postgres.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(program);
                c
            }
            None => Command::new(program),
        };
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        command
    }
}

impl Drop for SoakCluster {
    fn drop(&mut self) {
        self.stop_watchdog();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a setup command; its stderr is shown when it fails.
fn run(command: &mut Command) {
    let out = command.output().expect("run command");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
