//! Dead rows cost nothing to skip (issue 22, item 5): a row an SQL-action
//! handler gives up on gets its dead marker, which takes it out of the
//! pending index, and stays listed as dead; `reactor.retry()` clears both and
//! the row is worked again. Rows recorded dead before the marker existed are
//! marked by the reactor's first tidy pass.
mod common;

use common::{count, eventually, favorites_of, start_reactor, user_with_profile};
use std::time::Duration;
use tokio_postgres::Client;
use uuid::Uuid;

const LONG: Duration = Duration::from_secs(60);

/// Whether `user`'s profile meets the favorites handler's pending condition,
/// the predicate of its partial index (what every scan walks).
async fn in_pending_index(client: &Client, user: Uuid) -> bool {
    let pending = reactor::handlers::favorites::handler().spec.pending;
    client
        .query_one(
            &format!(
                "select exists (select 1 from public.profiles t where ({pending}) and t.id = $1)"
            ),
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

async fn favorites_dead_at_set(client: &Client, user: Uuid) -> bool {
    client
        .query_one(
            "select favorites_dead_at is not null from profiles where id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_dead_row_leaves_the_pending_index_stays_listed_and_comes_back_on_retry() {
    let db = common::migrated_db().await;
    let client = db.client().await;
    // The collections of one owner are refused (a row fault the handler
    // cannot get past): every attempt for that profile fails.
    client
        .batch_execute(
            "create table public.refused_owner (id uuid primary key);
             create function public.refuse_owner() returns trigger language plpgsql as $$
             begin
               if exists (select 1 from public.refused_owner r where r.id = new.owner_id) then
                 raise exception 'test: collections of % are refused', new.owner_id;
               end if;
               return new;
             end $$;
             create trigger refuse_owner before insert on public.collections
               for each row execute function public.refuse_owner();",
        )
        .await
        .unwrap();
    let refused = common::auth_user(&client).await;
    client
        .execute("insert into public.refused_owner values ($1)", &[&refused])
        .await
        .unwrap();
    // Recorded dead by an older version: a state row, no marker.
    let old_dead = user_with_profile(&client).await;
    client
        .execute(
            "insert into reactor.handler_state (handler, row_id, attempts, last_error, dead_at)
             values ('favorites', $1, 3, 'dead before the marker existed', now())",
            &[&old_dead.to_string()],
        )
        .await
        .unwrap();
    assert!(in_pending_index(&client, old_dead).await);

    let storage = tempfile::tempdir().unwrap();
    let reactor = start_reactor(&db, storage.path(), &[]).await;
    reactor.wait_ready().await;
    eventually(
        "the old dead row is marked by the tidy pass",
        LONG,
        || async { favorites_dead_at_set(&client, old_dead).await },
    )
    .await;
    assert!(!in_pending_index(&client, old_dead).await);
    assert_eq!(
        favorites_of(&client, old_dead).await,
        0,
        "still given up on"
    );

    client
        .execute("insert into profiles (id) values ($1)", &[&refused])
        .await
        .unwrap();
    let healthy = user_with_profile(&client).await;
    eventually("the refused profile goes dead", LONG, || async {
        favorites_dead_at_set(&client, refused).await
    })
    .await;
    eventually("a healthy profile beside it is handled", LONG, || async {
        favorites_of(&client, healthy).await == 1
    })
    .await;
    assert!(
        !in_pending_index(&client, refused).await,
        "a poll no longer walks the dead row"
    );
    // Still listed as dead, with its error (the README's "Dead rows" query).
    let (attempts, error): (i32, String) = {
        let row = client
            .query_one(
                "select attempts, last_error from reactor.handler_state
                 where handler = 'favorites' and row_id = $1 and dead_at is not null",
                &[&refused.to_string()],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(attempts, 3, "REACTOR_MAX_ATTEMPTS of the test flags");
    assert!(error.contains("are refused"), "{error}");
    // A client cannot take its row out of (or put it back into) the handler's reach.
    let mut own = db.client().await;
    let refused_to_client = common::as_user(
        &mut own,
        refused,
        "update profiles set favorites_dead_at = null where id = auth.uid()",
    )
    .await
    .unwrap_err();
    assert_eq!(common::sqlstate(&refused_to_client), "42501");

    // The cause fixed, a retry makes the row pending again and the reactor works it.
    client
        .batch_execute("delete from public.refused_owner")
        .await
        .unwrap();
    for user in [refused, old_dead] {
        let retried: bool = client
            .query_one(
                "select reactor.retry('favorites', $1)",
                &[&user.to_string()],
            )
            .await
            .unwrap()
            .get(0);
        assert!(retried);
    }
    eventually(
        "both retried profiles get their favorites",
        LONG,
        || async {
            favorites_of(&client, refused).await == 1 && favorites_of(&client, old_dead).await == 1
        },
    )
    .await;
    assert_eq!(
        count(
            &client,
            "select count(*) from profiles where favorites_dead_at is not null"
        )
        .await,
        0
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from reactor.handler_state where handler = 'favorites'"
        )
        .await,
        0
    );
    reactor.stop().await;
}

#[tokio::test]
async fn retrying_a_row_that_is_not_a_key_changes_nothing() {
    let db = common::migrated_db().await;
    let client = db.client().await;
    let retried: bool = client
        .query_one("select reactor.retry('usage', 'not-a-uuid')", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!retried, "no state row, no marker, no error");
}
