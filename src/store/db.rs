//! Connections: one helper for single connections (migrate, the listener) and
//! one for the work pool, plus readable errors. Every connection goes through
//! [`crate::store::conninfo`] (either form of connection string) and
//! [`crate::store::tls`] with its (or PGSSLMODE's) `sslmode`.
use crate::store::conninfo::{self, ConnInfoError};
use crate::store::tls::{MakeTls, TlsStream};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Socket};

/// A connection's I/O half (drive it, or poll it for notifications).
pub type Connection = tokio_postgres::Connection<Socket, TlsStream<Socket>>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid DATABASE_URL: {0}")]
    BadUrl(String),
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("building the connection pool: {0}")]
    Pool(String),
    #[error("TLS settings: {0}")]
    Tls(#[from] crate::store::tls::TlsError),
    /// No connection could be taken from the pool.
    #[error("database pool: {0}")]
    Checkout(String),
    /// A statement failed, or the connection did. Shown on one line: the
    /// server's message, SQLSTATE, detail and hint (tokio-postgres' own
    /// Display says only "db error").
    #[error("{}", show_statement_error(.message, .code.as_ref(), .detail.as_deref(), .hint.as_deref()))]
    Statement {
        /// None when the server did not answer (a closed connection, I/O,
        /// a value that did not fit its type on this side).
        code: Option<tokio_postgres::error::SqlState>,
        message: String,
        detail: Option<String>,
        hint: Option<String>,
    },
}

impl DbError {
    /// The SQLSTATE the server answered with, if it answered.
    pub fn code(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            DbError::Statement { code, .. } => code.as_ref(),
            _ => None,
        }
    }
}

impl From<&tokio_postgres::Error> for DbError {
    fn from(e: &tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => DbError::Statement {
                code: Some(db.code().clone()),
                message: db.message().to_string(),
                detail: db.detail().map(str::to_string),
                hint: db.hint().map(str::to_string),
            },
            None => DbError::Statement {
                code: None,
                message: match std::error::Error::source(e) {
                    Some(inner) => format!("{e}: {inner}"),
                    None => e.to_string(),
                },
                detail: None,
                hint: None,
            },
        }
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::from(&e)
    }
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => DbError::from(e),
            e => DbError::Checkout(e.to_string()),
        }
    }
}

fn show_statement_error(
    message: &str,
    code: Option<&tokio_postgres::error::SqlState>,
    detail: Option<&str>,
    hint: Option<&str>,
) -> String {
    let mut s = message.to_string();
    if let Some(code) = code {
        s.push_str(&format!(" (SQLSTATE {})", code.code()));
    }
    if let Some(detail) = detail {
        s.push_str(&format!("; {detail}"));
    }
    if let Some(hint) = hint {
        s.push_str(&format!("; hint: {hint}"));
    }
    s
}

impl From<ConnInfoError> for DbError {
    fn from(e: ConnInfoError) -> Self {
        match e {
            ConnInfoError::Tls(e) => DbError::Tls(e),
            e => DbError::BadUrl(e.to_string()),
        }
    }
}

/// The connection string's settings for tokio-postgres (either form, see
/// [`crate::store::conninfo`]), with `sslmode` already applied.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, DbError> {
    Ok(conninfo::parse(url)?.config)
}

/// The TLS settings a connection to `url` uses (its `sslmode`/`sslrootcert`,
/// else PGSSLMODE/PGSSLROOTCERT).
pub(crate) fn tls_settings_of(url: &str) -> Result<crate::store::tls::Settings, DbError> {
    Ok(conninfo::parse(url)?.tls)
}

