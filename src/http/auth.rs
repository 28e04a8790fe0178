//! Who is asking: the admin (`REACTOR_ADMIN_TOKEN`), or a Supabase user
//! identified by their access token (HS256 with `SUPABASE_JWT_SECRET`, or an
//! asymmetric key from `SUPABASE_JWKS_URL`).
//!
//! A user token is accepted only with `aud` = `role` = `authenticated`, a
//! `sub` that is a user id, `exp` (and `nbf` when present) honoured with at
//! most [`LEEWAY_SECS`] of clock skew, and an algorithm pinned to the key: the
//! HS256 secret takes only HS256, a JWK only its own `alg` (or, without one,
//! the one algorithm its `kty`/`crv` implies).
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, RwLock};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Viewer {
    Admin,
    User(Uuid),
}

impl Viewer {
    /// Whether this viewer may see a change of `owner_id`'s row.
    pub fn sees(&self, owner_id: Option<&str>) -> bool {
        match self {
            Viewer::Admin => true,
            Viewer::User(id) => owner_id.and_then(|o| Uuid::parse_str(o).ok()) == Some(*id),
        }
    }
}

/// A verified credential: who, and until when (unix seconds; the admin token
/// does not expire).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub viewer: Viewer,
    pub expires_at: Option<i64>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("this endpoint needs the admin token")]
    NotAdmin,
}

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;
/// When the keys are fetched again, and for how long old ones are still used.
#[derive(Debug, Clone, Copy)]
struct JwksTimes {
    /// How long fetched keys are used before they are fetched again.
    ttl: Duration,
    /// A token with a key id we do not know makes us fetch the keys again
    /// (they rotate), but at most this often: random key ids must not make
    /// us a request amplifier against the JWKS URL.
    min_refetch: Duration,
    /// After a failed fetch, the next is tried after this, doubling with
    /// each failure up to `min_refetch`.
    first_retry: Duration,
    /// While fetches fail, keys fetched at most this long ago are still
    /// used; older ones are not (tokens are refused until a fetch succeeds).
    max_stale: Duration,
}

const JWKS_TIMES: JwksTimes = JwksTimes {
    ttl: Duration::from_secs(600),
    min_refetch: Duration::from_secs(60),
    first_retry: Duration::from_secs(5),
    max_stale: Duration::from_secs(3600),
};
/// The largest JWK set read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// The only audience and role a user's token may carry.
const AUTHENTICATED: &str = "authenticated";

#[derive(Default)]
struct Keys {
    set: Option<JwkSet>,
    /// When `set` was fetched.
    fetched: Option<Instant>,
    /// When a fetch was last tried (whether it worked or not).
    tried: Option<Instant>,
    /// Fetches that failed since the last that worked.
    failures: u32,
}

impl Keys {
    /// Whether the keys were fetched less than `age` ago.
    fn younger_than(&self, age: Duration) -> bool {
        self.fetched.is_some_and(|t| t.elapsed() < age)
    }

    /// Whether a fetch may be tried now: when the keys are older than `ttl`
    /// or `min_refetch` has passed since the last fetch; after a failure, once
    /// its backoff is over.
    fn may_fetch(&self, times: &JwksTimes) -> bool {
        let wait = match self.failures {
            0 if !self.younger_than(times.ttl) => Duration::ZERO,
            0 => times.min_refetch,
            n => times
                .first_retry
                .saturating_mul(1 << (n - 1).min(16))
                .min(times.min_refetch),
        };
        self.tried.is_none_or(|t| t.elapsed() >= wait)
    }
}

pub struct Auth {
    admin_token_digest: Option<[u8; 32]>,
    hs256: Option<DecodingKey>,
    jwks_url: Option<String>,
    keys: RwLock<Keys>,
    /// Held while fetching, so concurrent unknown key ids make one fetch.
    fetching: Mutex<()>,
    http: reqwest::Client,
    times: JwksTimes,
}

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    #[serde(default)]
    role: Option<String>,
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn invalid(e: impl std::fmt::Display) -> AuthError {
    AuthError::Invalid(e.to_string())
}

