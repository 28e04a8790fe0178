//! Connections: one helper for single connections (migrate, the listener) and
//! one for the work pool, plus readable errors. Every connection goes through
//! [`crate::store::conninfo`] (either form of connection string) and
//! [`crate::store::tls`] with its (or PGSSLMODE's) `sslmode`.
use crate::store::conninfo::{self, ConnInfoError};
use crate::store::tls::{MakeTls, TlsStream};
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime, Timeouts};
use std::time::Duration;
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
    /// The database did not answer within the deadline (a silent network
    /// may hold a connection forever).
    #[error("the database did not answer within {0:?}")]
    Deadline(Duration),
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

/// Keepalive idle time when the connection string sets none (tokio-postgres'
/// own default, two hours, is what it reports when unset).
const DEFAULT_KEEPALIVES_IDLE: Duration = Duration::from_secs(15);
const TOKIO_POSTGRES_KEEPALIVES_IDLE: Duration = Duration::from_secs(2 * 60 * 60);
const DEFAULT_KEEPALIVES_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_KEEPALIVES_COUNT: u32 = 3;
const DEFAULT_TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);
/// Also bounds the whole log-in, not only the socket's connect.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Bounds every wait on the network that the connection string leaves open:
/// TCP keepalives (probes after 15 s idle, every 5 s, 3 of them), a 30 s
/// `tcp_user_timeout` (unacknowledged data fails the socket) and a 10 s
/// `connect_timeout`. A NAT or firewall that forgets a flow closes nothing;
/// without these a connection waits on it for hours. Values the string sets
/// (`keepalives=0` included) are kept.
pub fn with_network_deadlines(mut config: tokio_postgres::Config) -> tokio_postgres::Config {
    if config.get_keepalives() {
        if config.get_keepalives_idle() == TOKIO_POSTGRES_KEEPALIVES_IDLE {
            config.keepalives_idle(DEFAULT_KEEPALIVES_IDLE);
        }
        if config.get_keepalives_interval().is_none() {
            config.keepalives_interval(DEFAULT_KEEPALIVES_INTERVAL);
        }
        if config.get_keepalives_retries().is_none() {
            config.keepalives_retries(DEFAULT_KEEPALIVES_COUNT);
        }
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(DEFAULT_TCP_USER_TIMEOUT);
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    config
}

/// Sets `config`'s keepalives and `tcp_user_timeout` on a socket made
/// outside tokio-postgres (the replication connection), as tokio-postgres
/// does on its own sockets.
pub fn set_network_deadlines(
    socket: &tokio::net::TcpStream,
    config: &tokio_postgres::Config,
) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(socket);
    #[cfg(target_os = "linux")]
    socket.set_tcp_user_timeout(config.get_tcp_user_timeout().copied())?;
    if config.get_keepalives() {
        let mut keepalive = socket2::TcpKeepalive::new().with_time(config.get_keepalives_idle());
        if let Some(interval) = config.get_keepalives_interval() {
            keepalive = keepalive.with_interval(interval);
        }
        #[cfg(not(target_os = "windows"))]
        if let Some(retries) = config.get_keepalives_retries() {
            keepalive = keepalive.with_retries(retries);
        }
        socket.set_tcp_keepalive(&keepalive)?;
    }
    Ok(())
}

/// How long connecting and logging in may take in all (see [`with_network_deadlines`]).
pub fn connect_deadline(config: &tokio_postgres::Config) -> Duration {
    config
        .get_connect_timeout()
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
}

