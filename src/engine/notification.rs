//! The payload the triggers send on channels `reactor` and `job_status`.
use serde::{Deserialize, Serialize};

/// `{"table":"…","op":"INSERT|UPDATE","id":"…","owner_id":"…","status":"…","old_status":…}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub table: String,
    pub op: String,
    pub id: String,
    #[serde(default)]
    pub owner_id: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub old_status: Option<String>,
}

/// What arrived on the `reactor` channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Change(Change),
    /// A listener self-check (`{"reactor_ping":"…"}`).
    Ping(String),
    /// `reactor.retry()` cleared a row's state: `{"reactor_retry":"<handler>","id":"…"}`.
    Retry {
        handler: String,
        id: String,
    },
    /// A reactor is paging `table` and its writers send no hints for the
    /// next `for_ms` milliseconds: `{"reactor_quiet":"<table>","for_ms":5000}`
    /// (src/engine/quiet.rs).
    Quiet {
        table: String,
        for_ms: u64,
    },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PayloadError {
    #[error("payload is not a reactor change notification: {0}")]
    Malformed(String),
}

/// Parses a payload; anything else on the channel is an error for the caller to log.
pub fn parse(payload: &str) -> Result<Message, PayloadError> {
    #[derive(Deserialize)]
    struct Ping {
        reactor_ping: String,
    }
    #[derive(Deserialize)]
    struct Retry {
        reactor_retry: String,
        id: String,
    }
    #[derive(Deserialize)]
    struct Quiet {
        reactor_quiet: String,
        for_ms: u64,
    }
    if let Ok(ping) = serde_json::from_str::<Ping>(payload) {
        return Ok(Message::Ping(ping.reactor_ping));
    }
    if let Ok(retry) = serde_json::from_str::<Retry>(payload) {
        return Ok(Message::Retry {
            handler: retry.reactor_retry,
            id: retry.id,
        });
    }
    if let Ok(quiet) = serde_json::from_str::<Quiet>(payload) {
        return Ok(Message::Quiet {
            table: quiet.reactor_quiet,
            for_ms: quiet.for_ms,
        });
    }
    let change: Change =
        serde_json::from_str(payload).map_err(|e| PayloadError::Malformed(e.to_string()))?;
    if change.table.is_empty() || change.id.is_empty() {
        return Err(PayloadError::Malformed("empty table or id".into()));
    }
    if change.op != "INSERT" && change.op != "UPDATE" {
        return Err(PayloadError::Malformed(format!(
            "unknown op {:?}",
            change.op
        )));
    }
    Ok(Message::Change(change))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_payload() {
        let m = parse(r#"{"table":"generation_jobs","op":"UPDATE","id":"a","owner_id":"b","status":"succeeded","old_status":"processing"}"#).unwrap();
        let Message::Change(c) = m else {
            panic!("not a change")
        };
        assert_eq!(c.table, "generation_jobs");
        assert_eq!(c.status.as_deref(), Some("succeeded"));
        assert_eq!(c.old_status.as_deref(), Some("processing"));
    }

    #[test]
    fn rejects_garbage_foreign_json_and_unknown_ops() {
        for bad in [
            "",
            "not json",
            "{}",
            r#"{"table":"x"}"#,
            r#"{"table":"x","op":"DELETE","id":"1"}"#,
            r#"{"table":"","op":"INSERT","id":"1"}"#,
            "[1,2]",
        ] {
            assert!(parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn recognises_a_self_check_ping() {
        assert_eq!(
            parse(r#"{"reactor_ping":"abc-1"}"#),
            Ok(Message::Ping("abc-1".into()))
        );
    }

    #[test]
    fn recognises_a_quiet_announcement() {
        assert_eq!(
            parse(r#"{"reactor_quiet":"image_jobs","for_ms":5000}"#),
            Ok(Message::Quiet {
                table: "image_jobs".into(),
                for_ms: 5000
            })
        );
        assert!(parse(r#"{"reactor_quiet":"image_jobs","for_ms":-1}"#).is_err());
    }
}
