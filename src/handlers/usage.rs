//! A generation is debited once, when it is delivered: the render's
//! transaction (which stores the pictures and sets `rendered_at`) runs
//! [`DEBIT_DELIVERED`], so a job is debited exactly when it is rendered. A job
//! whose render dies for good is [`undeliverable`]: it becomes `failed`, says
//! why, and is never debited. Until then the submit rules count a succeeded,
//! undebited job as a pending debit, so the quota holds meanwhile.
//!
//! This handler is the backlog: a succeeded, rendered job whose `debited_at`
//! marker is null (jobs rendered before debits moved into the render's
//! transaction; served by the partial index `idx_jobs_usage_workable`, whose
//! predicate the condition implies). Effect: one set-based insert of
//! `{kind: generation_debit, amount: 1, meta: {jobId}, job_id}`, the owner read
//! from the picked row itself (no lookup, no join);
//! `uniq_usage_debit_job` makes it at most one per job, and the same statement
//! sets `debited_at`, so the marker always means "the debit exists" (also for
//! jobs debited before the marker existed: their insert does nothing). Failed
//! and canceled jobs are never pending, so they are never debited.
use crate::job::handler::{Action, Handler, HandlerError, KeyType, Spec};
use crate::job::status::JobStatus;
use crate::store::db::param;

pub const NAME: &str = "usage";

/// Debits job `$1` (if it succeeded) and sets its marker, in one statement:
/// what the render's transaction runs once the pictures are stored.
pub const DEBIT_DELIVERED: &str = "with debit as (
       insert into public.usage_ledger (owner_id, kind, amount, meta, job_id)
       select j.owner_id, 'generation_debit', 1, jsonb_build_object('jobId', j.id), j.id
       from public.generation_jobs j where j.id = $1 and j.status = 'succeeded'
       on conflict (job_id) where kind = 'generation_debit' do nothing)
     update public.generation_jobs set debited_at = now()
     where id = $1 and status = 'succeeded' and debited_at is null";

/// The job's pictures can no longer be stored (its render died for good, e.g.
/// the provider deleted the outputs): the job becomes `failed` with an error
/// saying so, which takes it out of the quota's pending debits, and it is
/// never debited. A job rendered meanwhile is left alone.
pub async fn undeliverable(
    pool: &deadpool_postgres::Pool,
    job_id: uuid::Uuid,
    why: &str,
) -> Result<(), HandlerError> {
    let error = format!(
        "the pictures could not be stored, so this generation is not charged: {}",
        crate::handlers::generation::job_error_text(why)
    );
    let n = pool
        .get()
        .await?
        .execute_typed(
            "update public.generation_jobs set status = 'failed', error = $2
             where id = $1 and status = 'succeeded' and rendered_at is null",
            &[param(&job_id), param(&error)],
        )
        .await?;
    if n > 0 {
        tracing::warn!(job = %job_id, %error, "job not delivered: failed, not debited");
    }
    Ok(())
}

pub fn handler() -> Handler {
    Handler {
        spec: Spec {
            name: NAME.into(),
            table: "public.generation_jobs".into(),
            notify_table: "generation_jobs".into(),
            key: "id".into(),
            key_type: KeyType::Uuid,
            pending:
                "t.status = 'succeeded' and t.debited_at is null and t.rendered_at is not null \
                 and t.debit_dead_at is null"
                    .into(),
            statuses: Some(vec![JobStatus::Succeeded.to_string()]),
        },
        action: Action::Sql {
            effect: "insert into public.usage_ledger (owner_id, kind, amount, meta, job_id)
                     select (p.src).owner_id, 'generation_debit', 1,
                            jsonb_build_object('jobId', p.id), p.id
                     from picked p
                     on conflict (job_id) where kind = 'generation_debit' do nothing"
                .into(),
            mark: Some("debited_at = now()".into()),
            dead: Some("debit_dead_at".into()),
        },
        limits: Default::default(),
    }
}
