//! A submitted generation job is sent to the image provider and followed to a
//! terminal status. One attempt is one step: submit, or look at the
//! prediction once; a running prediction is looked at again later (webhooks
//! usually report it first).
//!
//! Never paying twice: before the create call the job is marked
//! (`submit_started_at`, committed under the lease). A create that surely
//! created nothing (429, refused connection, 5xx) clears the mark; one whose
//! outcome is unknown (timeout after sending, an unreadable answer, a crash)
//! leaves it, and the next attempt first asks the provider for a prediction
//! made for this job since the mark, and adopts it instead of creating another.
//! Only a prediction that carries this job's id is adopted; one that merely
//! has the same input may be another user's identical job, so the job fails
//! with [`UNPROVEN`] instead (we never attach another user's images).
//!
//! Timed out, still followed: the stuck rule fails a job that has no terminal
//! status in time, and when the job has a prediction it sets
//! `followed_until = created_at + late window`. Until then the prediction is
//! still looked at, a late success is accepted, and the submit rules count the
//! job as in flight (it may still deliver, so the owner may not start another).
//! When the window ends the reactor cancels the prediction and stops
//! following; a success arriving after `followed_until` is refused, so it is
//! never delivered and never debited.
use crate::job::error::Budget;
use crate::job::handler::{Action, Handler, HandlerError, KeyType, LeasedWork, Outcome, Spec};
use crate::job::lease::Lease;
use crate::job::status::JobStatus;
use crate::providers::{Found, JobInput, Prediction, PredictionState, Provider, ProviderError};
use crate::store::db::param;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::GenericClient;
use uuid::Uuid;

pub const NAME: &str = "generation";
/// Fails an in-flight job with an error (`$1` job id, `$2` error).
const FAIL_IN_FLIGHT: &str =
    "update public.generation_jobs set status = 'failed', error = $2, completed_at = now()
     where id = $1 and status in ('starting', 'processing')";

/// Fails every in-flight job older than `$2` seconds with error `$1`: the
/// stuck rule, enforced from table state (served by idx_jobs_in_flight_owner).
/// A job with a prediction stays followed for `$3` seconds after its creation.
const TIME_OUT_STUCK: &str =
    "update public.generation_jobs set status = 'failed', error = $1, completed_at = now(),
            followed_until = case when prediction_id is not null
                                  then created_at + make_interval(secs => $3) end
     where status in ('starting', 'processing') and created_at <= now() - make_interval(secs => $2)
     returning id::text, prediction_id is not null";

/// The stuck rule for one job (`$1`), as an attempt applies it.
const TIME_OUT_ONE: &str =
    "update public.generation_jobs set status = 'failed', error = $2, completed_at = now(),
            followed_until = case when prediction_id is not null
                                  then created_at + make_interval(secs => $3) end
     where id = $1 and status in ('starting', 'processing')";

/// Stops following job `$1` once its late window has ended.
const STOP_FOLLOWING: &str = "update public.generation_jobs set followed_until = null
     where id = $1 and followed_until is not null and followed_until <= clock_timestamp()";

/// The error a job gets when an interrupted submission cannot be reconciled.
pub const UNPROVEN: &str = "the submission was interrupted and its outcome could not be proven: \
     the provider has a prediction with this job's input that does not carry this job's id, \
     so it was not adopted and nothing was submitted again; submit the job again";

/// The error a job gets when it has no terminal status in time.
pub const TIMED_OUT: &str = "timed out";

pub struct Settings {
    /// `{REACTOR_PUBLIC_URL}/webhooks/replicate` when webhooks are on.
    pub webhook_url: Option<String>,
    pub stuck_after: Duration,
    /// First interval between looks at a running prediction.
    pub poll_min: Duration,
    /// With webhooks on, how long to wait for one before polling.
    pub webhook_grace: Duration,
    /// How long after its creation a timed-out job is still followed for a
    /// late success (`followed_until`).
    pub late_window: Duration,
    /// Prefix for input paths that are not URLs (e.g. a public bucket's URL).
    pub input_base_url: Option<String>,
    /// Pass input paths through unchanged (the local provider reads no inputs).
    pub input_paths_as_is: bool,
    /// Signs `bucket/key` input paths (with s3:// storage and no base URL).
    pub input_signer: Option<crate::providers::storage::InputSigner>,
}

