//! Why one round of an engine service (a scan, a batch, a claim, recording an
//! outcome, a heartbeat, a drain) failed. Nothing is lost when it does: the
//! rows stay pending or leased in the tables, and the service tries again.
use crate::job::handler::HandlerError;

#[derive(Debug, thiserror::Error)]
pub(crate) enum ServiceError {
    /// No connection from the pool (the database is away or the pool is exhausted).
    #[error(transparent)]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement failed; shown with the server's detail and hint.
    #[error("{}", crate::store::db::describe(.0))]
    Db(#[from] tokio_postgres::Error),
    /// A statement missed its deadline, or no connection could be made.
    #[error(transparent)]
    Store(#[from] crate::store::db::DbError),
    /// A handler's own sweep failed.
    #[error(transparent)]
    Sweep(#[from] HandlerError),
    /// The worker permits were closed (the engine is going away).
    #[error(transparent)]
    Permits(#[from] tokio::sync::AcquireError),
}
