//! The client side: what a Supabase app does, through the same roles and
//! RLS (`reactor::store::db::act_as_user`). Users sign up (the auth service writes
//! auth.users, the app inserts the profile as the user), submit generation
//! jobs (PT409: one in flight per user; PT402: monthly quota — both are
//! normal answers, the client waits), and sometimes cancel one. When the
//! database is away the client reconnects and carries on.
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};
use tokio_postgres::Client;
use uuid::Uuid;

/// A few users submit often (they meet PT409 and, in long runs, PT402);
/// the rest submit now and then.
const BUSY_USERS: usize = 20;
const TICK: Duration = Duration::from_millis(50);

#[derive(Default, Debug)]
pub struct WorkloadStats {
    pub signups: u64,
    pub submitted: u64,
    pub in_progress_409: u64,
    pub quota_402: u64,
    pub cancels: u64,
    /// Statements cut off by a fault (connection lost); the client retried later.
    pub interrupted: u64,
    /// Answers no fault explains (listed by the soak, and they fail it).
    pub unexpected: Vec<String>,
}

pub struct Workload {
    url: String,
    rng: rand::rngs::StdRng,
    client: Option<Client>,
    users: Vec<Uuid>,
    recent_jobs: Vec<(Uuid, Uuid)>,
    pub stats: WorkloadStats,
}

/// Whether the statement went through or a submit rule refused it.
enum Outcome {
    Done,
    Refused,
}

impl Workload {
    pub fn new(url: String, seed: u64) -> Self {
        Workload {
            url,
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            client: None,
            users: vec![],
            recent_jobs: vec![],
            stats: WorkloadStats::default(),
        }
    }

    /// Runs until `until`: per tick, maybe a sign-up, a submission, a cancel.
    pub async fn run(mut self, until: Instant) -> WorkloadStats {
        while Instant::now() < until {
            if self.rng.random_bool(0.4) {
                self.step(Step::SignUp).await;
            }
            if !self.users.is_empty() && self.rng.random_bool(0.2) {
                self.step(Step::Submit).await;
            }
            if !self.recent_jobs.is_empty() && self.rng.random_bool(0.03) {
                self.step(Step::Cancel).await;
            }
            tokio::time::sleep(TICK).await;
        }
        self.stats
    }

    async fn step(&mut self, step: Step) {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            match reactor::store::db::connect(&self.url).await {
                Ok(c) => self.client = Some(c),
                Err(_) => {
                    self.stats.interrupted += 1;
                    return;
                }
            }
        }
        let result = match step {
            Step::SignUp => self.sign_up().await,
            Step::Submit => self.submit().await,
            Step::Cancel => self.cancel().await,
        };
        match result {
            Ok(Outcome::Done | Outcome::Refused) => {}
            Err(e) if e.as_db_error().is_none() || is_fault(&e) => {
                self.stats.interrupted += 1;
                self.client = None;
            }
            Err(e) => self
                .stats
                .unexpected
                .push(format!("{step:?}: {}", reactor::store::db::describe(&e))),
        }
    }

    fn client(&mut self) -> &mut Client {
        self.client.as_mut().expect("connected")
    }

    async fn sign_up(&mut self) -> Result<Outcome, tokio_postgres::Error> {
        let id = Uuid::new_v4();
        let client = self.client();
        client
            .execute(
                "insert into auth.users (id, email) values ($1, $2)",
                &[&id, &format!("{id}@soak.example")],
            )
            .await?;
        let tx = client.transaction().await?;
        reactor::store::db::act_as_user(&tx, id).await?;
        tx.execute("insert into profiles (id) values ($1)", &[&id])
            .await?;
        tx.commit().await?;
        self.users.push(id);
        self.stats.signups += 1;
        Ok(Outcome::Done)
    }

    async fn submit(&mut self) -> Result<Outcome, tokio_postgres::Error> {
        let pick = if self.rng.random_bool(0.5) {
            self.rng.random_range(0..self.users.len().min(BUSY_USERS))
        } else {
            self.rng.random_range(0..self.users.len())
        };
        let user = self.users[pick];
        // A unique prompt: the reactor may reconcile an interrupted create by input.
        let prompt = format!("a soak room {}", Uuid::new_v4().simple());
        let tx = self.client().transaction().await?;
        reactor::store::db::act_as_user(&tx, user).await?;
        let inserted = tx
            .query_one(
                "insert into generation_jobs (owner_id, mode, prompt, room_type, style)
                 values ($1, 'imagine', $2, 'living room', 'scandinavian') returning id",
                &[&user, &prompt],
            )
            .await;
        let job: Uuid = match inserted {
            Ok(row) => row.get(0),
            Err(e) => {
                drop(tx);
                return self.refusal(e);
            }
        };
        tx.commit().await?;
        self.stats.submitted += 1;
        self.recent_jobs.push((user, job));
        if self.recent_jobs.len() > 50 {
            self.recent_jobs.remove(0);
        }
        Ok(Outcome::Done)
    }

    /// PT409 and PT402 are the rules working; anything else is passed on.
    fn refusal(&mut self, e: tokio_postgres::Error) -> Result<Outcome, tokio_postgres::Error> {
        match e.code().map(|c| c.code()) {
            Some("PT409") => self.stats.in_progress_409 += 1,
            Some("PT402") => self.stats.quota_402 += 1,
            _ => return Err(e),
        }
        Ok(Outcome::Refused)
    }

    async fn cancel(&mut self) -> Result<Outcome, tokio_postgres::Error> {
        // Often the newest job (likely still running), else any recent one.
        let newest = self.recent_jobs.len() - 1;
        let pick = if self.rng.random_bool(0.5) {
            newest
        } else {
            self.rng.random_range(0..=newest)
        };
        let (user, job) = self.recent_jobs[pick];
        let tx = self.client().transaction().await?;
        reactor::store::db::act_as_user(&tx, user).await?;
        tx.query_one("select cancel_generation_job($1)", &[&job])
            .await?;
        tx.commit().await?;
        self.stats.cancels += 1;
        Ok(Outcome::Done)
    }
}

#[derive(Debug, Clone, Copy)]
enum Step {
    SignUp,
    Submit,
    Cancel,
}

/// Errors a fault causes: the server shutting down or our backend terminated.
fn is_fault(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        matches!(
            c.code(),
            "57P01" | "57P02" | "57P03" | "08006" | "08003" | "08000"
        )
    })
}
