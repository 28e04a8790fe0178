//! Row-level security and the client guards, exercised the way Supabase runs a
//! request: `SET LOCAL ROLE authenticated` (or `anon`) plus `request.jwt.claims`.
//! Rows only the service may create are written by the superuser connection,
//! which bypasses RLS, as the reactor and billing do.
//!
//! At the end: attacks from outside the database (a malicious provider's
//! URLs and answers, the HTTP surface, a flood of status hints).
mod common;

use common::{count_with, TestDb};
use tokio_postgres::{types::ToSql, Client, Row};
use uuid::Uuid;

const DENIED: &str = "42501";

/// Who a request runs as.
#[derive(Clone, Copy)]
enum Who {
    User(Uuid),
    Anon,
    ServiceRole,
}

/// Runs `sql` as `who` (Supabase style) and returns the rows; committed on success.
async fn query_as(
    client: &mut Client,
    who: Who,
    sql: &str,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let (role, claims) = match who {
        Who::User(u) => (
            "authenticated",
            serde_json::json!({"sub": u.to_string(), "role": "authenticated"}),
        ),
        Who::Anon => ("anon", serde_json::json!({"role": "anon"})),
        Who::ServiceRole => ("service_role", serde_json::json!({"role": "service_role"})),
    };
    tx.batch_execute(&format!("set local role {role}")).await?;
    tx.execute(
        "select set_config('request.jwt.claims', $1, true)",
        &[&claims.to_string()],
    )
    .await?;
    let rows = tx.query(sql, &[]).await?;
    tx.commit().await?;
    Ok(rows)
}

/// Runs a write as an anonymous (not signed in) Supabase client.
async fn as_anon(client: &mut Client, sql: &str) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    tx.batch_execute("set local role anon").await?;
    tx.execute(
        "select set_config('request.jwt.claims', $1, true)",
        &[&serde_json::json!({"role": "anon"}).to_string()],
    )
    .await?;
    let n = tx.execute(sql, &[]).await?;
    tx.commit().await?;
    Ok(n)
}

