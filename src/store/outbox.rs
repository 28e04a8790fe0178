//! `reactor.outbox`: hints the triggers append when the reactor cannot LISTEN.
use crate::store::db::param;
use tokio_postgres::GenericClient;

/// Takes (deletes) up to `limit` entries and returns their payloads; the
/// job_status ones are sent as notifications in the same statement.
pub async fn take(
    db: &impl GenericClient,
    limit: i64,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = db
        .query_typed(
            "with taken as (
               delete from reactor.outbox
               where ctid = any(array(select ctid from reactor.outbox limit $1))
               returning payload, to_status
             ),
             status as (
               select pg_notify('job_status', payload) from taken where to_status
             )
             select payload, (select count(*) from status) from taken",
            &[param(&limit)],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