/// The one algorithm a JWK may verify: its `alg`, or the one its key type implies.
fn pinned_algorithm(jwk: &Jwk) -> Result<Algorithm, AuthError> {
    let from_alg = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::RS384) => Some(Algorithm::RS384),
        Some(KeyAlgorithm::RS512) => Some(Algorithm::RS512),
        Some(KeyAlgorithm::PS256) => Some(Algorithm::PS256),
        Some(KeyAlgorithm::PS384) => Some(Algorithm::PS384),
        Some(KeyAlgorithm::PS512) => Some(Algorithm::PS512),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(KeyAlgorithm::ES384) => Some(Algorithm::ES384),
        Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
        Some(other) => {
            return Err(AuthError::Invalid(format!(
                "the JWKS key's alg {other:?} is not accepted for access tokens"
            )))
        }
    };
    let from_kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(_) => Some(Algorithm::EdDSA),
        // Symmetric keys are never published; HS256 needs SUPABASE_JWT_SECRET.
        _ => None,
    };
    match (from_alg, from_kind) {
        (Some(alg), Some(_)) => Ok(alg),
        (None, Some(alg)) => Ok(alg),
        _ => Err(AuthError::Invalid(
            "the JWKS key's type cannot verify access tokens".into(),
        )),
    }
}

impl Auth {
    pub fn new(
        admin_token: Option<&str>,
        jwt_secret: Option<&str>,
        jwks_url: Option<&str>,
    ) -> Self {
        Auth {
            admin_token_digest: admin_token.filter(|t| !t.is_empty()).map(digest),
            hs256: jwt_secret
                .filter(|s| !s.is_empty())
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            jwks_url: jwks_url.filter(|u| !u.is_empty()).map(str::to_string),
            keys: RwLock::new(Keys::default()),
            fetching: Mutex::new(()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
            times: JWKS_TIMES,
        }
    }

    /// The viewer behind `Authorization: Bearer <token>` (or a bare token).
    pub async fn viewer(&self, bearer: Option<&str>) -> Result<Viewer, AuthError> {
        self.access(bearer).await.map(|a| a.viewer)
    }

    /// The admin or a user, from the `Authorization` header's value.
    pub async fn access(&self, bearer: Option<&str>) -> Result<Access, AuthError> {
        let token = bearer_token(bearer)?;
        // Comparing digests keeps the comparison's time independent of the secret.
        if self.admin_token_digest.is_some_and(|d| d == digest(token)) {
            return Ok(Access {
                viewer: Viewer::Admin,
                expires_at: None,
            });
        }
        self.user(token).await
    }

    /// A user only, from a token that travelled in a URL (`?access_token=`).
    /// URLs end up in logs and browser history, so the admin token, which
    /// never expires, is not accepted there.
    pub async fn user_access(&self, token: Option<&str>) -> Result<Access, AuthError> {
        let token = bearer_token(token)?;
        if self.admin_token_digest.is_some_and(|d| d == digest(token)) {
            return Err(AuthError::Invalid(
                "the admin token is accepted only in the Authorization header".into(),
            ));
        }
        self.user(token).await
    }

    /// Only the admin.
    pub async fn admin(&self, bearer: Option<&str>) -> Result<(), AuthError> {
        match self.viewer(bearer).await? {
            Viewer::Admin => Ok(()),
            Viewer::User(_) => Err(AuthError::NotAdmin),
        }
    }

    async fn user(&self, token: &str) -> Result<Access, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(invalid)?;
        let (key, alg) = match header.alg {
            Algorithm::HS256 => (
                self.hs256.clone().ok_or_else(|| {
                    AuthError::Invalid("HS256 tokens need SUPABASE_JWT_SECRET".into())
                })?,
                Algorithm::HS256,
            ),
            Algorithm::HS384 | Algorithm::HS512 => {
                return Err(AuthError::Invalid(format!(
                    "{:?} tokens are not accepted",
                    header.alg
                )))
            }
            _ => {
                let jwk = self.jwk(header.kid.as_deref()).await?;
                let alg = pinned_algorithm(&jwk)?;
                (DecodingKey::from_jwk(&jwk).map_err(invalid)?, alg)
            }
        };
        if header.alg != alg {
            return Err(AuthError::Invalid(format!(
                "the token is signed with {:?} but its key is for {alg:?}",
                header.alg
            )));
        }
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        validation.set_audience(&[AUTHENTICATED]);
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(invalid)?
            .claims;
        if claims.role.as_deref() != Some(AUTHENTICATED) {
            return Err(AuthError::Invalid(format!(
                "role {:?} is not a signed-in user",
                claims.role.unwrap_or_default()
            )));
        }
        let user = Uuid::parse_str(&claims.sub)
            .map_err(|_| AuthError::Invalid("sub is not a user id".into()))?;
        Ok(Access {
            viewer: Viewer::User(user),
            expires_at: Some(claims.exp),
        })
    }

