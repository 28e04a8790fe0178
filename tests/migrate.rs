mod common;

use reactor::store::migrate::{self, MigrateError, Migration};

#[tokio::test]
async fn migrate_applies_every_file_on_an_empty_database_then_is_a_no_op() {
    let db = common::empty_db().await;
    let mut client = db.client().await;
    let first = migrate::run(&mut client).await.expect("first migrate");
    assert_eq!(first.applied.len(), migrate::MIGRATIONS.len());
    assert_eq!(first.skipped, 0);
    assert!(
        first.applied[0].starts_with("sql/"),
        "sql/ comes before triggers/"
    );
    assert!(first.applied.last().unwrap().starts_with("triggers/"));

    let second = migrate::run(&mut client).await.expect("second migrate");
    assert!(
        second.applied.is_empty(),
        "second run applied {:?}",
        second.applied
    );
    assert_eq!(second.skipped, migrate::MIGRATIONS.len());

    let recorded: i64 = client
        .query_one("select count(*) from reactor.schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded as usize, migrate::MIGRATIONS.len());
}

#[tokio::test]
async fn every_embedded_file_is_itself_idempotent() {
    // The files are also meant to be pasted into the Supabase SQL editor, where
    // nobody records what ran: running each one twice must work.
    let db = common::migrated_db().await;
    let client = db.client().await;
    for m in migrate::MIGRATIONS {
        client.batch_execute(m.sql).await.unwrap_or_else(|e| {
            panic!(
                "{} is not idempotent: {}",
                m.name,
                reactor::store::db::describe(&e)
            )
        });
    }
}

#[tokio::test]
async fn a_changed_applied_migration_is_refused_and_nothing_changes() {
    let db = common::empty_db().await;
    let mut client = db.client().await;
    let original = [Migration {
        name: "sql/a.sql",
        sql: "create table a (x int);",
    }];
    migrate::apply(&mut client, &original).await.unwrap();

    let edited = [
        Migration {
            name: "sql/a.sql",
            sql: "create table a (x int, y int);",
        },
        Migration {
            name: "sql/b.sql",
            sql: "create table b (x int);",
        },
    ];
    let err = migrate::apply(&mut client, &edited).await.unwrap_err();
    assert!(
        matches!(err, MigrateError::ChecksumMismatch { ref name, .. } if name == "sql/a.sql"),
        "{err}"
    );
    assert!(
        err.to_string().contains("sql/a.sql"),
        "message names the file: {err}"
    );

    let b_exists: bool = client
        .query_one("select to_regclass('public.b') is not null", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!b_exists, "a refused run must not apply later files");
}

#[tokio::test]
async fn a_failing_migration_rolls_back_and_is_not_recorded() {
    let db = common::empty_db().await;
    let mut client = db.client().await;
    let files = [
        Migration {
            name: "sql/ok.sql",
            sql: "create table ok (x int);",
        },
        Migration {
            name: "sql/bad.sql",
            sql: "create table half (x int); select no_such_function();",
        },
    ];
    let err = migrate::apply(&mut client, &files).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("sql/bad.sql") && message.contains("no_such_function"),
        "{message}"
    );
    let half: bool = client
        .query_one("select to_regclass('public.half') is not null", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!half, "the failed file's transaction was rolled back");
    let names = common::texts(
        &client,
        "select name from reactor.schema_migrations order by name",
        &[],
    )
    .await;
    assert_eq!(names, vec!["sql/ok.sql".to_string()]);
}
