//! Faults on a schedule drawn from the seed (the same seed gives the same
//! schedule; how the system interleaves with it still varies from run to run):
//! `kill -9` of a reactor (restarted after a moment), a PostgreSQL crash
//! (`pg_ctl -m immediate stop`, back after 0.5-4 s), `pg_terminate_backend` of
//! the reactors' connections, a silent network partition (the proxy between
//! the reactors and PostgreSQL forwards nothing and closes nothing on its
//! flows, which stay silent for good after the heal), the provider stand-in
//! answering a create slowly, with a 5xx, or after the reactor gave up
//! waiting (it was created), the provider answering 503 to everything for
//! seconds, and the storage folder unwritable for seconds (a regular file at
//! its path).
use crate::cluster::SoakCluster;
use crate::common::fake_replicate::{CreateScript, FakeReplicate};
use crate::common::silent_proxy::SilentProxy;
use crate::reactors::Fleet;
use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub enum Fault {
    /// Kill reactor `index % reactors`, start it again after the pause.
    Kill { index: usize, down: Duration },
    /// Crash PostgreSQL, start it again after `down`.
    PgStop { down: Duration },
    /// Terminate every backend of the reactors.
    Terminate,
    /// The reactors' network to PostgreSQL goes silent for `down`.
    Silence { down: Duration },
    /// The next create call meets this.
    Provider(CreateScript),
    /// Every provider endpoint answers 503 for `down`.
    ProviderOutage { down: Duration },
    /// The storage folder is unwritable for `down`.
    StorageOutage { down: Duration },
}

#[derive(Default, Debug)]
pub struct FaultCounts {
    pub kill: u64,
    pub pg_stop: u64,
    pub terminate: u64,
    pub silence: u64,
    pub provider: u64,
    pub provider_outage: u64,
    pub storage_outage: u64,
}

/// Each kind of fault recurs at random intervals within its range. Kills stop
/// well before the end and the last fault is a short database outage: a
/// restart frees whatever a reactor holds, so a kill after the last outage
/// would hide work the outage stranded (issue 11's first defect).
pub fn schedule(seed: u64, length: Duration, provider_timeout: Duration) -> Vec<(Duration, Fault)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut events = vec![];
    let end = length.as_secs_f64();
    let closing_outage = end - 8.0;
    let mut every = |from: f64,
                     to: f64,
                     first: f64,
                     until: f64,
                     make: &mut dyn FnMut(&mut rand::rngs::StdRng) -> Fault| {
        let mut at = first;
        while at < until {
            events.push((Duration::from_secs_f64(at), make(&mut rng)));
            at += rng.random_range(from..to);
        }
    };
    every(4.0, 9.0, 5.0, closing_outage - 10.0, &mut |rng| {
        Fault::Kill {
            index: rng.random_range(0..64),
            down: Duration::from_millis(rng.random_range(200..1500)),
        }
    });
    every(35.0, 55.0, 20.0, closing_outage - 15.0, &mut |rng| {
        Fault::PgStop {
            down: Duration::from_millis(rng.random_range(500..4000)),
        }
    });
    every(6.0, 14.0, 8.0, end, &mut |_| Fault::Terminate);
    every(30.0, 60.0, 12.0, closing_outage - 15.0, &mut |rng| {
        Fault::ProviderOutage {
            down: Duration::from_millis(rng.random_range(3000..15000)),
        }
    });
    every(30.0, 60.0, 25.0, closing_outage - 15.0, &mut |rng| {
        Fault::StorageOutage {
            down: Duration::from_millis(rng.random_range(3000..15000)),
        }
    });
    every(30.0, 50.0, 12.0, closing_outage - 20.0, &mut |rng| {
        Fault::Silence {
            down: Duration::from_millis(rng.random_range(3000..10000)),
        }
    });
    every(1.0, 4.0, 2.0, end, &mut |rng| {
        Fault::Provider(match rng.random_range(0..3) {
            0 => CreateScript::ServerError,
            1 => CreateScript::Slow(provider_timeout / 2),
            _ => CreateScript::CreateThenAnswerAfter(provider_timeout + Duration::from_secs(1)),
        })
    });
    if closing_outage > 0.0 {
        let down = Duration::from_millis(rng.random_range(500..2000));
        events.push((
            Duration::from_secs_f64(closing_outage),
            Fault::PgStop { down },
        ));
    }
    events.sort_by_key(|(at, _)| *at);
    events
}

pub struct Injector {
    pub cluster: SoakCluster,
    pub fleet: Arc<Mutex<Fleet>>,
    pub fake: FakeReplicate,
    /// The reactors' storage folder.
    pub storage: PathBuf,
    /// What the reactors reach PostgreSQL through.
    pub proxy: SilentProxy,
    /// The soak database, as superuser (for pg_terminate_backend).
    pub admin_url: String,
    pub counts: FaultCounts,
}

impl Injector {
    /// Applies the schedule; returns with PostgreSQL up and every reactor running.
    pub async fn run(&mut self, events: Vec<(Duration, Fault)>) {
        let start = Instant::now();
        for (at, fault) in events {
            tokio::time::sleep_until((start + at).into()).await;
            self.apply(fault).await;
        }
    }

    async fn apply(&mut self, fault: Fault) {
        match fault {
            Fault::Kill { index, down } => {
                {
                    let mut fleet = self.fleet.lock().unwrap();
                    let i = index % fleet.len();
                    fleet.kill9(i);
                }
                tokio::time::sleep(down).await;
                self.fleet.lock().unwrap().restart_down();
                self.counts.kill += 1;
            }
            Fault::PgStop { down } => {
                self.cluster.crash();
                tokio::time::sleep(down).await;
                self.cluster.boot().await;
                self.counts.pg_stop += 1;
            }
            Fault::Terminate => {
                if let Ok(admin) = reactor::store::db::connect(&self.admin_url).await {
                    let _ = admin
                        .execute(
                            "select pg_terminate_backend(pid) from pg_stat_activity
                             where application_name like 'reactor%' and pid <> pg_backend_pid()",
                            &[],
                        )
                        .await;
                    self.counts.terminate += 1;
                }
            }
            Fault::Silence { down } => {
                self.proxy.partition();
                tokio::time::sleep(down).await;
                self.proxy.heal();
                self.counts.silence += 1;
            }
            Fault::Provider(step) => {
                self.fake.script(&[step]);
                self.counts.provider += 1;
            }
            Fault::ProviderOutage { down } => {
                self.fake.set_down(true);
                tokio::time::sleep(down).await;
                self.fake.set_down(false);
                self.counts.provider_outage += 1;
            }
            Fault::StorageOutage { down } => {
                // Moved away with a regular file in its place: every write
                // under it fails, for root too.
                let away = self.storage.with_extension("away");
                std::fs::rename(&self.storage, &away).expect("move the storage folder away");
                std::fs::write(&self.storage, b"storage outage").expect("a file in its place");
                tokio::time::sleep(down).await;
                std::fs::remove_file(&self.storage).expect("remove the file");
                std::fs::rename(&away, &self.storage).expect("put the storage folder back");
                self.counts.storage_outage += 1;
            }
        }
    }
}