/// How long a signed input URL stays valid (the provider fetches it at once).
const INPUT_URL_VALIDITY: Duration = Duration::from_secs(3600);

/// The rows the generation handler works on: in-flight jobs, and timed-out
/// jobs still followed for a late success (`followed_until` set).
pub fn spec() -> Spec {
    Spec {
        name: NAME.into(),
        table: "public.generation_jobs".into(),
        notify_table: "generation_jobs".into(),
        key: "id".into(),
        key_type: KeyType::Uuid,
        pending: "t.status in ('starting', 'processing') or t.followed_until is not null".into(),
        statuses: Some(vec![
            JobStatus::Starting.to_string(),
            JobStatus::Processing.to_string(),
        ]),
    }
}

pub fn handler(
    provider: Arc<dyn Provider>,
    settings: Settings,
    limits: crate::job::limits::Limits,
) -> Handler {
    Handler {
        spec: spec(),
        action: Action::Leased(Arc::new(Generation { provider, settings })),
        limits,
    }
}

struct Generation {
    provider: Arc<dyn Provider>,
    settings: Settings,
}

struct Job {
    input: JobInput,
    owner_id: Uuid,
    /// Why an input may not be sent (see `storage::input_path_problem`).
    input_refusal: Option<String>,
    status: JobStatus,
    error: Option<String>,
    prediction_id: Option<String>,
    submit_started_at: Option<DateTime<Utc>>,
    cancel_requested: bool,
    created_at: DateTime<Utc>,
    /// Set while a timed-out job is still followed for a late success.
    followed_until: Option<DateTime<Utc>>,
}

impl Job {
    fn in_flight(&self) -> bool {
        self.status.in_flight()
    }
}

/// Writes a provider's word on a prediction to its job, if the job can still
/// take it (in flight, or timed out and still followed: `followed_until` not
/// yet passed). Shared by polling and the webhook; `db` must be a transaction:
/// a success first takes the owner's submit lock, so that it and a submission
/// are ordered (a late success refused from the moment its window ends, a
/// submission that sees the success counting it). Returns whether the job
/// changed.
pub async fn apply_prediction(
    db: &impl GenericClient,
    job_id: Uuid,
    p: &Prediction,
) -> Result<bool, tokio_postgres::Error> {
    let (status, output, error): (JobStatus, Option<serde_json::Value>, Option<String>) =
        match p.status {
            PredictionState::Starting => return Ok(false),
            PredictionState::Processing => {
                let n = db
                    .execute_typed(
                        "update public.generation_jobs set status = 'processing'
                     where id = $1 and status = 'starting' and prediction_id = $2",
                        &[param(&job_id), param(&p.id)],
                    )
                    .await?;
                return Ok(n > 0);
            }
            PredictionState::Succeeded if p.output.is_empty() => (
                JobStatus::Failed,
                None,
                Some("the provider reported success without output images".into()),
            ),
            PredictionState::Succeeded => (
                JobStatus::Succeeded,
                Some(serde_json::json!(p.output)),
                None,
            ),
            PredictionState::Failed => (
                JobStatus::Failed,
                None,
                Some(
                    p.error
                        .as_deref()
                        .map(job_error_text)
                        .unwrap_or_else(|| "the provider reported failure".into()),
                ),
            ),
            PredictionState::Aborted => (
                JobStatus::Failed,
                None,
                Some("aborted: the prediction's deadline passed before it started".into()),
            ),
            PredictionState::Canceled => (JobStatus::Canceled, None, None),
        };
    if status == JobStatus::Succeeded {
        db.execute_typed(
            "select reactor.lock_submissions(owner_id) from public.generation_jobs where id = $1",
            &[param(&job_id)],
        )
        .await?;
    }
    let n = db
        .execute_typed(
            "update public.generation_jobs
             set status = $2, output = $3, error = $4, completed_at = now(), followed_until = null
             where id = $1 and prediction_id = $5
               and (status in ('starting', 'processing')
                    or (status = 'failed' and error = $6 and followed_until > clock_timestamp()))",
            &[
                param(&job_id),
                param(&status),
                param(&output),
                param(&error),
                param(&p.id),
                param(&TIMED_OUT),
            ],
        )
        .await?;
    Ok(n > 0)
}

