//! The dashboard page, with headers that keep it from being framed, sniffed
//! or made to run anything but its own inline script and style.
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

const PAGE: &str = include_str!("dashboard.html");

/// The text between the first `<{tag}>` and `</{tag}>` of the page.
fn inline(tag: &str) -> &'static str {
    let open = format!("<{tag}>");
    let start = PAGE.find(&open).map_or(0, |i| i + open.len());
    let end = PAGE[start..]
        .find(&format!("</{tag}>"))
        .map_or(start, |i| start + i);
    &PAGE[start..end]
}

fn sha256_source(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// Only the page's own inline `<script>` and `<style>` (by hash), requests to
/// this origin only, no plugins, forms, base URL changes or framing.
pub static CONTENT_SECURITY_POLICY: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
         img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        sha256_source(inline("script")),
        sha256_source(inline("style")),
    )
});

pub async fn page() -> Response {
    (
        [
            (
                header::CONTENT_SECURITY_POLICY,
                CONTENT_SECURITY_POLICY.as_str(),
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        Html(PAGE),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_hashes_the_pages_only_script_and_style() {
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        assert!(inline("script").contains("EventSource cannot send"));
        assert!(inline("style").contains(":root"));
        // Style attributes and inline event handlers would be blocked.
        assert!(!PAGE.contains("style=\""), "no style attributes");
        assert!(!PAGE.contains(" onclick="), "no inline handlers");
    }
}
