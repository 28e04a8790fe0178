//! The NOTIFY triggers (triggers/120_notify.sql), seen from a real LISTEN
//! connection: channel `reactor` (work hints) and `job_status` (dashboards).
mod common;

use futures::StreamExt;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use uuid::Uuid;

/// How long a notification that should come may take.
const ARRIVES_WITHIN: Duration = Duration::from_secs(10);

/// One notification: (channel, payload).
type Note = (String, String);

/// A connection LISTENing on `reactor` and `job_status`.
struct Listener {
    _client: Client,
    rx: mpsc::UnboundedReceiver<Note>,
}

impl Listener {
    async fn start(db: &common::TestDb) -> Self {
        let config: tokio_postgres::Config = db.url.parse().expect("test database URL");
        let (client, mut connection) = config.connect(NoTls).await.expect("listener connects");
        let (tx, rx) = mpsc::unbounded_channel();
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if tx
                            .send((n.channel().to_string(), n.payload().to_string()))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => panic!("listener connection failed: {e}"),
                }
            }
        });
        // LISTEN takes effect when its (implicit) transaction commits, which is
        // before the server answers: from here on nothing is missed.
        client
            .batch_execute("listen reactor; listen job_status")
            .await
            .expect("listen");
        Listener {
            _client: client,
            rx,
        }
    }

    /// The next notification, failing the test if none arrives in time.
    async fn next(&mut self) -> Note {
        tokio::time::timeout(ARRIVES_WITHIN, self.rx.recv())
            .await
            .expect("a notification within the timeout")
            .expect("listener still running")
    }

    /// Sends a sentinel on `channel` from `client` and asserts that it is the
    /// very next notification: whatever ran on `client` before sent nothing.
    /// (Notifications are delivered in commit order.)
    async fn assert_nothing_before_sentinel(&mut self, client: &Client, channel: &str) {
        let sentinel = format!("sentinel-{}", Uuid::new_v4());
        client
            .execute("select pg_notify($1, $2)", &[&channel, &sentinel])
            .await
            .expect("sentinel");
        assert_eq!(self.next().await, (channel.to_string(), sentinel));
    }
}

fn parse(payload: &str) -> serde_json::Value {
    serde_json::from_str(payload).unwrap_or_else(|e| panic!("payload is not JSON ({e}): {payload}"))
}

fn job_payload(
    op: &str,
    id: Uuid,
    owner: Uuid,
    status: &str,
    old_status: Option<&str>,
) -> serde_json::Value {
    serde_json::json!({
        "table": "generation_jobs",
        "op": op,
        "id": id.to_string(),
        "owner_id": owner.to_string(),
        "status": status,
        "old_status": old_status,
    })
}

async fn only_job_of(client: &Client, owner: Uuid) -> Uuid {
    client
        .query_one(
            "select id from generation_jobs where owner_id = $1",
            &[&owner],
        )
        .await
        .expect("exactly one job")
        .get(0)
}

#[tokio::test]
async fn a_client_job_insert_notifies_both_channels_with_the_exact_compact_payload() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    let a = common::user_with_profile(&c).await;
    let mut listener = Listener::start(&db).await;

    common::as_user(
        &mut c,
        a,
        &format!("insert into generation_jobs (owner_id, mode, prompt) values ('{a}', 'imagine', 'a sunny loft')"),
    )
    .await
    .expect("submission");
    let job = only_job_of(&c, a).await;

    let expected = format!(
        r#"{{"table":"generation_jobs","op":"INSERT","id":"{job}","owner_id":"{a}","status":"starting","old_status":null}}"#
    );
    assert_eq!(
        listener.next().await,
        ("reactor".to_string(), expected.clone())
    );
    assert_eq!(
        listener.next().await,
        ("job_status".to_string(), expected.clone())
    );
    assert_eq!(
        parse(&expected),
        job_payload("INSERT", job, a, "starting", None)
    );
    listener.assert_nothing_before_sentinel(&c, "reactor").await;
}

