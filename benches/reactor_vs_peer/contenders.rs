//! The contenders (the reactor in its modes, the peer) as child processes.
use crate::cluster::{Ctx, Db, Template};
use anyhow::{bail, Context as _, Result};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Contender {
    Reactor,
    /// The reactor with `--listen false` on a database without notify
    /// triggers: the mode that avoids NOTIFY, at the cost of polling.
    ReactorPoll,
    /// The reactor in outbox mode (`reactor.notify_mode = 'outbox'` on the
    /// database, `--outbox-poll`): hints go through an unlogged table.
    ReactorOutbox,
    Peer(String),
}

impl Contender {
    pub(crate) fn key(&self) -> String {
        match self {
            Contender::Reactor => "reactor".into(),
            Contender::ReactorPoll => "reactor_poll".into(),
            Contender::ReactorOutbox => "reactor_outbox".into(),
            Contender::Peer(mode) => format!("gw_{mode}"),
        }
    }

    pub(crate) fn template(&self) -> Template {
        match self {
            Contender::Reactor => Template::Reactor,
            Contender::ReactorPoll => Template::Plain,
            Contender::ReactorOutbox => Template::Reactor,
            Contender::Peer(_) => Template::Peer,
        }
    }
}

/// A contender running as a child process.
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) log: PathBuf,
    /// Whether the contender is a reactor (it serves HTTP).
    serves_http: bool,
    /// The reactor's HTTP port, once [`Running::ready`] has read it from
    /// the reactor's log. The reactor binds port 0: a free port picked here
    /// could be taken (by another reactor's connections) before it binds.
    pub(crate) http_port: Option<u16>,
}

/// The port of the last "HTTP server listening" line in a reactor's log.
fn logged_http_port(log: &std::path::Path) -> Option<u16> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text
        .lines()
        .rev()
        .find(|l| l.contains("HTTP server listening"))?;
    // Drop terminal colours (ESC [ … letter) around the field's name.
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            chars.by_ref().find(|c| c.is_ascii_alphabetic());
        } else {
            plain.push(c);
        }
    }
    let addr = plain
        .split("http_addr=")
        .nth(1)?
        .split_whitespace()
        .next()?;
    addr.parse::<std::net::SocketAddr>().ok().map(|a| a.port())
}

impl Ctx {
    pub(crate) async fn start(&self, who: &Contender, db: &Db, label: &str) -> Result<Running> {
        self.start_with_env(who, db, label, &[]).await
    }

    /// [`Ctx::start`] with extra environment variables for the reactor (a
    /// `REACTOR_CONFIG`, say).
    pub(crate) async fn start_with_env(
        &self,
        who: &Contender,
        db: &Db,
        label: &str,
        env: &[(&str, &str)],
    ) -> Result<Running> {
        let (log, log_path) = self.log_file(&format!("{}_{}", db.name, label))?;
        let err = log.try_clone()?;
        match who {
            Contender::Reactor | Contender::ReactorPoll | Contender::ReactorOutbox => {
                let poll: Vec<String> = if *who == Contender::ReactorPoll {
                    vec![
                        "--listen".into(),
                        "false".into(),
                        "--poll-interval".into(),
                        self.p.poll_interval.clone(),
                    ]
                } else if *who == Contender::ReactorOutbox {
                    vec!["--outbox-poll".into(), self.p.outbox_poll.clone()]
                } else {
                    Vec::new()
                };
                let storage = self.p.work_dir.join("storage");
                let child = Command::new(&self.p.reactor_bin)
                    .arg("run")
                    .args(["--database-url", &db.url, "--provider", "local"])
                    .args(["--http-addr", "127.0.0.1:0"])
                    .arg("--storage-url")
                    .arg(&storage)
                    .args(&poll)
                    .args(&self.p.reactor_args)
                    .env("RUST_LOG", &self.p.reactor_log)
                    .envs(env.iter().copied())
                    .stdin(Stdio::null())
                    .stdout(log)
                    .stderr(err)
                    .kill_on_drop(true)
                    .spawn()
                    .with_context(|| {
                        format!(
                            "starting {} (build it: cargo build --release)",
                            self.p.reactor_bin.display()
                        )
                    })?;
                Ok(Running {
                    child,
                    log: log_path,
                    serves_http: true,
                    http_port: None,
                })
            }
            Contender::Peer(mode) => {
                let dir = self.p.peer_dir.as_ref().expect("peer enabled");
                let child = Command::new("node")
                    .arg(dir.join("runner.mjs"))
                    .args(["work", mode, &db.url])
                    .current_dir(dir)
                    .stdin(Stdio::null())
                    .stdout(log)
                    .stderr(err)
                    .kill_on_drop(true)
                    .spawn()
                    .context("starting the peer (node)")?;
                Ok(Running::without_http(child, log_path))
            }
        }
    }
}

impl Running {
    /// A process that serves no HTTP (the peer, pg_recvlogical).
    pub(crate) fn without_http(child: Child, log: PathBuf) -> Self {
        Running {
            child,
            log,
            serves_http: false,
            http_port: None,
        }
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Fails if the process has exited (it should run until stopped).
    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let tail = std::fs::read_to_string(&self.log).unwrap_or_default();
            let tail: String = tail
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n");
            bail!(
                "contender exited early ({status}); log {}:\n{tail}",
                self.log.display()
            );
        }
        Ok(())
    }

    /// Waits for the reactor's /readyz (listening and first replay done),
    /// on the port its log names.
    pub(crate) async fn ready(&mut self) -> Result<()> {
        if !self.serves_http {
            return Ok(());
        }
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            self.check_alive()?;
            if self.http_port.is_none() {
                self.http_port = logged_http_port(&self.log);
            }
            let ok = match self.http_port {
                Some(port) => http
                    .get(format!("http://127.0.0.1:{port}/readyz"))
                    .send()
                    .await
                    .map(|r| r.status().is_success())
                    .unwrap_or(false),
                None => false,
            };
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the reactor was not ready within 60s ({})",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peak resident set (VmHWM) of the process so far, in kB.
    pub(crate) fn peak_rss_kb(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }

    /// SIGTERM (both contenders shut down gracefully on it), then SIGKILL.
    pub(crate) async fn stop(mut self) -> Result<()> {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if tokio::time::timeout(Duration::from_secs(20), self.child.wait())
                .await
                .is_ok()
            {
                return Ok(());
            }
        }
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}
