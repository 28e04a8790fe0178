//! What a table's URL answered: a 2xx body with the row's outcome, or an
//! error answer whose message goes into the row's error column.
use crate::http::client;

/// What a successful answer carries.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Answer {
    pub(super) result: Option<serde_json::Value>,
    pub(super) url: Option<String>,
}

/// `: <message>` from an error answer: its JSON `error` (or `message`) string,
/// else the start of its text.
pub(super) fn error_detail(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let detail =
        client::json_message(text, &["error", "message"]).unwrap_or_else(|| text.to_string());
    format!(": {}", client::truncate(&detail, client::MAX_DETAIL_CHARS))
}

/// A 2xx body: empty, or a JSON object with optional `result` and `url`.
pub(super) fn parse_answer(body: &[u8]) -> Result<Answer, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Answer::default());
    }
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!("the answer is not JSON ({e}); expected {{\"result\": …, \"url\": \"…\"}}")
    })?;
    let serde_json::Value::Object(mut object) = value else {
        return Err(
            "the answer is not a JSON object; expected {\"result\": …, \"url\": \"…\"}".into(),
        );
    };
    let url = match object.remove("url") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(other) => return Err(format!("the answer's url is not a string: {other}")),
    };
    let result = match object.remove("result") {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(v),
    };
    Ok(Answer { result, url })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_empty_or_an_object_with_result_and_url() {
        assert_eq!(parse_answer(b"").unwrap(), Answer::default());
        assert_eq!(
            parse_answer(br#"{"result":{"a":1},"url":"https://x/y.png","extra":true}"#).unwrap(),
            Answer {
                result: Some(serde_json::json!({"a": 1})),
                url: Some("https://x/y.png".into())
            }
        );
        assert!(parse_answer(b"<html>").unwrap_err().contains("not JSON"));
        assert!(parse_answer(b"[1]")
            .unwrap_err()
            .contains("not a JSON object"));
        assert!(parse_answer(br#"{"url":3}"#).unwrap_err().contains("url"));
    }

    #[test]
    fn error_details_prefer_the_json_error_and_are_cut_short() {
        assert_eq!(
            error_detail(br#"{"error":"model crashed"}"#),
            ": model crashed"
        );
        assert_eq!(error_detail(b"  "), "");
        let long = "x".repeat(1000);
        assert!(error_detail(long.as_bytes()).chars().count() < 310);
    }
}