/// tokio-postgres' settings and TLS connector for `url`. tokio-postgres has
/// no `require_auth`: the connector checks it inside TLS, so with it the
/// connection must be TLS whatever the server answers.
fn settings(url: &str) -> Result<(tokio_postgres::Config, MakeTls), DbError> {
    let info = conninfo::parse(url)?;
    if info.require_auth.is_set() && info.tls.mode.may_be_plaintext() {
        return Err(DbError::BadUrl(format!(
            "require_auth is checked inside TLS: use it with sslmode=require, verify-ca or \
             verify-full (not {})",
            info.tls.mode.name()
        )));
    }
    let connector = info.tls.connector()?.with_require_auth(info.require_auth);
    Ok((info.config, connector))
}

/// One connection and its I/O half, not yet driven (for LISTEN connections).
pub async fn connect_raw(
    url: &str,
    application_name: Option<&str>,
) -> Result<(Client, Connection), DbError> {
    let (mut config, connector) = settings(url)?;
    if let Some(name) = application_name {
        config.application_name(name);
    }
    config
        .connect(connector)
        .await
        .map_err(|e| DbError::Connect(describe(&e)))
}

/// One connection, with its I/O driven by a background task.
pub async fn connect(url: &str) -> Result<Client, DbError> {
    let (client, connection) = connect_raw(url, None).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %describe(&e), "connection closed");
        }
    });
    Ok(client)
}

/// A pool of up to `size` connections; a connection is checked on reuse.
pub fn pool(url: &str, size: usize) -> Result<Pool, DbError> {
    let (mut config, connector) = settings(url)?;
    if config.get_application_name().is_none() {
        config.application_name("reactor");
    }
    let manager = Manager::from_config(
        config,
        connector,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}

/// Quotes a string as an SQL literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Double-quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A statement parameter with the Postgres type it is sent as, for
/// `query_typed` / `execute_typed`.
///
/// The work path runs every statement outside a transaction as one unnamed
/// statement (Parse, Bind and Execute in one round trip) instead of a named
/// prepared statement: behind a transaction-mode pooler (PgBouncer before
/// 1.21, Supavisor on port 6543) each statement may run on another server
/// connection, where a statement prepared on the first one does not exist.
/// Inside a transaction the server connection stays the same, so plain
/// `query`/`execute` are fine there.
pub trait Param: tokio_postgres::types::ToSql + Sync {
    const TYPE: Type;
}

/// `value` with its type, e.g. `client.query_typed(sql, &[param(&id), param(&limit)])`.
pub fn param<T: Param>(value: &T) -> (&(dyn tokio_postgres::types::ToSql + Sync), Type) {
    (value, T::TYPE)
}

macro_rules! params_of_type {
    ($($rust:ty => $pg:ident),* $(,)?) => {
        $(impl Param for $rust { const TYPE: Type = Type::$pg; })*
    };
}

params_of_type! {
    bool => BOOL,
    i32 => INT4,
    i64 => INT8,
    f64 => FLOAT8,
    String => TEXT,
    &str => TEXT,
    uuid::Uuid => UUID,
    Vec<String> => TEXT_ARRAY,
    Vec<&str> => TEXT_ARRAY,
    Vec<i64> => INT8_ARRAY,
    &[String] => TEXT_ARRAY,
    serde_json::Value => JSONB,
    chrono::DateTime<chrono::Utc> => TIMESTAMPTZ,
}

impl<T: Param> Param for Option<T> {
    const TYPE: Type = T::TYPE;
}

/// A Postgres error as one line: the server's message, detail and hint when
/// there are any (see [`DbError::Statement`]).
pub fn describe(e: &tokio_postgres::Error) -> String {
    DbError::from(e).to_string()
}

/// Makes the rest of `tx` run as Supabase runs a client's request: role
/// `authenticated` with the user's JWT claims (what PostgREST does).
pub async fn act_as_user(
    tx: &tokio_postgres::Transaction<'_>,
    user: uuid::Uuid,
) -> Result<(), tokio_postgres::Error> {
    tx.batch_execute("set local role authenticated").await?;
    tx.execute(
        "select set_config('request.jwt.claims', $1, true)",
        &[&serde_json::json!({"sub": user.to_string(), "role": "authenticated"}).to_string()],
    )
    .await?;
    Ok(())
}
