//! Why an attempt did not complete, and what the engine does about it: try
//! again later (with backoff, or not before a given delay), keep trying
//! through an outage for a time budget, give up on the row at once, or drop
//! the result because another reactor holds the row.
use crate::store::db::DbError;
use chrono::{DateTime, Utc};
use std::fmt::Display;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth another attempt later (with backoff, up to the attempt limit).
    /// For failures nobody has classified: REACTOR_MAX_ATTEMPTS bounds them.
    #[error("{0}")]
    Retry(String),
    /// Like `Retry`, but not before the given delay (e.g. a 429's Retry-After).
    #[error("{0}")]
    RetryIn(String, Duration),
    /// An outage of something the work needs (connection refused, timeout,
    /// HTTP 5xx/429/408, storage I/O, the database): retried with capped
    /// backoff for as long as its budget lasts, however many attempts that is.
    /// No budget: the engine's default (REACTOR_RETRY_FOR).
    #[error("{why}")]
    Transient {
        why: String,
        budget: Option<Budget>,
        not_before: Option<Duration>,
    },
    /// Will never succeed: the row is marked dead at once.
    #[error("{0}")]
    Permanent(String),
    /// Another reactor took the row over; this attempt's result is discarded.
    #[error("lease lost to another reactor")]
    LeaseLost,
}

/// How long transient failures of a row keep being retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Until this instant (e.g. when the provider deletes a job's outputs).
    Until(DateTime<Utc>),
    /// For this long after the row's first failed attempt.
    For(Duration),
}

impl HandlerError {
    /// A failure another attempt may get past, not classified further: it
    /// counts against REACTOR_MAX_ATTEMPTS.
    pub fn retryable(why: impl Display) -> Self {
        HandlerError::Retry(why.to_string())
    }

    /// A retryable failure whose next attempt must wait at least `delay`.
    pub fn retryable_after(why: impl Display, delay: Duration) -> Self {
        HandlerError::RetryIn(why.to_string(), delay)
    }

    /// An outage: retried for a time budget (see [`HandlerError::within`]).
    pub fn transient(why: impl Display) -> Self {
        HandlerError::Transient {
            why: why.to_string(),
            budget: None,
            not_before: None,
        }
    }

    /// An outage whose next attempt must wait at least `delay` (a Retry-After).
    pub fn transient_after(why: impl Display, delay: Option<Duration>) -> Self {
        HandlerError::Transient {
            why: why.to_string(),
            budget: None,
            not_before: delay,
        }
    }

    /// A failure no attempt will get past (bad input): the row is marked dead.
    pub fn permanent(why: impl Display) -> Self {
        HandlerError::Permanent(why.to_string())
    }

    /// Gives a transient failure that has no budget yet this one (the work's
    /// own: a handler knows how long its work stays worth doing). Other kinds
    /// are returned as they are.
    pub fn within(self, budget: Budget) -> Self {
        match self {
            HandlerError::Transient {
                why,
                budget: None,
                not_before,
            } => HandlerError::Transient {
                why,
                budget: Some(budget),
                not_before,
            },
            other => other,
        }
    }

    /// Whether the row is attempted again (a lost lease is not this
    /// reactor's to retry: the holder goes on).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            HandlerError::Retry(_) | HandlerError::RetryIn(..) | HandlerError::Transient { .. }
        )
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, HandlerError::Transient { .. })
    }

    pub fn is_permanent(&self) -> bool {
        matches!(self, HandlerError::Permanent(_))
    }

    /// The earliest time of the next attempt, when the failure names one.
    pub fn not_before(&self) -> Option<Duration> {
        match self {
            HandlerError::RetryIn(_, delay) => Some(*delay),
            HandlerError::Transient { not_before, .. } => *not_before,
            _ => None,
        }
    }
}

impl DbError {
    /// Whether the database (or the way to it) is away rather than the
    /// statement wrong: no connection from the pool, a connection that broke
    /// or never answered, or a server that is shutting down, starting or full.
    pub fn is_outage(&self) -> bool {
        use tokio_postgres::error::SqlState;
        match self {
            DbError::Checkout(_) | DbError::Connect(_) => true,
            DbError::Statement { code: None, .. } => true,
            DbError::Statement {
                code: Some(code), ..
            } => {
                code.code().starts_with("08")
                    || [
                        SqlState::ADMIN_SHUTDOWN,
                        SqlState::CRASH_SHUTDOWN,
                        SqlState::CANNOT_CONNECT_NOW,
                        SqlState::TOO_MANY_CONNECTIONS,
                        SqlState::QUERY_CANCELED,
                    ]
                    .contains(code)
            }
            _ => false,
        }
    }
}

/// Database trouble is worth another attempt: the statements of an attempt
/// are idempotent. An outage (see [`DbError::is_outage`]) is transient; a
/// constraint or data error is a bug to fix, after which the retry succeeds,
/// so it counts against the attempt limit.
impl From<DbError> for HandlerError {
    fn from(e: DbError) -> Self {
        if e.is_outage() {
            HandlerError::transient(e)
        } else {
            HandlerError::retryable(e)
        }
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
        let outage = HandlerError::transient_after("HTTP 503", Some(Duration::from_secs(3)));
        assert!(outage.is_retryable() && outage.is_transient() && !outage.is_permanent());
        assert_eq!(outage.not_before(), Some(Duration::from_secs(3)));
    }

    #[test]
    fn a_budget_goes_only_to_a_transient_failure_that_has_none() {
        let hour = Budget::For(Duration::from_secs(3600));
        let day = Budget::For(Duration::from_secs(86400));
        assert!(matches!(
            HandlerError::transient("down").within(hour),
            HandlerError::Transient { budget: Some(b), .. } if b == hour
        ));
        assert!(matches!(
            HandlerError::transient("down").within(hour).within(day),
            HandlerError::Transient { budget: Some(b), .. } if b == hour
        ));
        assert!(HandlerError::permanent("bad").within(hour).is_permanent());
        assert!(matches!(
            HandlerError::retryable("odd").within(hour),
            HandlerError::Retry(_)
        ));
    }

    #[test]
    fn a_database_outage_is_transient_and_a_statement_error_is_not() {
        assert!(HandlerError::from(DbError::Checkout("timed out".into())).is_transient());
        let closed = DbError::Statement {
            code: None,
            message: "connection closed".into(),
            detail: None,
            hint: None,
        };
        assert!(HandlerError::from(closed).is_transient());
        let shutdown = DbError::Statement {
            code: Some(tokio_postgres::error::SqlState::ADMIN_SHUTDOWN),
            message: "terminating connection due to administrator command".into(),
            detail: None,
            hint: None,
        };
        assert!(HandlerError::from(shutdown).is_transient());
        let unique = DbError::Statement {
            code: Some(tokio_postgres::error::SqlState::UNIQUE_VIOLATION),
            message: "duplicate key".into(),
            detail: None,
            hint: None,
        };
        let e = HandlerError::from(unique);
        assert!(e.is_retryable() && !e.is_transient());
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
