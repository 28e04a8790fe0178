//! The database's checks: connection (TLS, pooler), role, schema, the notify
//! mode's needs, and what a Supabase project adds (Realtime, privileges,
//! policies). Every statement is an unnamed one (`query_typed`), so the checks
//! also run behind a transaction-mode pooler and can say that it is one.
use super::{within, within_for, Check, CHECK_TIMEOUT};
use crate::config::RunConfig;
use crate::store::db::{self, DbError};
use crate::store::migrate::{self, MIGRATIONS};
use futures::StreamExt as _;
use std::collections::HashMap;
use tokio_postgres::{AsyncMessage, Client};

/// The hint triggers `reactor.apply_notify_mode()` switches (sql/190_wal_mode.sql).
const HINT_TRIGGERS: [&str; 4] = [
    "reactor_notify_insert",
    "reactor_notify_status",
    "reactor_watch_insert",
    "reactor_watch_status",
];

/// The login's attributes.
struct Role {
    name: String,
    superuser: bool,
    bypass_rls: bool,
    replication: bool,
}

pub(super) async fn checks(cfg: &RunConfig) -> Vec<Check> {
    let client = match tokio::time::timeout(CHECK_TIMEOUT, db::connect(&cfg.database_url)).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => return vec![connect_failed(&e)],
        Err(_) => return vec![timed_out("connection")],
    };
    let mut out = within("connection", connection(&client)).await;
    out.extend(within("tls", tls(cfg, &client)).await);
    out.extend(within("pooler", pooler(cfg, &client)).await);
    let role = match answer("role", role(&client)).await {
        Ok(role) => role,
        Err(failed) => {
            out.push(failed);
            return out;
        }
    };
    out.push(role_check(&role));
    out.extend(within("schema", schema(&client)).await);
    match answer("schema", has_reactor_schema(&client)).await {
        Ok(true) => {}
        // Not migrated: the schema check said so; the rest needs the schema.
        Ok(false) => return out,
        Err(failed) => {
            out.push(failed);
            return out;
        }
    }
    let shown = async {
        crate::store::notify_mode::show(&client)
            .await
            .map_err(DbError::from)
    };
    let mode = match answer("notify mode", shown).await {
        Ok(settings) => settings,
        Err(failed) => {
            out.push(failed);
            return out;
        }
    };
    out.push(mode_check(cfg, &mode));
    let wal = mode.effective == "wal";
    out.extend(within("hint triggers", hint_triggers(&client, &mode.effective)).await);
    out.extend(
        within_for(
            "listen",
            cfg.listen_check_timeout + CHECK_TIMEOUT,
            listen(cfg),
        )
        .await,
    );
    if wal {
        out.extend(within("wal", wal_needs(&client, &role)).await);
    }
    out.extend(within("supabase", supabase(&client)).await);
    out
}

/// What `query` answered within [`CHECK_TIMEOUT`], or the failed line named `check`.
async fn answer<T>(
    check: &str,
    query: impl std::future::Future<Output = Result<T, DbError>>,
) -> Result<T, Check> {
    match tokio::time::timeout(CHECK_TIMEOUT, query).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(statement_failed(check, &e)),
        Err(_) => Err(timed_out(check)),
    }
}

fn timed_out(check: &str) -> Check {
    Check::failed(
        check,
        format!(
            "the database did not answer within {}",
            humantime::format_duration(CHECK_TIMEOUT)
        ),
        "check DATABASE_URL's host and port and that this machine may reach them (firewall, network \
         restrictions of the project), and that the server is not overloaded",
    )
}

fn connect_failed(e: &DbError) -> Check {
    let fix = match e {
        DbError::Tls(_) => {
            "fix sslmode/sslrootcert in DATABASE_URL (or PGSSLMODE/PGSSLROOTCERT): verify-full with \
             sslrootcert=<the project's CA file> (Supabase: Database settings → SSL certificate)"
        }
        DbError::BadUrl(_) => "write DATABASE_URL as postgres://user:password@host:port/database",
        _ => {
            "check DATABASE_URL: host, port (5432 direct or a session-mode pooler), user, password and \
             database (on Supabase, copy the connection string from the dashboard's Connect panel)"
        }
    };
    Check::failed("connection", e.to_string(), fix)
}