impl Generation {
    async fn load(
        &self,
        pool: &deadpool_postgres::Pool,
        lease: &Lease,
        id: Uuid,
    ) -> Result<Option<Job>, HandlerError> {
        let row = lease
            .on_db(pool, async |client| {
                Ok(client
                    .query_typed_opt(
                        "select mode, room_type, style, prompt, input1_path, input2_path, status, error,
                                prediction_id, submit_started_at, cancel_requested_at is not null, created_at,
                                owner_id, followed_until
                         from public.generation_jobs where id = $1",
                        &[param(&id)],
                    )
                    .await?)
            })
            .await?;
        let Some(row) = row else { return Ok(None) };
        let owner_id: Uuid = row.get(12);
        let paths = [("input1_path", row.get(4)), ("input2_path", row.get(5))];
        let paths: Vec<(&str, String)> = paths
            .into_iter()
            .filter_map(|(column, path): (&str, Option<String>)| Some((column, path?)))
            .collect();
        let input_refusal = paths.iter().find_map(|(column, path)| {
            crate::providers::storage::input_path_problem(path, owner_id)
                .map(|problem| format!("{column} {path:?} refused: it {problem}"))
        });
        let mut images = Vec::with_capacity(paths.len());
        if input_refusal.is_none() {
            for (_, path) in &paths {
                images.push(self.input_url(path, owner_id).await?);
            }
        }
        Ok(Some(Job {
            input: JobInput {
                id,
                mode: row.get(0),
                room_type: row.get(1),
                style: row.get(2),
                prompt: row.get(3),
                images,
            },
            owner_id,
            input_refusal,
            status: row.get(6),
            error: row.get(7),
            prediction_id: row.get(8),
            submit_started_at: row.get(9),
            cancel_requested: row.get(10),
            created_at: row.get(11),
            followed_until: row.get(13),
        }))
    }

    /// An input path as a URL the provider can fetch: http(s) URLs as they
    /// are, else under REACTOR_INPUT_BASE_URL, else signed (s3:// storage).
    /// Only the job owner's own keys are ever prefixed or signed.
    async fn input_url(&self, path: &str, owner: Uuid) -> Result<String, HandlerError> {
        if let Some(problem) = crate::providers::storage::input_path_problem(path, owner) {
            return Err(HandlerError::permanent(format!(
                "input {path:?} refused: it {problem}"
            )));
        }
        if self.settings.input_paths_as_is || crate::providers::storage::is_http_url(path) {
            return Ok(path.to_string());
        }
        if let Some(base) = &self.settings.input_base_url {
            return Ok(format!("{}/{path}", base.trim_end_matches('/')));
        }
        match &self.settings.input_signer {
            Some(signer) => signer
                .sign(path, owner, INPUT_URL_VALIDITY)
                .await
                .map_err(HandlerError::permanent),
            None => Err(HandlerError::permanent(format!(
                "input {path:?} is not a URL the provider can fetch; store inputs as http(s) URLs, \
                 set REACTOR_INPUT_BASE_URL, or use s3:// storage so inputs are signed"
            ))),
        }
    }

