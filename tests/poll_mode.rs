//! Poll mode (issue 22, item 3): `reactor notify-mode poll` turns every hint
//! trigger off (writers pay nothing), and reactors find new rows by paging
//! the pending indexes every REACTOR_POLL_INTERVAL. The reactor's own event
//! stream still shows the rows it works.
mod common;

use common::{
    count, eventually, favorites_of, read_events, start_reactor, submit_job, user_with_profile,
    TestDb, ADMIN, JWT_SECRET,
};
use reactor::store::notify_mode::{self, Mode};
use std::time::Duration;
use tokio_postgres::Client;

const LONG: Duration = Duration::from_secs(60);

async fn enabled_hint_triggers(client: &Client) -> i64 {
    count(
        client,
        "select count(*) from reactor.hint_triggers where enabled",
    )
    .await
}

/// Payloads arriving on `reactor` and `job_status`, from a connection of its
/// own (kept open by the returned client).
async fn listen(db: &TestDb) -> (Client, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use futures::StreamExt as _;
    let (client, mut connection) = reactor::store::db::connect_raw(&db.url, None)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_string());
            }
        }
    });
    client
        .batch_execute("LISTEN reactor; LISTEN job_status")
        .await
        .unwrap();
    (client, rx)
}

/// The next payload that is not a running reactor's listener self-check.
async fn next_not_ping(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    loop {
        let payload = rx.recv().await.expect("listener open");
        if !payload.contains("reactor_ping") {
            return payload;
        }
    }
}

#[tokio::test]
async fn in_poll_mode_writers_send_no_hint_and_the_reactor_polls_the_rows_in() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("warn,reactor=info")
        .with_test_writer()
        .try_init();
    let db = common::migrated_db().await;
    let client = db.client().await;
    assert!(enabled_hint_triggers(&client).await > 0);

    let on = notify_mode::set(&client, Mode::Poll).await.unwrap();
    assert_eq!(on.effective, "poll");
    assert_eq!(
        enabled_hint_triggers(&client).await,
        0,
        "every hint trigger off"
    );
    assert_eq!(
        count(&client, "select count(*) from reactor.hint_triggers").await,
        3,
        "disabled, not dropped"
    );
    assert_eq!(
        count(
            &client,
            "select count(*) from pg_publication where pubname = 'reactor'"
        )
        .await,
        0,
        "poll mode publishes nothing"
    );
    // A session's own setting does not turn the triggers' mode back.
    client
        .batch_execute("set reactor.notify_mode = 'notify'")
        .await
        .unwrap();
    assert_eq!(notify_mode::show(&client).await.unwrap().effective, "poll");
    client
        .batch_execute("reset reactor.notify_mode")
        .await
        .unwrap();

    // Writes send nothing: the first payload heard is the marker sent after them.
    let (_listening, mut heard) = listen(&db).await;
    let early = user_with_profile(&client).await;
    let early_job = submit_job(&db, early, "imagine", "a quiet loft")
        .await
        .unwrap();
    client
        .batch_execute("notify job_status, 'marker'")
        .await
        .unwrap();
    assert_eq!(heard.recv().await.unwrap(), "marker");

    // Sweeps an hour apart: after the start-up replay, only polls find rows.
    let storage = tempfile::tempdir().unwrap();
    let reactor = start_reactor(
        &db,
        storage.path(),
        &[
            "--admin-token",
            ADMIN,
            "--supabase-jwt-secret",
            JWT_SECRET,
            "--sweep-interval",
            "1h",
            "--poll-interval",
            "200ms",
            "--download-timeout",
            "20s",
        ],
    )
    .await;
    reactor.wait_ready().await;
    eventually("the rows written before the start", LONG, || async {
        favorites_of(&client, early).await == 1
            && common::succeeded_with_render(&client, early_job).await == 1
    })
    .await;

    let mut events = reqwest::Client::new()
        .get(format!("http://{}/v1/events", reactor.http_addr))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let later = user_with_profile(&client).await;
    eventually("favorites for a profile found by a poll", LONG, || async {
        favorites_of(&client, later).await == 1
    })
    .await;
    let job = submit_job(&db, later, "imagine", "a bright loft")
        .await
        .unwrap();
    // The viewer sees the job the poll found, then its outcome, though no
    // trigger said anything.
    let seen = read_events(&mut events, |e| {
        e.iter()
            .any(|(_, e)| e["id"] == job.to_string() && e["status"] == "succeeded")
    })
    .await;
    let first = seen
        .iter()
        .find(|(_, e)| e["id"] == job.to_string())
        .unwrap();
    assert_eq!(first.1["table"], "generation_jobs", "{seen:?}");
    assert_eq!(first.1["op"], "INSERT", "{seen:?}");
    client
        .batch_execute("notify job_status, 'second marker'")
        .await
        .unwrap();
    assert_eq!(next_not_ping(&mut heard).await, "second marker");

    // Back to NOTIFY: the triggers are on again.
    let off = notify_mode::set(&client, Mode::Notify).await.unwrap();
    assert_eq!(off.effective, "notify");
    assert_eq!(enabled_hint_triggers(&client).await, 3);
    let last = user_with_profile(&client).await;
    eventually("favorites through NOTIFY again", LONG, || async {
        favorites_of(&client, last).await == 1
    })
    .await;
    reactor.stop().await;
}

#[tokio::test]
async fn an_unknown_mode_is_refused_by_the_database() {
    let db = common::migrated_db().await;
    let client = db.client().await;
    let refused = client
        .execute("update reactor.settings set notify_mode = 'polling'", &[])
        .await
        .unwrap_err();
    assert_eq!(common::sqlstate(&refused), "23514", "check violation");
    assert_eq!(
        notify_mode::show(&client).await.unwrap().effective,
        "notify"
    );
}
