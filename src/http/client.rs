//! The small pieces every outgoing request needs (to Replicate, to the URLs of
//! your own tables, to `SUPABASE_JWKS_URL`): reading an answer with a size cap,
//! honouring `Retry-After`, saying what a reqwest error was, and keeping what
//! ends up in logs and error columns short and free of credentials.
use futures::StreamExt as _;
use std::time::Duration;

/// The longest `Retry-After` honoured: a server asking for more is retried
/// after this (a day-long wait would outlive every deployment anyway).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How many characters of an answer are kept in an error message.
pub const MAX_DETAIL_CHARS: usize = 300;

/// The delay of a `Retry-After` in seconds (fractions accepted), at most
/// [`MAX_RETRY_AFTER`]; None without one or when it is not a number of seconds.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| Duration::from_secs_f64(s.min(MAX_RETRY_AFTER.as_secs_f64())))
}

/// Whether an HTTP status says the peer is away or overloaded for now (5xx,
/// 429 Too Many Requests, 408 Request Timeout) rather than that the request
/// is wrong: worth retrying through the outage.
pub fn is_outage_status(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
}

/// reqwest's message followed by its causes ("error sending request" alone
/// says little).
pub fn error_text(e: &reqwest::Error) -> String {
    with_causes(e.to_string(), e)
}

/// [`error_text`] without the request's URL, for callers that show the URL
/// themselves through [`display_url`] (a URL may carry credentials or a token
/// in its query string).
pub fn error_text_without_url(e: &reqwest::Error) -> String {
    let text = match e.url() {
        Some(url) => e
            .to_string()
            .replace(&format!(" for url ({url})"), "")
            .replace(&format!(" ({url})"), ""),
        None => e.to_string(),
    };
    with_causes(text, e)
}

fn with_causes(mut text: String, e: &reqwest::Error) -> String {
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// A URL fit for logs and error columns: no credentials, no query string.
pub fn display_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "(invalid URL)".into(),
    }
}

/// Reads an answer's body; None when it is larger than `max_bytes` (told by
/// its Content-Length, or found while reading: never more is held).
pub async fn read_capped(
    response: reqwest::Response,
    max_bytes: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response
        .content_length()
        .is_some_and(|n| n > max_bytes as u64)
    {
        return Ok(None);
    }
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if body.len() + chunk.len() > max_bytes {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// The first `max_chars` characters of `s`, with `…` when some were cut.
pub fn truncate(s: &str, max_chars: usize) -> String {
    let mut cut: String = s.chars().take(max_chars).collect();
    if cut.len() < s.len() {
        cut.push('…');
    }
    cut
}

/// The message of a JSON error answer: the first of `fields` that is a string
/// (`["error", "message"]`, say). None when the text is not JSON or has none.
pub fn json_message(text: &str, fields: &[&str]) -> Option<String> {
    let value = serde_json::from_str::<serde_json::Value>(text).ok()?;
    fields
        .iter()
        .find_map(|f| value.get(f).and_then(|m| m.as_str()).map(str::to_string))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    fn headers(retry_after: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_str(retry_after).unwrap());
        h
    }

    #[test]
    fn retry_after_is_seconds_and_capped() {
        assert_eq!(retry_after(&headers(" 7 ")), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after(&headers("1.5")),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(retry_after(&headers("999999999")), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after(&headers("-1")), None);
        assert_eq!(retry_after(&headers("NaN")), None);
        assert_eq!(retry_after(&headers("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn urls_in_errors_lose_credentials_and_query() {
        assert_eq!(
            display_url("https://user:pw@h.example/p?token=secret"),
            "https://h.example/p"
        );
    }

    #[test]
    fn truncation_counts_characters_and_marks_the_cut() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "abc…");
        assert_eq!(truncate("ééé", 2), "éé…");
    }

    #[test]
    fn json_messages_take_the_first_string_field() {
        assert_eq!(
            json_message(r#"{"message":"m","error":"e"}"#, &["error", "message"]),
            Some("e".into())
        );
        assert_eq!(
            json_message(
                r#"{"error":{"code":1},"message":"m"}"#,
                &["error", "message"]
            ),
            Some("m".into())
        );
        assert_eq!(json_message("<html>", &["error"]), None);
    }
}
