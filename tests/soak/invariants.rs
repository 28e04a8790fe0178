//! What must hold once the soak has quiesced, read from table state (and the
//! provider stand-in's own record of what it was asked to create). Each
//! broken invariant is one `Violation`, naming the rows involved.
use std::collections::HashMap;
use std::path::Path;
use tokio_postgres::Client;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Something that should exist does not (a job stranded in flight, a
    /// missing render, debit, collection or stored image).
    Lost,
    /// Something exists twice, or a charge or payment that should not exist.
    Doubled,
    /// reactor.handler_state holds a row that is not dead.
    LeftoverState,
}

#[derive(Debug)]
pub struct Violation {
    pub kind: Kind,
    pub what: String,
}

fn found(
    kind: Kind,
    rows: Vec<tokio_postgres::Row>,
    describe: impl Fn(&tokio_postgres::Row) -> String,
) -> Vec<Violation> {
    rows.iter()
        .map(|row| Violation {
            kind,
            what: describe(row),
        })
        .collect()
}

/// Every profile has exactly one default collection.
async fn one_default_collection_each(db: &Client) -> Vec<Violation> {
    let rows = db
        .query(
            "select p.id::text, count(c.id) from profiles p
             left join collections c on c.owner_id = p.id and c.is_default_favorites
             group by p.id having count(c.id) <> 1",
            &[],
        )
        .await
        .expect("collections per profile");
    rows.iter()
        .map(|r| {
            let n: i64 = r.get(1);
            Violation {
                kind: if n == 0 { Kind::Lost } else { Kind::Doubled },
                what: format!(
                    "profile {} has {n} default collections",
                    r.get::<_, String>(0)
                ),
            }
        })
        .collect()
}

/// No job is still in flight after the stuck window (with its lease, if any).
async fn no_job_in_flight(db: &Client) -> Vec<Violation> {
    let rows = db
        .query(
            "select j.id::text, j.status, coalesce(j.prediction_id, '-'),
                    to_char(j.created_at, 'HH24:MI:SS.MS'),
                    coalesce(to_char(j.submit_started_at, 'HH24:MI:SS.MS'), '-'),
                    coalesce(h.lease_owner::text, '-'),
                    coalesce(to_char(h.lease_expires_at, 'HH24:MI:SS.MS'), '-'),
                    coalesce(to_char(h.updated_at, 'HH24:MI:SS.MS'), '-'),
                    coalesce(h.attempts, 0), coalesce(h.last_error, '-')
             from generation_jobs j
             left join reactor.handler_state h on h.handler = 'generation' and h.row_id = j.id::text
             where j.status in ('starting', 'processing') order by j.created_at",
            &[],
        )
        .await
        .expect("jobs in flight");
    found(Kind::Lost, rows, |r| {
        format!(
            "job {} stranded {}: prediction={} created={} submit_started={} lease_owner={} lease_expires={} state_updated={} attempts={} last_error={}",
            r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, String>(2), r.get::<_, String>(3),
            r.get::<_, String>(4), r.get::<_, String>(5), r.get::<_, String>(6), r.get::<_, String>(7),
            r.get::<_, i32>(8), r.get::<_, String>(9)
        )
    })
}

/// Each succeeded job: one render, one debit; no debit for any other job.
async fn one_render_one_debit_per_success(db: &Client) -> Vec<Violation> {
    let rows = db
        .query(
            "select j.id::text, j.status,
                    (select count(*) from renders r where r.job_id = j.id),
                    (select count(*) from usage_ledger u where u.job_id = j.id and u.kind = 'generation_debit'),
                    (select string_agg(format('%s lease_owner=%s lease_expires=%s attempts=%s last_error=%s',
                                              h.handler, coalesce(h.lease_owner::text, '-'),
                                              coalesce(to_char(h.lease_expires_at, 'HH24:MI:SS.MS'), '-'),
                                              h.attempts, coalesce(h.last_error, '-')), '; ')
                     from reactor.handler_state h where h.row_id = j.id::text)
             from generation_jobs j",
            &[],
        )
        .await
        .expect("renders and debits per job");
    let mut violations = vec![];
    for r in rows {
        let (id, status): (String, String) = (r.get(0), r.get(1));
        let (renders, debits): (i64, i64) = (r.get(2), r.get(3));
        let state: Option<String> = r.get(4);
        let (want_renders, want_debits) = if status == "succeeded" {
            (1, 1)
        } else {
            (0, 0)
        };
        for (what, n, want) in [
            ("renders", renders, want_renders),
            ("debits", debits, want_debits),
        ] {
            if n != want {
                violations.push(Violation {
                    kind: if n < want { Kind::Lost } else { Kind::Doubled },
                    what: format!(
                        "{status} job {id} has {n} {what} (expected {want}); handler_state: {}",
                        state.as_deref().unwrap_or("none")
                    ),
                });
            }
        }
    }
    violations
}

