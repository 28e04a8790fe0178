//! TLS to Postgres as libpq does it, against a real server with `ssl=on` and
//! a CA + server certificate made here: which modes verify what, the errors
//! that say what is wrong, and the reactor's every connection over verify-full.
mod common;

use common::{eventually, ChildReactor, Pki, TestDb};
use reactor::sandbox::cluster::LocalPostgres;
use std::path::Path;
use std::time::Duration;
use tokio::sync::OnceCell;

struct TlsServer {
    pki: Pki,
    port: u16,
}

static TLS_SERVER: OnceCell<TlsServer> = OnceCell::const_new();
static PLAIN_SERVER: OnceCell<String> = OnceCell::const_new();

/// One Postgres with ssl=on for this test binary.
async fn tls_server() -> &'static TlsServer {
    TLS_SERVER
        .get_or_init(|| async {
            let pki = Pki::new();
            let url = LocalPostgres::start_with(&pki.server_options(&[]))
                .await
                .expect("start a Postgres with ssl=on")
                .leak();
            let port = url::Url::parse(&url).unwrap().port().unwrap();
            TlsServer { pki, port }
        })
        .await
}

/// One Postgres without TLS (ssl=off, the default) for this test binary.
async fn plain_server() -> &'static str {
    PLAIN_SERVER
        .get_or_init(|| async { LocalPostgres::start().await.unwrap().leak() })
        .await
}

impl TlsServer {
    /// The URL by host name `localhost` (what the certificate names); the
    /// socket still goes to 127.0.0.1, where the server listens.
    fn by_name(&self, database: &str, query: &str) -> String {
        format!(
            "postgres://postgres@localhost:{}/{database}?hostaddr=127.0.0.1&{query}",
            self.port
        )
    }

    /// The URL by address: the certificate does not name 127.0.0.1.
    fn by_address(&self, query: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?{query}",
            self.port
        )
    }
}

fn root(path: &Path) -> String {
    format!("sslrootcert={}", path.display())
}

