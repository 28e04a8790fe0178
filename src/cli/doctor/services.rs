//! The checks outside the database: storage, the image provider, the HTTP
//! surface's credentials.
use super::Check;
use crate::config::{ProviderKind, RunConfig};
use crate::providers::replicate::{ModelCheck, Replicate};
use crate::providers::storage::Storage;
use std::time::Duration;

/// Timeout of each request doctor makes to the provider or a JWKS URL.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes, reads and deletes a probe object where renders are stored.
pub(super) async fn storage(cfg: &RunConfig) -> Vec<Check> {
    let fix =
        "make REACTOR_STORAGE_URL point at a directory the reactor may write (file:///abs/path), \
               or at an S3 bucket its AWS_* credentials may write, read and delete in";
    let storage = match Storage::from_url(&cfg.storage_url) {
        Ok(s) => s,
        Err(e) => return vec![Check::failed("storage", e.to_string(), fix)],
    };
    let check = match storage.probe().await {
        Ok(()) => Check::ok(
            "storage",
            format!(
                "{}: a probe object was written, read back and deleted",
                storage.description()
            ),
        ),
        Err(e) => Check::failed("storage", format!("{}: {e}", storage.description()), fix),
    };
    vec![check]
}

pub(super) async fn provider(cfg: &RunConfig) -> Vec<Check> {
    match cfg.provider {
        ProviderKind::Local => vec![Check::ok("provider", "local provider (placeholder images)")],
        ProviderKind::Replicate => {
            let mut out = vec![replicate_model(cfg).await];
            out.push(webhook(cfg));
            out
        }
    }
}

async fn replicate_model(cfg: &RunConfig) -> Check {
    let Some(token) = cfg.replicate_api_token.as_deref().filter(|t| !t.is_empty()) else {
        return Check::failed(
            "provider",
            "REACTOR_PROVIDER=replicate without REPLICATE_API_TOKEN",
            "set REPLICATE_API_TOKEN (replicate.com → Account → API tokens), or REACTOR_PROVIDER=local",
        );
    };
    let replicate = match Replicate::new(
        &cfg.replicate_base_url,
        token,
        &cfg.replicate_model,
        cfg.provider_timeout.min(REQUEST_TIMEOUT),
    ) {
        Ok(r) => r,
        Err(e) => return Check::failed("provider", e.to_string(), "check REPLICATE_BASE_URL"),
    };
    let model = replicate.model_name().to_string();
    let base = crate::http::client::display_url(&cfg.replicate_base_url);
    match replicate.check_model().await {
        ModelCheck::Found => Check::ok(
            "provider",
            format!("replicate at {base}: token accepted, model {model} exists"),
        ),
        ModelCheck::TokenRefused(message) => Check::failed(
            "provider",
            format!("replicate at {base} refused the token: {message}"),
            "set REPLICATE_API_TOKEN to a valid token (replicate.com → Account → API tokens)",
        ),
        ModelCheck::UnknownModel => Check::failed(
            "provider",
            format!("replicate at {base} has no model {model}"),
            "set REPLICATE_MODEL to owner/name (or owner/name:version) as replicate.com shows it",
        ),
        ModelCheck::Failed(message) => Check::failed(
            "provider",
            format!("replicate at {base}: {message}"),
            "check REPLICATE_BASE_URL and that this machine reaches it",
        ),
    }
}

fn webhook(cfg: &RunConfig) -> Check {
    let secret = cfg
        .replicate_webhook_secret
        .as_deref()
        .map(crate::http::webhook_signature::Secret::parse);
    match (cfg.public_url.as_deref(), secret) {
        (_, Some(Err(e))) => Check::failed(
            "webhook",
            format!("REPLICATE_WEBHOOK_SECRET: {e}"),
            "copy the secret (whsec_…) from replicate.com's webhook settings (GET /v1/webhooks/default/secret)",
        ),
        (Some(url), Some(Ok(_))) => Check::ok(
            "webhook",
            format!("predictions report to {url}/webhooks/replicate, signatures checked"),
        ),
        (Some(_), None) => Check::failed(
            "webhook",
            "REACTOR_PUBLIC_URL is set without REPLICATE_WEBHOOK_SECRET: every webhook would be refused",
            "set REPLICATE_WEBHOOK_SECRET (whsec_…, from replicate.com's webhook settings)",
        ),
        (None, _) => Check::ok(
            "webhook",
            "no REACTOR_PUBLIC_URL: predictions are polled (set it, with REPLICATE_WEBHOOK_SECRET, for webhooks)",
        ),
    }
}

/// Admin token and users' JWT settings.
pub(super) async fn http(cfg: &RunConfig) -> Vec<Check> {
    let admin = match cfg.admin_token.as_deref().filter(|t| !t.is_empty()) {
        None => Check::warning(
            "admin token",
            "REACTOR_ADMIN_TOKEN unset: the dashboard and admin API refuse everyone",
            "set REACTOR_ADMIN_TOKEN to a long random value (e.g. openssl rand -hex 32) to use them",
        ),
        Some(t) if t.len() < 24 => Check::warning(
            "admin token",
            format!("REACTOR_ADMIN_TOKEN is {} characters: guessable", t.len()),
            "use a long random value (e.g. openssl rand -hex 32)",
        ),
        Some(_) => Check::ok(
            "admin token",
            "set: the dashboard and admin API answer to it",
        ),
    };
    vec![admin, jwt(cfg).await]
}

async fn jwt(cfg: &RunConfig) -> Check {
    let secret = cfg
        .supabase_jwt_secret
        .as_deref()
        .is_some_and(|s| !s.is_empty());
    let Some(url) = cfg.supabase_jwks_url.as_deref().filter(|u| !u.is_empty()) else {
        return if secret {
            Check::ok(
                "jwt",
                "SUPABASE_JWT_SECRET set: users' HS256 tokens are verified",
            )
        } else {
            Check::warning(
                "jwt",
                "neither SUPABASE_JWT_SECRET nor SUPABASE_JWKS_URL: users cannot open /v1/events",
                "set SUPABASE_JWKS_URL (https://<project>.supabase.co/auth/v1/.well-known/jwks.json) or \
                 SUPABASE_JWT_SECRET",
            )
        };
    };
    let shown = crate::http::client::display_url(url);
    let fix =
        "set SUPABASE_JWKS_URL to https://<project>.supabase.co/auth/v1/.well-known/jwks.json";
    let fetched = async {
        reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()?
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .json::<jsonwebtoken::jwk::JwkSet>()
            .await
    }
    .await;
    match fetched {
        Ok(set) if set.keys.is_empty() => Check::failed(
            "jwt",
            format!("SUPABASE_JWKS_URL {shown} answers a key set without keys"),
            fix,
        ),
        Ok(set) => Check::ok(
            "jwt",
            format!(
                "SUPABASE_JWKS_URL {shown} answers {} key(s)",
                set.keys.len()
            ),
        ),
        Err(e) => Check::failed(
            "jwt",
            format!(
                "SUPABASE_JWKS_URL {shown}: {}",
                crate::http::client::error_text_without_url(&e)
            ),
            fix,
        ),
    }
}