/// Every variant of every render is stored where its row says.
async fn variants_stored(db: &Client, storage: &Path) -> Vec<Violation> {
    let rows = db
        .query(
            "select r.job_id::text, v.image_path from renders r join render_variants v on v.render_id = r.id
             union all
             select r.job_id::text, null from renders r
             where not exists (select 1 from render_variants v where v.render_id = r.id)",
            &[],
        )
        .await
        .expect("render variants");
    let mut violations = vec![];
    for r in rows {
        let job: String = r.get(0);
        match r.get::<_, Option<String>>(1) {
            None => violations.push(Violation {
                kind: Kind::Lost,
                what: format!("the render of job {job} has no variants"),
            }),
            Some(path) if !storage.join("public").join(&path).is_file() => {
                violations.push(Violation {
                    kind: Kind::Lost,
                    what: format!("job {job}: variant {path} is not in storage"),
                })
            }
            Some(_) => {}
        }
    }
    violations
}

/// The provider was asked to create at most one prediction per job.
fn paid_once(creates_per_job: &HashMap<String, u32>) -> Vec<Violation> {
    let mut doubled: Vec<_> = creates_per_job
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(job, n)| Violation {
            kind: Kind::Doubled,
            what: format!("job {job}: the provider created {n} predictions"),
        })
        .collect();
    doubled.sort_by(|a, b| a.what.cmp(&b.what));
    doubled
}

/// reactor.handler_state is empty but for dead rows.
async fn only_dead_state(db: &Client) -> Vec<Violation> {
    let rows = db
        .query(
            "select handler, row_id, coalesce(lease_owner::text, '-'),
                    coalesce(to_char(lease_expires_at, 'HH24:MI:SS.MS'), '-'),
                    coalesce(to_char(next_attempt_at, 'HH24:MI:SS.MS'), '-'),
                    to_char(updated_at, 'HH24:MI:SS.MS'), attempts, coalesce(last_error, '-')
             from reactor.handler_state where dead_at is null order by updated_at",
            &[],
        )
        .await
        .expect("handler state");
    found(Kind::LeftoverState, rows, |r| {
        format!(
            "handler_state {}/{}: lease_owner={} lease_expires={} next_attempt={} updated={} attempts={} last_error={}",
            r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, String>(2), r.get::<_, String>(3),
            r.get::<_, String>(4), r.get::<_, String>(5), r.get::<_, i32>(6), r.get::<_, String>(7)
        )
    })
}

/// Every invariant, in a stable order.
pub async fn check(
    db: &Client,
    storage: &Path,
    creates_per_job: &HashMap<String, u32>,
) -> Vec<Violation> {
    let mut all = one_default_collection_each(db).await;
    all.extend(no_job_in_flight(db).await);
    all.extend(one_render_one_debit_per_success(db).await);
    all.extend(variants_stored(db, storage).await);
    all.extend(paid_once(creates_per_job));
    all.extend(only_dead_state(db).await);
    all
}

/// Whether the system looks settled (the quiesce phase waits for this).
pub async fn settled(db: &Client) -> bool {
    let row = db
        .query_one(
            "select (select count(*) from generation_jobs where status in ('starting', 'processing'))
                  + (select count(*) from reactor.handler_state where dead_at is null)
                  + (select count(*) from profiles p where not exists
                       (select 1 from collections c where c.owner_id = p.id and c.is_default_favorites))
                  + (select count(*) from generation_jobs j where j.status = 'succeeded' and
                       (not exists (select 1 from renders r where r.job_id = j.id)
                        or not exists (select 1 from usage_ledger u where u.job_id = j.id)))",
            &[],
        )
        .await;
    matches!(row, Ok(r) if r.get::<_, i64>(0) == 0)
}