/// Whether the server sees this connection as TLS.
async fn encrypted(url: &str) -> Result<bool, String> {
    let client = reactor::store::db::connect(url)
        .await
        .map_err(|e| e.to_string())?;
    let row = client
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn verify_full_connects_by_the_name_on_the_certificate() {
    let s = tls_server().await;
    let url = s.by_name(
        "postgres",
        &format!("sslmode=verify-full&{}", root(&s.pki.ca())),
    );
    assert_eq!(encrypted(&url).await, Ok(true));
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_naming_the_ca_file() {
    let s = tls_server().await;
    let other = s.pki.other_ca();
    for mode in ["verify-full", "verify-ca"] {
        let url = s.by_name("postgres", &format!("sslmode={mode}&{}", root(&other)));
        let err = encrypted(&url).await.expect_err("wrong CA must be refused");
        assert!(
            err.contains(&format!(
                "certificate not signed by the CA in sslrootcert={}",
                other.display()
            )),
            "{mode}: {err}"
        );
    }
}

#[tokio::test]
async fn a_certificate_for_another_host_is_refused_by_verify_full_naming_both() {
    let s = tls_server().await;
    let url = s.by_address(&format!("sslmode=verify-full&{}", root(&s.pki.ca())));
    let err = encrypted(&url)
        .await
        .expect_err("wrong host must be refused");
    assert!(
        err.contains("server certificate is for localhost, not 127.0.0.1"),
        "{err}"
    );
}

#[tokio::test]
async fn verify_ca_checks_the_chain_but_not_the_host_name() {
    let s = tls_server().await;
    let url = s.by_address(&format!("sslmode=verify-ca&{}", root(&s.pki.ca())));
    assert_eq!(encrypted(&url).await, Ok(true));
}

#[tokio::test]
async fn require_encrypts_without_verifying_unless_given_a_root_certificate() {
    let s = tls_server().await;
    assert_eq!(encrypted(&s.by_address("sslmode=require")).await, Ok(true));
    // libpq: require with a root certificate verifies the chain like verify-ca.
    let url = s.by_address(&format!("sslmode=require&{}", root(&s.pki.other_ca())));
    let err = encrypted(&url).await.expect_err("wrong CA refused");
    assert!(err.contains("certificate not signed by the CA"), "{err}");
}

#[tokio::test]
async fn prefer_is_the_default_and_uses_tls_when_the_server_has_it() {
    let s = tls_server().await;
    assert_eq!(encrypted(&s.by_address("sslmode=prefer")).await, Ok(true));
    let default = format!("postgres://postgres@127.0.0.1:{}/postgres", s.port);
    assert_eq!(encrypted(&default).await, Ok(true));
}

#[tokio::test]
async fn without_tls_on_the_server_prefer_falls_back_and_require_refuses() {
    let plain = plain_server().await;
    assert_eq!(
        encrypted(&format!("{plain}?sslmode=prefer")).await,
        Ok(false)
    );
    assert_eq!(
        encrypted(&format!("{plain}?sslmode=disable")).await,
        Ok(false)
    );
    let err = encrypted(&format!("{plain}?sslmode=require"))
        .await
        .expect_err("require must not fall back to plaintext");
    assert!(err.contains("server does not support TLS"), "{err}");
}

#[tokio::test]
async fn disable_speaks_plaintext_even_to_a_tls_server() {
    let s = tls_server().await;
    assert_eq!(encrypted(&s.by_address("sslmode=disable")).await, Ok(false));
}

/// PGSSLMODE / PGSSLROOTCERT are read when the URL has no such parameter
/// (checked through the binary, so this process's environment stays as is).
#[tokio::test]
async fn the_cli_reads_pgsslmode_and_pgsslrootcert_and_the_url_wins() {
    let s = tls_server().await;
    let url = s.by_address("");
    let migrate = |url: &str, mode: &str, rootcert: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_reactor"))
            .args(["migrate", "--database-url", url])
            .env("PGSSLMODE", mode)
            .env("PGSSLROOTCERT", rootcert)
            .output()
            .expect("run reactor migrate")
    };
    let out = migrate(&url, "verify-full", &s.pki.ca());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "verify-full by address must fail");
    assert!(
        stderr.contains("server certificate is for localhost, not 127.0.0.1"),
        "{stderr}"
    );
    // The URL's sslmode wins over PGSSLMODE (its sslrootcert is still PGSSLROOTCERT's).
    let out = migrate(
        &s.by_address("sslmode=verify-ca"),
        "verify-full",
        &s.pki.ca(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn migrate_and_run_do_the_work_over_verify_full_on_every_connection() {
    let s = tls_server().await;
    let ca = root(&s.pki.ca());
    let admin =
        reactor::store::db::connect(&s.by_name("postgres", &format!("sslmode=verify-full&{ca}")))
            .await
            .unwrap();
    let name = format!("reactor_tls_{}", uuid::Uuid::new_v4().simple());
    admin
        .batch_execute(&format!("create database {name}"))
        .await
        .unwrap();
    let db = TestDb {
        url: s.by_name(&name, &format!("sslmode=verify-full&{ca}")),
        name: name.clone(),
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_reactor"))
        .args(["migrate", "--database-url", &db.url])
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "migrate over verify-full: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let storage = tempfile::tempdir().unwrap();
    let _reactor = ChildReactor::spawn(&db, storage.path(), &[]);
    let client = db.client().await;
    eventually("the listener is connected", Duration::from_secs(30), || async {
        let n: i64 = client
            .query_one(
                "select count(*) from pg_stat_activity where datname = $1 and application_name = 'reactor listener'",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        n == 1
    })
    .await;
    let user = common::user_with_profile(&client).await;
    eventually(
        "favorites for the new profile",
        Duration::from_secs(20),
        || async { common::favorites_of(&client, user).await == 1 },
    )
    .await;
    // Every connection the reactor holds (pool and listener) is TLS.
    let rows = client
        .query(
            "select a.application_name, s.ssl from pg_stat_activity a join pg_stat_ssl s using (pid)
             where a.datname = $1 and a.application_name like 'reactor%'",
            &[&name],
        )
        .await
        .unwrap();
    let seen: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(
        seen.iter().any(|(app, _)| app == "reactor listener"),
        "{seen:?}"
    );
    assert!(seen.iter().any(|(app, _)| app == "reactor"), "{seen:?}");
    assert!(seen.iter().all(|(_, ssl)| *ssl), "{seen:?}");
}

/// WAL mode's replication connection is made as every other one is: TLS
/// checked by name against the CA file, and the role's SCRAM password (the
/// server refuses it anything else).
#[tokio::test]
async fn wal_mode_streams_over_verify_full_with_a_scram_password() {
    let pki = Pki::new();
    let server = LocalPostgres::start_with(&pki.server_options(&[("wal_level", "logical")]))
        .await
        .expect("a Postgres with ssl=on and wal_level=logical");
    let superuser = server.url("postgres");
    let port = url::Url::parse(&superuser).unwrap().port().unwrap();
    let name = format!("reactor_tls_wal_{}", uuid::Uuid::new_v4().simple());
    let role = format!("owner_{}", uuid::Uuid::new_v4().simple());
    let admin = reactor::store::db::connect(&superuser).await.unwrap();
    let hba_file: String = admin.query_one("show hba_file", &[]).await.unwrap().get(0);
    admin
        .batch_execute(&format!(
            "copy (select unnest(array[
               'host all postgres 127.0.0.1/32 trust',
               'hostssl all all 127.0.0.1/32 scram-sha-256',
               'host all all 127.0.0.1/32 reject'])) to '{hba_file}';
             select pg_reload_conf();"
        ))
        .await
        .unwrap();
    admin
        .batch_execute(&format!("create database {name}"))
        .await
        .unwrap();
    reactor::sandbox::supabase_like::prepare(&superuser, &name, &role)
        .await
        .expect("Supabase-like set-up");
    admin
        .batch_execute(&format!("alter role {role} password 'secret of {role}'"))
        .await
        .unwrap();
    let db = TestDb {
        url: format!(
            "postgres://{role}:secret%20of%20{role}@localhost:{port}/{name}?hostaddr=127.0.0.1&sslmode=verify-full&{}",
            root(&pki.ca())
        ),
        name: name.clone(),
    };
    let mut client = db.client().await;
    reactor::store::migrate::run(&mut client).await.unwrap();
    reactor::store::notify_mode::set(&client, reactor::store::notify_mode::Mode::Wal)
        .await
        .unwrap();

    // Sweeps an hour apart: after the start-up replay, only the WAL brings hints.
    let storage = tempfile::tempdir().unwrap();
    let _reactor = ChildReactor::spawn(&db, storage.path(), &["--sweep-interval", "1h"]);
    // The server's rules: postgres alone may come in without TLS and a password.
    let refused = reactor::store::db::connect(&db.url.replace("verify-full", "disable")).await;
    assert!(refused.is_err(), "plaintext must be refused");
    let streaming = || async {
        admin
            .query_opt(
                "select s.ssl, a.usename::text from pg_replication_slots r
                 join pg_stat_activity a on a.pid = r.active_pid
                 join pg_stat_ssl s on s.pid = r.active_pid
                 where r.database = $1 and r.slot_name like 'reactor_wal_%'",
                &[&name],
            )
            .await
            .unwrap()
            .map(|r| (r.get::<_, bool>(0), r.get::<_, String>(1)))
    };
    eventually(
        "the reactor streams from its slot",
        Duration::from_secs(30),
        || async { streaming().await.is_some() },
    )
    .await;
    assert_eq!(
        streaming().await,
        Some((true, role.clone())),
        "over TLS, as the role"
    );
    let user = common::user_with_profile(&client).await;
    eventually(
        "favorites for a profile heard in the WAL",
        Duration::from_secs(20),
        || async { common::favorites_of(&client, user).await == 1 },
    )
    .await;
}

/// The key=value form of a connection string honours `sslmode` as the URL
/// form does: `require` never falls back to plaintext.
#[tokio::test]
async fn a_keyword_string_with_sslmode_require_is_refused_by_a_server_without_tls() {
    let plain = url::Url::parse(plain_server().await).unwrap();
    let port = plain.port().unwrap();
    let keywords = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    assert_eq!(
        encrypted(&format!("{keywords} sslmode=disable")).await,
        Ok(false)
    );
    let err = encrypted(&format!("{keywords} sslmode=require"))
        .await
        .expect_err("require must not fall back to plaintext");
    assert!(err.contains("server does not support TLS"), "{err}");
}

#[tokio::test]
async fn a_keyword_string_verifies_the_certificate_with_its_quoted_sslrootcert() {
    let s = tls_server().await;
    let keywords = |ca: &Path| {
        format!(
            "host = localhost hostaddr=127.0.0.1 port={} user=postgres dbname=postgres \
             sslmode=verify-full sslrootcert='{}'",
            s.port,
            ca.display()
                .to_string()
                .replace('\\', "\\\\")
                .replace('\'', "\\'")
        )
    };
    assert_eq!(encrypted(&keywords(&s.pki.ca())).await, Ok(true));
    let err = encrypted(&keywords(&s.pki.other_ca()))
        .await
        .expect_err("another CA");
    assert!(err.contains("certificate not signed by the CA"), "{err}");
}

/// A TLS server with logical WAL whose pg_hba asks `scram_user` for SCRAM,
/// `password_user` for a cleartext password and `md5_user` for an MD5 one
/// (with or without TLS).
struct AuthServer {
    pki: Pki,
    port: u16,
    admin: String,
}

static AUTH_SERVER: OnceCell<AuthServer> = OnceCell::const_new();

async fn auth_server() -> &'static AuthServer {
    AUTH_SERVER
        .get_or_init(|| async {
            let pki = Pki::new();
            let admin = LocalPostgres::start_with(&pki.server_options(&[("wal_level", "logical")]))
                .await
                .expect("a Postgres with ssl=on and wal_level=logical")
                .leak();
            let port = url::Url::parse(&admin).unwrap().port().unwrap();
            let client = reactor::store::db::connect(&admin).await.unwrap();
            let hba_file: String = client.query_one("show hba_file", &[]).await.unwrap().get(0);
            client
                .batch_execute(&format!(
                    "create role scram_user login replication password 'scram secret';
                     create role password_user login replication password 'clear secret';
                     set password_encryption = 'md5';
                     create role md5_user login replication password 'md5 secret';
                     reset password_encryption;
                     copy (select unnest(array[
                       'host all postgres 127.0.0.1/32 trust',
                       'host all scram_user 127.0.0.1/32 scram-sha-256',
                       'host all password_user 127.0.0.1/32 password',
                       'host all md5_user 127.0.0.1/32 md5',
                       'host all all 127.0.0.1/32 reject'])) to '{hba_file}';
                     select pg_reload_conf();"
                ))
                .await
                .unwrap();
            AuthServer { pki, port, admin }
        })
        .await
}

impl AuthServer {
    /// A key=value string for `user` (whose password is `password`) plus `extra`.
    fn keywords(&self, user: &str, password: &str, extra: &str) -> String {
        format!(
            "host=localhost hostaddr=127.0.0.1 port={} dbname=postgres user={user} \
             password='{password}' {extra}",
            self.port
        )
    }

    fn verify_full(&self) -> String {
        format!(
            "sslmode=verify-full sslrootcert='{}'",
            self.pki.ca().display()
        )
    }

    /// Whether a walsender of `user` runs, and over TLS.
    async fn walsender_ssl(&self, user: &str) -> Option<bool> {
        let admin = reactor::store::db::connect(&self.admin).await.unwrap();
        admin
            .query_opt(
                "select s.ssl from pg_stat_activity a join pg_stat_ssl s using (pid)
                 where a.backend_type = 'walsender' and a.usename = $1",
                &[&user],
            )
            .await
            .unwrap()
            .map(|r| r.get(0))
    }
}

/// channel_binding=require: SCRAM-SHA-256-PLUS with tls-server-end-point, on
/// the ordinary connections (tokio-postgres, given the certificate's hash)
/// and on WAL mode's replication connection. The server checks the binding
/// data, so a log-in here means the hash was right; without TLS there is no
/// binding and both refuse.
#[tokio::test]
async fn channel_binding_require_logs_in_with_scram_plus_on_every_connection() {
    let s = auth_server().await;
    let url = s.keywords(
        "scram_user",
        "scram secret",
        &format!("{} channel_binding=require", s.verify_full()),
    );
    assert_eq!(encrypted(&url).await, Ok(true));
    let (replication, _slot) = reactor::engine::wal::open_slot(&url)
        .await
        .expect("the replication client logs in with SCRAM-SHA-256-PLUS");
    assert_eq!(s.walsender_ssl("scram_user").await, Some(true));
    drop(replication);

    let plaintext = s.keywords(
        "scram_user",
        "scram secret",
        "sslmode=disable channel_binding=require",
    );
    let err = reactor::engine::wal::open_slot(&plaintext)
        .await
        .err()
        .expect("no channel binding without TLS");
    assert!(
        err.to_string()
            .contains("channel_binding=require needs TLS, and this connection has none"),
        "{err}"
    );
    let err = encrypted(&plaintext)
        .await
        .expect_err("no binding without TLS");
    assert!(err.contains("channel binding"), "{err}");
}

/// require_auth: a server that asks for a cleartext password is refused
/// before the password is sent, by the replication client on any connection
/// and by the ordinary connections inside TLS (which they then must use).
#[tokio::test]
async fn require_auth_refuses_a_server_that_asks_for_a_cleartext_password() {
    let s = auth_server().await;
    let refusal = "require_auth=scram-sha-256 refuses this server: \
                   the server asks for a cleartext password";
    let plaintext = s.keywords(
        "password_user",
        "clear secret",
        "sslmode=disable require_auth=scram-sha-256",
    );
    let err = reactor::engine::wal::open_slot(&plaintext)
        .await
        .err()
        .expect("cleartext password refused");
    assert!(err.to_string().contains(refusal), "{err}");
    let err = encrypted(&plaintext)
        .await
        .expect_err("require_auth needs TLS");
    assert!(err.contains("require_auth is checked inside TLS"), "{err}");

    let over_tls = s.keywords(
        "password_user",
        "clear secret",
        &format!("{} require_auth=scram-sha-256", s.verify_full()),
    );
    let err = encrypted(&over_tls)
        .await
        .expect_err("cleartext password refused");
    assert!(err.contains(refusal), "{err}");
    let err = reactor::engine::wal::open_slot(&over_tls)
        .await
        .err()
        .expect("cleartext password refused");
    assert!(err.to_string().contains(refusal), "{err}");

    // What require_auth allows still works, on both kinds of connection.
    let scram = s.keywords(
        "scram_user",
        "scram secret",
        &format!("{} require_auth=scram-sha-256", s.verify_full()),
    );
    assert_eq!(encrypted(&scram).await, Ok(true));
    let allowed = s.keywords(
        "password_user",
        "clear secret",
        &format!("{} require_auth=password", s.verify_full()),
    );
    assert_eq!(encrypted(&allowed).await, Ok(true));
    assert!(reactor::engine::wal::open_slot(&allowed).await.is_ok());
}

/// Negated lists: `!md5` refuses a server that asks for an MD5 password on
/// the replication connection; what the list leaves allowed logs in.
#[tokio::test]
async fn require_auth_not_md5_refuses_an_md5_request_and_allows_the_rest() {
    let s = auth_server().await;
    let md5 = |extra: &str| s.keywords("md5_user", "md5 secret", extra);
    let err = reactor::engine::wal::open_slot(&md5("sslmode=disable require_auth=!md5"))
        .await
        .err()
        .expect("MD5 refused");
    assert!(
        err.to_string()
            .contains("require_auth=!md5 refuses this server: the server asks for an MD5 password"),
        "{err}"
    );
    assert!(
        reactor::engine::wal::open_slot(&md5("sslmode=disable require_auth=!password,!none"))
            .await
            .is_ok(),
        "MD5 is allowed by a list that does not negate it"
    );
}