/// One connection and its I/O half, not yet driven (for LISTEN connections).
/// Connecting and logging in together take at most the `connect_timeout`: a
/// server reached through a silent network may accept the socket and never answer.
pub async fn connect_raw(
    url: &str,
    application_name: Option<&str>,
) -> Result<(Client, Connection), DbError> {
    let (mut config, connector) = settings(url)?;
    if let Some(name) = application_name {
        config.application_name(name);
    }
    let deadline = connect_deadline(&config);
    match tokio::time::timeout(deadline, config.connect(connector)).await {
        Ok(connected) => connected.map_err(|e| DbError::Connect(describe(&e))),
        Err(_) => Err(DbError::Connect(format!(
            "no answer within {deadline:?} (connect_timeout)"
        ))),
    }
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
/// Waiting for a free connection, and making one, take at most
/// `statement_deadline` and the `connect_timeout`; a connection that misses
/// a deadline is closed, never reused (see [`within`]).
pub fn pool(url: &str, size: usize, statement_deadline: Duration) -> Result<Pool, DbError> {
    let (mut config, connector) = settings(url)?;
    if config.get_application_name().is_none() {
        config.application_name("reactor");
    }
    let connect = connect_deadline(&config);
    let manager = Manager::from_config(
        config,
        connector,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .timeouts(Timeouts {
            wait: Some(statement_deadline),
            create: Some(connect),
            recycle: Some(connect),
        })
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}

/// Runs `statements` on a connection from `pool`, all within `deadline`.
///
/// A connection that misses the deadline is closed instead of going back to
/// the pool: on a silent network (a NAT or firewall that forgot the flow) it
/// would never answer, nor fail. The pool's idle connections went through the
/// same network, so they are closed too and the next checkouts connect anew.
pub async fn within<T, E>(
    pool: &Pool,
    deadline: Duration,
    statements: impl AsyncFnOnce(&Object) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<DbError>,
{
    within_mut(pool, deadline, async |client| statements(client).await).await
}

/// [`within`] for statements that need the connection mutably (a
/// transaction).
pub async fn within_mut<T, E>(
    pool: &Pool,
    deadline: Duration,
    statements: impl AsyncFnOnce(&mut Object) -> Result<T, E>,
) -> Result<T, E>
where
    E: From<DbError>,
{
    let mut client = pool.get().await.map_err(DbError::from)?;
    match tokio::time::timeout(deadline, statements(&mut client)).await {
        Ok(done) => done,
        Err(_) => {
            discard(pool, client);
            Err(DbError::Deadline(deadline).into())
        }
    }
}

/// Closes `client` (it is not given back to `pool`) and every idle
/// connection of `pool`, counting them in `reactor_db_connections_discarded_total`.
pub fn discard(pool: &Pool, client: Object) {
    drop(Object::take(client));
    let idle = pool.retain(|_, _| false).removed.len() as u64;
    metrics::counter!("reactor_db_connections_discarded_total").increment(1 + idle);
    tracing::warn!(
        idle_closed = idle,
        "a database connection missed its deadline: closed with the pool's idle ones"
    );
}

/// Quotes a string as an SQL literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Double-quotes an SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Runs `sql` with typed `params` on `client`, outside a transaction.
///
/// With `prepare`, the statement is prepared once per connection and kept
/// there (the pool's statement cache), so the server parses it once instead
/// of on every run: the work path's hottest statements (claims, an own
/// table's fenced writes) cost less server CPU so. Only
/// where every connection keeps one server session: the engine sets it once
/// its listener has proved that (see `Shared::sessions_kept`). Without it, one
/// unnamed statement, as [`param`] explains.
///
/// A kept statement is still planned on every run, for its parameters and
/// its tables as they are then (`plan_cache_mode = force_custom_plan`, set
/// on the session before its first kept statement). PostgreSQL would
/// otherwise switch a statement to one generic plan after five runs and keep
/// it until the table is next analyzed: a plan made while a table was nearly
/// empty (a scan of the whole table) then ran on every claim as the table
/// grew by a backlog, for a minute at a time.
///
/// A kept statement the server no longer has (a `DEALLOCATE ALL` or `DISCARD
/// ALL` on the session: every kept statement of the connection is forgotten,
/// and the mode is set again before the next), or whose result columns
/// changed with its table (that one is forgotten), runs unnamed instead: both
/// fail before the statement does anything, so running it again is safe.
pub async fn query_hot(
    client: &deadpool_postgres::ClientWrapper,
    prepare: bool,
    sql: &str,
    params: &[(&(dyn tokio_postgres::types::ToSql + Sync), Type)],
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    if !prepare {
        return client.query_typed(sql, params).await;
    }
    if client.statement_cache.size() == 0 {
        client
            .batch_execute("set plan_cache_mode = force_custom_plan")
            .await?;
    }
    let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
    let values: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        params.iter().map(|(v, _)| *v).collect();
    let kept = match client.prepare_typed_cached(sql, &types).await {
        Ok(statement) => client.query(&statement, &values).await,
        Err(e) => Err(e),
    };
    match kept {
        Err(e) if kept_statement_unusable(&e) => {
            tracing::warn!(error = %describe(&e), "a kept statement was unusable: forgotten, run unnamed");
            if e.code() == Some(&tokio_postgres::error::SqlState::INVALID_SQL_STATEMENT_NAME) {
                // The session was reset (DEALLOCATE ALL, or DISCARD ALL,
                // which also resets plan_cache_mode): its other statements are
                // gone too, and the next kept one sets the mode again.
                client.statement_cache.clear();
            } else {
                client.statement_cache.remove(sql, &types);
            }
            client.query_typed(sql, params).await
        }
        done => done,
    }
}

/// Whether `e` says a kept statement cannot be used (and nothing ran): gone
/// from the session, its name taken by another statement on the session, or
/// its result columns changed since it was prepared.
fn kept_statement_unusable(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    let Some(db) = e.as_db_error() else {
        return false;
    };
    match db.code() {
        c if *c == SqlState::INVALID_SQL_STATEMENT_NAME => true,
        c if *c == SqlState::DUPLICATE_PSTATEMENT => true,
        c if *c == SqlState::FEATURE_NOT_SUPPORTED => db
            .message()
            .contains("cached plan must not change result type"),
        _ => false,
    }
}

/// A statement parameter with the Postgres type it is sent as, for
/// `query_typed` / `execute_typed`.
///
/// The work path runs every statement outside a transaction as one unnamed
/// statement (Parse, Bind and Execute in one round trip) instead of a named
/// prepared statement: behind a transaction-mode pooler (PgBouncer before
/// 1.21, Supavisor on port 6543) each statement may run on another server
/// connection, where a statement prepared on the first one does not exist
/// (the exception: [`query_hot`], once the connections are known to keep
/// their sessions). Inside a transaction the server connection stays the
/// same, so plain `query`/`execute` are fine there.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_deadlines_have_defaults_and_the_connection_string_wins() {
        let c = parse_url("postgres://u@h/db").unwrap();
        assert!(c.get_keepalives());
        assert_eq!(c.get_keepalives_idle(), DEFAULT_KEEPALIVES_IDLE);
        assert_eq!(
            c.get_keepalives_interval(),
            Some(DEFAULT_KEEPALIVES_INTERVAL)
        );
        assert_eq!(c.get_keepalives_retries(), Some(DEFAULT_KEEPALIVES_COUNT));
        assert_eq!(c.get_tcp_user_timeout(), Some(&DEFAULT_TCP_USER_TIMEOUT));
        assert_eq!(c.get_connect_timeout(), Some(&DEFAULT_CONNECT_TIMEOUT));
        // libpq's names and units: keepalives_count, tcp_user_timeout in milliseconds.
        for s in [
            "postgres://u@h/db?keepalives_idle=7&keepalives_interval=2&keepalives_count=9&tcp_user_timeout=2500&connect_timeout=4",
            "host=h user=u dbname=db keepalives_idle=7 keepalives_interval=2 keepalives_count=9 tcp_user_timeout=2500 connect_timeout=4",
        ] {
            let c = parse_url(s).unwrap();
            assert_eq!(c.get_keepalives_idle(), Duration::from_secs(7), "{s}");
            assert_eq!(c.get_keepalives_interval(), Some(Duration::from_secs(2)));
            assert_eq!(c.get_keepalives_retries(), Some(9));
            assert_eq!(c.get_tcp_user_timeout(), Some(&Duration::from_secs(3)));
            assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(4)));
        }
        assert!(!parse_url("postgres://u@h/db?keepalives=0")
            .unwrap()
            .get_keepalives());
    }
}
