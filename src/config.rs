//! Configuration of `reactor run`: environment variables, overridden by flags.
use std::path::PathBuf;
use std::time::Duration;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 30s, 10m)"))
}

/// A duration that drives a timer: zero would spin (or panic), so refuse it.
fn interval(s: &str) -> Result<Duration, String> {
    match duration(s)? {
        d if d.is_zero() => Err("must be longer than zero".into()),
        d => Ok(d),
    }
}

fn allowed_hosts(s: &str) -> Result<crate::http::public_fetch::AllowedHosts, String> {
    crate::http::public_fetch::AllowedHosts::parse(s)
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn generation_rate(s: &str) -> Result<f64, String> {
    crate::job::limits::parse_rate(s).map_err(|e| format!("REACTOR_GENERATION_RATE: {e}"))
}

fn thumbnail_quality(s: &str) -> Result<u8, String> {
    match s.parse::<u8>() {
        Ok(q @ 1..=100) => Ok(q),
        _ => Err("REACTOR_THUMBNAIL_QUALITY must be a whole number from 1 to 100".into()),
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct RunConfig {
    /// Postgres connection string (direct connection or session-mode pooler).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,

    /// LISTEN for notifications (false: poll-only mode, for transaction-mode poolers).
    #[arg(long, env = "REACTOR_LISTEN", default_value_t = true, action = clap::ArgAction::Set)]
    pub listen: bool,

    /// How often pending queries run in poll-only mode.
    #[arg(long, env = "REACTOR_POLL_INTERVAL", default_value = "1s", value_parser = interval)]
    pub poll_interval: Duration,

    /// How often every handler's pending query runs (the safety net for lost notifications).
    #[arg(long, env = "REACTOR_SWEEP_INTERVAL", default_value = "30s", value_parser = interval)]
    pub sweep_interval: Duration,

    /// How long a claim on a row lasts without renewal; renewed while work runs.
    #[arg(long, env = "REACTOR_LEASE", default_value = "60s", value_parser = interval)]
    pub lease: Duration,

    /// How long the reactor waits for the database to answer one statement (or
    /// to hand out a pooled connection); past it the connection is closed and
    /// the work tried again on a new one.
    #[arg(long, env = "REACTOR_STATEMENT_TIMEOUT", default_value = "30s", value_parser = interval)]
    pub statement_timeout: Duration,

    /// A handler with work waiting that has made no progress for this long is
    /// stalled: /readyz says not ready and /metrics shows it.
    #[arg(long, env = "REACTOR_STALL_AFTER", default_value = "2m", value_parser = interval)]
    pub stall_after: Duration,

    /// Rows worked on at once (downloads, provider calls) across all handlers.
    #[arg(long, env = "REACTOR_CONCURRENCY", default_value = "16", value_parser = positive)]
    pub concurrency: usize,

    /// At most this many generation attempts (provider calls) in flight across
    /// every reactor together (README, "Limits and fairness").
    #[arg(long, env = "REACTOR_GENERATION_MAX_IN_FLIGHT", value_parser = positive)]
    pub generation_max_in_flight: Option<usize>,

    /// At most this many generation attempts started per period across every
    /// reactor, e.g. `600/min` (README, "Limits and fairness").
    #[arg(long, env = "REACTOR_GENERATION_RATE", value_parser = generation_rate)]
    pub generation_rate: Option<f64>,

    /// Attempts REACTOR_GENERATION_RATE lets start at once after a quiet spell.
    #[arg(long, env = "REACTOR_GENERATION_BURST", default_value = "1", value_parser = positive)]
    pub generation_burst: usize,

    /// Failed attempts after which a row is marked dead, unless the failure is
    /// an outage still inside its time budget (those go on; see REACTOR_RETRY_FOR).
    #[arg(long, env = "REACTOR_MAX_ATTEMPTS", default_value = "5", value_parser = positive)]
    pub max_attempts: usize,

    /// Delay before the first retry; doubles each attempt (with jitter), capped at
    /// REACTOR_RETRY_BACKOFF_MAX.
    #[arg(long, env = "REACTOR_RETRY_BACKOFF", default_value = "2s", value_parser = duration)]
    pub retry_backoff: Duration,

    /// The longest wait between two attempts of a row, so work resumes promptly after an outage.
    #[arg(long, env = "REACTOR_RETRY_BACKOFF_MAX", default_value = "1m", value_parser = interval)]
    pub retry_backoff_max: Duration,

    /// How long an outage (the database, storage, a peer answering 5xx/429/408 or not at all)
    /// is retried when the work has no budget of its own, from the row's first failure.
    #[arg(long, env = "REACTOR_RETRY_FOR", default_value = "1h", value_parser = duration)]
    pub retry_for: Duration,

    /// How long after a job's completion its render is retried through outages:
    /// the provider deletes the outputs then (Replicate: about an hour).
    #[arg(long, env = "REACTOR_RENDER_RETRY_FOR", default_value = "1h", value_parser = duration)]
    pub render_retry_for: Duration,

    /// Rows handled per database round trip.
    #[arg(long, env = "REACTOR_BATCH_SIZE", default_value = "500", value_parser = positive)]
    pub batch_size: usize,

    /// On SIGINT/SIGTERM, how long in-flight work may take to finish.
    #[arg(long, env = "REACTOR_SHUTDOWN_GRACE", default_value = "30s", value_parser = duration)]
    pub shutdown_grace: Duration,

    /// Outbox mode (database setting reactor.notify_mode = 'outbox'): how often to
    /// drain reactor.outbox. Unset: the outbox is not read.
    #[arg(long, env = "REACTOR_OUTBOX_POLL", value_parser = interval)]
    pub outbox_poll: Option<Duration>,

    /// Deprecated and ignored: WAL mode streams from its slot, it no longer polls.
    #[arg(long, env = "REACTOR_WAL_POLL", hide = true, value_parser = interval)]
    pub wal_poll: Option<Duration>,

    /// How often the listener checks that its own notifications still arrive.
    #[arg(long, env = "REACTOR_LISTEN_CHECK_INTERVAL", default_value = "10s", value_parser = interval)]
    pub listen_check_interval: Duration,

    /// How long a self-check notification may take before the listener is declared deaf.
    #[arg(long, env = "REACTOR_LISTEN_CHECK_TIMEOUT", default_value = "5s", value_parser = interval)]
    pub listen_check_timeout: Duration,

    /// Notify mode: hints per second on one table (in every 100 ms window of a
    /// whole second) above which the reactor makes that table's writers quiet
    /// (no NOTIFY) and pages its pending rows instead: NOTIFY's commit-time
    /// lock serializes notifying writers, so a busy table's writers would
    /// otherwise pay for hints the reactor does not need (viewers of a quiet
    /// table get resync instead of per-row events). WAL mode: decoded rows a
    /// second above which the reactor sending job_status sends one quiet
    /// announcement instead of each row's payload. 0: never.
    #[arg(long, env = "REACTOR_QUIET_ABOVE", default_value = "200")]
    pub quiet_above: u64,

    /// While a table is quiet, how often its handlers' pending rows are paged.
    #[arg(long, env = "REACTOR_QUIET_POLL", default_value = "100ms", value_parser = interval)]
    pub quiet_poll: Duration,

    /// How long one take of a table's quiet lasts; renewed (every half of it)
    /// while the table stays busy. After the reactor holding it dies, writers
    /// notify again once it has run out and a live reactor has seen it (each
    /// checks every second; if none runs, the next to start).
    #[arg(long, env = "REACTOR_QUIET_LEASE", default_value = "3s", value_parser = interval)]
    pub quiet_lease: Duration,

    /// After a quiet lease ends, how long the table is still polled before one
    /// last scan (covers writers whose transaction began inside the lease).
    #[arg(long, env = "REACTOR_QUIET_GRACE", default_value = "1s", value_parser = duration)]
    pub quiet_grace: Duration,

    /// Where render images are stored: file:///abs/path, a plain path, or s3://bucket.
    #[arg(long, env = "REACTOR_STORAGE_URL", default_value = "./storage")]
    pub storage_url: String,

    /// Largest output image the renders handler accepts, in bytes.
    #[arg(long, env = "REACTOR_MAX_IMAGE_BYTES", default_value = "26214400", value_parser = positive)]
    pub max_image_bytes: usize,

    /// Longest side, in pixels, of the WebP thumbnail stored beside each render variant.
    #[arg(long, env = "REACTOR_THUMBNAIL_SIZE", default_value = "512", value_parser = positive)]
    pub thumbnail_size: usize,

    /// WebP quality of thumbnails: 1 (smallest) to 100 (best).
    #[arg(long, env = "REACTOR_THUMBNAIL_QUALITY", default_value = "80", value_parser = thumbnail_quality)]
    pub thumbnail_quality: u8,

    /// Timeout of each output image download.
    #[arg(long, env = "REACTOR_DOWNLOAD_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub download_timeout: Duration,

    /// Hosts (`host` or `host:port`, comma-separated) output images may be
    /// downloaded from although they are on loopback or private addresses.
    #[arg(long, env = "REACTOR_ALLOW_PRIVATE_DOWNLOADS", default_value = "", value_parser = allowed_hosts)]
    pub allow_private_downloads: crate::http::public_fetch::AllowedHosts,

    /// Image provider: replicate, or local (draws images here; no network, no account).
    #[arg(long, env = "REACTOR_PROVIDER", value_enum, default_value_t = ProviderKind::Replicate)]
    pub provider: ProviderKind,

    /// Replicate API token (required with REACTOR_PROVIDER=replicate).
    #[arg(long, env = "REPLICATE_API_TOKEN", hide_env_values = true)]
    pub replicate_api_token: Option<String>,

    /// Replicate model (`owner/name`, or `owner/name:version`).
    #[arg(long, env = "REPLICATE_MODEL", default_value = crate::providers::replicate::DEFAULT_MODEL)]
    pub replicate_model: String,

    /// Replicate API base URL.
    #[arg(long, env = "REPLICATE_BASE_URL", default_value = crate::providers::replicate::DEFAULT_BASE_URL)]
    pub replicate_base_url: String,

    /// Secret that signs Replicate's webhooks (`whsec_…`); required with REACTOR_PUBLIC_URL.
    #[arg(long, env = "REPLICATE_WEBHOOK_SECRET", hide_env_values = true)]
    pub replicate_webhook_secret: Option<String>,

    /// Public base URL of this reactor; when set, predictions report back by webhook.
    #[arg(long, env = "REACTOR_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// Address of the HTTP server (webhooks, health).
    #[arg(long, env = "REACTOR_HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: std::net::SocketAddr,

    /// Timeout of each request to the provider.
    #[arg(long, env = "REACTOR_PROVIDER_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub provider_timeout: Duration,

    /// A job without a terminal status this long after creation fails with "timed out".
    #[arg(long, env = "REACTOR_STUCK_AFTER", default_value = "10m", value_parser = duration)]
    pub stuck_after: Duration,

    /// First interval between polls of a running prediction (grows to 30s).
    #[arg(long, env = "REACTOR_PROVIDER_POLL", default_value = "1s", value_parser = interval)]
    pub provider_poll: Duration,

    /// With webhooks on, how long to wait for one before polling.
    #[arg(long, env = "REACTOR_WEBHOOK_GRACE", default_value = "60s", value_parser = duration)]
    pub webhook_grace: Duration,

    /// How long a timed-out job is still followed for a late success.
    #[arg(long, env = "REACTOR_LATE_WINDOW", default_value = "1h", value_parser = duration)]
    pub late_window: Duration,

    /// How long a local-provider prediction takes.
    #[arg(long, env = "REACTOR_LOCAL_DELAY", default_value = "1500ms", value_parser = duration)]
    pub local_delay: Duration,

    /// Bearer token for the dashboard, admin API and all-jobs event stream.
    #[arg(long, env = "REACTOR_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Event streams (`/v1/events`) one user (or the admin) may hold open at once.
    #[arg(long, env = "REACTOR_MAX_STREAMS_PER_USER", default_value = "10", value_parser = positive)]
    pub max_streams_per_user: usize,

    /// Supabase JWT secret: verifies users' HS256 access tokens on /v1/events.
    #[arg(long, env = "SUPABASE_JWT_SECRET", hide_env_values = true)]
    pub supabase_jwt_secret: Option<String>,

    /// Supabase JWKS URL: verifies users' asymmetric access tokens on /v1/events.
    #[arg(long, env = "SUPABASE_JWKS_URL")]
    pub supabase_jwks_url: Option<String>,

    /// Prefix that turns input paths into URLs the provider can fetch (inputs
    /// that are already http(s) URLs are passed as they are).
    #[arg(long, env = "REACTOR_INPUT_BASE_URL")]
    pub input_base_url: Option<String>,

    /// TOML file declaring your own job tables and their HTTP handlers.
    #[arg(long, env = "REACTOR_CONFIG")]
    pub config: Option<PathBuf>,

    /// Key that signs the http handler's requests (`whsec_<base64>` or base64),
    /// for tables that do not set their own `secret`.
    #[arg(long, env = "REACTOR_HTTP_SECRET", hide_env_values = true)]
    pub http_secret: Option<String>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    Replicate,
    Local,
}

#[derive(clap::Parser)]
#[command(args_override_self = true)]
struct Flags {
    #[command(flatten)]
    run: RunConfig,
}

impl RunConfig {
    /// The generation handler's limits (REACTOR_GENERATION_*).
    pub fn generation_limits(&self) -> crate::job::limits::Limits {
        let cap = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
        crate::job::limits::Limits {
            max_in_flight: self.generation_max_in_flight.map(cap),
            rate: self
                .generation_rate
                .map(|per_second| crate::job::limits::Rate {
                    per_second,
                    burst: self.generation_burst as f64,
                }),
            ..Default::default()
        }
    }

    /// How failed attempts are retried.
    pub fn retry_policy(&self) -> crate::store::handler_state::RetryPolicy {
        crate::store::handler_state::RetryPolicy {
            backoff: self.retry_backoff,
            backoff_max: self.retry_backoff_max,
            max_attempts: i32::try_from(self.max_attempts).unwrap_or(i32::MAX),
            transient_for: self.retry_for,
        }
    }

    /// Parses flags the way `reactor run` does (environment variables still
    /// apply), e.g. `["--database-url", url, "--lease", "2s"]`.
    pub fn from_flags<I, T>(flags: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser as _;
        let args = std::iter::once(std::ffi::OsString::from("reactor"))
            .chain(flags.into_iter().map(Into::into));
        Ok(Flags::try_parse_from(args)?.run)
    }

    /// The local directory behind a `file://` or plain-path storage URL.
    pub fn local_storage_dir(&self) -> Option<PathBuf> {
        crate::providers::storage::local_dir(&self.storage_url)
    }
}