    async fn fail_job(
        &self,
        pool: &deadpool_postgres::Pool,
        lease: &Lease,
        id: Uuid,
        error: &str,
    ) -> Result<Outcome, HandlerError> {
        let error = job_error_text(error);
        tracing::warn!(%error, "job failed");
        lease
            .execute_fenced(pool, FAIL_IN_FLIGHT, &[&id, &error])
            .await?;
        Ok(Outcome::Finished)
    }

    /// How long until the next look at a running prediction.
    fn poll_delay(&self, job: &Job) -> Duration {
        let since = job.submit_started_at.unwrap_or(job.created_at);
        let elapsed = (Utc::now() - since).to_std().unwrap_or_default();
        let mut delay = (elapsed / 4).clamp(
            self.settings.poll_min,
            Duration::from_secs(30).max(self.settings.poll_min),
        );
        if self.settings.webhook_url.is_some() {
            delay = delay.max(self.settings.webhook_grace.saturating_sub(elapsed));
        }
        // Wake up for the stuck deadline too.
        let to_stuck = (job.created_at
            + chrono::Duration::from_std(self.settings.stuck_after).unwrap_or_default()
            - Utc::now())
        .to_std()
        .unwrap_or_default();
        if job.in_flight() && to_stuck > Duration::ZERO {
            delay = delay.min(to_stuck + Duration::from_millis(10));
        }
        // And for the end of the late window.
        if let Some(until) = job.followed_until {
            let to_end = (until - Utc::now()).to_std().unwrap_or_default();
            delay = delay.min(to_end + Duration::from_millis(10));
        }
        delay
    }

    /// Records the provider's prediction on the job, then follows it.
    async fn adopt(
        &self,
        pool: &deadpool_postgres::Pool,
        lease: &Lease,
        job: &mut Job,
        p: Prediction,
    ) -> Result<Outcome, HandlerError> {
        let id = job.input.id;
        lease.execute_fenced(
            pool,
            "update public.generation_jobs
             set prediction_id = $2, status = case when status = 'starting' then 'processing' else status end
             where id = $1 and prediction_id is null",
            &[&id, &p.id],
        )
        .await?;
        tracing::info!(prediction = %p.id, "prediction created");
        job.prediction_id = Some(p.id.clone());
        if job.cancel_requested {
            // Canceled while the create was in flight: cancel what was created.
            return self.cancel(pool, lease, job).await;
        }
        self.follow(pool, lease, job, p).await
    }

    async fn follow(
        &self,
        pool: &deadpool_postgres::Pool,
        lease: &Lease,
        job: &Job,
        p: Prediction,
    ) -> Result<Outcome, HandlerError> {
        let changed = lease
            .on_db(pool, async |client| {
                let tx = lease.begin(client).await?;
                let changed = apply_prediction(&**tx, job.input.id, &p).await?;
                tx.commit().await?;
                Ok(changed)
            })
            .await?;
        if p.status.is_terminal() {
            if changed {
                tracing::info!(prediction = %p.id, status = ?p.status, "prediction finished");
            }
            return Ok(Outcome::Finished);
        }
        Ok(Outcome::CheckAgainIn(self.poll_delay(job)))
    }

    async fn cancel(
        &self,
        pool: &deadpool_postgres::Pool,
        lease: &Lease,
        job: &Job,
    ) -> Result<Outcome, HandlerError> {
        if let Some(pid) = &job.prediction_id {
            match self.provider.cancel(pid).await {
                Ok(()) | Err(ProviderError::NotFound) => {}
                Err(e) => {
                    return Err(HandlerError::transient(format!(
                        "canceling prediction {pid}: {e}"
                    )))
                }
            }
        }
        lease
            .execute_fenced(
                pool,
                "update public.generation_jobs set status = 'canceled', completed_at = now()
             where id = $1 and status in ('starting', 'processing')",
                &[&job.input.id],
            )
            .await?;
        tracing::info!("job canceled");
        Ok(Outcome::Finished)
    }

