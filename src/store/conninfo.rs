//! Connection strings as libpq reads them, in both forms:
//! `postgres://user:password@host:port,host2/dbname?key=value&…` (or
//! `postgresql://`, percent-encoded) and `host=… port=… key='a b\'c'`.
//!
//! One parser for every connection (the pool, single connections and WAL
//! mode's replication client): it takes out what tokio-postgres does not
//! know or knows only in part (`sslmode` beyond `require`, `sslrootcert`,
//! `require_auth`, libpq's `keepalives_count`) and hands the rest to
//! tokio-postgres' own parser, so every other parameter means what it means
//! there. A parameter given twice counts once, the last value, as in libpq;
//! an empty value (other than the password) is as if it were not given.
use crate::store::require_auth::{RequireAuth, RequireAuthError};
use crate::store::tls::{Settings, TlsError};
use percent_encoding::percent_decode_str;

/// A parsed connection string.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Everything tokio-postgres needs, its `ssl_mode` set from [`Self::tls`]
    /// (hosts, ports, user, `channel_binding`, keepalives, timeouts, …).
    pub config: tokio_postgres::Config,
    /// `sslmode` and `sslrootcert` from the string, else PGSSLMODE /
    /// PGSSLROOTCERT, else `prefer`.
    pub tls: Settings,
    /// The methods the server may ask for (all unless `require_auth` is given).
    pub require_auth: RequireAuth,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnInfoError {
    #[error("{0}")]
    Syntax(String),
    #[error(transparent)]
    RequireAuth(#[from] RequireAuthError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The hint every syntax error ends with.
const FORMS: &str = "expected postgres://user:password@host:port/database?sslmode=… \
                     or host=… port=… user=… dbname=… sslmode=…";

fn syntax(what: impl std::fmt::Display) -> ConnInfoError {
    ConnInfoError::Syntax(format!("{what} ({FORMS})"))
}

/// Reads `s` in either form; the environment's PGSSLMODE and PGSSLROOTCERT
/// count where `s` has no `sslmode` / `sslrootcert`.
pub fn parse(s: &str) -> Result<ConnInfo, ConnInfoError> {
    let Params { pairs, password } = match s
        .strip_prefix("postgresql://")
        .or_else(|| s.strip_prefix("postgres://"))
    {
        Some(rest) => url_params(rest)?,
        None => keyword_params(s)?,
    };
    let (mut sslmode, mut sslrootcert, mut require_auth) = (None, None, RequireAuth::default());
    let mut rest = String::new();
    for (key, value) in &pairs {
        match key.as_str() {
            "sslmode" => sslmode = Some(value.as_str()),
            "sslrootcert" => sslrootcert = Some(value.as_str()),
            "require_auth" => require_auth = RequireAuth::parse(value)?,
            // libpq's name; tokio-postgres calls it keepalives_retries.
            "keepalives_count" => push_param(&mut rest, "keepalives_retries", value),
            // libpq reads milliseconds, tokio-postgres seconds (rounded up,
            // so a set value never becomes "unset").
            "tcp_user_timeout" => match value.trim().parse::<u64>() {
                Ok(ms) => push_param(&mut rest, key, &ms.div_ceil(1000).to_string()),
                Err(_) => push_param(&mut rest, key, value),
            },
            other => push_param(&mut rest, other, value),
        }
    }
    let mut config = rest.parse::<tokio_postgres::Config>().map_err(|e| {
        syntax(match std::error::Error::source(&e) {
            Some(inner) => inner.to_string(),
            None => e.to_string(),
        })
    })?;
    if let Some(password) = password {
        config.password(password);
    }
    let tls = Settings::from_url_and_env(sslmode, sslrootcert)?;
    config.ssl_mode(tls.mode.negotiation());
    let config = crate::store::db::with_network_deadlines(config);
    Ok(ConnInfo {
        config,
        tls,
        require_auth,
    })
}

/// Parameters in order (each key once, the last value) and the password as
/// bytes (a URL may percent-encode any byte in it).
#[derive(Debug, Default, PartialEq)]
struct Params {
    pairs: Vec<(String, String)>,
    password: Option<Vec<u8>>,
}

impl Params {
    fn set(&mut self, key: String, value: String) {
        if key == "password" {
            self.password = Some(value.into_bytes());
            return;
        }
        self.pairs.retain(|(k, _)| *k != key);
        if !value.is_empty() {
            self.pairs.push((key, value));
        }
    }
}

/// `key=value` appended for tokio-postgres' key=value parser, quoted.
fn push_param(out: &mut String, key: &str, value: &str) {
    if !out.is_empty() {
        out.push(' ');
    }
    out.push_str(key);
    out.push_str("='");
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
}

/// libpq's key=value form: `key = value` pairs separated by white space; a
/// value in single quotes may hold spaces; `\` escapes the next character.
fn keyword_params(s: &str) -> Result<Params, ConnInfoError> {
    let mut params = Params::default();
    let mut chars = s.chars().peekable();
    let skip_space = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_space(&mut chars);
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            if chars.peek().is_some() {
                return Err(syntax("a parameter without a name"));
            }
            return Ok(params);
        }
        skip_space(&mut chars);
        if chars.next() != Some('=') {
            return Err(syntax(format!("missing \"=\" after {key:?}")));
        }
        skip_space(&mut chars);
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\'') => break,
                    Some('\\') => value.extend(chars.next()),
                    Some(c) => value.push(c),
                    None => return Err(syntax(format!("unterminated quoted value of {key:?}"))),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        params.set(key, value);
    }
}