    /// The key for `kid` (the first key when the token names none).
    async fn jwk(&self, kid: Option<&str>) -> Result<Jwk, AuthError> {
        let url = self
            .jwks_url
            .as_deref()
            .ok_or_else(|| AuthError::Invalid("asymmetric tokens need SUPABASE_JWKS_URL".into()))?;
        let find = |keys: &Keys| {
            keys.set.as_ref().and_then(|set| match kid {
                Some(kid) => set.find(kid).cloned(),
                None => set.keys.first().cloned(),
            })
        };
        let times = &self.times;
        let no_kid = || AuthError::Invalid("no key with the token's kid".into());
        {
            let keys = self.keys.read().await;
            if keys.younger_than(times.ttl) {
                if let Some(jwk) = find(&keys) {
                    return Ok(jwk);
                }
            }
        }
        let _fetching = self.fetching.lock().await;
        let keys = self.keys.read().await;
        if !keys.may_fetch(times) {
            // Tried a moment ago (perhaps while we waited): no second fetch.
            if !keys.younger_than(times.max_stale) {
                return Err(AuthError::Invalid(
                    "the keys at SUPABASE_JWKS_URL could not be fetched".into(),
                ));
            }
            return find(&keys).ok_or_else(no_kid);
        }
        drop(keys);
        // Unknown key id or old keys: fetch again (keys rotate).
        let fetched = self.fetch_keys(url).await;
        let mut keys = self.keys.write().await;
        keys.tried = Some(Instant::now());
        match fetched {
            Ok(set) => {
                keys.set = Some(set);
                keys.fetched = keys.tried;
                keys.failures = 0;
            }
            // A failed fetch leaves the keys as old as they are: the next
            // is tried after a short backoff, and they are used only while
            // younger than `max_stale`.
            Err(e) => {
                keys.failures = keys.failures.saturating_add(1);
                tracing::warn!(error = %e, failures = keys.failures, "fetching SUPABASE_JWKS_URL failed");
                if !keys.younger_than(times.max_stale) {
                    return Err(e);
                }
            }
        }
        find(&keys).ok_or_else(no_kid)
    }

    async fn fetch_keys(&self, url: &str) -> Result<JwkSet, AuthError> {
        tracing::info!("fetching the keys at SUPABASE_JWKS_URL");
        let failed = |e: reqwest::Error| {
            AuthError::Invalid(format!(
                "fetching SUPABASE_JWKS_URL: {}",
                crate::http::client::error_text(&e)
            ))
        };
        let response = self
            .http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(failed)?;
        let body = crate::http::client::read_capped(response, MAX_JWKS_BYTES)
            .await
            .map_err(failed)?
            .ok_or_else(|| {
                AuthError::Invalid(format!(
                    "SUPABASE_JWKS_URL answered more than {MAX_JWKS_BYTES} bytes"
                ))
            })?;
        serde_json::from_slice(&body)
            .map_err(|e| AuthError::Invalid(format!("SUPABASE_JWKS_URL is not a JWK set: {e}")))
    }
}