    /// The late window of a timed-out job has ended: its prediction is
    /// canceled at the provider (it would cost money for a result that is
    /// refused now) and the job is no longer followed.
    async fn stop_following(
        &self,
        pool: &deadpool_postgres::Pool,
        lease: &Lease,
        job: &Job,
    ) -> Result<Outcome, HandlerError> {
        if let Some(pid) = &job.prediction_id {
            match self.provider.cancel(pid).await {
                Ok(()) | Err(ProviderError::NotFound) => {}
                Err(e) => {
                    return Err(HandlerError::retryable(format!(
                        "canceling prediction {pid} at the end of the late window: {e}"
                    )))
                }
            }
        }
        lease
            .execute_fenced(pool, STOP_FOLLOWING, &[&job.input.id])
            .await?;
        tracing::info!("late window ended: prediction canceled, no longer followed");
        Ok(Outcome::Finished)
    }

    async fn submit(
        &self,
        pool: &deadpool_postgres::Pool,
        lease: &Lease,
        job: &mut Job,
    ) -> Result<Outcome, HandlerError> {
        let id = job.input.id;
        if let Some(since) = job.submit_started_at {
            // An earlier create may have gone through: look before paying again.
            match self.provider.find(&job.input, since).await {
                Ok(Found::Ours(p)) => {
                    tracing::warn!(prediction = %p.id, "adopting the prediction an interrupted submission created");
                    return self.adopt(pool, lease, job, p).await;
                }
                Ok(Found::Unproven { prediction_id }) => {
                    tracing::warn!(prediction = %prediction_id, "a prediction with this job's input carries no proof that it is this job's; not adopting it");
                    return self.fail_job(pool, lease, id, UNPROVEN).await;
                }
                Ok(Found::Nothing) => {
                    tracing::info!("no prediction from the interrupted submission; submitting")
                }
                Err(e) => {
                    return Err(HandlerError::transient(format!(
                        "reconciling an interrupted submission: {e}"
                    )))
                }
            }
        }
        let marked = lease
            .execute_fenced(
                pool,
                "update public.generation_jobs set submit_started_at = now()
                 where id = $1 and status = 'starting' and prediction_id is null and cancel_requested_at is null",
                &[&id],
            )
            .await?;
        if marked == 0 {
            return Ok(Outcome::Finished);
        }
        let webhook = self
            .settings
            .webhook_url
            .as_ref()
            .map(|u| format!("{u}?job_id={id}"));
        let unmark = "update public.generation_jobs set submit_started_at = null where id = $1 and prediction_id is null";
        match self.provider.create(&job.input, webhook.as_deref()).await {
            Ok(p) => self.adopt(pool, lease, job, p).await,
            Err(ProviderError::RateLimited { retry_after }) => {
                lease.execute_fenced(pool, unmark, &[&id]).await?;
                Err(HandlerError::transient_after(
                    "rate limited by the provider (HTTP 429)",
                    retry_after,
                ))
            }
            Err(ProviderError::Unavailable(e)) => {
                lease.execute_fenced(pool, unmark, &[&id]).await?;
                Err(HandlerError::transient(format!("provider unavailable: {e}")))
            }
            Err(ProviderError::Ambiguous(e)) => Err(HandlerError::transient(format!(
                "submission outcome unknown ({e}); the next attempt reconciles before submitting again"
            ))),
            Err(ProviderError::Rejected(e)) => self.fail_job(pool, lease, id, &e).await,
            Err(ProviderError::NotFound) => {
                self.fail_job(pool, lease, id, "the provider does not know the model (HTTP 404); check REPLICATE_MODEL").await
            }
        }
    }
}