fn decode(s: &str, what: &str) -> Result<String, ConnInfoError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|v| v.into_owned())
        .map_err(|_| syntax(format!("the {what} is not UTF-8 once percent-decoded")))
}

/// The URL form after its scheme: `[user[:password]@][host[:port][,…]][/dbname][?key=value&…]`.
/// Query values are percent-decoded only (`+` is a plus, as in libpq).
fn url_params(s: &str) -> Result<Params, ConnInfoError> {
    let mut params = Params::default();
    let (before_query, query) = match s.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (s, None),
    };
    let (authority, path) = match before_query.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (before_query, None),
    };
    let hosts = match authority.rsplit_once('@') {
        Some((credentials, hosts)) => {
            let (user, password) = match credentials.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (credentials, None),
            };
            params.set("user".into(), decode(user, "user name")?);
            if let Some(password) = password {
                params.password = Some(percent_decode_str(password).collect());
            }
            hosts
        }
        None => authority,
    };
    if !hosts.is_empty() {
        let (mut names, mut ports) = (Vec::new(), Vec::new());
        for chunk in hosts.split(',') {
            let (host, port) = match chunk.strip_prefix('[') {
                Some(bracketed) => {
                    let (host, after) = bracketed
                        .split_once(']')
                        .ok_or_else(|| syntax(format!("unclosed [ in host {chunk:?}")))?;
                    let port = match after {
                        "" => "",
                        _ => after
                            .strip_prefix(':')
                            .ok_or_else(|| syntax(format!("bad host {chunk:?}")))?,
                    };
                    (host, port)
                }
                None => chunk.split_once(':').unwrap_or((chunk, "")),
            };
            names.push(decode(host, "host")?);
            ports.push(decode(port, "port")?);
        }
        params.set("host".into(), names.join(","));
        if ports.iter().any(|p| !p.is_empty()) {
            params.set("port".into(), ports.join(","));
        }
    }
    if let Some(path) = path {
        params.set("dbname".into(), decode(path, "database name")?);
    }
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| syntax(format!("parameter {pair:?} has no \"=\"")))?;
        let (key, value) = (decode(key, "parameter name")?, decode(value, "parameter")?);
        // libpq reads the JDBC spelling too.
        if key == "ssl" && value == "true" {
            params.set("sslmode".into(), "require".into());
        } else {
            params.set(key, value);
        }
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tls::SslMode;
    use std::time::Duration;
    use tokio_postgres::config::{ChannelBinding, Host};

    fn pairs(p: &Params) -> Vec<(&str, &str)> {
        p.pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn keyword_values_may_be_quoted_and_escaped() {
        let p = keyword_params(
            r"host=db.example.co  port = 5432 user='a b\'c' dbname=x\ y sslmode=require application_name=''",
        )
        .unwrap();
        assert_eq!(
            pairs(&p),
            [
                ("host", "db.example.co"),
                ("port", "5432"),
                ("user", "a b'c"),
                ("dbname", "x y"),
                ("sslmode", "require"),
            ]
        );
        let p = keyword_params("password='p w\\\\d' sslmode=prefer sslmode=verify-full").unwrap();
        assert_eq!(p.password.as_deref(), Some(&b"p w\\d"[..]));
        assert_eq!(pairs(&p), [("sslmode", "verify-full")]);
        assert!(keyword_params("host").is_err());
        assert!(keyword_params("user='unterminated").is_err());
        assert_eq!(keyword_params("  ").unwrap(), Params::default());
    }

    #[test]
    fn url_parts_are_percent_decoded_and_plus_stays_a_plus() {
        let p = url_params(
            "us%40er:p%3Aw%2Fd@[::1]:6000,h2/my%20db?sslrootcert=/certs/a+b%20c.crt&sslmode=verify-full&ssl=true",
        )
        .unwrap();
        assert_eq!(p.password.as_deref(), Some(&b"p:w/d"[..]));
        assert_eq!(
            pairs(&p),
            [
                ("user", "us@er"),
                ("host", "::1,h2"),
                ("port", "6000,"),
                ("dbname", "my db"),
                ("sslrootcert", "/certs/a+b c.crt"),
                ("sslmode", "require"),
            ]
        );
        let p = url_params("%2Ftmp%2Fpg/db").unwrap();
        assert_eq!(pairs(&p), [("host", "/tmp/pg"), ("dbname", "db")]);
        assert!(url_params("h/db?novalue").is_err());
        assert!(url_params("[::1/db").is_err());
    }

    #[test]
    fn both_forms_give_the_same_settings() {
        let url = parse(
            "postgresql://u:secret@localhost:5433/app?sslmode=require&channel_binding=require\
             &require_auth=scram-sha-256&keepalives_idle=30&keepalives_count=4&connect_timeout=7",
        )
        .unwrap();
        let kv = parse(
            "host=localhost port=5433 user=u password=secret dbname=app sslmode=require \
             channel_binding=require require_auth=scram-sha-256 keepalives_idle=30 \
             keepalives_count=4 connect_timeout=7",
        )
        .unwrap();
        for info in [&url, &kv] {
            let c = &info.config;
            assert_eq!(c.get_hosts(), [Host::Tcp("localhost".into())]);
            assert_eq!(c.get_ports(), [5433]);
            assert_eq!(c.get_user(), Some("u"));
            assert_eq!(c.get_password(), Some(&b"secret"[..]));
            assert_eq!(c.get_dbname(), Some("app"));
            assert_eq!(info.tls.mode, SslMode::Require);
            assert_eq!(c.get_ssl_mode(), tokio_postgres::config::SslMode::Require);
            assert_eq!(c.get_channel_binding(), ChannelBinding::Require);
            assert!(info.require_auth.is_set());
            assert_eq!(c.get_keepalives_idle(), Duration::from_secs(30));
            assert_eq!(c.get_keepalives_retries(), Some(4));
            assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(7)));
        }
    }

    #[test]
    fn verifying_modes_are_read_from_the_keyword_form() {
        let info =
            parse("host=db user=u sslmode=verify-full sslrootcert='/etc/my ca.pem'").unwrap();
        assert_eq!(info.tls.mode, SslMode::VerifyFull);
        assert_eq!(
            info.tls.root_cert,
            Some(crate::store::tls::RootCert::File("/etc/my ca.pem".into()))
        );
        assert_eq!(
            info.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn bad_strings_are_refused_with_the_reason() {
        let err = parse("host=db sslmode=sometimes").unwrap_err();
        assert!(err.to_string().contains("\"sometimes\""), "{err}");
        let err = parse("host=db frobnicate=1").unwrap_err();
        assert!(err.to_string().contains("frobnicate"), "{err}");
        let err = parse("mysql://u@h/db").unwrap_err();
        assert!(err.to_string().contains("expected postgres://"), "{err}");
        let err = parse("host=db require_auth=kerberos").unwrap_err();
        assert!(err.to_string().contains("require_auth"), "{err}");
    }

    #[test]
    fn a_password_with_quotes_and_backslashes_survives_the_hand_over() {
        let info = parse(r"host=h user='o\'brien' password='it\'s \\ here'").unwrap();
        assert_eq!(info.config.get_user(), Some("o'brien"));
        assert_eq!(info.config.get_password(), Some(&br"it's \ here"[..]));
    }
}