/// The token in `Bearer <token>` (or a bare token).
fn bearer_token(bearer: Option<&str>) -> Result<&str, AuthError> {
    bearer
        .map(|h| h.strip_prefix("Bearer ").unwrap_or(h).trim())
        .filter(|t| !t.is_empty())
        .ok_or(AuthError::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn token(secret: &str, sub: &str, exp_in: i64, aud: &str) -> String {
        let claims = serde_json::json!({"sub": sub, "aud": aud, "role": "authenticated", "exp": chrono::Utc::now().timestamp() + exp_in});
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn admin_token_user_token_and_every_refusal() {
        let auth = Auth::new(Some("admin-secret"), Some("jwt-secret"), None);
        let user = Uuid::new_v4();
        assert_eq!(
            auth.viewer(Some("Bearer admin-secret")).await,
            Ok(Viewer::Admin)
        );
        let good = token("jwt-secret", &user.to_string(), 60, "authenticated");
        assert_eq!(
            auth.viewer(Some(&format!("Bearer {good}"))).await,
            Ok(Viewer::User(user))
        );
        assert_eq!(auth.viewer(None).await, Err(AuthError::Missing));
        for bad in [
            token("other-secret", &user.to_string(), 60, "authenticated"),
            token("jwt-secret", &user.to_string(), -120, "authenticated"),
            token("jwt-secret", &user.to_string(), 60, "anon-audience"),
            token("jwt-secret", "not-a-uuid", 60, "authenticated"),
            "garbage".into(),
            "admin-secreT".into(),
        ] {
            assert!(
                matches!(
                    auth.viewer(Some(&format!("Bearer {bad}"))).await,
                    Err(AuthError::Invalid(_))
                ),
                "{bad}"
            );
        }
        assert_eq!(
            auth.admin(Some(&format!("Bearer {good}"))).await,
            Err(AuthError::NotAdmin)
        );
    }

    /// A loopback JWKS endpoint serving `jwks`, and how many times it was fetched.
    async fn jwks_server(
        jwks: serde_json::Value,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = fetches.clone();
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = jwks.clone();
                async move { axum::Json(body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, fetches)
    }

    /// A failing JWKS URL: the old keys are used for a bounded time only, and
    /// the fetch is tried again after a short backoff (not a full TTL later).
    #[tokio::test]
    async fn a_failed_jwks_fetch_is_retried_soon_and_old_keys_are_used_only_while_not_too_old() {
        use base64::Engine as _;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
        use std::sync::Arc;
        let jwks = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "kid": "key-1", "alg": "ES256"}
        ]});
        let (failing, fetches) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicUsize::new(0)),
        );
        let (f, n) = (failing.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                n.fetch_add(1, SeqCst);
                let answer = if f.load(SeqCst) {
                    Err(axum::http::StatusCode::BAD_GATEWAY)
                } else {
                    Ok(axum::Json(jwks.clone()))
                };
                async move { answer }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });

        let der = base64::engine::general_purpose::STANDARD
            .decode(EC_PKCS8_B64)
            .unwrap();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("key-1".into());
        let claims = serde_json::json!({"sub": Uuid::nil().to_string(), "aud": "authenticated", "role": "authenticated", "exp": chrono::Utc::now().timestamp() + 600});
        let token = encode(&header, &claims, &EncodingKey::from_ec_der(&der)).unwrap();
        let mut auth = Auth::new(None, None, Some(&url));
        auth.times = JwksTimes {
            ttl: Duration::from_millis(500),
            min_refetch: Duration::from_secs(5),
            first_retry: Duration::from_millis(500),
            max_stale: Duration::from_secs(2),
        };
        let ms = |n| tokio::time::sleep(Duration::from_millis(n));
        let user = Ok(Viewer::User(Uuid::nil()));

        assert_eq!(auth.viewer(Some(&token)).await, user);
        assert_eq!(fetches.load(SeqCst), 1);
        failing.store(true, SeqCst);
        ms(600).await;
        assert_eq!(
            auth.viewer(Some(&token)).await,
            user,
            "a failed refresh falls back to keys that are not too old"
        );
        assert_eq!(fetches.load(SeqCst), 2, "the keys were due: fetched");
        assert_eq!(auth.viewer(Some(&token)).await, user);
        assert_eq!(
            fetches.load(SeqCst),
            2,
            "no second fetch within the backoff"
        );
        ms(600).await;
        assert_eq!(auth.viewer(Some(&token)).await, user);
        assert_eq!(
            fetches.load(SeqCst),
            3,
            "the failed fetch did not make the old keys fresh: tried again after the backoff"
        );
        ms(1100).await;
        assert!(
            matches!(auth.viewer(Some(&token)).await, Err(AuthError::Invalid(_))),
            "keys older than the staleness bound are not used"
        );
        assert_eq!(fetches.load(SeqCst), 4);
        failing.store(false, SeqCst);
        ms(2100).await;
        assert_eq!(auth.viewer(Some(&token)).await, user, "recovered");
        assert_eq!(fetches.load(SeqCst), 5);
    }

    /// A P-256 key pair made for this test only (PKCS#8 DER, and its JWK point).
    const EC_PKCS8_B64: &str = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgM7Ovb5Jzak70S5mUAKStsiBhhRhJcbJmdc8rDlFXshehRANCAAQVfgja4QioEKfoBTmNSYRjXjx6yLRVbXk6J/GQ6Q2x0rO+iBhNlBpDx3ZQKzdm3dc3xKBwHJ6UHZztvGCA2Zhw";
    const EC_X: &str = "FX4I2uEIqBCn6AU5jUmEY148esi0VW15OifxkOkNsdI";
    const EC_Y: &str = "s76IGE2UGkPHdlArN2bd1zfEoHAcnpQdnO28YIDZmHA";

    #[tokio::test]
    async fn es256_tokens_are_verified_with_keys_fetched_from_the_jwks_url() {
        use base64::Engine as _;
        let jwks = serde_json::json!({"keys": [
            {"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "kid": "key-1", "alg": "ES256", "use": "sig"}
        ]});
        let (url, fetches) = jwks_server(jwks).await;

        let der = base64::engine::general_purpose::STANDARD
            .decode(EC_PKCS8_B64)
            .unwrap();
        let sign = |kid: &str, exp_in: i64| {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(kid.into());
            let claims = serde_json::json!({"sub": Uuid::nil().to_string(), "aud": "authenticated", "role": "authenticated", "exp": chrono::Utc::now().timestamp() + exp_in});
            encode(&header, &claims, &EncodingKey::from_ec_der(&der)).unwrap()
        };
        let auth = Auth::new(None, None, Some(&url));
        assert_eq!(
            auth.viewer(Some(&sign("key-1", 60))).await,
            Ok(Viewer::User(Uuid::nil()))
        );
        assert_eq!(
            auth.viewer(Some(&sign("key-1", 60))).await,
            Ok(Viewer::User(Uuid::nil()))
        );
        assert_eq!(
            fetches.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "keys are cached"
        );
        assert!(
            matches!(
                auth.viewer(Some(&sign("key-1", -300))).await,
                Err(AuthError::Invalid(_))
            ),
            "expired"
        );
        assert!(
            matches!(
                auth.viewer(Some(&sign("unknown-kid", 60))).await,
                Err(AuthError::Invalid(_))
            ),
            "unknown key"
        );
        // Unknown key ids refetch at most once a minute, however many arrive.
        for _ in 0..100 {
            assert!(matches!(
                auth.viewer(Some(&sign(&Uuid::new_v4().to_string(), 60)))
                    .await,
                Err(AuthError::Invalid(_))
            ));
        }
        assert!(
            fetches.load(std::sync::atomic::Ordering::SeqCst) <= 2,
            "a flood of unknown key ids made {} fetches",
            fetches.load(std::sync::atomic::Ordering::SeqCst)
        );
        // An HS256 token is not accepted without the HS256 secret.
        let hs = token(
            "whatever-secret",
            &Uuid::nil().to_string(),
            60,
            "authenticated",
        );
        assert!(matches!(
            auth.viewer(Some(&hs)).await,
            Err(AuthError::Invalid(_))
        ));
    }

    fn hs256(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"jwt-secret"),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn audience_role_expiry_and_not_before_are_all_enforced() {
        let auth = Auth::new(None, Some("jwt-secret"), None);
        let user = Uuid::new_v4().to_string();
        let now = chrono::Utc::now().timestamp();
        let good = serde_json::json!({"sub": user, "aud": "authenticated", "role": "authenticated", "exp": now + 60});
        assert_eq!(
            auth.viewer(Some(&hs256(good.clone()))).await,
            Ok(Viewer::User(Uuid::parse_str(&user).unwrap()))
        );
        let with = |key: &str, value: serde_json::Value| {
            let mut claims = good.clone();
            claims[key] = value;
            hs256(claims)
        };
        let without = |key: &str| {
            let mut claims = good.clone();
            claims.as_object_mut().unwrap().remove(key);
            hs256(claims)
        };
        for (why, bad) in [
            ("no aud", without("aud")),
            ("no exp", without("exp")),
            ("no role", without("role")),
            ("anon role", with("role", serde_json::json!("anon"))),
            (
                "service role",
                with("role", serde_json::json!("service_role")),
            ),
            ("not yet valid", with("nbf", serde_json::json!(now + 120))),
            (
                "expired beyond the leeway",
                with("exp", serde_json::json!(now - 45)),
            ),
        ] {
            assert!(
                matches!(auth.viewer(Some(&bad)).await, Err(AuthError::Invalid(_))),
                "{why} was accepted"
            );
        }
        // Within the documented leeway both ways.
        assert!(auth
            .viewer(Some(&with("exp", serde_json::json!(now - 10))))
            .await
            .is_ok());
        assert!(auth
            .viewer(Some(&with("nbf", serde_json::json!(now + 10))))
            .await
            .is_ok());
        // HS512 with the very same secret: not the pinned algorithm.
        let hs512 = encode(
            &Header::new(Algorithm::HS512),
            &good,
            &EncodingKey::from_secret(b"jwt-secret"),
        )
        .unwrap();
        assert!(matches!(
            auth.viewer(Some(&hs512)).await,
            Err(AuthError::Invalid(_))
        ));
    }

    /// An RSA key made for this test only (PKCS#1 DER), and its modulus.
    const RSA_PKCS1_B64: &str = "MIIEpAIBAAKCAQEAv+LYfVfK86628W+/Iyz9WvihZvOyBJJ7xCdVt6OmU6gLzZtNHEClYWapk7AYjWZ6BAwUGsZCd0NsauABx8Od3sde/vYKz8LsUB1dztkmnY4445MqQy7UZUtJugrcOCyrfNi+C3hiS1bWgBz8ygC1OTZE/OofgDVa6LYY3C9Cv9DLpaR16HNbflmRwKIPGIUN+lGC6D6lNbiUiS3bYmEfII89jXmmrBY+K92oQ5id50aVzBs8AWKYzbNu5tbwyoSv1/S9FPMysVRCGnVW0s6tev1PdPBzUmsS6/YdgfIcXf7w8qHYxLFj5rz1Z9IHIe98JNYPIy5vXXI+wz3Fqu4HbwIDAQABAoIBAE0peYkd7r0DOwnnt+L7Sn50kOMHiESSaza74ppQMqhdYTGzC9UaoeaDFBoRrC3gUZyjBsqlg0DWWhi4L78XCLr3TVoVss9NQR4OURTG+eJNuM669TnC8SIynlkz2M62F9fCiNmv9Ub6ipNGFNleY4G4MxHJTBWQXxhJccHJN3xOVSlk3r7/YSuzfkB4NnIITNCBXYXd74oVnKqDbR0x77n8yuZKjv0qpz0d3EHFeBcTOwkIDPZQa/sVLNc67OIdgOY09ju6JXYfYm6AJW9fgVekkYo6SexYZ+hMqwA/pAmAywb+o65NxFKPBc0iO/97doPHLOBWCTaAW62VcYfSt0ECgYEA85mT0baNw6VkGA04F1ov8LtW/PrbmzHwaUQYaXhcTeOfVW5KOtC+6X0kWxE43k/PsGapwViGKa7+RxAZ6DFfLQ6hIxmap5799Y0Zl7qS+Sn4LsWEd60+/2gO1WpR7LrkcuDiNET53j8HPsT9U1kriUFdXsslwrnuviRE5rqT8rECgYEAyade1j3/x7n8Ct2bSTikgeTBEyy/BBvIkdjtqRVBP4y90DIX/5ag5l+uT77R9zpBqbEugviePiqu8IEpSL0ahjpb2qF9GEUr4f3q2imIxHghCK8mx5yGCztupE6enBJqqnHIjal985MLhcEUYCZ9hefxXjBBnyGVtFuV7wg+5B8CgYEA6eUWJ5BPAgG139ohd1qjGVPnrDP51EPZAFnfzrVAe5EJFfA12c9A39PGqqIYpmyfkFKiwACNoUxi3jy5g1aUeiDH23nkIvnoAnOelS8Rm6gOomoITRjNmlKBm6zgSJsSarM+vs1T1W9TN5PRYMwHn1xhmHkaIqSAdZVBiwCuuaECgYABf5vlzaoj6s7jqcfooGIgkPmaUd/NgQNZihoiAoVsmnginuysuorRi255KzrWMnmgcC+fS4epgJmyMdODtdwHmVFra33Je2IbGM7w9hQNGbNtJBgOrawVU0i8MdVd5YkjYRsTamoEMFiKkue62y5dm16gy40BSLebEn8nupD1EwKBgQCBzRtCH7xes+WMy1X3rJ58746jGrr5xcsjisiD7ChhyrapYmJk3CXNKrii/9Qy5LGdKi0yd5vuSbrkDoN3zg4nxuS1RYGC8MLjbeb2kubt851MaCWRJ6g+n09Zn2bG6IrPEsEVOOvYyxmu374yuOfHAW1HkFXQj4wCt4Asok+D+Q==";
    const RSA_N: &str = "v-LYfVfK86628W-_Iyz9WvihZvOyBJJ7xCdVt6OmU6gLzZtNHEClYWapk7AYjWZ6BAwUGsZCd0NsauABx8Od3sde_vYKz8LsUB1dztkmnY4445MqQy7UZUtJugrcOCyrfNi-C3hiS1bWgBz8ygC1OTZE_OofgDVa6LYY3C9Cv9DLpaR16HNbflmRwKIPGIUN-lGC6D6lNbiUiS3bYmEfII89jXmmrBY-K92oQ5id50aVzBs8AWKYzbNu5tbwyoSv1_S9FPMysVRCGnVW0s6tev1PdPBzUmsS6_YdgfIcXf7w8qHYxLFj5rz1Z9IHIe98JNYPIy5vXXI-wz3Fqu4Hbw";

    #[tokio::test]
    async fn the_algorithm_is_pinned_to_the_keys_alg_or_type() {
        let jwks = serde_json::json!({"keys": [
            {"kty": "RSA", "n": RSA_N, "e": "AQAB", "kid": "with-alg", "alg": "RS256", "use": "sig"},
            {"kty": "RSA", "n": RSA_N, "e": "AQAB", "kid": "no-alg", "use": "sig"},
        ]});
        let (url, _) = jwks_server(jwks).await;
        let auth = Auth::new(None, None, Some(&url));
        let der = {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(RSA_PKCS1_B64)
                .unwrap()
        };
        let key = EncodingKey::from_rsa_der(&der);
        let sign = |alg: Algorithm, kid: &str| {
            let mut header = Header::new(alg);
            header.kid = Some(kid.into());
            let claims = serde_json::json!({"sub": Uuid::nil().to_string(), "aud": "authenticated", "role": "authenticated", "exp": chrono::Utc::now().timestamp() + 60});
            encode(&header, &claims, &key).unwrap()
        };
        for kid in ["with-alg", "no-alg"] {
            assert_eq!(
                auth.viewer(Some(&sign(Algorithm::RS256, kid))).await,
                Ok(Viewer::User(Uuid::nil())),
                "{kid}"
            );
            for alg in [Algorithm::RS512, Algorithm::PS256, Algorithm::RS384] {
                assert!(
                    matches!(
                        auth.viewer(Some(&sign(alg, kid))).await,
                        Err(AuthError::Invalid(_))
                    ),
                    "{alg:?} against the RS256 key {kid} was accepted"
                );
            }
        }
    }

    #[test]
    fn users_see_only_their_own_rows() {
        let me = Uuid::new_v4();
        assert!(Viewer::User(me).sees(Some(&me.to_string())));
        assert!(!Viewer::User(me).sees(Some(&Uuid::new_v4().to_string())));
        assert!(!Viewer::User(me).sees(None));
        assert!(Viewer::Admin.sees(None));
    }
}
