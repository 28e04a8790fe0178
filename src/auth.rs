//! Who is asking: the admin (`REACTOR_ADMIN_TOKEN`), or a Supabase user
//! identified by their access token (HS256 with `SUPABASE_JWT_SECRET`, or an
//! asymmetric key from `SUPABASE_JWKS_URL`).
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest, Sha256};
use std::time::{Duration, Instant};
use tokio::sync::RwLock;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("this endpoint needs the admin token")]
    NotAdmin,
}

pub struct Auth {
    admin_token_digest: Option<[u8; 32]>,
    hs256: Option<DecodingKey>,
    jwks_url: Option<String>,
    jwks: RwLock<Option<(JwkSet, Instant)>>,
    http: reqwest::Client,
}

/// How long fetched keys are trusted before they are fetched again.
const JWKS_TTL: Duration = Duration::from_secs(600);

#[derive(serde::Deserialize)]
struct Claims {
    sub: String,
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
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
            jwks: RwLock::new(None),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    /// The viewer behind `Authorization: Bearer <token>` (or a bare token).
    pub async fn viewer(&self, bearer: Option<&str>) -> Result<Viewer, AuthError> {
        let token = bearer
            .map(|h| h.strip_prefix("Bearer ").unwrap_or(h).trim())
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        // Comparing digests keeps the comparison's time independent of the secret.
        if self.admin_token_digest.is_some_and(|d| d == digest(token)) {
            return Ok(Viewer::Admin);
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.clone().ok_or_else(|| {
                AuthError::Invalid("HS256 tokens need SUPABASE_JWT_SECRET".into())
            })?,
            _ => self.jwk(header.kid.as_deref()).await?,
        };
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&["authenticated"]);
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| AuthError::Invalid(e.to_string()))?;
        let user = Uuid::parse_str(&data.claims.sub)
            .map_err(|_| AuthError::Invalid("sub is not a user id".into()))?;
        Ok(Viewer::User(user))
    }

    /// Only the admin.
    pub async fn admin(&self, bearer: Option<&str>) -> Result<(), AuthError> {
        match self.viewer(bearer).await? {
            Viewer::Admin => Ok(()),
            Viewer::User(_) => Err(AuthError::NotAdmin),
        }
    }

    async fn jwk(&self, kid: Option<&str>) -> Result<DecodingKey, AuthError> {
        let url = self
            .jwks_url
            .as_deref()
            .ok_or_else(|| AuthError::Invalid("asymmetric tokens need SUPABASE_JWKS_URL".into()))?;
        let find = |set: &JwkSet| match kid {
            Some(kid) => set.find(kid).cloned(),
            None => set.keys.first().cloned(),
        };
        if let Some((set, fetched)) = &*self.jwks.read().await {
            if fetched.elapsed() < JWKS_TTL {
                if let Some(jwk) = find(set) {
                    return DecodingKey::from_jwk(&jwk)
                        .map_err(|e| AuthError::Invalid(e.to_string()));
                }
            }
        }
        // Unknown key id or stale keys: fetch again (keys rotate).
        let set: JwkSet = self
            .http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| AuthError::Invalid(format!("fetching SUPABASE_JWKS_URL: {e}")))?
            .json()
            .await
            .map_err(|e| AuthError::Invalid(format!("SUPABASE_JWKS_URL is not a JWK set: {e}")))?;
        let jwk =
            find(&set).ok_or_else(|| AuthError::Invalid("no key with the token's kid".into()))?;
        *self.jwks.write().await = Some((set, Instant::now()));
        DecodingKey::from_jwk(&jwk).map_err(|e| AuthError::Invalid(e.to_string()))
    }
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

        let der = base64::engine::general_purpose::STANDARD
            .decode(EC_PKCS8_B64)
            .unwrap();
        let sign = |kid: &str, exp_in: i64| {
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(kid.into());
            let claims = serde_json::json!({"sub": Uuid::nil().to_string(), "aud": "authenticated", "exp": chrono::Utc::now().timestamp() + exp_in});
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

    #[test]
    fn users_see_only_their_own_rows() {
        let me = Uuid::new_v4();
        assert!(Viewer::User(me).sees(Some(&me.to_string())));
        assert!(!Viewer::User(me).sees(Some(&Uuid::new_v4().to_string())));
        assert!(!Viewer::User(me).sees(None));
        assert!(Viewer::Admin.sees(None));
    }
}
