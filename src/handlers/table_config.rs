//! `REACTOR_CONFIG`: the job tables of your own that the reactor works, read
//! from a TOML file and checked before anything connects.
//!
//! ```toml
//! [[table]]
//! name = "public.image_jobs"
//! succeeded = "completed"
//! failed = "failed"
//! url_column = "final_image_url"
//! error_column = "error_message"
//!
//! [table.http]
//! url = "https://worker.example.com/shadow"
//! ```
//!
//! Every key is listed in docs/src/own-tables.md, "Config reference (`REACTOR_CONFIG`)".
//! Unknown keys are refused by name (a typo must not silently turn a column
//! off), and every value is checked with a message naming the table and the key.
use crate::config::RunConfig;
use crate::http::webhook_signature::Secret;
use crate::job::handler::KeyType;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Timeout of one request when a table sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a worker's outage is retried when a table sets no `http.retry_for`.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("REACTOR_CONFIG {path}: cannot read it: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("REACTOR_CONFIG {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("REACTOR_CONFIG {path}: table {table}: `{key}` {message}")]
    Invalid {
        path: PathBuf,
        table: String,
        key: String,
        message: String,
    },
    #[error("REACTOR_CONFIG {path}: declares no tables (add a [[table]] section)")]
    Empty { path: PathBuf },
}

// ---------------------------------------------------------------------------
// The file as written

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    table: Vec<RawTable>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    name: String,
    #[serde(default = "default_key")]
    key: String,
    #[serde(default = "default_key_type")]
    key_type: KeyType,
    #[serde(default = "default_status_column")]
    status_column: String,
    #[serde(default = "default_pending")]
    pending: String,
    #[serde(default = "default_processing")]
    processing: String,
    succeeded: String,
    failed: String,
    result_column: Option<String>,
    url_column: Option<String>,
    error_column: String,
    retry_column: Option<String>,
    max_attempts: Option<i64>,
    job_type_column: Option<String>,
    http: RawHttp,
    #[serde(default)]
    limits: RawLimits,
}

/// `[table.limits]`: shared by every reactor (README, "Limits and fairness").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_in_flight: Option<i64>,
    rate: Option<String>,
    burst: Option<i64>,
    per_key: Option<String>,
    max_in_flight_per_key: Option<i64>,
    /// `[table.limits.routes.<job type>]`: limits of one route.
    #[serde(default)]
    routes: BTreeMap<String, RawRouteLimit>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRouteLimit {
    max_in_flight: Option<i64>,
    rate: Option<String>,
    burst: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    url: Option<String>,
    timeout: Option<String>,
    retry_for: Option<String>,
    secret: Option<String>,
    #[serde(default)]
    routes: BTreeMap<String, String>,
}

fn default_key() -> String {
    "id".into()
}
fn default_key_type() -> KeyType {
    KeyType::Uuid
}
fn default_status_column() -> String {
    "status".into()
}
fn default_pending() -> String {
    "pending".into()
}
fn default_processing() -> String {
    "processing".into()
}

// ---------------------------------------------------------------------------
// The checked configuration

/// One watched table and its handler.
#[derive(Debug, Clone)]
pub struct TableConfig {
    /// As written: `schema.table`.
    pub name: String,
    pub schema: String,
    /// The table's name without schema (what notifications carry).
    pub table: String,
    pub key: String,
    pub key_type: KeyType,
    pub status: StatusValues,
    pub result_column: Option<String>,
    pub url_column: Option<String>,
    pub error_column: String,
    pub retry_column: Option<String>,
    /// Failed attempts after which a row gets the failed value.
    pub max_attempts: i32,
    pub job_type_column: Option<String>,
    pub http: HttpConfig,
    pub limits: crate::job::limits::Limits,
}

#[derive(Debug, Clone)]
pub struct StatusValues {
    pub column: String,
    pub pending: String,
    pub processing: String,
    pub succeeded: String,
    pub failed: String,
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub target: Target,
    pub timeout: Duration,
    /// How long an outage of the worker (no connection, a timeout, HTTP
    /// 5xx/429/408) is retried, from the row's first failure.
    pub retry_for: Duration,
    pub secret: Secret,
}

/// Where a row is sent.
#[derive(Debug, Clone)]
pub enum Target {
    /// Every row to one URL (no `job_type_column`).
    Url(String),
    /// By the row's job type; a type without a route is not worked.
    Routes(BTreeMap<String, String>),
}

