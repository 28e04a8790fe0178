//! Rows as clients and the service write them: users, profiles, jobs.
use std::time::Duration;
use tokio_postgres::Client;

use super::{eventually, TestDb};
use uuid::Uuid;

/// Creates an auth user (and nothing else); returns its id.
pub async fn auth_user(client: &Client) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    client
        .execute(
            "insert into auth.users (id, email) values ($1, $2)",
            &[&id, &format!("{id}@example.test")],
        )
        .await
        .expect("insert auth user");
    id
}

/// Creates an auth user and its profile (as the service); returns its id.
pub async fn user_with_profile(client: &Client) -> uuid::Uuid {
    let id = auth_user(client).await;
    client
        .execute("insert into profiles (id) values ($1)", &[&id])
        .await
        .expect("insert profile");
    id
}

/// Runs `sql` as Supabase runs a client request: role `authenticated` with the
/// user's JWT claims, in a transaction that is committed when `sql` succeeds.
pub async fn as_user(
    client: &mut Client,
    user: uuid::Uuid,
    sql: &str,
) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    reactor::store::db::act_as_user(&tx, user).await?;
    let n = tx.execute(sql, &[]).await?;
    tx.commit().await?;
    Ok(n)
}

/// Inserts a succeeded job (as the service) with the given output URLs.
pub async fn succeeded_job(client: &Client, owner: uuid::Uuid, output: &[String]) -> uuid::Uuid {
    let row = client
        .query_one(
            "insert into generation_jobs (owner_id, mode, prompt, status, output, completed_at)
             values ($1, 'imagine', 'a test room', 'succeeded', $2, now()) returning id",
            &[&owner, &serde_json::json!(output)],
        )
        .await
        .expect("insert succeeded job");
    row.get(0)
}

/// Submits a generation job the way supabase-js does (role authenticated +
/// JWT claims), for a living room with one input photo.
pub async fn submit_job(
    db: &TestDb,
    user: Uuid,
    mode: &str,
    prompt: &str,
) -> Result<Uuid, tokio_postgres::Error> {
    let mut client = db.client().await;
    let tx = client.transaction().await?;
    reactor::store::db::act_as_user(&tx, user).await?;
    let row = tx
        .query_one(
            "insert into generation_jobs (owner_id, mode, prompt, room_type, style, input1_path)
             values ($1, $2, $3, 'living room', 'scandinavian', 'https://inputs.example/room.jpg') returning id",
            &[&user, &mode, &prompt],
        )
        .await?;
    tx.commit().await?;
    Ok(row.get(0))
}

/// A generation job's status, prediction id and error.
pub async fn job_state(client: &Client, id: Uuid) -> (String, Option<String>, Option<String>) {
    let row = client
        .query_one(
            "select status, prediction_id, error from generation_jobs where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Waits (up to a minute) until the job has `status`; returns its error.
pub async fn wait_status(client: &Client, id: Uuid, status: &str) -> Option<String> {
    eventually(
        &format!("job {id} {status}"),
        Duration::from_secs(60),
        || async { job_state(client, id).await.0 == status },
    )
    .await;
    job_state(client, id).await.2
}

/// How many generation jobs `user` has.
pub async fn jobs_of(client: &Client, user: Uuid) -> i64 {
    super::count_with(
        client,
        "select count(*) from generation_jobs where owner_id = $1",
        &[&user],
    )
    .await
}

/// Debits `user`'s succeeded jobs that have no debit yet, as the reactor's
/// usage handler does (one debit per job, naming the job).
pub async fn debit_succeeded_jobs(client: &Client, user: Uuid) {
    client
        .execute(
            "insert into usage_ledger (owner_id, kind, amount, job_id)
             select owner_id, 'generation_debit', 1, id from generation_jobs j
             where owner_id = $1 and status = 'succeeded'
               and not exists (select 1 from usage_ledger u where u.job_id = j.id)",
            &[&user],
        )
        .await
        .expect("service writes debits");
}

/// How many default "My Favorites" collections `owner` has (the favorites
/// handler makes exactly one).
pub async fn favorites_of(client: &Client, owner: Uuid) -> i64 {
    super::count(
        client,
        &format!(
            "select count(*) from collections where owner_id = '{owner}' and is_default_favorites"
        ),
    )
    .await
}

/// 1 once `job` has succeeded and has its render, else 0.
pub async fn succeeded_with_render(client: &Client, job: Uuid) -> i64 {
    super::count(
        client,
        &format!(
            "select count(*) from generation_jobs j join renders r on r.job_id = j.id
             where j.id = '{job}' and j.status = 'succeeded'"
        ),
    )
    .await
}

/// Creates a plan of `monthly` generations and a user (with profile) on it.
pub async fn user_on_plan(client: &Client, monthly: i32) -> Uuid {
    let price = format!("price_{}", Uuid::new_v4().simple());
    client
        .execute(
            "insert into plans (price_id, name, monthly_generations) values ($1, $1, $2)",
            &[&price, &monthly],
        )
        .await
        .expect("insert plan");
    let user = user_with_profile(client).await;
    client
        .execute(
            "update profiles set price_id = $2 where id = $1",
            &[&user, &price],
        )
        .await
        .expect("put the user on the plan");
    user
}

/// The state a reactor killed (`kill -9`) in the middle of an attempt leaves:
/// its unexpired lease on `row_id` for `handler`, held by a process that is
/// gone. The next reactor may take the row only once the lease expires.
pub async fn lease_of_a_killed_reactor(client: &Client, handler: &str, row_id: &str) {
    client
        .execute(
            "insert into reactor.handler_state (handler, row_id, lease_owner, lease_token, lease_expires_at)
             values ($1, $2, $3, 1, now() + interval '2 seconds')",
            &[&handler, &row_id, &Uuid::new_v4()],
        )
        .await
        .expect("insert the killed reactor's lease");
}

/// The render id main used to derive from a job id (UUIDv5 of a constant in
/// the public source): what an attacker who knows a job id computes.
pub fn guessable_render_id(job: Uuid) -> Uuid {
    const NAMESPACE: Uuid = Uuid::from_u128(0x6c1f_8e0a_4f0b_4c1e_9a57_2d8b_3e61_f0a4);
    Uuid::new_v5(&NAMESPACE, job.as_bytes())
}
