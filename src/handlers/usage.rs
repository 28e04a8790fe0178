//! A succeeded generation job is debited once in the usage ledger.
//!
//! Pending: a succeeded job whose `debited_at` marker is null (served by the
//! partial index `idx_jobs_pending_usage`). Effect: one set-based insert of
//! `{kind: generation_debit, amount: 1, meta: {jobId}, job_id}` (the owner is
//! looked up per row by key: a join would hash the whole table every page);
//! `uniq_usage_debit_job` makes it at most one per job, and the same statement
//! sets `debited_at`, so the marker always means "the debit exists" (also for
//! jobs debited before the marker existed: their insert does nothing). Failed
//! and canceled jobs are never pending, so they are never debited.
use crate::job::handler::{Action, Handler, KeyType, Spec};
use crate::job::status::JobStatus;

pub const NAME: &str = "usage";

pub fn handler() -> Handler {
    Handler {
        spec: Spec {
            name: NAME.into(),
            table: "public.generation_jobs".into(),
            notify_table: "generation_jobs".into(),
            key: "id".into(),
            key_type: KeyType::Uuid,
            pending: "t.status = 'succeeded' and t.debited_at is null".into(),
            statuses: Some(vec![JobStatus::Succeeded.to_string()]),
        },
        action: Action::Sql {
            effect: "insert into public.usage_ledger (owner_id, kind, amount, meta, job_id)
                     select (select j.owner_id from public.generation_jobs j where j.id = p.id),
                            'generation_debit', 1, jsonb_build_object('jobId', p.id), p.id
                     from picked p
                     on conflict (job_id) where kind = 'generation_debit' do nothing"
                .into(),
            mark: Some("debited_at = now()".into()),
        },
    }
}