fn statement_failed(check: &str, e: &DbError) -> Check {
    Check::failed(
        check,
        format!("could not be checked: {e}"),
        "run doctor with a login that may read the catalogs (the one reactor run uses)",
    )
}

/// One row of an unnamed statement without parameters.
async fn row(client: &Client, sql: &str) -> Result<tokio_postgres::Row, DbError> {
    client
        .query_typed(sql, &[])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| DbError::Statement {
            code: None,
            message: format!("no row from: {sql}"),
            detail: None,
            hint: None,
        })
}

async fn connection(client: &Client) -> Vec<Check> {
    match row(
        client,
        "select current_user::text, current_database()::text, current_setting('server_version')",
    )
    .await
    {
        Ok(r) => vec![Check::ok(
            "connection",
            format!(
                "connected to database {} as {} (PostgreSQL {})",
                r.get::<_, String>(1),
                r.get::<_, String>(0),
                r.get::<_, String>(2)
            ),
        )],
        Err(e) => vec![statement_failed("connection", &e)],
    }
}

/// Whether every host of the URL is this machine (a Unix socket, localhost, 127.0.0.1, ::1).
fn is_local(url: &str) -> bool {
    let Ok(config) = db::parse_url(url) else {
        return false;
    };
    let by_name = config.get_hosts().iter().all(|h| match h {
        tokio_postgres::config::Host::Tcp(name) => {
            name == "localhost"
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        #[cfg(unix)]
        tokio_postgres::config::Host::Unix(_) => true,
    });
    let by_address = config.get_hostaddrs().iter().all(|a| a.is_loopback());
    by_name && by_address
}

async fn tls(cfg: &RunConfig, client: &Client) -> Vec<Check> {
    let settings = match db::tls_settings_of(&cfg.database_url) {
        Ok(s) => s,
        Err(e) => {
            return vec![Check::failed(
                "tls",
                e.to_string(),
                "fix sslmode/sslrootcert",
            )]
        }
    };
    let found = row(
        client,
        "select coalesce((select ssl from pg_stat_ssl where pid = pg_backend_pid()), false),
                coalesce((select version from pg_stat_ssl where pid = pg_backend_pid()), '')",
    )
    .await;
    let (encrypted, version): (bool, String) = match found {
        Ok(r) => (r.get(0), r.get(1)),
        Err(e) => return vec![statement_failed("tls", &e)],
    };
    let mode = settings.mode_name();
    let verify_fix =
        "add sslmode=verify-full&sslrootcert=<CA file> to DATABASE_URL (Supabase: download the \
                      certificate from Database settings → SSL configuration)";
    let check = if !encrypted && is_local(&cfg.database_url) {
        Check::warning(
            "tls",
            format!("not encrypted (sslmode={mode}); the server is on this machine"),
            format!("fine on loopback; for a server across a network, {verify_fix}"),
        )
    } else if !encrypted {
        Check::failed(
            "tls",
            format!(
                "not encrypted (sslmode={mode}): passwords and rows cross the network in clear"
            ),
            verify_fix,
        )
    } else if settings.verifies() {
        Check::ok(
            "tls",
            format!("encrypted ({version}), server certificate verified (sslmode={mode})"),
        )
    } else {
        Check::warning(
            "tls",
            format!("encrypted ({version}) but the server's certificate is not verified (sslmode={mode})"),
            verify_fix,
        )
    };
    vec![check]
}

async fn pooler(cfg: &RunConfig, client: &Client) -> Vec<Check> {
    let port = db::parse_url(&cfg.database_url)
        .ok()
        .and_then(|c| c.get_ports().first().copied())
        .unwrap_or(5432);
    let several = match shares_server_sessions(&cfg.database_url, client).await {
        Ok(several) => several,
        Err(e) => return vec![statement_failed("pooler", &e)],
    };
    let transaction_mode = several || port == 6543;
    let what = if several {
        "connections share server sessions: a transaction-mode pooler (PgBouncer \
         pool_mode=transaction, Supavisor on port 6543)"
            .to_string()
    } else if port == 6543 {
        "port 6543: Supabase's Supavisor in transaction mode".to_string()
    } else {
        format!(
            "port {port}, one server session per connection (a direct connection or a session-mode pooler)"
        )
    };
    let check = match (transaction_mode, cfg.listen) {
        (false, _) => Check::ok("pooler", format!("{what}: LISTEN works")),
        (true, true) => Check::failed(
            "pooler",
            format!("{what}, where LISTEN cannot work, and REACTOR_LISTEN=true"),
            "connect to port 5432 (direct, or Supavisor/PgBouncer in session mode), or set \
             REACTOR_LISTEN=false to run poll-only",
        ),
        (true, false) => Check::ok(
            "pooler",
            format!(
                "{what}; REACTOR_LISTEN=false, so the reactor polls every {}",
                humantime::format_duration(cfg.poll_interval)
            ),
        ),
    };
    vec![check]
}

/// Whether connections to `url` do not each have a server session of their
/// own: one connection's statements run on several server sessions, or two
/// connections' on the same one. Either is a transaction-mode pooler.
async fn shares_server_sessions(url: &str, client: &Client) -> Result<bool, DbError> {
    async fn pid(c: &Client) -> Result<i32, DbError> {
        Ok(row(c, "select pg_backend_pid()").await?.get(0))
    }
    let other = db::connect(url).await?;
    let mut mine = std::collections::HashSet::new();
    let mut theirs = std::collections::HashSet::new();
    for _ in 0..3 {
        mine.insert(pid(client).await?);
        theirs.insert(pid(&other).await?);
    }
    Ok(mine.len() > 1 || theirs.len() > 1 || !mine.is_disjoint(&theirs))
}

async fn role(client: &Client) -> Result<Role, DbError> {
    let r = row(
        client,
        "select current_user::text, rolsuper, rolbypassrls, rolreplication
         from pg_roles where rolname = current_user",
    )
    .await?;
    Ok(Role {
        name: r.get(0),
        superuser: r.get(1),
        bypass_rls: r.get(2),
        replication: r.get(3),
    })
}

fn role_check(role: &Role) -> Check {
    let name = &role.name;
    if role.superuser {
        Check::warning(
            "role",
            format!("{name} is a superuser"),
            "works, but Supabase's postgres is not one; run as it (NOSUPERUSER BYPASSRLS) to test what \
             production has",
        )
    } else if !role.bypass_rls {
        Check::failed(
            "role",
            format!(
                "{name} is NOSUPERUSER without BYPASSRLS: row-level security hides other users' rows from the reactor"
            ),
            format!(
                "alter role {} bypassrls (Supabase's postgres has it), or run the reactor as postgres",
                db::quote_ident(name)
            ),
        )
    } else {
        Check::ok(
            "role",
            format!("{name}: NOSUPERUSER BYPASSRLS, as Supabase's postgres"),
        )
    }
}

async fn has_reactor_schema(client: &Client) -> Result<bool, DbError> {
    Ok(row(
        client,
        "select to_regprocedure('reactor.notify_mode()') is not null",
    )
    .await?
    .get(0))
}

async fn schema(client: &Client) -> Vec<Check> {
    let migrated: bool = match row(
        client,
        "select to_regclass('reactor.schema_migrations') is not null",
    )
    .await
    {
        Ok(r) => r.get(0),
        Err(e) => return vec![statement_failed("schema", &e)],
    };
    if !migrated {
        return vec![Check::failed(
            "schema",
            "not migrated: reactor.schema_migrations does not exist",
            "run `reactor migrate` with this DATABASE_URL (or apply `reactor migrate --print` as a \
             Supabase migration)",
        )];
    }
    let recorded: HashMap<String, String> = match client
        .query_typed("select name, checksum from reactor.schema_migrations", &[])
        .await
    {
        Ok(rows) => rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
        Err(e) => return vec![statement_failed("schema", &DbError::from(e))],
    };
    let missing: Vec<&str> = MIGRATIONS
        .iter()
        .filter(|m| !recorded.contains_key(m.name))
        .map(|m| m.name)
        .collect();
    let unknown = recorded
        .keys()
        .filter(|name| !MIGRATIONS.iter().any(|m| m.name == name.as_str()))
        .count();
    let schema = if !missing.is_empty() {
        Check::failed(
            "schema",
            format!(
                "{} of {} migrations not applied: {}",
                missing.len(),
                MIGRATIONS.len(),
                missing.join(", ")
            ),
            "run `reactor migrate` with this binary",
        )
    } else if unknown > 0 {
        Check::warning(
            "schema",
            format!(
                "all {} migrations applied, and {unknown} this binary does not know (a newer reactor migrated)",
                MIGRATIONS.len()
            ),
            "run the reactor version that migrated this database",
        )
    } else {
        Check::ok(
            "schema",
            format!("migrated, all {} migrations applied", MIGRATIONS.len()),
        )
    };
    let edited: Vec<String> = MIGRATIONS
        .iter()
        .filter(|m| {
            recorded
                .get(m.name)
                .is_some_and(|applied| *applied != migrate::checksum(m.sql))
        })
        .map(|m| m.name.to_string())
        .collect();
    let checksums = if edited.is_empty() {
        Check::ok(
            "migration checksums",
            "every applied migration matches this binary's",
        )
    } else {
        Check::failed(
            "migration checksums",
            format!(
                "applied with other contents than this binary's: {} (reactor migrate refuses to run)",
                edited.join(", ")
            ),
            "applied migrations must not change: run the reactor version that applied them, and put \
             changes in a new migration file",
        )
    };
    vec![schema, checksums]
}

fn mode_check(cfg: &RunConfig, mode: &crate::store::notify_mode::Settings) -> Check {
    if mode.effective == "outbox" && cfg.outbox_poll.is_none() {
        return Check::warning(
            "notify mode",
            format!("{mode}, but REACTOR_OUTBOX_POLL is unset: hints wait for the sweep"),
            "set REACTOR_OUTBOX_POLL (e.g. 200ms)",
        );
    }
    if mode.effective == "poll" {
        return Check::ok(
            "notify mode",
            format!(
                "{mode}: no hint on the write path; rows are found by polling every {} (REACTOR_POLL_INTERVAL)",
                humantime::format_duration(cfg.poll_interval)
            ),
        );
    }
    Check::ok("notify mode", mode.to_string())
}

/// Whether the hint triggers are as mode `mode` wants them: off in wal and
/// poll mode, on in the others.
async fn hint_triggers(client: &Client, mode: &str) -> Vec<Check> {
    let off = matches!(mode, "wal" | "poll");
    let names: Vec<&str> = HINT_TRIGGERS.to_vec();
    let found = client
        .query_typed(
            "select count(*) filter (where tgenabled = 'D'), count(*)
             from pg_trigger where tgname = any($1) and not tgisinternal",
            &[db::param(&names)],
        )
        .await;
    let (disabled, all): (i64, i64) = match found.map(|rows| rows.into_iter().next()) {
        Ok(Some(r)) => (r.get(0), r.get(1)),
        Ok(None) => (0, 0),
        Err(e) => return vec![statement_failed("hint triggers", &DbError::from(e))],
    };
    let realign =
        "select reactor.apply_notify_mode(); as the tables' owner (it puts the triggers in line \
                   with the mode)";
    let check = if all == 0 {
        Check::failed(
            "hint triggers",
            "no hint trigger found",
            "run `reactor migrate`",
        )
    } else if off && disabled < all {
        Check::failed(
            "hint triggers",
            format!("{mode} mode, but {} of {all} hint triggers are enabled: every write still pays for a NOTIFY", all - disabled),
            realign,
        )
    } else if !off && disabled > 0 {
        Check::failed(
            "hint triggers",
            format!(
                "{disabled} of {all} hint triggers are disabled: their rows wait for the sweep"
            ),
            realign,
        )
    } else if off {
        Check::ok(
            "hint triggers",
            format!("all {all} disabled, as {mode} mode wants"),
        )
    } else {
        Check::ok("hint triggers", format!("all {all} enabled"))
    };
    vec![check]
}

/// LISTEN on a fresh connection, NOTIFY a random nonce on it, hear it back.
async fn listen(cfg: &RunConfig) -> Vec<Check> {
    if !cfg.listen {
        return vec![Check::ok(
            "listen",
            format!(
                "off (REACTOR_LISTEN=false): the reactor polls every {}",
                humantime::format_duration(cfg.poll_interval)
            ),
        )];
    }
    let (client, mut connection) =
        match db::connect_raw(&cfg.database_url, Some("reactor doctor")).await {
            Ok(c) => c,
            Err(e) => return vec![connect_failed(&e)],
        };
    let channel = "reactor_doctor";
    let nonce = uuid::Uuid::new_v4().to_string();
    let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let _ = heard_tx.send(n.payload().to_string());
            }
        }
    });
    let sent = async {
        client.batch_execute(&format!("LISTEN {channel}")).await?;
        client
            .execute_typed(
                "select pg_notify($1, $2)",
                &[db::param(&channel), db::param(&nonce.as_str())],
            )
            .await
    }
    .await;
    let check = match sent {
        Err(e) => statement_failed("listen", &DbError::from(e)),
        Ok(_) => {
            let hear = async {
                while let Some(payload) = heard.recv().await {
                    if payload == nonce {
                        return true;
                    }
                }
                false
            };
            match tokio::time::timeout(cfg.listen_check_timeout, hear).await {
                Ok(true) => Check::ok(
                    "listen",
                    "a NOTIFY sent on a fresh connection came back to its LISTEN",
                ),
                _ => Check::failed(
                    "listen",
                    format!(
                        "a NOTIFY did not come back to the LISTEN of the same connection within {} \
                         (REACTOR_LISTEN_CHECK_TIMEOUT)",
                        humantime::format_duration(cfg.listen_check_timeout)
                    ),
                    "connect to port 5432 (direct, or a session-mode pooler), or set REACTOR_LISTEN=false",
                ),
            }
        }
    };
    driver.abort();
    vec![check]
}

