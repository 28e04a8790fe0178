//! `reactor demo`: the whole product on one machine, offline. A throwaway
//! PostgreSQL (unless DATABASE_URL is set), the schema, the reactor with the
//! local image provider and local storage, a demo user who signs up and
//! submits one job per mode exactly as a supabase-js client would, live
//! status lines from channel `job_status`, and a summary at the end.
use crate::config::RunConfig;
use std::time::{Duration, Instant};
use uuid::Uuid;

const MODES: [(&str, &str, &str, &str); 4] = [
    ("redesign", "kitchen", "industrial", "brass pendant lights"),
    ("staging", "living room", "scandinavian", "a reading corner"),
    (
        "compose",
        "bedroom",
        "boho",
        "the rattan chair by the window",
    ),
    (
        "imagine",
        "studio",
        "minimalist",
        "a sunlit loft with plants",
    ),
];

/// The demo's database owner on its throwaway cluster (not a superuser).
const DEMO_ROLE: &str = "reactor_demo_owner";

pub async fn run(database_url: Option<String>, storage_url: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut _server = None;
    let url = match database_url.filter(|u| !u.is_empty()) {
        Some(url) => url,
        None => {
            println!("· starting a throwaway PostgreSQL (set DATABASE_URL to use yours)");
            let server = crate::sandbox::cluster::LocalPostgres::start().await?;
            // Everything after set-up runs as a role shaped like Supabase's
            // `postgres` (no superuser), as it would on a hosted project.
            let url = crate::sandbox::supabase_like::prepare(
                &server.url("postgres"),
                "postgres",
                DEMO_ROLE,
            )
            .await?;
            _server = Some(server);
            url
        }
    };
    let mut admin = crate::store::db::connect(&url).await?;
    let report = crate::store::migrate::run(&mut admin).await?;
    println!(
        "· schema: {} migrations applied, {} already there",
        report.applied.len(),
        report.skipped
    );

    let mut cfg = RunConfig::from_flags([
        "--database-url",
        &url,
        "--provider",
        "local",
        "--storage-url",
        storage_url,
        "--http-addr",
        "127.0.0.1:0",
        "--local-delay",
        "800ms",
        "--provider-poll",
        "100ms",
        "--sweep-interval",
        "5s",
    ])?;
    // The demo runs the built-in handlers only, whatever the environment says.
    cfg.config = None;
    let storage_dir = cfg.local_storage_dir();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let app = crate::app::start(cfg, shutdown.clone()).await?;
    wait(
        "the reactor to be ready",
        Duration::from_secs(30),
        || async { app.readiness.ready() },
    )
    .await?;
    println!("· reactor running (local image provider, storage {storage_url})");

    let watch_url = url.clone();
    let watcher = tokio::spawn(async move {
        crate::cli::watch::run(&watch_url, None, false, std::io::stdout()).await
    });

    let user = Uuid::new_v4();
    admin
        .execute(
            "insert into auth.users (id, email) values ($1, $2)",
            &[
                &user,
                &format!("demo-{}@example.com", &user.simple().to_string()[..8]),
            ],
        )
        .await?;
    as_client(
        &mut admin,
        user,
        "insert into profiles (id) values ($1)",
        &[&user],
    )
    .await?;
    println!("· demo user {user} signed up; waiting for their \"My Favorites\" collection");
    wait(
        "the favorites collection",
        Duration::from_secs(30),
        || async {
            count(
                &admin,
                "select count(*) from collections where owner_id = $1 and is_default_favorites",
                user,
            )
            .await
                == 1
        },
    )
    .await?;

    let mut jobs = Vec::new();
    for (i, (mode, room, style, prompt)) in MODES.iter().enumerate() {
        let input = (*mode != "imagine").then(|| format!("private/{user}/inputs/{mode}.jpg"));
        let input2 = (*mode == "compose").then(|| format!("private/{user}/inputs/{mode}-item.jpg"));
        let id: Uuid = as_client_one(
            &mut admin,
            user,
            "insert into generation_jobs (owner_id, mode, room_type, style, prompt, input1_path, input2_path)
             values ($1, $2, $3, $4, $5, $6, $7) returning id",
            &[&user, mode, room, style, prompt, &input, &input2],
        )
        .await?;
        println!("· submitted {mode} job {}", short(id));
        if i == 0 {
            // The in-flight rule, as a client sees it (HTTP 409 through PostgREST).
            let second = as_client(
                &mut admin,
                user,
                "insert into generation_jobs (owner_id, mode, prompt) values ($1, 'imagine', 'one more')",
                &[&user],
            )
            .await;
            if let Err(e) = second {
                println!(
                    "· a second submission meanwhile is refused: {}",
                    crate::store::db::DbError::from(e)
                );
            }
        }
        wait("the job to finish", Duration::from_secs(60), || async {
            count(&admin, "select count(*) from generation_jobs where id = $1 and status not in ('starting', 'processing')", id).await == 1
        })
        .await?;
        jobs.push((*mode, id));
    }
    wait("renders and debits", Duration::from_secs(30), || async {
        count(
            &admin,
            "select count(*) from renders where owner_id = $1",
            user,
        )
        .await
            == jobs.len() as i64
            && count(
                &admin,
                "select count(*) from usage_ledger where owner_id = $1",
                user,
            )
            .await
                == jobs.len() as i64
    })
    .await?;
    watcher.abort();

    println!(
        "\n{:<9} {:<10} {:<10} {:<10} images (each with its thumbnail)",
        "mode", "job", "status", "render"
    );
    for (mode, id) in &jobs {
        let row = admin
            .query_one(
                "select j.status, r.id,
                        coalesce(array_agg(p order by v.idx, k) filter (where p is not null), '{}')
                 from generation_jobs j left join renders r on r.job_id = j.id left join render_variants v on v.render_id = r.id
                   left join lateral unnest(array[v.image_path, v.thumb_path]) with ordinality as o(p, k) on true
                 where j.id = $1 group by j.status, r.id",
                &[id],
            )
            .await?;
        let render: Option<Uuid> = row.get(1);
        let paths: Vec<String> = row.get(2);
        let shown: Vec<String> = paths
            .iter()
            .map(|p| match &storage_dir {
                Some(dir) => dir
                    .canonicalize()
                    .unwrap_or(dir.clone())
                    .join("public")
                    .join(p)
                    .display()
                    .to_string(),
                None => p.clone(),
            })
            .collect();
        println!(
            "{:<9} {:<10} {:<10} {:<10} {}",
            mode,
            short(*id),
            row.get::<_, String>(0),
            render.map(short).unwrap_or_else(|| "-".into()),
            shown.join("\n                                           ")
        );
    }
    let quota = admin
        .query_one(
            "select p.name, p.monthly_generations,
                    p.monthly_generations - (select coalesce(sum(amount), 0) from usage_ledger
                      where owner_id = $1 and kind = 'generation_debit'
                        and created_at >= date_trunc('month', now() at time zone 'UTC') at time zone 'UTC')
             from plans p where p.is_default",
            &[&user],
        )
        .await?;
    println!(
        "\nremaining this month: {} of {} generations (plan {})",
        quota.get::<_, i64>(2),
        quota.get::<_, i32>(1),
        quota.get::<_, String>(0)
    );
    shutdown.cancel();
    app.handle.await??;
    println!("done in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn short(id: Uuid) -> String {
    id.simple().to_string()[..8].to_string()
}

async fn count(client: &tokio_postgres::Client, sql: &str, id: Uuid) -> i64 {
    client
        .query_one(sql, &[&id])
        .await
        .map(|r| r.get(0))
        .unwrap_or(-1)
}

async fn wait<F, Fut>(what: &str, timeout: Duration, mut done: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !done().await {
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Runs `sql` as Supabase runs a client's request: role `authenticated` with the user's JWT claims.
async fn as_client(
    client: &mut tokio_postgres::Client,
    user: Uuid,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    crate::store::db::act_as_user(&tx, user).await?;
    let n = tx.execute(sql, params).await?;
    tx.commit().await?;
    Ok(n)
}

async fn as_client_one(
    client: &mut tokio_postgres::Client,
    user: Uuid,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Uuid, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    crate::store::db::act_as_user(&tx, user).await?;
    let id = tx.query_one(sql, params).await?.get(0);
    tx.commit().await?;
    Ok(id)
}
