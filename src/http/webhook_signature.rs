//! Standard Webhooks signature verification (Replicate webhooks).
//!
//! Replicate signs each delivery with three headers: `webhook-id`, `webhook-timestamp`
//! (unix seconds) and `webhook-signature`, a space-separated list of `v1,<base64>`
//! entries. Each entry is HMAC-SHA256 over `"{id}.{timestamp}.{body}"`, keyed with the
//! base64-decoded part of the secret after `whsec_`. One matching entry is enough
//! (several appear while a secret is being rotated).

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// How far a delivery's timestamp may be from our clock, either way. Bounds how long a
/// captured delivery can be replayed, and tolerates modest clock skew.
pub const TIMESTAMP_TOLERANCE_SECS: i64 = 5 * 60;

pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";

const SECRET_PREFIX: &str = "whsec_";
const SUPPORTED_VERSION: &str = "v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("missing or empty `{0}` header")]
    MissingHeader(&'static str),
    #[error("`webhook-timestamp` is not a unix timestamp in seconds")]
    BadTimestamp,
    #[error("webhook timestamp is more than 5 minutes old")]
    Stale,
    #[error("webhook timestamp is more than 5 minutes in the future")]
    FromTheFuture,
    #[error("webhook secret is not `whsec_<base64>` (or bare base64) with a non-empty key")]
    BadSecret,
    #[error("`webhook-signature` has no `v1,<base64>` entry")]
    UnsupportedVersion,
    #[error("`webhook-signature` entry is not valid base64")]
    MalformedSignature,
    #[error("no webhook signature matches the body")]
    Mismatch,
}

/// The decoded key, held as an HMAC already keyed with it (keying cannot fail later).
/// Its `Debug` output is redacted so the key never reaches a log.
#[derive(Clone)]
pub struct Secret {
    keyed_mac: HmacSha256,
    key_len: usize,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.key_len)
    }
}

impl Secret {
    /// Accepts `whsec_<base64>` as Replicate shows it, or the bare base64 key.
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let trimmed = text.trim();
        let encoded_key = trimmed.strip_prefix(SECRET_PREFIX).unwrap_or(trimmed);
        let key = BASE64
            .decode(encoded_key)
            .map_err(|_| SignatureError::BadSecret)?;
        if key.is_empty() {
            return Err(SignatureError::BadSecret);
        }
        let keyed_mac = HmacSha256::new_from_slice(&key).map_err(|_| SignatureError::BadSecret)?;
        Ok(Secret {
            keyed_mac,
            key_len: key.len(),
        })
    }

    fn mac_over(&self, id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = self.keyed_mac.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }
}

/// Signs a delivery the way Replicate does; returns one `v1,<base64>` entry.
pub fn sign(secret: &Secret, id: &str, timestamp: i64, body: &[u8]) -> String {
    let tag = secret
        .mac_over(id, &timestamp.to_string(), body)
        .finalize()
        .into_bytes();
    format!("{SUPPORTED_VERSION},{}", BASE64.encode(tag))
}

/// Verifies a delivery from its three header values (None when absent) and raw body.
/// `now_unix` is passed in so callers and tests control the clock.
pub fn verify(
    secret: &Secret,
    id: Option<&str>,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_unix: i64,
) -> Result<(), SignatureError> {
    let id = required_header(id, ID_HEADER)?;
    let timestamp_text = required_header(timestamp, TIMESTAMP_HEADER)?;
    let signature_list = required_header(signature, SIGNATURE_HEADER)?;

    let sent_at = parse_unix_seconds(timestamp_text)?;
    if sent_at < now_unix.saturating_sub(TIMESTAMP_TOLERANCE_SECS) {
        return Err(SignatureError::Stale);
    }
    if sent_at > now_unix.saturating_add(TIMESTAMP_TOLERANCE_SECS) {
        return Err(SignatureError::FromTheFuture);
    }

    // The signed text uses the header exactly as sent, not a re-formatted number.
    let expected = secret.mac_over(id, timestamp_text, body);
    let mut saw_v1_entry = false;
    let mut saw_decodable_v1_entry = false;
    for entry in signature_list.split_whitespace() {
        let Some((version, encoded_tag)) = entry.split_once(',') else {
            continue;
        };
        if version != SUPPORTED_VERSION {
            // Other versions (e.g. asymmetric `v1a`) may sit beside ours; skip them.
            continue;
        }
        saw_v1_entry = true;
        let Ok(tag) = BASE64.decode(encoded_tag) else {
            continue;
        };
        saw_decodable_v1_entry = true;
        // verify_slice compares in constant time, so timing leaks nothing about the tag.
        if expected.clone().verify_slice(&tag).is_ok() {
            return Ok(());
        }
    }
    Err(if saw_decodable_v1_entry {
        SignatureError::Mismatch
    } else if saw_v1_entry {
        SignatureError::MalformedSignature
    } else {
        SignatureError::UnsupportedVersion
    })
}

