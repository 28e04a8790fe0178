//! The reactors under test: real `reactor run` processes, each on a fixed
//! loopback port (so a restarted reactor gets the webhooks registered by its
//! previous life). The soak kills and restarts them; a reactor that exits
//! when nobody killed it is recorded and restarted, and fails the soak.
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

pub struct Reactor {
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

pub struct Fleet {
    flags: Vec<String>,
    reactors: Vec<Reactor>,
    /// One line per reactor that exited on its own.
    pub exits: Vec<String>,
    pub kills: u64,
}

impl Fleet {
    /// Starts `count` reactors with `flags` (each adds its own address and
    /// public URL); their logs go to `logs`.
    pub fn start(count: usize, flags: Vec<String>, logs: &Path) -> Self {
        let reactors = (0..count)
            .map(|i| Reactor {
                port: reactor::sandbox::cluster::free_port().expect("free port"),
                log: logs.join(format!("reactor-{i}.log")),
                child: None,
            })
            .collect();
        let mut fleet = Fleet {
            flags,
            reactors,
            exits: vec![],
            kills: 0,
        };
        for i in 0..count {
            fleet.spawn(i);
        }
        fleet
    }

    pub fn len(&self) -> usize {
        self.reactors.len()
    }

    fn spawn(&mut self, i: usize) {
        let r = &mut self.reactors[i];
        let addr = format!("127.0.0.1:{}", r.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&r.log)
            .expect("reactor log");
        let child = Command::new(env!("CARGO_BIN_EXE_reactor"))
            .arg("run")
            .args(&self.flags)
            .args([
                "--http-addr",
                &addr,
                "--public-url",
                &format!("http://{addr}"),
            ])
            .env("RUST_LOG", "info,reactor=debug,tokio_postgres=warn")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn the reactor binary");
        r.child = Some(child);
    }

    /// `kill -9` reactor `i`; it stays down until [`Fleet::restart_down`].
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut child) = self.reactors[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.kills += 1;
        }
    }

    /// Starts every reactor that is down.
    pub fn restart_down(&mut self) {
        for i in 0..self.reactors.len() {
            if self.reactors[i].child.is_none() {
                self.spawn(i);
            }
        }
    }

    /// Records (and restarts) reactors that exited although nobody killed them.
    pub fn check_exits(&mut self) {
        for i in 0..self.reactors.len() {
            let r = &mut self.reactors[i];
            let Some(child) = r.child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                self.exits.push(format!(
                    "reactor {i} exited on its own ({status}); log: {}",
                    r.log.display()
                ));
                r.child = None;
                self.spawn(i);
            }
        }
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for r in &mut self.reactors {
            if let Some(mut child) = r.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
