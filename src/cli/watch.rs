//! `reactor watch`: one readable line per job status change on channel
//! `job_status` (or the payload itself with `--json`).
use crate::engine::notification::{self, Change, Message};
use futures::StreamExt as _;
use std::io::Write;
use tokio_postgres::AsyncMessage;
use uuid::Uuid;

/// `07:41:02  job 1a2b3c4d  owner 5e6f7a8b  processing → succeeded`
pub fn line(change: &Change, at: chrono::DateTime<chrono::Utc>) -> String {
    let short = |s: &str| s.get(..8).unwrap_or(s).to_string();
    let status = change.status.as_deref().unwrap_or("?");
    let transition = match &change.old_status {
        Some(old) => format!("{old} → {status}"),
        None => format!("new → {status}"),
    };
    format!(
        "{}  {} {}  owner {}  {}",
        at.format("%H:%M:%S"),
        change
            .table
            .trim_end_matches('s')
            .replace("generation_job", "job"),
        short(&change.id),
        change
            .owner_id
            .as_deref()
            .map(short)
            .unwrap_or_else(|| "-".into()),
        transition
    )
}

/// `07:41:02  image_jobs quiet for 3s: under load no per-row events are sent`
pub fn quiet_line(table: &str, for_ms: u64, at: chrono::DateTime<chrono::Utc>) -> String {
    format!(
        "{}  {table} quiet for {:?}: under load no per-row events are sent",
        at.format("%H:%M:%S"),
        std::time::Duration::from_millis(for_ms)
    )
}

/// Prints changes until the connection ends (or the process is stopped).
pub async fn run(
    url: &str,
    owner: Option<Uuid>,
    json: bool,
    mut out: impl Write,
) -> anyhow::Result<()> {
    let (client, mut connection) = crate::store::db::connect_raw(url, None).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_string()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(error = %crate::store::db::DbError::from(e), "watch: connection lost");
                    return;
                }
            }
        }
    });
    client.batch_execute("LISTEN job_status").await?;
    let owner = owner.map(|o| o.to_string());
    while let Some(payload) = rx.recv().await {
        let change = match notification::parse(&payload) {
            Ok(Message::Change(change)) => change,
            Ok(Message::Quiet { table, for_ms }) => {
                if json {
                    writeln!(out, "{payload}")?;
                } else {
                    writeln!(out, "{}", quiet_line(&table, for_ms, chrono::Utc::now()))?;
                }
                out.flush()?;
                continue;
            }
            _ => continue,
        };
        if owner.is_some() && change.owner_id != owner {
            continue;
        }
        if json {
            writeln!(out, "{payload}")?;
        } else {
            writeln!(out, "{}", line(&change, chrono::Utc::now()))?;
        }
        out.flush()?;
    }
    anyhow::bail!("the database connection ended")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_shows_time_job_owner_and_transition() {
        let change = Change {
            table: "generation_jobs".into(),
            op: "UPDATE".into(),
            id: "1a2b3c4d-0000-0000-0000-000000000000".into(),
            owner_id: Some("5e6f7a8b-0000-0000-0000-000000000000".into()),
            status: Some("succeeded".into()),
            old_status: Some("processing".into()),
        };
        let at = chrono::DateTime::parse_from_rfc3339("2026-11-22T07:41:02Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            line(&change, at),
            "07:41:02  job 1a2b3c4d  owner 5e6f7a8b  processing → succeeded"
        );
        assert_eq!(
            quiet_line("image_jobs", 3000, at),
            "07:41:02  image_jobs quiet for 3s: under load no per-row events are sent"
        );
    }
}
