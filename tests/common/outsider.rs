//! A database login with no grants at all: what any user of a shared
//! Postgres (or a leaked low-privilege password) has. It may still take
//! advisory locks, create TEMPORARY tables (TEMP is granted to PUBLIC) with
//! triggers and functions of its own, and NOTIFY any channel.
use tokio_postgres::Client;

/// A session of a new login role with no grants on `db_url`'s database,
/// created by `admin` (a role with CREATEROLE). The session lasts as long as
/// the returned client; what it holds (locks, temporary tables) with it.
pub async fn outsider_session(admin: &Client, db_url: &str) -> Client {
    let role = format!("outsider_{}", uuid::Uuid::new_v4().simple());
    let password = uuid::Uuid::new_v4().simple().to_string();
    admin
        .batch_execute(&format!("create role {role} login password '{password}'"))
        .await
        .expect("create the outsider's login");
    let mut url = url::Url::parse(db_url).expect("a postgres:// URL");
    url.set_username(&role).expect("a URL with a user");
    url.set_password(Some(&password))
        .expect("a URL with a password");
    let client = reactor::store::db::connect(url.as_str())
        .await
        .expect("the outsider logs in");
    let grants: i64 = client
        .query_one(
            "select count(*) from information_schema.role_table_grants where grantee = current_user",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(grants, 0, "the outsider has no grants");
    client
}

/// In `outsider`'s session: a TEMPORARY table named `table`, shaped like a
/// watched table, with triggers named like the reactor's hint triggers (one
/// enabled, one disabled) on a trigger function of the outsider's own.
pub async fn impostor_watched_table(outsider: &Client, table: &str) {
    outsider
        .batch_execute(&format!(
            "create function pg_temp.impostor() returns trigger
               language plpgsql as $$ begin return null; end $$;
             create temporary table {table} (id uuid primary key, status text, owner_id uuid);
             create trigger reactor_watch_status after update of status on pg_temp.{table}
               for each row execute function pg_temp.impostor('id', 'status', 'owner_id');
             create trigger reactor_watch_insert after insert on pg_temp.{table}
               for each row execute function pg_temp.impostor('id', 'status', 'owner_id');
             alter table pg_temp.{table} disable trigger reactor_watch_insert;"
        ))
        .await
        .expect("any login may create this");
}