impl TableConfig {
    /// The handler name in `reactor.handler_state` (and for `reactor.retry`).
    pub fn handler_name(&self) -> String {
        format!("http:{}", self.name)
    }

    /// The URL for a row of this job type (None: no route).
    pub fn url_for(&self, job_type: Option<&str>) -> Option<&str> {
        match &self.http.target {
            Target::Url(url) => Some(url),
            Target::Routes(routes) => job_type.and_then(|t| routes.get(t)).map(String::as_str),
        }
    }
}

/// Reads `cfg.config` (no file: no tables).
pub fn load(cfg: &RunConfig) -> Result<Vec<TableConfig>, ConfigError> {
    let Some(path) = &cfg.config else {
        return Ok(Vec::new());
    };
    parse(
        &read(path)?,
        path,
        cfg.http_secret.as_deref(),
        cfg.max_attempts as i64,
    )
}

/// The text of the config file at `path`.
pub fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses and checks a config file's text. `env_secret` is REACTOR_HTTP_SECRET,
/// `global_max_attempts` is REACTOR_MAX_ATTEMPTS.
pub fn parse(
    text: &str,
    path: &Path,
    env_secret: Option<&str>,
    global_max_attempts: i64,
) -> Result<Vec<TableConfig>, ConfigError> {
    let file: File = toml::from_str(text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })?;
    if file.table.is_empty() {
        return Err(ConfigError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut seen = BTreeSet::new();
    let mut tables = Vec::new();
    for raw in file.table {
        let check = Checker {
            path,
            table: raw.name.clone(),
        };
        let table = check.table(raw, env_secret, global_max_attempts)?;
        if !seen.insert(table.name.clone()) {
            return Err(check.invalid(
                "name",
                "is declared twice; declare each table once (use routes for several handlers)",
            ));
        }
        tables.push(table);
    }
    Ok(tables)
}

struct Checker<'a> {
    path: &'a Path,
    table: String,
}

