//! Connections: one helper for single connections (migrate, the listener) and
//! one for the work pool, plus readable errors.
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{Client, NoTls};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid DATABASE_URL: {0}")]
    BadUrl(String),
    #[error("cannot connect to the database: {0}")]
    Connect(String),
    #[error("building the connection pool: {0}")]
    Pool(String),
}

pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, DbError> {
    url.parse::<tokio_postgres::Config>().map_err(|e| {
        DbError::BadUrl(format!(
            "{e} (expected postgres://user:password@host:port/database)"
        ))
    })
}

/// One connection, with its I/O driven by a background task.
pub async fn connect(url: &str) -> Result<Client, DbError> {
    let config = parse_url(url)?;
    let (client, connection) = config
        .connect(NoTls)
        .await
        .map_err(|e| DbError::Connect(describe(&e)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %describe(&e), "connection closed");
        }
    });
    Ok(client)
}

/// A pool of up to `size` connections; a connection is checked on reuse.
pub fn pool(url: &str, size: usize) -> Result<Pool, DbError> {
    let mut config = parse_url(url)?;
    if config.get_application_name().is_none() {
        config.application_name("reactor");
    }
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}

/// A Postgres error as one line: the server's message, detail and hint when
/// there are any (tokio-postgres' own Display says only "db error").
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
            if let Some(detail) = db.detail() {
                s.push_str(&format!("; {detail}"));
            }
            if let Some(hint) = db.hint() {
                s.push_str(&format!("; hint: {hint}"));
            }
            s
        }
        None => match std::error::Error::source(e) {
            Some(inner) => format!("{e}: {inner}"),
            None => e.to_string(),
        },
    }
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
