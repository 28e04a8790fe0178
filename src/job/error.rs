//! Why an attempt did not complete, and what the engine does about it: try
//! again later (with backoff, or not before a given delay), give up on the
//! row at once, or drop the result because another reactor holds the row.
use crate::store::db::DbError;
use std::fmt::Display;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth another attempt later (with backoff, up to the attempt limit).
    #[error("{0}")]
    Retry(String),
    /// Like `Retry`, but not before the given delay (e.g. a 429's Retry-After).
    #[error("{0}")]
    RetryIn(String, Duration),
    /// Will never succeed: the row is marked dead at once.
    #[error("{0}")]
    Permanent(String),
    /// Another reactor took the row over; this attempt's result is discarded.
    #[error("lease lost to another reactor")]
    LeaseLost,
}

impl HandlerError {
    /// A failure another attempt may get past (an outage, a timeout).
    pub fn retryable(why: impl Display) -> Self {
        HandlerError::Retry(why.to_string())
    }

    /// A retryable failure whose next attempt must wait at least `delay`.
    pub fn retryable_after(why: impl Display, delay: Duration) -> Self {
        HandlerError::RetryIn(why.to_string(), delay)
    }

    /// A failure no attempt will get past (bad input): the row is marked dead.
    pub fn permanent(why: impl Display) -> Self {
        HandlerError::Permanent(why.to_string())
    }

    /// Whether the row is attempted again (a lost lease is not this
    /// reactor's to retry: the holder goes on).
    pub fn is_retryable(&self) -> bool {
        matches!(self, HandlerError::Retry(_) | HandlerError::RetryIn(..))
    }

    pub fn is_permanent(&self) -> bool {
        matches!(self, HandlerError::Permanent(_))
    }

    /// The earliest time of the next attempt, when the failure names one.
    pub fn not_before(&self) -> Option<Duration> {
        match self {
            HandlerError::RetryIn(_, delay) => Some(*delay),
            _ => None,
        }
    }
}

/// Database trouble is worth another attempt: the statements of an attempt
/// are idempotent, and a constraint or data error in them is a bug to fix,
/// after which the retry succeeds.
impl From<DbError> for HandlerError {
    fn from(e: DbError) -> Self {
        HandlerError::retryable(e)
    }
}

impl From<tokio_postgres::Error> for HandlerError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::from(e).into()
    }
}

impl From<deadpool_postgres::PoolError> for HandlerError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        DbError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kind_decides_what_the_engine_does() {
        let retry = HandlerError::retryable("provider unavailable");
        assert!(retry.is_retryable() && !retry.is_permanent());
        assert_eq!(retry.to_string(), "provider unavailable");
        let later = HandlerError::retryable_after("HTTP 429", Duration::from_secs(7));
        assert!(later.is_retryable());
        assert_eq!(later.not_before(), Some(Duration::from_secs(7)));
        let dead = HandlerError::permanent("not a URL");
        assert!(dead.is_permanent() && !dead.is_retryable());
        assert!(!HandlerError::LeaseLost.is_retryable());
        assert!(!HandlerError::LeaseLost.is_permanent());
    }

    #[test]
    fn a_database_error_keeps_its_sqlstate_detail_and_hint_in_its_text() {
        let e = DbError::Statement {
            code: Some(tokio_postgres::error::SqlState::UNIQUE_VIOLATION),
            message: "duplicate key value violates unique constraint \"uniq_renders_job\"".into(),
            detail: Some("Key (job_id)=(1) already exists.".into()),
            hint: Some("look again".into()),
        };
        assert_eq!(
            HandlerError::from(e).to_string(),
            "duplicate key value violates unique constraint \"uniq_renders_job\" (SQLSTATE 23505); \
             Key (job_id)=(1) already exists.; hint: look again"
        );
    }
}
