//! A succeeded generation job is debited once in the usage ledger.
//!
//! Pending: a succeeded job with no `generation_debit`. Effect: one set-based
//! insert of `{kind: generation_debit, amount: 1, meta: {jobId}, job_id}` (the owner
//! is looked up per row by key: a join would hash the whole table every page);
//! `uniq_usage_debit_job` makes it at most one per job. Failed and canceled
//! jobs are never pending, so they are never debited.
use crate::handler::{Action, Handler, KeyType, Spec};

pub const NAME: &str = "usage";

pub fn handler() -> Handler {
    Handler {
        spec: Spec {
            name: NAME.into(),
            table: "public.generation_jobs".into(),
            notify_table: "generation_jobs".into(),
            key: "id".into(),
            key_type: KeyType::Uuid,
            pending: "t.status = 'succeeded' and not exists (
                        select 1 from public.usage_ledger u
                        where u.job_id = t.id and u.kind = 'generation_debit')"
                .into(),
            statuses: Some(vec!["succeeded".into()]),
        },
        action: Action::Sql {
            effect: "insert into public.usage_ledger (owner_id, kind, amount, meta, job_id)
                     select (select j.owner_id from public.generation_jobs j where j.id = p.id),
                            'generation_debit', 1, jsonb_build_object('jobId', p.id), p.id
                     from picked p
                     on conflict (job_id) where kind = 'generation_debit' do nothing"
                .into(),
        },
    }
}