impl Checker<'_> {
    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            table: self.table.clone(),
            key: key.into(),
            message: message.into(),
        }
    }

    /// A name as Postgres stores it (names are used exactly as written, quoted).
    fn identifier(&self, key: &str, name: &str) -> Result<String, ConfigError> {
        if name.is_empty() {
            return Err(self.invalid(key, "is empty"));
        }
        if name.len() > 63 {
            return Err(self.invalid(key, "is longer than 63 bytes, Postgres' limit for names"));
        }
        if name.contains('\0') {
            return Err(self.invalid(key, "contains a NUL character"));
        }
        Ok(name.to_string())
    }

    fn value(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        if value.is_empty() {
            return Err(self.invalid(key, "is empty"));
        }
        if value.contains('\0') {
            return Err(self.invalid(key, "contains a NUL character"));
        }
        Ok(value.to_string())
    }

    /// A duration more than zero (`default` when not set).
    fn duration(
        &self,
        key: &str,
        text: Option<&str>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        let Some(text) = text else {
            return Ok(default);
        };
        match humantime::parse_duration(text) {
            Ok(d) if d.is_zero() => Err(self.invalid(key, "must be more than zero")),
            Ok(d) => Ok(d),
            Err(e) => Err(self.invalid(
                key,
                format!("{text:?} is not a duration ({e}; examples: 500ms, 30s, 2m)"),
            )),
        }
    }

    fn http_url(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        match url::Url::parse(value) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Ok(value.to_string()),
            Ok(u) => Err(self.invalid(
                key,
                format!(
                    "must be an http or https URL, not {}: {value:?}",
                    u.scheme()
                ),
            )),
            Err(e) => Err(self.invalid(key, format!("is not a URL ({e}): {value:?}"))),
        }
    }

    /// `[table.limits]`, each value checked with a message naming its key.
    /// `target`: where rows go (route limits need a route of `http.routes`).
    fn limits(
        &self,
        raw: RawLimits,
        job_type_column: Option<&str>,
        target: &Target,
    ) -> Result<crate::job::limits::Limits, ConfigError> {
        use crate::job::limits::{Limits, RouteLimit, RouteLimits};
        let per_key = raw
            .per_key
            .as_deref()
            .map(|c| self.identifier("limits.per_key", c))
            .transpose()?;
        let max_in_flight_per_key =
            self.cap("limits.max_in_flight_per_key", raw.max_in_flight_per_key)?;
        if max_in_flight_per_key.is_some() && per_key.is_none() {
            return Err(self.invalid(
                "limits.max_in_flight_per_key",
                "needs limits.per_key, the column whose value is the key",
            ));
        }
        let routes = match (raw.routes.is_empty(), job_type_column, target) {
            (true, _, _) => None,
            (false, Some(column), Target::Routes(urls)) => {
                let mut of = BTreeMap::new();
                for (route, limit) in raw.routes {
                    let prefix = format!("limits.routes.{route}");
                    if !urls.contains_key(&route) {
                        let known = urls.keys().cloned().collect::<Vec<_>>().join(", ");
                        return Err(self.invalid(
                            &prefix,
                            format!("names no route of http.routes (its routes: {known})"),
                        ));
                    }
                    let limit = RouteLimit {
                        max_in_flight: self
                            .cap(&format!("{prefix}.max_in_flight"), limit.max_in_flight)?,
                        rate: self.rate(&prefix, limit.rate.as_deref(), limit.burst)?,
                    };
                    of.insert(route, limit);
                }
                Some(RouteLimits {
                    column: column.to_string(),
                    of,
                })
            }
            (false, _, _) => {
                return Err(self.invalid(
                    "limits.routes",
                    "needs job_type_column and http.routes: it limits each route on its own",
                ))
            }
        };
        Ok(Limits {
            max_in_flight: self.cap("limits.max_in_flight", raw.max_in_flight)?,
            rate: self.rate("limits", raw.rate.as_deref(), raw.burst)?,
            per_key,
            max_in_flight_per_key,
            routes,
        })
    }

    /// A cap (`<key>`): a whole number at least 1.
    fn cap(&self, key: &str, n: Option<i64>) -> Result<Option<i32>, ConfigError> {
        n.map(|n| crate::job::limits::check_cap(n).map_err(|e| self.invalid(key, e)))
            .transpose()
    }

    /// `<prefix>.rate` with `<prefix>.burst` (default 1; not without a rate).
    fn rate(
        &self,
        prefix: &str,
        rate: Option<&str>,
        burst: Option<i64>,
    ) -> Result<Option<crate::job::limits::Rate>, ConfigError> {
        use crate::job::limits::{check_burst, parse_rate, Rate};
        let per_second = rate
            .map(|r| parse_rate(r).map_err(|e| self.invalid(&format!("{prefix}.rate"), e)))
            .transpose()?;
        let burst = burst
            .map(|b| check_burst(b).map_err(|e| self.invalid(&format!("{prefix}.burst"), e)))
            .transpose()?;
        if burst.is_some() && per_second.is_none() {
            return Err(self.invalid(
                &format!("{prefix}.burst"),
                format!("needs {prefix}.rate, the rate it bursts above"),
            ));
        }
        Ok(per_second.map(|per_second| Rate {
            per_second,
            burst: burst.unwrap_or(1.0),
        }))
    }

    fn table(
        &self,
        raw: RawTable,
        env_secret: Option<&str>,
        global_max_attempts: i64,
    ) -> Result<TableConfig, ConfigError> {
        let (schema, table) = match raw.name.split_once('.') {
            Some((s, t)) if !s.is_empty() && !t.is_empty() && !t.contains('.') => {
                (self.identifier("name", s)?, self.identifier("name", t)?)
            }
            _ => return Err(self.invalid("name", "must be schema.table, e.g. public.image_jobs")),
        };
        let key = self.identifier("key", &raw.key)?;
        let status = StatusValues {
            column: self.identifier("status_column", &raw.status_column)?,
            pending: self.value("pending", &raw.pending)?,
            processing: self.value("processing", &raw.processing)?,
            succeeded: self.value("succeeded", &raw.succeeded)?,
            failed: self.value("failed", &raw.failed)?,
        };
        let values = [
            ("pending", &status.pending),
            ("processing", &status.processing),
            ("succeeded", &status.succeeded),
            ("failed", &status.failed),
        ];
        for (i, (key_a, a)) in values.iter().enumerate() {
            if let Some((key_b, _)) = values[i + 1..].iter().find(|(_, b)| b == a) {
                return Err(self.invalid(
                    key_b,
                    format!(
                        "has the same value {a:?} as `{key_a}`; the four status values must differ"
                    ),
                ));
            }
        }
        let optional = |key: &str, v: &Option<String>| -> Result<Option<String>, ConfigError> {
            v.as_deref().map(|n| self.identifier(key, n)).transpose()
        };
        let result_column = optional("result_column", &raw.result_column)?;
        let url_column = optional("url_column", &raw.url_column)?;
        let error_column = self.identifier("error_column", &raw.error_column)?;
        let retry_column = optional("retry_column", &raw.retry_column)?;
        let job_type_column = optional("job_type_column", &raw.job_type_column)?;

        // Columns the reactor writes, each at most once per statement.
        let mut written: Vec<(&str, &str)> = vec![("status_column", &status.column)];
        for (k, c) in [
            ("result_column", &result_column),
            ("url_column", &url_column),
            ("retry_column", &retry_column),
        ] {
            if let Some(c) = c {
                written.push((k, c));
            }
        }
        written.push(("error_column", &error_column));
        for (i, (key_a, a)) in written.iter().enumerate() {
            if *a == key {
                return Err(self.invalid(
                    key_a,
                    format!("names the primary key {key:?}; the reactor must not write it"),
                ));
            }
            if let Some((key_b, _)) = written[i + 1..].iter().find(|(_, b)| b == a) {
                return Err(
                    self.invalid(key_b, format!("names the same column {a:?} as `{key_a}`"))
                );
            }
        }

        let max_attempts = match raw.max_attempts {
            None => global_max_attempts,
            Some(n) if n < 1 => return Err(self.invalid("max_attempts", "must be at least 1")),
            Some(n) if n > global_max_attempts => {
                return Err(self.invalid(
                    "max_attempts",
                    format!(
                        "is {n}, above REACTOR_MAX_ATTEMPTS ({global_max_attempts}), after which every row is given up; \
                         lower it or raise REACTOR_MAX_ATTEMPTS"
                    ),
                ))
            }
            Some(n) => n,
        };

        let http = raw.http;
        let target = match (
            &job_type_column,
            http.url.as_deref(),
            http.routes.is_empty(),
        ) {
            (None, Some(url), true) => Target::Url(self.http_url("http.url", url)?),
            (None, None, _) => return Err(self.invalid(
                "http.url",
                "is missing: every row is posted to it (or set job_type_column and http.routes)",
            )),
            (None, Some(_), false) => {
                return Err(self.invalid(
                    "http.routes",
                    "needs job_type_column, the column whose value picks the route",
                ))
            }
            (Some(_), Some(_), _) => return Err(self.invalid(
                "http.url",
                "cannot be used with job_type_column: give each job type its URL in http.routes \
                     (a type without a route stays pending)",
            )),
            (Some(_), None, true) => {
                return Err(self.invalid(
                    "http.routes",
                    "is empty: with job_type_column, give each job type its URL",
                ))
            }
            (Some(_), None, false) => {
                let mut routes = BTreeMap::new();
                for (job_type, url) in &http.routes {
                    let key = format!("http.routes.{job_type}");
                    self.value(&key, job_type)?;
                    routes.insert(job_type.clone(), self.http_url(&key, url)?);
                }
                Target::Routes(routes)
            }
        };
        let timeout = self.duration("http.timeout", http.timeout.as_deref(), DEFAULT_TIMEOUT)?;
        let retry_for = self.duration(
            "http.retry_for",
            http.retry_for.as_deref(),
            DEFAULT_RETRY_FOR,
        )?;
        let secret = match (http.secret.as_deref(), env_secret.filter(|s| !s.is_empty())) {
            (Some(s), _) => {
                Secret::parse(s).map_err(|e| self.invalid("http.secret", e.to_string()))?
            }
            (None, Some(s)) => Secret::parse(s).map_err(|e| {
                self.invalid(
                    "http.secret",
                    format!("is not set and REACTOR_HTTP_SECRET is unusable: {e}"),
                )
            })?,
            (None, None) => {
                return Err(self.invalid(
                    "http.secret",
                    "is not set and neither is REACTOR_HTTP_SECRET: requests must be signed \
                     (a key as whsec_<base64>, e.g. from `openssl rand -base64 32`)",
                ))
            }
        };

        let limits = self.limits(raw.limits, job_type_column.as_deref(), &target)?;

        Ok(TableConfig {
            limits,
            name: raw.name.clone(),
            schema,
            table,
            key,
            key_type: raw.key_type,
            status,
            result_column,
            url_column,
            error_column,
            retry_column,
            max_attempts: i32::try_from(max_attempts).unwrap_or(i32::MAX),
            job_type_column,
            http: HttpConfig {
                target,
                timeout,
                retry_for,
                secret,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn parse_ok(text: &str) -> Vec<TableConfig> {
        parse(text, Path::new("t.toml"), Some(SECRET), 5).unwrap()
    }

    fn parse_err(text: &str) -> String {
        parse(text, Path::new("t.toml"), Some(SECRET), 5)
            .unwrap_err()
            .to_string()
    }

    const MINIMAL: &str = r#"
        [[table]]
        name = "public.image_jobs"
        succeeded = "completed"
        failed = "failed"
        error_column = "error_message"
        [table.http]
        url = "http://127.0.0.1:1/x"
    "#;

    #[test]
    fn limits_are_read_and_every_bad_value_is_named() {
        use crate::job::limits::{Limits, Rate};
        assert_eq!(parse_ok(MINIMAL)[0].limits, Limits::default());
        let with = |limits: &str| format!("{MINIMAL}\n        [table.limits]\n{limits}");
        let t = &parse_ok(&with(
            "max_in_flight = 4\nrate = \"600/min\"\nburst = 10\nper_key = \"user_id\"\nmax_in_flight_per_key = 2",
        ))[0];
        assert_eq!(
            t.limits,
            Limits {
                max_in_flight: Some(4),
                rate: Some(Rate {
                    per_second: 10.0,
                    burst: 10.0
                }),
                per_key: Some("user_id".into()),
                max_in_flight_per_key: Some(2),
                routes: None,
            }
        );
        let e = parse_err(&with("rate = \"fast\""));
        assert!(e.contains("`limits.rate` \"fast\" is not a rate"), "{e}");
        let e = parse_err(&with("max_in_flight = 0"));
        assert!(e.contains("`limits.max_in_flight` is 0"), "{e}");
        let e = parse_err(&with("burst = 5"));
        assert!(e.contains("`limits.burst` needs limits.rate"), "{e}");
        let e = parse_err(&with("max_in_flight_per_key = 2"));
        assert!(e.contains("needs limits.per_key"), "{e}");
        let e = parse_err(&with("rate_limit = \"1/s\""));
        assert!(e.contains("rate_limit"), "{e}");
    }

    /// MINIMAL routed by job type, with `routes` (a TOML line) in place of its URL.
    fn routed(routes: &str) -> String {
        MINIMAL
            .replace(
                "error_column = \"error_message\"",
                "error_column = \"e\"\njob_type_column = \"job_type\"",
            )
            .replace("url = \"http://127.0.0.1:1/x\"", routes)
    }

    #[test]
    fn route_limits_are_read_and_every_bad_value_is_named() {
        use crate::job::limits::{Rate, RouteLimit};
        let routed = routed(r#"routes = { resize = "http://h/a", b = "https://h/b" }"#);
        let with =
            |limits: &str| format!("{routed}\n        [table.limits.routes.resize]\n{limits}");
        let t = &parse_ok(&with("max_in_flight = 2\nrate = \"120/min\"\nburst = 5"))[0];
        let routes = t.limits.routes.as_ref().expect("route limits");
        assert_eq!(routes.column, "job_type");
        assert_eq!(
            routes.of["resize"],
            RouteLimit {
                max_in_flight: Some(2),
                rate: Some(Rate {
                    per_second: 2.0,
                    burst: 5.0
                }),
            }
        );
        assert_eq!(t.limits.route_column(), Some("job_type"));
        assert!(!t.limits.any(), "the table itself is not limited");
        let e = parse_err(&with("rate = \"fast\""));
        assert!(
            e.contains("`limits.routes.resize.rate` \"fast\" is not a rate"),
            "{e}"
        );
        let e = parse_err(&with("max_in_flight = 0"));
        assert!(
            e.contains("`limits.routes.resize.max_in_flight` is 0"),
            "{e}"
        );
        let e = parse_err(&with("burst = 5"));
        assert!(
            e.contains("`limits.routes.resize.burst` needs limits.routes.resize.rate"),
            "{e}"
        );
        let e = parse_err(&with("rate_limit = \"1/s\""));
        assert!(e.contains("rate_limit"), "{e}");
        let e = parse_err(&with("max_in_flight = 1").replace("routes.resize]", "routes.crop]"));
        assert!(
            e.contains(
                "`limits.routes.crop` names no route of http.routes (its routes: b, resize)"
            ),
            "{e}"
        );
        let e = parse_err(&format!(
            "{MINIMAL}\n        [table.limits.routes.resize]\nmax_in_flight = 1"
        ));
        assert!(
            e.contains("`limits.routes` needs job_type_column and http.routes"),
            "{e}"
        );
    }

    #[test]
    fn a_minimal_table_gets_the_documented_defaults() {
        let t = &parse_ok(MINIMAL)[0];
        assert_eq!(
            (t.schema.as_str(), t.table.as_str()),
            ("public", "image_jobs")
        );
        assert_eq!(t.key, "id");
        assert_eq!(t.key_type, KeyType::Uuid);
        assert_eq!(t.status.column, "status");
        assert_eq!(t.status.pending, "pending");
        assert_eq!(t.status.processing, "processing");
        assert_eq!(t.max_attempts, 5);
        assert_eq!(t.http.timeout, DEFAULT_TIMEOUT);
        assert_eq!(t.http.retry_for, DEFAULT_RETRY_FOR);
        assert_eq!(t.url_for(Some("anything")), Some("http://127.0.0.1:1/x"));
        assert_eq!(t.handler_name(), "http:public.image_jobs");
    }

    #[test]
    fn an_unknown_key_is_refused_by_name() {
        let err = parse_err(&MINIMAL.replace("error_column", "eror_column"));
        assert!(err.contains("eror_column"), "{err}");
        let err = parse_err(&format!("{MINIMAL}\n        timeout_s = 3\n"));
        assert!(err.contains("timeout_s"), "{err}");
    }

    #[test]
    fn a_missing_required_key_is_named() {
        let err = parse_err(&MINIMAL.replace("succeeded = \"completed\"", ""));
        assert!(err.contains("succeeded"), "{err}");
    }

    #[test]
    fn bad_values_name_the_table_and_the_key() {
        for (from, to, key) in [
            ("\"public.image_jobs\"", "\"image_jobs\"", "name"),
            (
                "url = \"http://127.0.0.1:1/x\"",
                "url = \"ftp://x/y\"",
                "http.url",
            ),
            (
                "url = \"http://127.0.0.1:1/x\"",
                "url = \"http://127.0.0.1:1/x\"\ntimeout = \"soon\"",
                "http.timeout",
            ),
            (
                "url = \"http://127.0.0.1:1/x\"",
                "url = \"http://127.0.0.1:1/x\"\nretry_for = \"0s\"",
                "http.retry_for",
            ),
            (
                "url = \"http://127.0.0.1:1/x\"",
                "url = \"http://127.0.0.1:1/x\"\nsecret = \"not base64!\"",
                "http.secret",
            ),
            ("failed = \"failed\"", "failed = \"completed\"", "failed"),
            (
                "error_column = \"error_message\"",
                "error_column = \"status\"",
                "error_column",
            ),
            (
                "error_column = \"error_message\"",
                "error_column = \"e\"\nmax_attempts = 9",
                "max_attempts",
            ),
            (
                "error_column = \"error_message\"",
                "error_column = \"e\"\njob_type_column = \"job_type\"",
                "http.url",
            ),
        ] {
            let err = parse_err(&MINIMAL.replace(from, to));
            assert!(
                err.contains("public.image_jobs") || key == "name",
                "{key}: {err}"
            );
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
    }

    #[test]
    fn routes_need_a_job_type_column_and_pick_the_url_by_type() {
        let routed = routed(r#"routes = { a = "http://h/a", b = "https://h/b" }"#);
        let t = &parse_ok(&routed)[0];
        assert_eq!(t.url_for(Some("a")), Some("http://h/a"));
        assert_eq!(t.url_for(Some("c")), None);
        assert_eq!(t.url_for(None), None);
        let err = parse_err(&MINIMAL.replace(
            "url = \"http://127.0.0.1:1/x\"",
            "url = \"http://h/\"\nroutes = { a = \"http://h/a\" }",
        ));
        assert!(
            err.contains("`http.routes`") && err.contains("job_type_column"),
            "{err}"
        );
    }

    #[test]
    fn requests_must_be_signed() {
        let err = parse(MINIMAL, Path::new("t.toml"), None, 5)
            .unwrap_err()
            .to_string();
        assert!(err.contains("REACTOR_HTTP_SECRET"), "{err}");
    }

    #[test]
    fn a_table_declared_twice_or_no_table_is_refused() {
        let err = parse_err(&format!("{MINIMAL}{MINIMAL}"));
        assert!(err.contains("declared twice"), "{err}");
        let err = parse_err("");
        assert!(err.contains("no tables"), "{err}");
    }
}
