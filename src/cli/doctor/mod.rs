//! `reactor doctor`: checks a deployment with the configuration of `reactor
//! run` and says, check by check, what is wrong and how to fix it.
//!
//! It changes nothing in the database (a NOTIFY aside) and stores nothing but
//! a probe object it deletes again. Every check runs under a deadline, so an
//! unreachable server or provider makes a failed line, never a hang.
mod database;
mod services;

use crate::config::RunConfig;
use std::future::Future;
use std::time::Duration;

/// How long one check (or one group of checks on a connection) may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warning,
    Failed,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Failed => "failed",
        }
    }
}

/// One line of the checklist.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Check {
    /// What was checked, e.g. `tls`, `role`, `storage`.
    pub check: String,
    pub status: Status,
    /// What was found.
    pub message: String,
    /// How to fix it (None when ok).
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(check: &str, message: impl Into<String>) -> Self {
        Check {
            check: check.into(),
            status: Status::Ok,
            message: message.into(),
            fix: None,
        }
    }

    pub fn warning(check: &str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            check: check.into(),
            status: Status::Warning,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn failed(check: &str, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            check: check.into(),
            status: Status::Failed,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Runs `checks` under [`CHECK_TIMEOUT`]; past it, one failed line named `check`.
async fn within<F>(check: &str, checks: F) -> Vec<Check>
where
    F: Future<Output = Vec<Check>>,
{
    within_for(check, CHECK_TIMEOUT, checks).await
}

async fn within_for<F>(check: &str, timeout: Duration, checks: F) -> Vec<Check>
where
    F: Future<Output = Vec<Check>>,
{
    match tokio::time::timeout(timeout, checks).await {
        Ok(found) => found,
        Err(_) => vec![Check::failed(
            check,
            format!("no answer within {}", humantime::format_duration(timeout)),
            "check that the server is reachable from here (address, port, firewall) and not overloaded",
        )],
    }
}

/// Every check, in the order they are printed.
pub async fn run(cfg: &RunConfig) -> Vec<Check> {
    let mut checks = database::checks(cfg).await;
    checks.extend(within("storage", services::storage(cfg)).await);
    checks.extend(within("provider", services::provider(cfg)).await);
    checks.extend(within("http", services::http(cfg)).await);
    checks
}

/// The checklist for people: one line per check, the fix indented below.
pub fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!(
            "{:<7} {:<width$}  {}\n",
            c.status.label(),
            c.check,
            c.message
        ));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("{:<7} {:<width$}  fix: {fix}\n", "", ""));
        }
    }
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    out.push_str(&format!(
        "\n{} ok, {} warning(s), {} failed\n",
        count(Status::Ok),
        count(Status::Warning),
        count(Status::Failed)
    ));
    out
}
