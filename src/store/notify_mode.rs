//! `reactor notify-mode`: whether the triggers send NOTIFY or append to
//! reactor.outbox, or no trigger fires (wal, poll), switched with a row of reactor.settings (something the
//! database owner may do without superuser, unlike `alter database … set`).
use tokio_postgres::Client;

/// How the triggers hand their hints to the reactor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// NOTIFY in the writer's transaction (the default).
    Notify,
    /// Append to reactor.outbox; a reactor with REACTOR_OUTBOX_POLL drains it.
    Outbox,
    /// No hint trigger fires: reactors decode the WAL (sql/190_wal_mode.sql).
    Wal,
    /// No hint trigger fires and nothing is decoded: reactors page the
    /// pending indexes every REACTOR_POLL_INTERVAL (triggers/270_poll_mode.sql).
    Poll,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Notify => "notify",
            Mode::Outbox => "outbox",
            Mode::Wal => "wal",
            Mode::Poll => "poll",
        }
    }
}

/// The switch as the database sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// reactor.settings.notify_mode.
    pub table: String,
    /// The `reactor.notify_mode` setting (ALTER DATABASE/ROLE), when set; it wins.
    pub database_setting: Option<String>,
    /// What the triggers use.
    pub effective: String,
}

impl std::fmt::Display for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "notify mode: {}", self.effective)?;
        match &self.database_setting {
            // In wal and poll mode the table wins (the triggers are off).
            Some(setting) if *setting == self.effective && *setting != self.table => write!(
                f,
                " (from the database setting reactor.notify_mode = '{setting}', which overrides reactor.settings = '{}')",
                self.table
            ),
            _ => write!(f, " (reactor.settings)"),
        }
    }
}

/// Reads the switch.
pub async fn show(client: &Client) -> Result<Settings, tokio_postgres::Error> {
    // One unnamed statement (no prepared one): works behind any pooler.
    let row = client
        .query_typed_one(
            "select (select notify_mode from reactor.settings limit 1),
                    nullif(current_setting('reactor.notify_mode', true), ''),
                    reactor.notify_mode()",
            &[],
        )
        .await?;
    Ok(Settings {
        table: row.get(0),
        database_setting: row.get(1),
        effective: row.get(2),
    })
}

/// Sets reactor.settings.notify_mode; returns the switch as it now stands.
pub async fn set(client: &Client, mode: Mode) -> Result<Settings, tokio_postgres::Error> {
    client
        .execute(
            "update reactor.settings set notify_mode = $1, updated_at = now()",
            &[&mode.as_str()],
        )
        .await?;
    show(client).await
}