/// The first column of every row `who` sees for `sql`, as sorted text.
async fn texts_as(client: &mut Client, who: Who, sql: &str) -> Vec<String> {
    let mut v: Vec<String> = query_as(client, who, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", reactor::store::db::describe(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Asserts the statement failed with "insufficient privilege" (42501).
fn assert_denied<T: std::fmt::Debug>(result: Result<T, tokio_postgres::Error>, what: &str) {
    match result {
        Ok(v) => panic!("{what}: expected SQLSTATE 42501, but it succeeded ({v:?})"),
        Err(e) => assert_eq!(
            common::sqlstate(&e),
            DENIED,
            "{what}: {}",
            reactor::store::db::describe(&e)
        ),
    }
}

/// Runs `sql` as user `who` and asserts it was denied (42501).
async fn denied_as(client: &mut Client, who: Uuid, sql: &str, what: &str) {
    assert_denied(common::as_user(client, who, sql).await, what);
}

/// Runs `sql` as user `who`; the number of rows it touched.
async fn affected_as(client: &mut Client, who: Uuid, sql: &str) -> u64 {
    common::as_user(client, who, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", reactor::store::db::describe(&e)))
}

async fn insert_id(client: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Uuid {
    client
        .query_one(sql, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {}", reactor::store::db::describe(&e)))
        .get(0)
}

/// One user's rows in every owner-scoped table, written as the service.
struct Owned {
    user: Uuid,
    job: Uuid,
    render: Uuid,
    variant: Uuid,
    collection: Uuid,
    debit: Uuid,
}

/// Two users A and B with a row in every table, plus community content.
struct World {
    _db: TestDb,
    su: Client,
    a: Owned,
    b: Owned,
    community_collection: Uuid,
    community_item: Uuid,
}

async fn owned(su: &Client) -> Owned {
    let user = common::user_with_profile(su).await;
    let job = insert_id(
        su,
        "insert into generation_jobs (owner_id, mode, prompt, status, prediction_id, completed_at)
         values ($1, 'imagine', 'a sunny loft', 'succeeded', $2, now()) returning id",
        &[&user, &format!("pred-{user}")],
    )
    .await;
    let render = insert_id(
        su,
        "insert into renders (job_id, owner_id, mode) values ($1, $2, 'imagine') returning id",
        &[&job, &user],
    )
    .await;
    let variant = insert_id(
        su,
        "insert into render_variants (render_id, owner_id, idx, image_path)
         values ($1, $2, 0, $3) returning id",
        &[&render, &user, &format!("renders/{render}/0.jpg")],
    )
    .await;
    let collection = insert_id(
        su,
        "insert into collections (owner_id, name) values ($1, 'Kitchens') returning id",
        &[&user],
    )
    .await;
    su.execute(
        "insert into collection_items (collection_id, render_id) values ($1, $2)",
        &[&collection, &render],
    )
    .await
    .expect("collection item");
    let debit = insert_id(
        su,
        "insert into usage_ledger (owner_id, kind, amount, job_id) values ($1, 'generation_debit', 1, $2) returning id",
        &[&user, &job],
    )
    .await;
    Owned {
        user,
        job,
        render,
        variant,
        collection,
        debit,
    }
}

async fn world() -> World {
    let db = common::migrated_db().await;
    let su = db.client().await;
    let a = owned(&su).await;
    let b = owned(&su).await;
    let community_collection = insert_id(
        &su,
        "insert into community_collections (title, is_featured) values ('Scandinavian', true) returning id",
        &[],
    )
    .await;
    let community_item = insert_id(
        &su,
        "insert into community_items (collection_id, render_id) values ($1, $2) returning id",
        &[&community_collection, &a.render],
    )
    .await;
    World {
        _db: db,
        su,
        a,
        b,
        community_collection,
        community_item,
    }
}

fn s(id: Uuid) -> String {
    id.to_string()
}

// ---------------------------------------------------------------------------
// The matrix: two users x every table x select / insert / update / delete.
// ---------------------------------------------------------------------------

/// Asserts that users A and B each see exactly their own row through `sql`
/// (whose first column is the id, as text).
async fn each_sees_only_its_own(w: &mut World, sql: &str, own: impl Fn(&Owned) -> Uuid) {
    let users = [(w.a.user, own(&w.a)), (w.b.user, own(&w.b))];
    for (user, row) in users {
        assert_eq!(
            texts_as(&mut w.su, Who::User(user), sql).await,
            vec![s(row)],
            "{sql} as {user}"
        );
    }
}

#[tokio::test]
async fn profiles_each_user_reads_and_edits_only_its_own_profile_and_none_can_delete() {
    let mut w = world().await;
    let (a, b) = (w.a.user, w.b.user);

    // select
    each_sees_only_its_own(&mut w, "select id::text from profiles", |o| o.user).await;

    // insert: only one's own profile
    let c = common::auth_user(&w.su).await;
    denied_as(
        &mut w.su,
        b,
        &format!("insert into profiles (id) values ('{c}')"),
        "B creates a profile for another user",
    )
    .await;
    assert_eq!(
        count_with(&w.su, "select count(*) from profiles where id = $1", &[&c]).await,
        0
    );
    assert_eq!(
        affected_as(
            &mut w.su,
            c,
            &format!("insert into profiles (id) values ('{c}')")
        )
        .await,
        1,
        "a user creates its own profile"
    );

    // update: B's update of A's profile matches nothing; each updates its own
    let before: chrono::DateTime<chrono::Utc> =
        w.su.query_one("select updated_at from profiles where id = $1", &[&a])
            .await
            .unwrap()
            .get(0);
    assert_eq!(
        affected_as(
            &mut w.su,
            b,
            &format!("update profiles set updated_at = now() where id = '{a}'")
        )
        .await,
        0
    );
    let after: chrono::DateTime<chrono::Utc> =
        w.su.query_one("select updated_at from profiles where id = $1", &[&a])
            .await
            .unwrap()
            .get(0);
    assert_eq!(before, after, "B's update must not touch A's profile");
    assert_eq!(
        affected_as(&mut w.su, a, "update profiles set updated_at = now()").await,
        1
    );
    // a user cannot move its profile onto another user's id
    denied_as(
        &mut w.su,
        a,
        &format!("update profiles set id = '{c}' where id = '{a}'"),
        "A renames its profile to another user's id",
    )
    .await;

    // delete: not granted to clients (the profile goes with the auth user)
    denied_as(
        &mut w.su,
        a,
        &format!("delete from profiles where id = '{a}'"),
        "A deletes its own profile",
    )
    .await;
    denied_as(
        &mut w.su,
        b,
        &format!("delete from profiles where id = '{a}'"),
        "B deletes A's profile",
    )
    .await;
    assert_eq!(
        count_with(
            &w.su,
            "select count(*) from profiles where id = any($1)",
            &[&vec![a, b, c]]
        )
        .await,
        3
    );
}

#[tokio::test]
async fn generation_jobs_each_user_reads_only_its_own_and_cannot_write_anothers_or_update_or_delete_any(
) {
    let mut w = world().await;
    let (a, b) = (w.a.user, w.b.user);

    each_sees_only_its_own(&mut w, "select id::text from generation_jobs", |o| o.job).await;

    denied_as(
        &mut w.su,
        b,
        &format!(
            "insert into generation_jobs (owner_id, mode, prompt) values ('{a}', 'imagine', 'x')"
        ),
        "B submits a job as A",
    )
    .await;
    assert_eq!(
        count_with(
            &w.su,
            "select count(*) from generation_jobs where owner_id = $1",
            &[&a]
        )
        .await,
        1
    );

    for (who, job) in [(a, w.a.job), (b, w.a.job), (b, w.b.job)] {
        denied_as(
            &mut w.su,
            who,
            &format!("update generation_jobs set style = 'boho' where id = '{job}'"),
            "a client updates a job",
        )
        .await;
        denied_as(
            &mut w.su,
            who,
            &format!("delete from generation_jobs where id = '{job}'"),
            "a client deletes a job",
        )
        .await;
    }
    assert_eq!(
        count_with(
            &w.su,
            "select count(*) from generation_jobs where style is null and status = 'succeeded' and id = any($1)",
            &[&vec![w.a.job, w.b.job]]
        )
        .await,
        2
    );
}

#[tokio::test]
async fn renders_each_user_reads_and_deletes_only_its_own_and_cannot_insert_or_update() {
    let mut w = world().await;
    let (a, b) = (w.a.user, w.b.user);

    each_sees_only_its_own(&mut w, "select id::text from renders", |o| o.render).await;

    denied_as(
        &mut w.su,
        b,
        &format!(
            "insert into renders (job_id, owner_id, mode) values ('{}', '{a}', 'imagine')",
            w.b.job
        ),
        "B inserts a render for A",
    )
    .await;
    denied_as(
        &mut w.su,
        b,
        &format!(
            "update renders set style = 'boho' where id = '{}'",
            w.a.render
        ),
        "B updates A's render",
    )
    .await;
    denied_as(
        &mut w.su,
        a,
        &format!(
            "update renders set style = 'boho' where id = '{}'",
            w.a.render
        ),
        "A updates its own render",
    )
    .await;

    assert_eq!(
        affected_as(
            &mut w.su,
            b,
            &format!("delete from renders where id = '{}'", w.a.render)
        )
        .await,
        0,
        "B's delete of A's render matches nothing"
    );
    assert_eq!(
        count_with(
            &w.su,
            "select count(*) from renders where id = $1",
            &[&w.a.render]
        )
        .await,
        1
    );
    assert_eq!(
        affected_as(
            &mut w.su,
            a,
            &format!("delete from renders where id = '{}'", w.a.render)
        )
        .await,
        1,
        "A deletes its own render"
    );
    assert_eq!(
        count_with(
            &w.su,
            "select count(*) from render_variants where render_id = $1",
            &[&w.a.render]
        )
        .await,
        0,
        "deleting a render cascades to its variants"
    );
    assert_eq!(
        count_with(
            &w.su,
            "select count(*) from renders where style is null and id = $1",
            &[&w.b.render]
        )
        .await,
        1
    );
}

#[tokio::test]
async fn render_variants_each_user_reads_and_deletes_only_its_own_and_cannot_insert_or_update() {
    let mut w = world().await;
    let (a, b) = (w.a.user, w.b.user);

    each_sees_only_its_own(&mut w, "select id::text from render_variants", |o| {
        o.variant
    })
    .await;

    denied_as(&mut w.su, b, &format!(
                "insert into render_variants (render_id, owner_id, idx, image_path) values ('{}', '{a}', 1, 'x.jpg')",
                w.a.render
            ), "B inserts a variant for A").await;
    denied_as(
        &mut w.su,
        a,
        &format!(
            "update render_variants set image_path = 'evil.jpg' where id = '{}'",
            w.a.variant
        ),
        "A updates its own variant",
    )
    .await;
    denied_as(
        &mut w.su,
        b,
        &format!(
            "update render_variants set image_path = 'evil.jpg' where id = '{}'",
            w.a.variant
        ),
        "B updates A's variant",
    )
    .await;

    assert_eq!(
        affected_as(
            &mut w.su,
            b,
            &format!("delete from render_variants where id = '{}'", w.a.variant)
        )
        .await,
        0
    );
    assert_eq!(
        count_with(
            &w.su,
            "select count(*) from render_variants where image_path not like 'evil%' and id = $1",
            &[&w.a.variant]
        )
        .await,
        1
    );
    assert_eq!(
        affected_as(
            &mut w.su,
            a,
            &format!("delete from render_variants where id = '{}'", w.a.variant)
        )
        .await,
        1
    );
    assert_eq!(
        count_with(&w.su, "select count(*) from render_variants", &[]).await,
        1,
        "only B's variant is left"
    );
}

#[tokio::test]
async fn collections_each_user_reads_creates_edits_and_deletes_only_its_own() {
    let mut w = world().await;
    let (a, b) = (w.a.user, w.b.user);

    each_sees_only_its_own(&mut w, "select id::text from collections", |o| o.collection).await;

    denied_as(
        &mut w.su,
        b,
        &format!("insert into collections (owner_id, name) values ('{a}', 'spam')"),
        "B creates a collection owned by A",
    )
    .await;
    assert_eq!(
        affected_as(
            &mut w.su,
            a,
            &format!("insert into collections (owner_id, name) values ('{a}', 'Baths')")
        )
        .await,
        1
    );

    assert_eq!(
        affected_as(
            &mut w.su,
            b,
            &format!(
                "update collections set name = 'pwned' where id = '{}'",
                w.a.collection
            )
        )
        .await,
        0
    );
    denied_as(
        &mut w.su,
        a,
        &format!(
            "update collections set owner_id = '{b}' where id = '{}'",
            w.a.collection
        ),
        "A gives its collection to B",
    )
    .await;
    assert_eq!(
        affected_as(
            &mut w.su,
            a,
            &format!(
                "update collections set name = 'Kitchens 2' where id = '{}'",
                w.a.collection
            )
        )
        .await,
        1
    );

    assert_eq!(
        affected_as(
            &mut w.su,
            b,
            &format!("delete from collections where id = '{}'", w.a.collection)
        )
        .await,
        0
    );
    let names = common::texts(
        &w.su,
        "select name from collections where owner_id = $1 order by name",
        &[&a],
    )
    .await;
    assert_eq!(names, vec!["Baths".to_string(), "Kitchens 2".to_string()]);
    assert_eq!(
        affected_as(&mut w.su, a, "delete from collections where name = 'Baths'").await,
        1
    );
    assert_eq!(
        count_with(
            &w.su,
            "select count(*) from collections where owner_id = $1",
            &[&b]
        )
        .await,
        1
    );
}

#[tokio::test]
async fn collection_items_each_user_reads_adds_and_removes_only_in_its_own_collections() {
    let mut w = world().await;
    let (a, b) = (w.a.user, w.b.user);

    each_sees_only_its_own(
        &mut w,
        "select render_id::text from collection_items",
        |o| o.render,
    )
    .await;

    denied_as(
        &mut w.su,
        b,
        &format!(
            "insert into collection_items (collection_id, render_id) values ('{}', '{}')",
            w.a.collection, w.b.render
        ),
        "B adds to A's collection",
    )
    .await;
    assert_eq!(
        count_with(
            &w.su,
            "select count(*) from collection_items where collection_id = $1",
            &[&w.a.collection]
        )
        .await,
        1
    );

    denied_as(
        &mut w.su,
        a,
        &format!(
            "update collection_items set added_at = now() where collection_id = '{}'",
            w.a.collection
        ),
        "A updates an item (items are added and removed, never edited)",
    )
    .await;

    assert_eq!(
        affected_as(
            &mut w.su,
            b,
            &format!(
                "delete from collection_items where collection_id = '{}'",
                w.a.collection
            )
        )
        .await,
        0
    );
    assert_eq!(
        count_with(
            &w.su,
            "select count(*) from collection_items where collection_id = $1",
            &[&w.a.collection]
        )
        .await,
        1
    );
    assert_eq!(
        affected_as(
            &mut w.su,
            a,
            &format!(
                "delete from collection_items where collection_id = '{}'",
                w.a.collection
            )
        )
        .await,
        1
    );
    // and A can add its own render back
    assert_eq!(
        affected_as(
            &mut w.su,
            a,
            &format!(
                "insert into collection_items (collection_id, render_id) values ('{}', '{}')",
                w.a.collection, w.a.render
            )
        )
        .await,
        1
    );
    assert_eq!(
        count_with(&w.su, "select count(*) from collection_items", &[]).await,
        2
    );
}

#[tokio::test]
async fn usage_ledger_each_user_reads_only_its_own_entries_and_cannot_write_any() {
    let mut w = world().await;
    let (a, b) = (w.a.user, w.b.user);

    each_sees_only_its_own(&mut w, "select id::text from usage_ledger", |o| o.debit).await;

    for (who, row) in [(a, w.a.debit), (b, w.a.debit)] {
        denied_as(
            &mut w.su,
            who,
            &format!("update usage_ledger set amount = 0 where id = '{row}'"),
            "a client edits a ledger entry",
        )
        .await;
        denied_as(
            &mut w.su,
            who,
            &format!("delete from usage_ledger where id = '{row}'"),
            "a client deletes a ledger entry",
        )
        .await;
    }
    denied_as(&mut w.su, b, &format!("insert into usage_ledger (owner_id, kind, amount) values ('{a}', 'generation_debit', 100)"), "B debits A").await;
    assert_eq!(
        count_with(
            &w.su,
            "select coalesce(sum(amount), 0) from usage_ledger where owner_id = $1",
            &[&a]
        )
        .await,
        1
    );
    assert_eq!(
        count_with(&w.su, "select count(*) from usage_ledger", &[]).await,
        2
    );
}

#[tokio::test]
async fn community_tables_are_readable_by_everyone_and_writable_by_no_client() {
    let mut w = world().await;
    let (a, b) = (w.a.user, w.b.user);
    let cc = w.community_collection;
    let ci = w.community_item;

    for who in [Who::User(a), Who::User(b), Who::Anon] {
        assert_eq!(
            texts_as(&mut w.su, who, "select id::text from community_collections").await,
            vec![s(cc)]
        );
        assert_eq!(
            texts_as(&mut w.su, who, "select id::text from community_items").await,
            vec![s(ci)]
        );
    }

    let writes = [
        "insert into community_collections (title) values ('spam')".to_string(),
        format!("update community_collections set title = 'pwned' where id = '{cc}'"),
        format!("delete from community_collections where id = '{cc}'"),
        format!("insert into community_items (collection_id, external_image_url) values ('{cc}', 'https://evil.test/x.jpg')"),
        format!("update community_items set order_index = 99 where id = '{ci}'"),
        format!("delete from community_items where id = '{ci}'"),
    ];
    for sql in &writes {
        denied_as(&mut w.su, a, sql, &format!("A: {sql}")).await;
        denied_as(&mut w.su, b, sql, &format!("B: {sql}")).await;
        assert_denied(as_anon(&mut w.su, sql).await, &format!("anon: {sql}"));
    }
    assert_eq!(
        count_with(
            &w.su,
            "select count(*) from community_collections where title = 'Scandinavian' and id = $1",
            &[&cc]
        )
        .await,
        1
    );
    assert_eq!(
        count_with(&w.su, "select count(*) from community_collections", &[]).await,
        1
    );
    assert_eq!(
        count_with(
            &w.su,
            "select count(*) from community_items where order_index = 0 and id = $1",
            &[&ci]
        )
        .await,
        1
    );
    assert_eq!(
        count_with(&w.su, "select count(*) from community_items", &[]).await,
        1
    );
}

#[tokio::test]
async fn plans_are_readable_by_anon_and_authenticated_and_writable_by_neither() {
    let mut w = world().await;
    let a = w.a.user;
    for who in [Who::User(a), Who::Anon] {
        assert_eq!(
            texts_as(
                &mut w.su,
                who,
                "select price_id || ':' || monthly_generations || ':' || is_default from plans"
            )
            .await,
            vec!["free:30:true".to_string()]
        );
    }
    let writes = [
        "insert into plans (price_id, name, monthly_generations) values ('price_big', 'Big', 100000)",
        "update plans set monthly_generations = 100000 where price_id = 'free'",
        "delete from plans where price_id = 'free'",
    ];
    for sql in writes {
        denied_as(&mut w.su, a, sql, &format!("authenticated: {sql}")).await;
        assert_denied(as_anon(&mut w.su, sql).await, &format!("anon: {sql}"));
    }
    assert_eq!(
        texts_as(
            &mut w.su,
            Who::User(a),
            "select price_id || ':' || monthly_generations from plans"
        )
        .await,
        vec!["free:30".to_string()]
    );
}

#[tokio::test]
async fn anon_can_read_no_private_table() {
    let mut w = world().await;
    for table in [
        "profiles",
        "generation_jobs",
        "renders",
        "render_variants",
        "collections",
        "collection_items",
        "usage_ledger",
    ] {
        assert_denied(
            query_as(&mut w.su, Who::Anon, &format!("select * from {table}")).await,
            &format!("anon reads {table}"),
        );
    }
    assert_denied(
        as_anon(
            &mut w.su,
            &format!("insert into generation_jobs (owner_id, mode, prompt) values ('{}', 'imagine', 'x')", w.a.user),
        )
        .await,
        "anon submits a job",
    );
    assert_eq!(
        count_with(&w.su, "select count(*) from generation_jobs", &[]).await,
        2
    );
}

#[tokio::test]
async fn service_role_bypasses_rls_reads_every_row_and_writes_plans_and_the_ledger() {
    let mut w = world().await;
    assert_eq!(
        texts_as(
            &mut w.su,
            Who::ServiceRole,
            "select id::text from generation_jobs"
        )
        .await,
        sorted(vec![s(w.a.job), s(w.b.job)])
    );
    query_as(
        &mut w.su,
        Who::ServiceRole,
        "insert into plans (price_id, name, monthly_generations) values ('price_pro', 'Pro', 500)",
    )
    .await
    .expect("service_role writes plans");
    query_as(
        &mut w.su,
        Who::ServiceRole,
        &format!(
            "insert into usage_ledger (owner_id, kind, amount) values ('{}', 'credit_adjustment', 5)",
            w.a.user
        ),
    )
    .await
    .expect("service_role writes the ledger");
    assert_eq!(
        count_with(
            &w.su,
            "select count(*) from plans where price_id = 'price_pro'",
            &[]
        )
        .await,
        1
    );
    assert_eq!(
        count_with(
            &w.su,
            "select count(*) from usage_ledger where kind = 'credit_adjustment'",
            &[]
        )
        .await,
        1
    );
}

// ---------------------------------------------------------------------------
// Each hole seed 004 left open, closed.
// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_client_may_submit_a_starting_job_for_itself() {
    let db = common::migrated_db().await;
    let mut su = db.client().await;
    let a = common::user_with_profile(&su).await;
    let n = common::as_user(
        &mut su,
        a,
        &format!("insert into generation_jobs (owner_id, mode, prompt) values ('{a}', 'imagine', 'a loft')"),
    )
    .await
    .expect("own starting job");
    assert_eq!(n, 1);
    let row = su
        .query_one(
            "select status, prediction_id, error, output is null, completed_at is null from generation_jobs where owner_id = $1",
            &[&a],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "starting");
    assert_eq!(row.get::<_, Option<String>>(1), None);
    assert_eq!(row.get::<_, Option<String>>(2), None);
    assert!(row.get::<_, bool>(3));
    assert!(row.get::<_, bool>(4));
}

#[tokio::test]
async fn a_client_cannot_submit_a_job_for_another_user() {
    let db = common::migrated_db().await;
    let mut su = db.client().await;
    let a = common::user_with_profile(&su).await;
    let b = common::user_with_profile(&su).await;
    let err = common::as_user(
        &mut su,
        b,
        &format!(
            "insert into generation_jobs (owner_id, mode, prompt) values ('{a}', 'imagine', 'x')"
        ),
    )
    .await
    .expect_err("B submits as A");
    assert_eq!(
        common::sqlstate(&err),
        DENIED,
        "{}",
        reactor::store::db::describe(&err)
    );
    assert_eq!(
        count_with(&su, "select count(*) from generation_jobs", &[]).await,
        0
    );
}

#[tokio::test]
async fn a_job_submitted_for_another_user_is_refused_before_revealing_that_users_in_flight_job_or_quota(
) {
    // The submit rules run in a BEFORE trigger, which fires before RLS checks
    // the new row: without an ownership check first, B would get A's PT409 or
    // A's "n of m used on plan X" instead of a plain refusal.
    let db = common::migrated_db().await;
    let mut su = db.client().await;
    let a = common::user_with_profile(&su).await;
    let b = common::user_with_profile(&su).await;
    su.execute(
        "insert into generation_jobs (owner_id, mode, prompt) values ($1, 'imagine', 'in flight')",
        &[&a],
    )
    .await
    .unwrap();
    let err = common::as_user(
        &mut su,
        b,
        &format!(
            "insert into generation_jobs (owner_id, mode, prompt) values ('{a}', 'imagine', 'x')"
        ),
    )
    .await
    .expect_err("B submits as A while A has a job in flight");
    assert_eq!(
        common::sqlstate(&err),
        DENIED,
        "{}",
        reactor::store::db::describe(&err)
    );

    su.execute(
        "update generation_jobs set status = 'failed' where owner_id = $1",
        &[&a],
    )
    .await
    .unwrap();
    su.execute(
        "update plans set monthly_generations = 1 where price_id = 'free'",
        &[],
    )
    .await
    .unwrap();
    su.execute(
        "insert into usage_ledger (owner_id, kind, amount) values ($1, 'generation_debit', 1)",
        &[&a],
    )
    .await
    .unwrap();
    let err = common::as_user(
        &mut su,
        b,
        &format!(
            "insert into generation_jobs (owner_id, mode, prompt) values ('{a}', 'imagine', 'x')"
        ),
    )
    .await
    .expect_err("B submits as A while A is at its quota");
    assert_eq!(
        common::sqlstate(&err),
        DENIED,
        "{}",
        reactor::store::db::describe(&err)
    );
    let message = reactor::store::db::describe(&err);
    assert!(
        !message.contains("Free") && !message.contains("1 of 1"),
        "leaks A's plan: {message}"
    );
    assert_eq!(
        count_with(&su, "select count(*) from generation_jobs", &[]).await,
        1
    );
}

#[tokio::test]
async fn a_client_cannot_submit_a_job_in_any_status_but_starting() {
    let db = common::migrated_db().await;
    let mut su = db.client().await;
    let a = common::user_with_profile(&su).await;
    for status in ["processing", "succeeded", "failed", "canceled"] {
        let err = common::as_user(
            &mut su,
            a,
            &format!(
                "insert into generation_jobs (owner_id, mode, prompt, status) values ('{a}', 'imagine', 'x', '{status}')"
            ),
        )
        .await
        .expect_err(status);
        assert_eq!(
            common::sqlstate(&err),
            DENIED,
            "{status}: {}",
            reactor::store::db::describe(&err)
        );
    }
    assert_eq!(
        count_with(&su, "select count(*) from generation_jobs", &[]).await,
        0
    );
}

#[tokio::test]
async fn a_client_cannot_submit_a_job_carrying_prediction_id_error_output_or_completed_at() {
    let db = common::migrated_db().await;
    let mut su = db.client().await;
    let a = common::user_with_profile(&su).await;
    for (column, value) in [
        ("prediction_id", "'pred-123'"),
        ("prediction_id", "''"),
        ("error", "'boom'"),
        ("output", r#"'["https://evil.test/a.jpg"]'::jsonb"#),
        ("output", "'null'::jsonb"),
        ("completed_at", "now()"),
    ] {
        let err = common::as_user(
            &mut su,
            a,
            &format!("insert into generation_jobs (owner_id, mode, prompt, {column}) values ('{a}', 'imagine', 'x', {value})"),
        )
        .await
        .expect_err(column);
        assert_eq!(
            common::sqlstate(&err),
            DENIED,
            "{column} = {value}: {}",
            reactor::store::db::describe(&err)
        );
    }
    assert_eq!(
        count_with(&su, "select count(*) from generation_jobs", &[]).await,
        0
    );
}

/// The columns a client's submission may fill; every other column of
/// generation_jobs belongs to the server (status is checked separately, the
/// timestamps are overwritten).
const SUBMISSION_FIELDS: &[&str] = &[
    "id",
    "owner_id",
    "mode",
    "room_type",
    "style",
    "input1_path",
    "input2_path",
    "prompt",
    "idempotency_key",
    "status",
    "created_at",
    "updated_at",
];

#[tokio::test]
async fn a_client_cannot_set_any_server_owned_job_column_including_ones_added_later() {
    let db = common::migrated_db().await;
    let mut su = db.client().await;
    let a = common::user_with_profile(&su).await;
    // Read from the catalog, so a column a later migration adds is covered too.
    let submission: Vec<String> = SUBMISSION_FIELDS.iter().map(|s| s.to_string()).collect();
    let columns: Vec<(String, String)> = su
        .query(
            "select column_name::text, data_type::text from information_schema.columns
             where table_schema = 'public' and table_name = 'generation_jobs'
               and column_name <> all($1)
             order by ordinal_position",
            &[&submission],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let names: Vec<&str> = columns.iter().map(|(c, _)| c.as_str()).collect();
    for seed_column in ["prediction_id", "error", "completed_at", "output"] {
        assert!(names.contains(&seed_column), "{names:?}");
    }
    for (column, data_type) in &columns {
        let values: &[&str] = match data_type.as_str() {
            "text" => &["'x'", "''"],
            "jsonb" => &["'[\"https://evil.test/a.jpg\"]'::jsonb", "'null'::jsonb"],
            "timestamp with time zone" => &["now()"],
            "uuid" => &["gen_random_uuid()"],
            "integer" | "bigint" | "smallint" => &["0"],
            "boolean" => &["false"],
            other => panic!("add a sample value for {column} of type {other}"),
        };
        for value in values {
            let result = common::as_user(
                &mut su,
                a,
                &format!(
                    "insert into generation_jobs (owner_id, mode, prompt, {column}) values ('{a}', 'imagine', 'x', {value})"
                ),
            )
            .await;
            let err = result.expect_err(&format!("client sets {column} = {value}"));
            let message = reactor::store::db::describe(&err);
            assert_eq!(
                common::sqlstate(&err),
                DENIED,
                "{column} = {value}: {message}"
            );
            assert!(
                message.contains(&format!("generation_jobs.{column}")),
                "the refusal names the column: {message}"
            );
        }
    }
    assert_eq!(
        count_with(&su, "select count(*) from generation_jobs", &[]).await,
        0
    );
}

#[tokio::test]
async fn a_client_cannot_back_date_its_job() {
    // A back-dated created_at would make a fresh job look stuck to the sweeper.
    let db = common::migrated_db().await;
    let mut su = db.client().await;
    let a = common::user_with_profile(&su).await;
    affected_as(&mut su, a, &format!(
            "insert into generation_jobs (owner_id, mode, prompt, created_at) values ('{a}', 'imagine', 'x', now() - interval '1 day')"
        )).await;
    assert_eq!(
        count_with(
            &su,
            "select count(*) from generation_jobs where owner_id = $1 and created_at > now() - interval '1 hour'",
            &[&a]
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_client_can_neither_update_nor_delete_its_own_job() {
    let db = common::migrated_db().await;
    let mut su = db.client().await;
    let a = common::user_with_profile(&su).await;
    affected_as(
        &mut su,
        a,
        &format!(
            "insert into generation_jobs (owner_id, mode, prompt) values ('{a}', 'imagine', 'x')"
        ),
    )
    .await;
    for sql in [
        "update generation_jobs set status = 'succeeded'",
        "update generation_jobs set prediction_id = 'pred-1'",
        "update generation_jobs set output = '[\"https://evil.test/a.jpg\"]'",
        "update generation_jobs set status = 'canceled'",
        "delete from generation_jobs",
    ] {
        denied_as(&mut su, a, sql, sql).await;
    }
    let row = su
        .query_one(
            "select status, prediction_id, output is null from generation_jobs where owner_id = $1",
            &[&a],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "starting");
    assert_eq!(row.get::<_, Option<String>>(1), None);
    assert!(row.get::<_, bool>(2));
}

#[tokio::test]
async fn a_client_cannot_write_to_the_usage_ledger_even_for_itself() {
    let db = common::migrated_db().await;
    let mut su = db.client().await;
    let a = common::user_with_profile(&su).await;
    for sql in [
        format!("insert into usage_ledger (owner_id, kind, amount) values ('{a}', 'generation_debit', -100)"),
        format!("insert into usage_ledger (owner_id, kind, amount) values ('{a}', 'credit_adjustment', 100)"),
    ] {
        denied_as(&mut su, a, &sql, &sql).await;
    }
    assert_eq!(
        count_with(&su, "select count(*) from usage_ledger", &[]).await,
        0
    );
}

#[tokio::test]
async fn a_client_cannot_insert_renders_or_render_variants_even_for_itself() {
    let db = common::migrated_db().await;
    let mut su = db.client().await;
    let a = common::user_with_profile(&su).await;
    let job = insert_id(
        &su,
        "insert into generation_jobs (owner_id, mode, prompt, status) values ($1, 'imagine', 'x', 'succeeded') returning id",
        &[&a],
    )
    .await;
    denied_as(
        &mut su,
        a,
        &format!("insert into renders (job_id, owner_id, mode) values ('{job}', '{a}', 'imagine')"),
        "A inserts its own render",
    )
    .await;
    assert_eq!(
        count_with(&su, "select count(*) from renders", &[]).await,
        0
    );

    let render = insert_id(
        &su,
        "insert into renders (job_id, owner_id, mode) values ($1, $2, 'imagine') returning id",
        &[&job, &a],
    )
    .await;
    denied_as(&mut su, a, &format!(
                "insert into render_variants (render_id, owner_id, idx, image_path) values ('{render}', '{a}', 0, 'x.jpg')"
            ), "A inserts its own variant").await;
    assert_eq!(
        count_with(&su, "select count(*) from render_variants", &[]).await,
        0
    );
}

#[tokio::test]
async fn a_collection_item_may_only_point_at_a_render_of_the_same_owner() {
    let mut w = world().await;
    let (a, b) = (w.a.user, w.b.user);
    // A's own collection, B's render: refused.
    denied_as(
        &mut w.su,
        a,
        &format!(
            "insert into collection_items (collection_id, render_id) values ('{}', '{}')",
            w.a.collection, w.b.render
        ),
        "A files B's render",
    )
    .await;
    assert_eq!(
        count_with(
            &w.su,
            "select count(*) from collection_items where render_id = $1",
            &[&w.b.render]
        )
        .await,
        1,
        "only B's own item points at B's render"
    );
    // A's own render in a second collection of A: allowed.
    let second = insert_id(
        &w.su,
        "insert into collections (owner_id, name) values ($1, 'Second') returning id",
        &[&a],
    )
    .await;
    assert_eq!(
        affected_as(
            &mut w.su,
            a,
            &format!(
                "insert into collection_items (collection_id, render_id) values ('{second}', '{}')",
                w.a.render
            )
        )
        .await,
        1
    );
    // B: A's render into B's collection, refused too.
    denied_as(
        &mut w.su,
        b,
        &format!(
            "insert into collection_items (collection_id, render_id) values ('{}', '{}')",
            w.b.collection, w.a.render
        ),
        "B files A's render",
    )
    .await;
    assert_eq!(
        count_with(&w.su, "select count(*) from collection_items", &[]).await,
        3
    );
}

#[tokio::test]
async fn a_client_cannot_set_its_profiles_price_id_on_insert() {
    let db = common::migrated_db().await;
    let mut su = db.client().await;
    su.execute(
        "insert into plans (price_id, name, monthly_generations) values ('price_pro', 'Pro', 1000)",
        &[],
    )
    .await
    .unwrap();
    let a = common::auth_user(&su).await;
    let err = common::as_user(
        &mut su,
        a,
        &format!("insert into profiles (id, price_id) values ('{a}', 'price_pro')"),
    )
    .await
    .expect_err("client picks its plan");
    assert_eq!(
        common::sqlstate(&err),
        DENIED,
        "{}",
        reactor::store::db::describe(&err)
    );
    assert_eq!(
        count_with(&su, "select count(*) from profiles", &[]).await,
        0
    );
}

async fn price_id(su: &Client, profile: Uuid) -> Option<String> {
    su.query_one("select price_id from profiles where id = $1", &[&profile])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_client_cannot_change_or_clear_its_profiles_price_id() {
    let db = common::migrated_db().await;
    let mut su = db.client().await;
    su.execute(
        "insert into plans (price_id, name, monthly_generations) values ('price_pro', 'Pro', 1000), ('price_basic', 'Basic', 50)",
        &[],
    )
    .await
    .unwrap();
    let a = common::user_with_profile(&su).await;
    // Unset -> set: refused.
    denied_as(
        &mut su,
        a,
        "update profiles set price_id = 'price_pro'",
        "client sets price_id",
    )
    .await;
    assert_eq!(price_id(&su, a).await, None);

    // Billing sets it; the client can neither change nor clear it.
    su.execute(
        "update profiles set price_id = 'price_basic' where id = $1",
        &[&a],
    )
    .await
    .expect("billing sets the plan");
    for sql in [
        "update profiles set price_id = 'price_pro'",
        "update profiles set price_id = null",
    ] {
        denied_as(&mut su, a, sql, sql).await;
    }
    assert_eq!(price_id(&su, a).await, Some("price_basic".to_string()));
    // An edit that leaves price_id alone is still fine.
    assert_eq!(
        affected_as(&mut su, a, "update profiles set updated_at = now()").await,
        1
    );
    assert_eq!(price_id(&su, a).await, Some("price_basic".to_string()));
}

#[tokio::test]
async fn a_client_cannot_create_a_default_favorites_collection() {
    let db = common::migrated_db().await;
    let mut su = db.client().await;
    let a = common::user_with_profile(&su).await;
    let err = common::as_user(
        &mut su,
        a,
        &format!("insert into collections (owner_id, name, is_default_favorites) values ('{a}', 'My Favorites', true)"),
    )
    .await
    .expect_err("client squats the favorites collection");
    assert_eq!(
        common::sqlstate(&err),
        DENIED,
        "{}",
        reactor::store::db::describe(&err)
    );
    assert_eq!(
        count_with(&su, "select count(*) from collections", &[]).await,
        0
    );
}

#[tokio::test]
async fn a_client_cannot_unflag_delete_or_forge_a_default_favorites_collection() {
    let db = common::migrated_db().await;
    let mut su = db.client().await;
    let a = common::user_with_profile(&su).await;
    let fav = insert_id(
        &su,
        "insert into collections (owner_id, name, is_default_favorites) values ($1, 'My Favorites', true) returning id",
        &[&a],
    )
    .await;
    let other = insert_id(
        &su,
        "insert into collections (owner_id, name) values ($1, 'Kitchens') returning id",
        &[&a],
    )
    .await;

    denied_as(
        &mut su,
        a,
        &format!("update collections set is_default_favorites = false where id = '{fav}'"),
        "client unflags its favorites",
    )
    .await;
    denied_as(
        &mut su,
        a,
        &format!("update collections set is_default_favorites = true where id = '{other}'"),
        "client flags another collection as favorites",
    )
    .await;
    assert_eq!(
        affected_as(
            &mut su,
            a,
            &format!("delete from collections where id = '{fav}'")
        )
        .await,
        0,
        "the favorites collection cannot be deleted by its owner"
    );
    // Renaming it is a normal edit.
    assert_eq!(
        affected_as(
            &mut su,
            a,
            &format!("update collections set name = 'Loved' where id = '{fav}'")
        )
        .await,
        1
    );
    let rows: Vec<(Uuid, bool)> = su
        .query(
            "select id, is_default_favorites from collections where owner_id = $1 order by is_default_favorites desc",
            &[&a],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, vec![(fav, true), (other, false)]);
}

// ---------------------------------------------------------------------------
// Attacks from outside the database: a malicious or compromised provider, and
// the reactor's own HTTP surface.
// ---------------------------------------------------------------------------

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

const LONG: std::time::Duration = std::time::Duration::from_secs(60);

/// Serves `app` on `bind` (an address with port 0); its base URL.
async fn serve(bind: &str, app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind(bind).await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

/// A service only the reactor's own network should reach (a cloud metadata
/// endpoint, an internal admin page): answers every request with a JPEG, and
/// counts them.
async fn internal_service(bind: &str) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        counter.fetch_add(1, SeqCst);
        async { ([("content-type", "image/jpeg")], common::JPEG.to_vec()) }
    });
    (serve(bind, app).await, hits)
}

/// The provider's output URL redirects to an internal address: the reactor
/// must not follow it (the internal answer would be stored as a public render).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_output_that_redirects_to_a_private_address_is_never_fetched() {
    use common::fake_replicate::FakeReplicate;
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    // 127.0.0.2 is loopback too, but not the host the tests allow downloads from.
    let (internal, internal_hits) = internal_service("127.0.0.2:0").await;
    let target = format!("{internal}/latest/meta-data/secret.jpg");
    let cdn = serve(
        "127.0.0.1:0",
        axum::Router::new().route(
            "/out.jpg",
            axum::routing::get(move || {
                let target = target.clone();
                async move { axum::response::Redirect::temporary(&target) }
            }),
        ),
    )
    .await;
    let fake = FakeReplicate::start().await;
    let reactor = common::start_reactor_with(&db, storage.path(), &fake.reactor_flags(&[])).await;
    let client = db.client().await;
    let user = common::user_with_profile(&client).await;
    let id = common::submit_job(&db, user, "imagine", "a den")
        .await
        .unwrap();
    common::eventually("prediction created", LONG, || async {
        !fake.predictions().is_empty()
    })
    .await;
    let pid = fake.predictions()[0].id.clone();
    fake.finish(
        &pid,
        "succeeded",
        serde_json::json!([format!("{cdn}/out.jpg")]),
        serde_json::json!(null),
    );
    let dead = format!(
        "select count(*) from reactor.handler_state where handler = 'renders'
         and row_id = '{id}' and dead_at is not null and last_error like '%not a public address%'"
    );
    common::wait_for_count(&client, "the render refused", &dead, 1).await;
    // A render that can never be made fails its job, uncharged.
    common::wait_status(&client, id, "failed").await;
    assert_eq!(
        internal_hits.load(SeqCst),
        0,
        "the internal service was reached"
    );
    let renders = format!("select count(*) from renders where job_id = '{id}'");
    assert_eq!(common::count(&client, &renders).await, 0);
    reactor.stop().await;
}

/// Names and literals that lead to loopback, private or metadata addresses
/// are refused before anything is sent; allowed hosts are fetched.
#[tokio::test]
async fn output_downloads_reach_no_private_address_by_name_literal_or_redirect() {
    use reactor::http::public_fetch::{AllowedHosts, FetchError, PublicFetch};
    let (internal, hits) = internal_service("127.0.0.1:0").await;
    let port = internal.rsplit(':').next().unwrap().to_string();
    let strict = PublicFetch::new(LONG, AllowedHosts::default()).unwrap();
    for url in [
        internal.clone(),
        format!("http://localhost:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://2130706433:{port}/"), // 127.0.0.1 as one number
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[fd00:ec2::254]/latest/meta-data/".to_string(),
        "http://0.0.0.0/".to_string(),
    ] {
        let got = strict.get(&url).await;
        assert!(matches!(got, Err(FetchError::Refused(_))), "{url}: {got:?}");
    }
    assert_eq!(hits.load(SeqCst), 0);
    // An allowed host is fetched, but a redirect from it to another is checked.
    let allowed = PublicFetch::new(
        LONG,
        AllowedHosts::parse(&format!("127.0.0.1:{port}")).unwrap(),
    )
    .unwrap();
    assert!(allowed.get(&internal).await.unwrap().status().is_success());
    assert_eq!(hits.load(SeqCst), 1);
    let (other, other_hits) = internal_service("127.0.0.1:0").await;
    let redirector = serve(
        "127.0.0.1:0",
        axum::Router::new().fallback(move || {
            let to = other.clone();
            async move { axum::response::Redirect::permanent(&to) }
        }),
    )
    .await;
    let both = PublicFetch::new(
        LONG,
        AllowedHosts::parse(&format!("127.0.0.1:{port},{}", &redirector[7..])).unwrap(),
    )
    .unwrap();
    let got = both.get(&redirector).await;
    assert!(matches!(got, Err(FetchError::Refused(_))), "{got:?}");
    assert_eq!(other_hits.load(SeqCst), 0);
}

/// Replicate's API at `base`, as the reactor uses it.
fn replicate(base: &str) -> reactor::providers::replicate::Replicate {
    reactor::providers::replicate::Replicate::new(
        base,
        common::fake_replicate::TOKEN,
        "owner/model",
        std::time::Duration::from_secs(5),
    )
    .unwrap()
}

fn job_input() -> reactor::providers::JobInput {
    reactor::providers::JobInput {
        id: Uuid::new_v4(),
        mode: "imagine".into(),
        room_type: None,
        style: None,
        prompt: Some("a den".into()),
        images: vec![],
    }
}

/// The prediction list's `next` link is followed only on the API's own
/// origin: the bearer token goes with it.
#[tokio::test]
async fn the_prediction_lists_next_link_never_takes_the_token_to_another_host() {
    use reactor::providers::Provider as _;
    let stolen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let thief = stolen.clone();
    let elsewhere = serve(
        "127.0.0.1:0",
        axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
            let auth = headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string());
            thief.lock().unwrap().extend(auth);
            async { axum::Json(serde_json::json!({"results": []})) }
        }),
    )
    .await;
    let second_pages = Arc::new(AtomicUsize::new(0));
    let counter = second_pages.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    let own = base.clone();
    let app = axum::Router::new().route(
        "/v1/predictions",
        axum::routing::get(
            move |axum::extract::Query(q): axum::extract::Query<
                std::collections::HashMap<String, String>,
            >| {
                let next = match q.get("cursor").map(String::as_str) {
                    None => format!("{own}/predictions?cursor=2"),
                    _ => {
                        counter.fetch_add(1, SeqCst);
                        format!("{elsewhere}/v1/predictions?cursor=3")
                    }
                };
                async move { axum::Json(serde_json::json!({"results": [], "next": next})) }
            },
        ),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let found = replicate(&base)
        .find(&job_input(), chrono::Utc::now())
        .await
        .unwrap();
    assert!(matches!(found, reactor::providers::Found::Nothing));
    assert_eq!(
        second_pages.load(SeqCst),
        1,
        "a next page on the same origin is read"
    );
    assert_eq!(
        *stolen.lock().unwrap(),
        Vec::<String>::new(),
        "the token went elsewhere"
    );
}

/// An endless answer from the provider is cut off at a cap, not read into
/// memory until a timeout.
#[tokio::test]
async fn an_endless_provider_answer_is_cut_off_at_the_cap() {
    use reactor::providers::Provider as _;
    let app = axum::Router::new().route(
        "/v1/predictions/{id}",
        axum::routing::get(|| async {
            let start = futures::stream::once(async {
                Ok::<_, std::io::Error>(bytes::Bytes::from_static(
                    br#"{"id":"p","status":"starting","pad":""#,
                ))
            });
            let endless =
                futures::stream::repeat_with(|| Ok(bytes::Bytes::from(vec![b'x'; 65536])));
            (
                [("content-type", "application/json")],
                axum::body::Body::from_stream(futures::StreamExt::chain(start, endless)),
            )
        }),
    );
    let base = format!("{}/v1", serve("127.0.0.1:0", app).await);
    let err = replicate(&base).get("p").await.unwrap_err().to_string();
    assert!(err.contains("larger than"), "{err}");
}

const ADMIN: &str = "security-admin-token";

/// A reactor with an admin token, ready; its HTTP base URL.
async fn reactor_with_admin(db: &TestDb, storage: &std::path::Path) -> (common::InProcess, String) {
    let reactor = common::start_reactor(db, storage, &["--admin-token", ADMIN]).await;
    reactor.wait_ready().await;
    let base = format!("http://{}", reactor.http_addr);
    (reactor, base)
}

/// Opens `/v1/events` with `token`; the answer (streaming when 200).
async fn open_events(base: &str, token: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{base}/v1/events"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// Reads an event stream until its text contains `needle`; the text.
async fn read_until(response: &mut reqwest::Response, needle: &str) -> String {
    let mut text = String::new();
    tokio::time::timeout(LONG, async {
        while !text.contains(needle) {
            match response.chunk().await.unwrap() {
                Some(chunk) => text.push_str(&String::from_utf8_lossy(&chunk)),
                None => break,
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {needle:?} in time: {text}"));
    text
}

#[tokio::test]
async fn one_user_cannot_hold_more_than_ten_event_streams_open() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let (reactor, base) = reactor_with_admin(&db, storage.path()).await;
    let mut open = Vec::new();
    for _ in 0..10 {
        let stream = open_events(&base, ADMIN).await;
        assert_eq!(stream.status(), 200);
        open.push(stream);
    }
    let eleventh = open_events(&base, ADMIN).await;
    assert_eq!(eleventh.status(), 429);
    let body = eleventh.text().await.unwrap();
    assert!(body.contains("too many open event streams"), "{body}");
    // A closed stream frees its slot.
    drop(open.pop());
    common::eventually("a freed slot", LONG, || async {
        open_events(&base, ADMIN).await.status() == 200
    })
    .await;
    reactor.stop().await;
}

#[tokio::test]
async fn guessing_the_admin_token_is_slowed_down_per_client_address() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let (reactor, base) = reactor_with_admin(&db, storage.path()).await;
    let http = reqwest::Client::new();
    let summary = |token: &str| {
        http.get(format!("{base}/v1/admin/summary"))
            .bearer_auth(token)
            .send()
    };
    let mut statuses = Vec::new();
    for guess in 0..8 {
        statuses.push(
            summary(&format!("guess-{guess}"))
                .await
                .unwrap()
                .status()
                .as_u16(),
        );
    }
    assert_eq!(&statuses[..5], &[401; 5], "{statuses:?}");
    assert!(
        statuses[5..].contains(&429),
        "guesses went on unhindered: {statuses:?}"
    );
    // While it waits, the address gets nothing checked, the right token included.
    let locked = summary(ADMIN).await.unwrap();
    assert_eq!(locked.status(), 429);
    assert!(locked.headers().contains_key("retry-after"));
    // And the event stream, which also takes the admin token, is locked too.
    assert_eq!(open_events(&base, "another-guess").await.status(), 429);
    reactor.stop().await;
}

#[tokio::test]
async fn the_dashboard_may_not_be_framed_and_runs_only_its_own_script_and_style() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let (reactor, base) = reactor_with_admin(&db, storage.path()).await;
    let page = reqwest::get(format!("{base}/dashboard")).await.unwrap();
    let header = |name: &str| {
        page.headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let csp = header("content-security-policy");
    assert_eq!(header("x-frame-options"), "DENY");
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("referrer-policy"), "no-referrer");
    let html = page.text().await.unwrap();
    let hash = |tag: &str| {
        let start = html.find(&format!("<{tag}>")).unwrap() + tag.len() + 2;
        let end = start + html[start..].find(&format!("</{tag}>")).unwrap();
        let digest = sha2::Sha256::digest(&html.as_bytes()[start..end]);
        format!(
            "'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        )
    };
    for directive in [
        "default-src 'none'".to_string(),
        format!("script-src {}", hash("script")),
        format!("style-src {}", hash("style")),
        "connect-src 'self'".to_string(),
        "frame-ancestors 'none'".to_string(),
    ] {
        assert!(
            csp.split(';').any(|d| d.trim() == directive),
            "{directive:?} not in {csp:?}"
        );
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    // What the policy would block must not be on the page.
    assert!(!html.contains("style=\"") && !html.contains(" onclick="));
    reactor.stop().await;
}

/// A flood of job_status hints beyond what the feed holds: the hints that
/// do not fit are dropped, and viewers are told to resync, never left
/// believing they saw everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_the_status_feeds_cap_tells_viewers_to_resync() {
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let (reactor, base) = reactor_with_admin(&db, storage.path()).await;
    let mut stream = open_events(&base, ADMIN).await;
    assert_eq!(stream.status(), 200);
    // Hold the checks up, so that the hints pile up past the cap.
    let mut locker = db.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("lock table public.generation_jobs in access exclusive mode")
        .await
        .unwrap();
    let flooder = db.client().await;
    flooder
        .batch_execute(
            "select pg_notify('job_status', json_build_object(
               'table', 'generation_jobs', 'op', 'UPDATE', 'id', gen_random_uuid())::text)
             from generate_series(1, 120000)",
        )
        .await
        .unwrap();
    let text = read_until(&mut stream, "event: resync").await;
    assert!(text.contains("overloaded"), "{text}");
    lock.rollback().await.unwrap();
    reactor.stop().await;
}