/// What a replication slot needs (read only: no slot is created).
async fn wal_needs(client: &Client, role: &Role) -> Vec<Check> {
    let found = row(
        client,
        "select current_setting('wal_level'),
                current_setting('max_replication_slots')::int,
                (select count(*)::int from pg_replication_slots),
                exists (select 1 from pg_publication where pubname = 'reactor')",
    )
    .await;
    let r = match found {
        Ok(r) => r,
        Err(e) => return vec![statement_failed("wal", &e)],
    };
    let (wal_level, max_slots, used, publication): (String, i32, i32, bool) =
        (r.get(0), r.get(1), r.get(2), r.get(3));
    let mut out = vec![if wal_level == "logical" {
        Check::ok("wal level", "wal_level = logical")
    } else {
        Check::failed(
            "wal level",
            format!("wal mode needs wal_level = logical; the server has {wal_level}"),
            "set wal_level = logical in postgresql.conf and restart (Supabase projects have it), or \
             switch back with `reactor notify-mode notify`",
        )
    }];
    out.push(if role.replication || role.superuser {
        Check::ok(
            "replication role",
            format!("{} may create replication slots", role.name),
        )
    } else {
        Check::failed(
            "replication role",
            format!(
                "{} lacks REPLICATION, which wal mode's slot needs",
                role.name
            ),
            format!(
                "alter role {} replication (Supabase's postgres has it)",
                db::quote_ident(&role.name)
            ),
        )
    });
    out.push(if used < max_slots {
        Check::ok(
            "replication slot",
            format!(
                "{} of max_replication_slots = {max_slots} free (each running reactor takes one)",
                max_slots - used
            ),
        )
    } else {
        Check::failed(
            "replication slot",
            format!("all max_replication_slots = {max_slots} slots are in use"),
            "raise max_replication_slots, or drop slots nobody uses (select * from pg_replication_slots)",
        )
    });
    out.push(if publication {
        Check::ok("publication", "publication reactor exists")
    } else {
        Check::failed(
            "publication",
            "publication reactor does not exist",
            "select reactor.apply_notify_mode(); as the tables' owner (it creates the publication)",
        )
    });
    out
}