#[tokio::test]
async fn a_status_change_notifies_both_channels_with_old_and_new_status() {
    let db = common::migrated_db().await;
    let c = db.client().await;
    let a = common::user_with_profile(&c).await;
    let mut listener = Listener::start(&db).await;
    c.execute(
        "insert into generation_jobs (owner_id, mode, prompt) values ($1, 'imagine', 'x')",
        &[&a],
    )
    .await
    .unwrap();
    let job = only_job_of(&c, a).await;
    for channel in ["reactor", "job_status"] {
        let (ch, payload) = listener.next().await;
        assert_eq!(ch, channel);
        assert_eq!(
            parse(&payload),
            job_payload("INSERT", job, a, "starting", None)
        );
    }

    for (old, new) in [("starting", "processing"), ("processing", "succeeded")] {
        let n = c
            .execute(
                "update generation_jobs set status = $2 where id = $1",
                &[&job, &new],
            )
            .await
            .unwrap();
        assert_eq!(n, 1);
        for channel in ["reactor", "job_status"] {
            let (ch, payload) = listener.next().await;
            assert_eq!(ch, channel, "{payload}");
            assert_eq!(
                parse(&payload),
                job_payload("UPDATE", job, a, new, Some(old))
            );
            assert!(
                !payload.contains(": ") && !payload.contains(", "),
                "compact JSON: {payload}"
            );
        }
    }
    listener
        .assert_nothing_before_sentinel(&c, "job_status")
        .await;
}

#[tokio::test]
async fn a_profile_insert_notifies_reactor_only() {
    let db = common::migrated_db().await;
    let c = db.client().await;
    let mut listener = Listener::start(&db).await;
    let a = common::user_with_profile(&c).await;

    let (channel, payload) = listener.next().await;
    assert_eq!(channel, "reactor");
    assert_eq!(
        parse(&payload),
        serde_json::json!({
            "table": "profiles",
            "op": "INSERT",
            "id": a.to_string(),
            "owner_id": a.to_string(),
            "status": null,
            "old_status": null,
        })
    );
    // Had the insert also gone to job_status, it would arrive before this.
    listener
        .assert_nothing_before_sentinel(&c, "job_status")
        .await;
}

#[tokio::test]
async fn an_update_that_leaves_status_alone_notifies_nothing() {
    let db = common::migrated_db().await;
    let c = db.client().await;
    let a = common::user_with_profile(&c).await;
    c.execute(
        "insert into generation_jobs (owner_id, mode, prompt) values ($1, 'imagine', 'x')",
        &[&a],
    )
    .await
    .unwrap();
    let job = only_job_of(&c, a).await;
    let mut listener = Listener::start(&db).await;

    for sql in [
        "update generation_jobs set prediction_id = 'pred-1' where id = $1",
        // Naming the column without changing it fires AFTER UPDATE OF status:
        // the trigger's WHEN clause is what keeps it quiet.
        "update generation_jobs set status = status where id = $1",
        "update generation_jobs set status = 'starting', output = '[]' where id = $1",
    ] {
        assert_eq!(c.execute(sql, &[&job]).await.unwrap(), 1, "{sql}");
        listener.assert_nothing_before_sentinel(&c, "reactor").await;
        listener
            .assert_nothing_before_sentinel(&c, "job_status")
            .await;
    }
    let prediction: String = c
        .query_one(
            "select prediction_id from generation_jobs where id = $1",
            &[&job],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(prediction, "pred-1", "the updates did happen");
}

#[tokio::test]
async fn a_refused_submission_notifies_nothing() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    let a = common::user_with_profile(&c).await;
    c.execute(
        "insert into generation_jobs (owner_id, mode, prompt) values ($1, 'imagine', 'x')",
        &[&a],
    )
    .await
    .unwrap();
    let mut listener = Listener::start(&db).await;

    let err = common::as_user(
        &mut c,
        a,
        &format!("insert into generation_jobs (owner_id, mode, prompt) values ('{a}', 'imagine', 'again')"),
    )
    .await
    .expect_err("in flight");
    assert_eq!(common::sqlstate(&err), "PT409");
    listener.assert_nothing_before_sentinel(&c, "reactor").await;
    listener
        .assert_nothing_before_sentinel(&c, "job_status")
        .await;
}

#[tokio::test]
async fn notifications_of_a_rolled_back_status_change_are_never_delivered() {
    let db = common::migrated_db().await;
    let mut c = db.client().await;
    let a = common::user_with_profile(&c).await;
    c.execute(
        "insert into generation_jobs (owner_id, mode, prompt) values ($1, 'imagine', 'x')",
        &[&a],
    )
    .await
    .unwrap();
    let job = only_job_of(&c, a).await;
    let mut listener = Listener::start(&db).await;

    let tx = c.transaction().await.unwrap();
    tx.execute(
        "update generation_jobs set status = 'failed' where id = $1",
        &[&job],
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    listener
        .assert_nothing_before_sentinel(&c, "job_status")
        .await;
}