impl Generation {
    /// One attempt at a loaded job: submit, follow, cancel or time it out.
    async fn attempt(
        &self,
        pool: &deadpool_postgres::Pool,
        lease: &Lease,
        mut job: Job,
    ) -> Result<Outcome, HandlerError> {
        let id = job.input.id;
        if let Some(refusal) = job.input_refusal.take() {
            // Written around the database's input rule (or before it): fail
            // the job rather than sign, prefix or send what is not the owner's.
            if job.in_flight() {
                tracing::warn!(owner = %job.owner_id, "refusing a job whose input is not its owner's");
                return self.fail_job(pool, lease, id, &refusal).await;
            }
            return Ok(Outcome::Finished);
        }
        if job.cancel_requested && job.in_flight() {
            // A submission may be in flight or interrupted: cancel what it created.
            if let (None, Some(since)) = (&job.prediction_id, job.submit_started_at) {
                if let Found::Ours(p) =
                    self.provider.find(&job.input, since).await.map_err(|e| {
                        HandlerError::transient(format!("reconciling before cancel: {e}"))
                    })?
                {
                    return self.adopt(pool, lease, &mut job, p).await;
                }
            }
            return self.cancel(pool, lease, &job).await;
        }
        let stuck_at = job.created_at
            + chrono::Duration::from_std(self.settings.stuck_after).unwrap_or_default();
        if job.in_flight() && Utc::now() >= stuck_at {
            lease
                .execute_fenced(
                    pool,
                    TIME_OUT_ONE,
                    &[&id, &TIMED_OUT, &self.settings.late_window.as_secs_f64()],
                )
                .await?;
            tracing::warn!(stuck_after = ?self.settings.stuck_after, "job timed out; a late success is still accepted within the late window");
            job.status = JobStatus::Failed;
            job.error = Some(TIMED_OUT.into());
            if job.prediction_id.is_none() {
                return Ok(Outcome::Finished);
            }
            job.followed_until = Some(
                job.created_at
                    + chrono::Duration::from_std(self.settings.late_window).unwrap_or_default(),
            );
        }
        if job.followed_until.is_some_and(|until| Utc::now() >= until) {
            return self.stop_following(pool, lease, &job).await;
        }
        match job.prediction_id.clone() {
            None if job.status == JobStatus::Starting => self.submit(pool, lease, &mut job).await,
            None => Ok(Outcome::Finished),
            Some(pid) => match self.provider.get(&pid).await {
                Ok(p) => self.follow(pool, lease, &job, p).await,
                Err(ProviderError::NotFound) if job.in_flight() => {
                    self.fail_job(
                        pool,
                        lease,
                        id,
                        &format!("prediction {pid} not found at the provider"),
                    )
                    .await
                }
                Err(ProviderError::NotFound) => Ok(Outcome::Finished),
                Err(e) => {
                    // Polling is free and the prediction is already paid for:
                    // keep looking (the stuck rule bounds it), never fail on it.
                    tracing::warn!(prediction = %pid, error = %e, "looking at the prediction failed; will look again");
                    Ok(Outcome::CheckAgainIn(self.poll_delay(&job)))
                }
            },
        }
    }
}

#[async_trait]
impl LeasedWork for Generation {
    async fn run(
        &self,
        pool: &deadpool_postgres::Pool,
        lease: &Lease,
    ) -> Result<Outcome, HandlerError> {
        let id = lease.row_uuid()?;
        let Some(job) = self.load(pool, lease, id).await? else {
            return Ok(Outcome::Finished);
        };
        // An outage (of the provider, the database) while the job is in
        // flight is retried until the stuck rule's deadline, which then
        // decides: the job is not failed for an outage shorter than that.
        let stuck_at = job.created_at
            + chrono::Duration::from_std(self.settings.stuck_after).unwrap_or_default();
        let in_flight = job.in_flight();
        let outcome = self.attempt(pool, lease, job).await;
        if in_flight {
            return outcome.map_err(|e| e.within(Budget::Until(stuck_at)));
        }
        outcome
    }