/// Realtime's policy, what anon/authenticated may reach, foreign policies.
async fn supabase(client: &Client) -> Vec<Check> {
    let mut out = Vec::new();
    match row(
        client,
        "select to_regnamespace('realtime') is not null,
                to_regclass('realtime.messages') is not null,
                exists (select 1 from pg_policies where schemaname = 'realtime' and tablename = 'messages'
                          and policyname = 'reactor_job_status_owner_read')",
    )
    .await
    {
        Ok(r) => {
            let (realtime, messages, policy): (bool, bool, bool) = (r.get(0), r.get(1), r.get(2));
            if realtime {
                out.push(if policy {
                    Check::ok(
                        "realtime policy",
                        "reactor_job_status_owner_read on realtime.messages: users may join job_status:<their id>",
                    )
                } else if !messages {
                    Check::warning(
                        "realtime policy",
                        "schema realtime exists without realtime.messages: private channels cannot be authorized",
                        "enable Realtime for the project, then run `reactor migrate` again",
                    )
                } else {
                    Check::failed(
                        "realtime policy",
                        "no reactor_job_status_owner_read policy on realtime.messages: clients cannot join job_status:<uid>",
                        "run `reactor migrate` as the owner of realtime.messages (on Supabase: postgres)",
                    )
                });
            }
        }
        Err(e) => out.push(statement_failed("realtime policy", &e)),
    }
    out.push(client_privileges(client).await);
    out.push(match migrate::foreign_policies(client).await {
        Ok(foreign) if foreign.is_empty() => Check::ok(
            "foreign policies",
            "no permissive policy the reactor did not install on the tables it secures",
        ),
        Ok(foreign) => Check::warning(
            "foreign policies",
            foreign
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            "permissive policies are OR-ed with the reactor's: drop these unless you mean to open those rows",
        ),
        Err(e) => Check::failed(
            "foreign policies",
            format!("could not be checked: {e}"),
            "run doctor with the login reactor run uses",
        ),
    });
    out
}

