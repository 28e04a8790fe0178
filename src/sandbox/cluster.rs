//! A throwaway PostgreSQL server for tests and `reactor demo`.
//!
//! `initdb` and `postgres` are taken from PATH, else from Debian's
//! `/usr/lib/postgresql/<version>/bin`. Postgres refuses to run as root, so as
//! root the server runs as the `postgres` user (via `setpriv`).
//!
//! The server lives exactly as long as the process that started it: a small
//! shell watchdog holds the server and waits for its stdin to close, which
//! happens when this process exits for any reason (even `kill -9` or a
//! panicking test), then stops the server and deletes its directory.
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LocalPgError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were not found on PATH or in /usr/lib/postgresql/*/bin; \
         install them (Debian: apt-get install postgresql) or set DATABASE_URL"
    )]
    NotInstalled,
    #[error("starting a local PostgreSQL failed: {0}")]
    Start(String),
}

/// What a test needs beyond a plain cluster.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// postgresql.conf settings, e.g. `("ssl", "on")`.
    pub settings: Vec<(String, String)>,
    /// Files written (mode 0600, owned by the server's user) next to the data
    /// directory; settings name them relative to it, e.g. `../server.key`.
    pub files: Vec<(String, Vec<u8>)>,
}

/// A running throwaway server. Dropping it stops the server.
pub struct LocalPostgres {
    port: u16,
    dir: PathBuf,
    watchdog: Child,
    stdin: Option<ChildStdin>,
}

const WATCHDOG: &str = r#"
set -u
bindir=$1; dir=$2; port=$3; as_user=$4
# "$@" becomes the prefix that drops root, so the server below is started as a
# simple command and $! is the server's own pid (a signal to it stops it).
if [ -n "$as_user" ]; then
  chown -R "$as_user" "$dir"
  set -- setpriv --reuid="$as_user" --regid="$as_user" --init-groups --
else
  set --
fi
if ! "$@" "$bindir/initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 --locale=C >"$dir/initdb.log" 2>&1; then
  cat "$dir/initdb.log" >&2; rm -rf "$dir"; exit 1
fi
# A throwaway cluster's settings go in postgresql.conf, not on the command
# line: there they would win over ALTER SYSTEM, and the benchmark's durable
# runs (ALTER SYSTEM SET fsync = on) would silently not be durable.
cat >>"$dir/data/postgresql.conf" <<'CONF'
listen_addresses = '127.0.0.1'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 300
shared_buffers = 128MB
max_wal_size = 2GB
CONF
# Settings asked for with Options (e.g. ssl=on and its files next to data/).
if [ -f "$dir/extra.conf" ]; then cat "$dir/extra.conf" >>"$dir/data/postgresql.conf"; fi
serve() {
  "$@" "$bindir/postgres" -D "$dir/data" -p "$port" -k "$dir" >>"$dir/server.log" 2>&1 &
  pid=$!
}
serve "$@"
# "down" stops the server (fast shutdown) and says so in $dir/state, "up"
# starts it again on the same data and port (for restart tests); anything
# else, or this process's stdin closing, ends it for good.
while read -r cmd; do
  case "$cmd" in
    down) kill -INT "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; echo down >"$dir/state" ;;
    up) rm -f "$dir/state"; serve "$@" ;;
    *) break ;;
  esac
done
kill -INT "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
rm -rf "$dir"
"#;

impl LocalPostgres {
    /// Starts a fresh cluster on a free loopback port and waits until it accepts connections.
    pub async fn start() -> Result<Self, LocalPgError> {
        Self::start_with(&Options::default()).await
    }

    /// [`LocalPostgres::start`] with extra settings and files.
    pub async fn start_with(options: &Options) -> Result<Self, LocalPgError> {
        let bindir = find_bindir().ok_or(LocalPgError::NotInstalled)?;
        let dir =
            std::env::temp_dir().join(format!("reactor-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| LocalPgError::Start(format!("{}: {e}", dir.display())))?;
        write_options(&dir, options)
            .map_err(|e| LocalPgError::Start(format!("{}: {e}", dir.display())))?;
        let port = free_port().map_err(|e| LocalPgError::Start(format!("no free port: {e}")))?;
        let as_user = if is_root() { "postgres" } else { "" };
        let mut watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("reactor-localpg")
            .arg(&bindir)
            .arg(&dir)
            .arg(port.to_string())
            .arg(as_user)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LocalPgError::Start(format!("spawning sh: {e}")))?;
        let stdin = watchdog.stdin.take();
        let mut pg = LocalPostgres {
            port,
            dir,
            watchdog,
            stdin,
        };
        pg.wait_ready().await?;
        Ok(pg)
    }

    /// Stops the server as `pg_ctl stop -m fast` would (every session is
    /// disconnected) and waits until it has exited. Data directory and port
    /// stay for [`LocalPostgres::start_again`].
    pub async fn stop_server(&mut self) -> Result<(), LocalPgError> {
        self.command("down")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::read_to_string(self.dir.join("state")).unwrap_or_default() != "down\n" {
            if Instant::now() > deadline {
                return Err(LocalPgError::Start(
                    "the server did not stop within 60s".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Starts a server stopped with [`LocalPostgres::stop_server`] again, on
    /// the same data directory and port, and waits until it accepts connections.
    pub async fn start_again(&mut self) -> Result<(), LocalPgError> {
        self.command("up")?;
        self.wait_ready().await
    }

    fn command(&mut self, cmd: &str) -> Result<(), LocalPgError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| LocalPgError::Start("the watchdog is gone".into()))?;
        stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| LocalPgError::Start(format!("telling the watchdog {cmd}: {e}")))
    }

    /// Connection string for `database` on this server (user postgres, trust auth).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Keeps the server running until this process exits (for process-wide servers).
    pub fn leak(self) -> String {
        let url = self.url("postgres");
        std::mem::forget(self);
        url
    }

    async fn wait_ready(&mut self) -> Result<(), LocalPgError> {
        let dir = self.dir.clone();
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = self.url("postgres");
        loop {
            if let Ok(Some(status)) = self.watchdog.try_wait() {
                let mut err = String::new();
                if let Some(mut stderr) = self.watchdog.stderr.take() {
                    use std::io::Read as _;
                    let _ = stderr.read_to_string(&mut err);
                }
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                return Err(LocalPgError::Start(format!(
                    "watchdog exited ({status}): {err}{log}"
                )));
            }
            // Only asks whether the server is up: plaintext, whatever PGSSLMODE says.
            if let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                if client.simple_query("select 1").await.is_ok() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                return Err(LocalPgError::Start(format!(
                    "server did not accept connections within 60s: {log}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"stop\n");
        }
        let _ = self.watchdog.wait();
    }
}

fn write_options(dir: &Path, options: &Options) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    for (name, contents) in &options.files {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join(name))?
            .write_all(contents)?;
    }
    if !options.settings.is_empty() {
        let conf: String = options
            .settings
            .iter()
            .map(|(k, v)| format!("{k} = '{}'\n", v.replace('\'', "''")))
            .collect();
        std::fs::write(dir.join("extra.conf"), conf)?;
    }
    Ok(())
}

/// The directory holding `initdb`, `postgres` and `pg_ctl`.
pub fn find_bindir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
                return Some(dir);
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop()
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether this process runs as root (then servers run as user `postgres`).
pub fn is_root() -> bool {
    // /proc/self/status "Uid:" line; avoids a libc dependency for one call.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
