//! A database shaped the way a Supabase project looks to its `postgres` role,
//! on a server where we are superuser (the demo's and the tests' throwaway
//! clusters), so the reactor is exercised with the privileges it gets there.
//!
//! On Supabase, `postgres` is NOSUPERUSER but has CREATEDB, CREATEROLE,
//! REPLICATION and BYPASSRLS, owns the database, is a member of anon,
//! authenticated and service_role, has every privilege on the `auth` schema's
//! objects (which belong to another role), and objects it creates in `public`
//! are granted to anon, authenticated and service_role by default.
use crate::store::db::{quote_ident, quote_literal, DbError};
use tokio_postgres::Client;

#[derive(Debug, thiserror::Error)]
pub enum SupabaseLikeError {
    #[error("preparing a Supabase-like database: {0}")]
    Setup(String),
    #[error("preparing a Supabase-like database: {0}")]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for SupabaseLikeError {
    fn from(e: tokio_postgres::Error) -> Self {
        SupabaseLikeError::Db(e.into())
    }
}

/// Makes `role` (created if missing) the Supabase-`postgres`-like owner of
/// `database`, as the superuser connected by `superuser_url`, and returns the
/// URL of `database` for `role` (trust authentication: no password).
pub async fn prepare(
    superuser_url: &str,
    database: &str,
    role: &str,
) -> Result<String, SupabaseLikeError> {
    let server = crate::store::db::connect(superuser_url).await?;
    // Roles are cluster-wide: create each only where it is missing, and take a
    // lost race for "already there".
    server
        .batch_execute(&format!(
            "do $setup$
             declare r text;
             begin
               foreach r in array array['anon', 'authenticated', 'service_role'] loop
                 begin
                   if not exists (select 1 from pg_roles where rolname = r) then
                     execute format('create role %I nologin noinherit %s', r,
                                    case when r = 'service_role' then 'bypassrls' else '' end);
                   end if;
                 exception when duplicate_object or unique_violation then null;
                 end;
               end loop;
               begin
                 if not exists (select 1 from pg_roles where rolname = {role_lit}) then
                   create role {role} login nosuperuser createdb createrole replication bypassrls;
                 end if;
               exception when duplicate_object or unique_violation then null;
               end;
             end
             $setup$;
             grant anon, authenticated, service_role to {role};
             alter database {db} owner to {role};",
            role = quote_ident(role),
            role_lit = quote_literal(role),
            db = quote_ident(database),
        ))
        .await?;

    let db_url = with_database(superuser_url, database, None)?;
    let db = crate::store::db::connect(&db_url).await?;
    // The auth pieces belong to the superuser here (to supabase_auth_admin on
    // Supabase): sql/000_supabase_compat.sql creates them as on plain Postgres.
    db.batch_execute(crate::store::migrate::MIGRATIONS[0].sql)
        .await?;
    grant_supabase_privileges(&db, role).await?;
    with_database(superuser_url, database, Some(role))
}

async fn grant_supabase_privileges(db: &Client, role: &str) -> Result<(), SupabaseLikeError> {
    let role = quote_ident(role);
    db.batch_execute(&format!(
        "grant all on schema auth to {role};
         grant all on all tables in schema auth to {role};
         grant all on all sequences in schema auth to {role};
         grant all on all routines in schema auth to {role};
         alter default privileges for role {role} in schema public
           grant all on tables to anon, authenticated, service_role;
         alter default privileges for role {role} in schema public
           grant all on functions to anon, authenticated, service_role;
         alter default privileges for role {role} in schema public
           grant all on sequences to anon, authenticated, service_role;"
    ))
    .await
    .map_err(SupabaseLikeError::from)
}

fn with_database(
    url: &str,
    database: &str,
    user: Option<&str>,
) -> Result<String, SupabaseLikeError> {
    let mut parsed =
        url::Url::parse(url).map_err(|e| SupabaseLikeError::Setup(format!("{url}: {e}")))?;
    parsed.set_path(&format!("/{database}"));
    if let Some(user) = user {
        parsed
            .set_username(user)
            .map_err(|()| SupabaseLikeError::Setup(format!("{url}: cannot set the user")))?;
        parsed.set_password(None).ok();
    }
    Ok(parsed.to_string())
}