/// Whether anon or authenticated reach anything in schema reactor (Supabase
/// grants them new objects through default privileges).
async fn client_privileges(client: &Client) -> Check {
    let found = client
        .query_typed(
            "select r.rolname || ': ' || o.what
             from (values ('anon'), ('authenticated')) r(rolname)
             join pg_roles pr on pr.rolname = r.rolname
             cross join lateral (
               select 'function ' || p.oid::regprocedure::text as what
               from pg_proc p
               where p.pronamespace = 'reactor'::regnamespace
                 and has_function_privilege(r.rolname, p.oid, 'execute')
               union all
               select 'table ' || c.oid::regclass::text
               from pg_class c
               where c.relnamespace = 'reactor'::regnamespace and c.relkind in ('r', 'p', 'v')
                 and has_table_privilege(r.rolname, c.oid, 'select, insert, update, delete')
             ) o
             where has_schema_privilege(r.rolname, 'reactor', 'usage')
             order by 1",
            &[],
        )
        .await;
    match found {
        Ok(rows) if rows.is_empty() => Check::ok(
            "client privileges",
            "anon and authenticated reach nothing in schema reactor",
        ),
        Ok(rows) => Check::failed(
            "client privileges",
            format!(
                "clients may use schema reactor: {}",
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "revoke usage on schema reactor from anon, authenticated (and check `alter default privileges` \
             for grants to them)",
        ),
        Err(e) => statement_failed("client privileges", &DbError::from(e)),
    }
}