fn required_header<'a>(
    value: Option<&'a str>,
    name: &'static str,
) -> Result<&'a str, SignatureError> {
    match value.map(str::trim) {
        Some(text) if !text.is_empty() => Ok(text),
        _ => Err(SignatureError::MissingHeader(name)),
    }
}

fn parse_unix_seconds(text: &str) -> Result<i64, SignatureError> {
    // Digits only: i64's parser would also take a sign, which no sender produces.
    if !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(SignatureError::BadTimestamp);
    }
    text.parse().map_err(|_| SignatureError::BadTimestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Known answers computed independently with python3:
    //   key = bytes(range(32))
    //   base64.b64encode(hmac.new(key, f"{id}.{ts}.".encode() + body, hashlib.sha256).digest())
    const SECRET: &str = "whsec_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const ID: &str = "msg_2LJ8dFGmF1b8NhvLxJzS5MQjZtK";
    const TIMESTAMP: i64 = 1_700_000_000;
    const BODY: &[u8] = br#"{"id":"pred_abc123","status":"succeeded"}"#;
    const SIGNATURE: &str = "v1,Mt5qLhYdPkrm7ys0AkIBiuR+Bl3repkim8RWaWuNLO0=";

    fn secret() -> Secret {
        Secret::parse(SECRET).unwrap()
    }

    fn verify_at(
        signature: Option<&str>,
        id: Option<&str>,
        timestamp: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        verify(&secret(), id, timestamp, signature, body, now)
    }

    fn verify_known(signature: &str) -> Result<(), SignatureError> {
        let timestamp = TIMESTAMP.to_string();
        verify_at(Some(signature), Some(ID), Some(&timestamp), BODY, TIMESTAMP)
    }

    #[test]
    fn sign_matches_independently_computed_vector() {
        assert_eq!(sign(&secret(), ID, TIMESTAMP, BODY), SIGNATURE);
    }

    #[test]
    fn sign_matches_standard_webhooks_published_example() {
        // The example from the Standard Webhooks / Svix documentation.
        let secret = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = sign(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn valid_signature_is_accepted() {
        assert_eq!(verify_known(SIGNATURE), Ok(()));
    }

    #[test]
    fn signature_is_accepted_within_tolerance_either_side() {
        let timestamp = TIMESTAMP.to_string();
        for now in [TIMESTAMP - 300, TIMESTAMP + 300] {
            assert_eq!(
                verify_at(Some(SIGNATURE), Some(ID), Some(&timestamp), BODY, now),
                Ok(())
            );
        }
    }

    #[test]
    fn one_matching_entry_among_several_is_enough() {
        let other = sign(
            &Secret::parse("c2Vjb25kLWtleQ==").unwrap(),
            ID,
            TIMESTAMP,
            BODY,
        );
        let header = format!("v1a,ignoredAsymmetric {other} v1,!!notbase64!! {SIGNATURE}");
        assert_eq!(verify_known(&header), Ok(()));
    }

    #[test]
    fn bare_base64_secret_is_accepted() {
        let bare = Secret::parse(SECRET.strip_prefix("whsec_").unwrap()).unwrap();
        assert_eq!(sign(&bare, ID, TIMESTAMP, BODY), SIGNATURE);
    }

    #[test]
    fn bad_secrets_are_refused() {
        for text in ["", "whsec_", "whsec_not base64!", "%%%"] {
            assert_eq!(
                Secret::parse(text).err(),
                Some(SignatureError::BadSecret),
                "{text:?}"
            );
        }
    }

    #[test]
    fn secret_debug_output_hides_the_key() {
        assert_eq!(format!("{:?}", secret()), "Secret(<32 bytes redacted>)");
    }

    #[test]
    fn wrong_secret_is_refused() {
        let wrong = Secret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let timestamp = TIMESTAMP.to_string();
        let result = verify(
            &wrong,
            Some(ID),
            Some(&timestamp),
            Some(SIGNATURE),
            BODY,
            TIMESTAMP,
        );
        assert_eq!(result, Err(SignatureError::Mismatch));
    }

    #[test]
    fn modified_body_is_refused() {
        let timestamp = TIMESTAMP.to_string();
        let body = br#"{"id":"pred_abc123","status":"failed"}"#;
        assert_eq!(
            verify_at(Some(SIGNATURE), Some(ID), Some(&timestamp), body, TIMESTAMP),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn modified_id_is_refused() {
        let timestamp = TIMESTAMP.to_string();
        assert_eq!(
            verify_at(
                Some(SIGNATURE),
                Some("msg_other"),
                Some(&timestamp),
                BODY,
                TIMESTAMP
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn modified_timestamp_is_refused() {
        let timestamp = (TIMESTAMP + 1).to_string();
        assert_eq!(
            verify_at(Some(SIGNATURE), Some(ID), Some(&timestamp), BODY, TIMESTAMP),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn timestamp_six_minutes_old_is_refused_even_when_correctly_signed() {
        let timestamp = TIMESTAMP.to_string();
        assert_eq!(
            verify_at(
                Some(SIGNATURE),
                Some(ID),
                Some(&timestamp),
                BODY,
                TIMESTAMP + 6 * 60
            ),
            Err(SignatureError::Stale)
        );
    }

    #[test]
    fn timestamp_six_minutes_ahead_is_refused_even_when_correctly_signed() {
        let timestamp = TIMESTAMP.to_string();
        assert_eq!(
            verify_at(
                Some(SIGNATURE),
                Some(ID),
                Some(&timestamp),
                BODY,
                TIMESTAMP - 6 * 60
            ),
            Err(SignatureError::FromTheFuture)
        );
    }

    #[test]
    fn each_missing_header_is_named() {
        let timestamp = TIMESTAMP.to_string();
        let ts = Some(timestamp.as_str());
        let cases = [
            (None, ts, Some(SIGNATURE), ID_HEADER),
            (Some(ID), None, Some(SIGNATURE), TIMESTAMP_HEADER),
            (Some(ID), ts, None, SIGNATURE_HEADER),
            (Some(" "), ts, Some(SIGNATURE), ID_HEADER),
            (Some(ID), Some(""), Some(SIGNATURE), TIMESTAMP_HEADER),
            (Some(ID), ts, Some("  "), SIGNATURE_HEADER),
        ];
        for (id, timestamp, signature, header) in cases {
            assert_eq!(
                verify_at(signature, id, timestamp, BODY, TIMESTAMP),
                Err(SignatureError::MissingHeader(header))
            );
        }
    }

    #[test]
    fn malformed_timestamps_are_refused() {
        for timestamp in [
            "yesterday",
            "1700000000.5",
            "-1700000000",
            "+1700000000",
            "99999999999999999999",
        ] {
            assert_eq!(
                verify_at(Some(SIGNATURE), Some(ID), Some(timestamp), BODY, TIMESTAMP),
                Err(SignatureError::BadTimestamp),
                "{timestamp:?}"
            );
        }
    }

    #[test]
    fn unknown_version_prefix_is_refused() {
        let v2 = SIGNATURE.replacen("v1,", "v2,", 1);
        assert_eq!(verify_known(&v2), Err(SignatureError::UnsupportedVersion));
        assert_eq!(
            verify_known("no-comma-at-all"),
            Err(SignatureError::UnsupportedVersion)
        );
    }

    #[test]
    fn malformed_base64_is_refused() {
        assert_eq!(
            verify_known("v1,***not-base64***"),
            Err(SignatureError::MalformedSignature)
        );
    }

    #[test]
    fn errors_have_clear_messages() {
        assert_eq!(
            SignatureError::MissingHeader(SIGNATURE_HEADER).to_string(),
            "missing or empty `webhook-signature` header"
        );
        assert_eq!(
            SignatureError::Stale.to_string(),
            "webhook timestamp is more than 5 minutes old"
        );
    }
}
