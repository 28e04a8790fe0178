//! A generation job's status, as stored in `generation_jobs.status` (a
//! `text` column with a check constraint, not a Postgres enum: the derive in
//! `postgres-types` only accepts an enum type of the given name, so `ToSql`
//! and `FromSql` are written here for `text`).
use bytes::BytesMut;
use postgres_types::{to_sql_checked, FromSql, IsNull, ToSql, Type};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobStatus {
    /// Submitted by the client; no prediction yet.
    Starting,
    /// The provider has a prediction for it that is still running.
    Processing,
    Succeeded,
    Failed,
    Canceled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Starting,
        JobStatus::Processing,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Canceled,
    ];

    /// The value stored in the column.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Starting => "starting",
            JobStatus::Processing => "processing",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
    }

    /// Still followed at the provider (not terminal).
    pub fn in_flight(self) -> bool {
        matches!(self, JobStatus::Starting | JobStatus::Processing)
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ToSql for JobStatus {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        self.as_str().to_sql(ty, out)
    }

    fn accepts(ty: &Type) -> bool {
        <&str as ToSql>::accepts(ty)
    }

    to_sql_checked!();
}

impl<'a> FromSql<'a> for JobStatus {
    fn from_sql(
        ty: &Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let s = <&str as FromSql>::from_sql(ty, raw)?;
        JobStatus::parse(s).ok_or_else(|| format!("unknown job status {s:?}").into())
    }

    fn accepts(ty: &Type) -> bool {
        <&str as FromSql>::accepts(ty)
    }
}

impl crate::store::db::Param for JobStatus {
    const TYPE: Type = Type::TEXT;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips_through_its_text() {
        for status in JobStatus::ALL {
            assert_eq!(JobStatus::parse(status.as_str()), Some(status));
            let mut out = BytesMut::new();
            status.to_sql(&Type::TEXT, &mut out).unwrap();
            assert_eq!(JobStatus::from_sql(&Type::TEXT, &out).unwrap(), status);
        }
        assert!(JobStatus::parse("aborted").is_none());
        assert!(JobStatus::from_sql(&Type::TEXT, b"bogus").is_err());
        assert!(<JobStatus as ToSql>::accepts(&Type::TEXT));
        assert!(!<JobStatus as ToSql>::accepts(&Type::INT4));
    }
}