    /// The stuck rule for every job, including ones no reactor works on (a
    /// lost lease, a missed wake-up): the attempt's own check only runs when
    /// the job is claimed. Timed-out jobs with a prediction stay followed for
    /// a late success, so their ids go back to the handler.
    async fn sweep(&self, pool: &deadpool_postgres::Pool) -> Result<Vec<String>, HandlerError> {
        let rows = pool
            .get()
            .await?
            .query_typed(
                TIME_OUT_STUCK,
                &[
                    param(&TIMED_OUT),
                    param(&self.settings.stuck_after.as_secs_f64()),
                    param(&self.settings.late_window.as_secs_f64()),
                ],
            )
            .await?;
        let mut followed = Vec::new();
        for row in rows {
            let id: String = row.get(0);
            tracing::warn!(job = %id, stuck_after = ?self.settings.stuck_after, "job timed out (stuck sweep); a late success is still accepted");
            if row.get::<_, bool>(1) {
                followed.push(id);
            }
        }
        Ok(followed)
    }

    async fn gave_up(
        &self,
        pool: &deadpool_postgres::Pool,
        row_id: &str,
        error: &str,
    ) -> Result<(), HandlerError> {
        let Ok(id) = Uuid::parse_str(row_id) else {
            return Ok(());
        };
        let client = pool.get().await?;
        client
            .execute_typed(FAIL_IN_FLIGHT, &[param(&id), param(&job_error_text(error))])
            .await?;
        // Nobody follows it any more: its late success would be refused, so
        // it no longer counts as in flight either.
        client
            .execute_typed(
                "update public.generation_jobs set followed_until = null
                 where id = $1 and followed_until is not null",
                &[param(&id)],
            )
            .await?;
        Ok(())
    }
}

/// `text` fit for `generation_jobs.error`, which the job's owner reads. A
/// provider's message may quote the URLs it was given, signed input URLs
/// included: every URL becomes `<url>`, and any other query string is cut.
pub fn job_error_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| !c.is_whitespace()) {
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        out.push_str(&redact_word(&rest[..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// One whitespace-free word of an error text, with a URL or query string cut.
fn redact_word(word: &str) -> String {
    // Kept after the cut, so "…: <url>." still reads as a sentence.
    let trailing = word.len()
        - word
            .trim_end_matches(['.', ',', ';', ':', ')', ']', '}', '"', '\''])
            .len();
    let (body, tail) = word.split_at(word.len() - trailing);
    let lower = body.to_ascii_lowercase();
    if let Some(at) = lower.find("://").or_else(|| lower.find("%3a%2f%2f")) {
        let scheme_start = body[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        return format!("{}<url>{tail}", &body[..scheme_start]);
    }
    if let Some(at) = body.find('?').filter(|&at| at + 1 < body.len()) {
        return format!("{}{tail}", &body[..at]);
    }
    word.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_errors_lose_urls_and_query_strings_and_keep_the_rest() {
        for (raw, clean) in [
            (
                "could not download https://s3.example/private/u/in.jpg?X-Amz-Signature=abc: 403",
                "could not download <url>: 403",
            ),
            (
                "bad input (\"https://a.example/x.jpg?sig=1\").",
                "bad input (\"<url>\").",
            ),
            (
                "fetch failed: url=https%3A%2F%2Fh%2Fx%3Fsig%3D1",
                "fetch failed: url=<url>",
            ),
            (
                "key private/u/x.jpg?X-Amz-Credential=AKID refused",
                "key private/u/x.jpg refused",
            ),
            (
                "  NSFW content detected.  Try again?  ",
                "  NSFW content detected.  Try again?  ",
            ),
            ("", ""),
        ] {
            assert_eq!(job_error_text(raw), clean, "{raw}");
        }
    }

    #[test]
    fn status_parse_covers_replicates_terminal_statuses() {
        for s in ["succeeded", "failed", "canceled", "aborted"] {
            assert!(PredictionState::parse(s).unwrap().is_terminal(), "{s}");
        }
        assert!(!PredictionState::parse("processing").unwrap().is_terminal());
        assert!(PredictionState::parse("bogus").is_none());
    }
}
