//! The dashboard in a real browser (headless Chromium, driven over the
//! DevTools protocol): it loads, shows a job moving from starting to
//! succeeded without a reload, and refuses a wrong token.
mod common;

use common::{eventually, start_reactor, user_with_profile};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const LONG: Duration = Duration::from_secs(60);
const ADMIN: &str = "dashboard-admin-token";

struct Browser {
    child: std::process::Child,
    _profile: tempfile::TempDir,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromium() -> Option<std::path::PathBuf> {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists())
}

impl Browser {
    async fn launch(binary: &std::path::Path) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let child = std::process::Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start chromium");
        let port_file = profile.path().join("DevToolsActivePort");
        eventually("chromium's DevTools port", LONG, || async {
            port_file.exists()
                && std::fs::read_to_string(&port_file).is_ok_and(|s| s.lines().count() >= 2)
        })
        .await;
        let port = std::fs::read_to_string(&port_file)
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .trim()
            .to_string();
        let targets: Vec<Value> = reqwest::get(format!("http://127.0.0.1:{port}/json/list"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let page = targets
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target");
        let (ws, _) =
            tokio_tungstenite::connect_async(page["webSocketDebuggerUrl"].as_str().unwrap())
                .await
                .unwrap();
        Browser {
            child,
            _profile: profile,
            ws,
            next_id: 0,
        }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        self.ws
            .send(Message::Text(
                json!({"id": id, "method": method, "params": params})
                    .to_string()
                    .into(),
            ))
            .await
            .unwrap();
        loop {
            let message = tokio::time::timeout(LONG, self.ws.next())
                .await
                .expect("DevTools answer")
                .unwrap()
                .unwrap();
            if let Message::Text(text) = message {
                let v: Value = serde_json::from_str(&text).unwrap();
                if v["id"] == json!(id) {
                    return v;
                }
            }
        }
    }

    async fn eval(&mut self, expression: &str) -> Value {
        let v = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        v["result"]["result"]["value"].clone()
    }

    async fn wait_for(&mut self, what: &str, expression: &str) {
        let deadline = tokio::time::Instant::now() + LONG;
        while self.eval(expression).await != json!(true) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; page says: {}",
                self.eval("document.body.innerText").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_job_go_from_starting_to_succeeded_live_and_refuses_a_wrong_token() {
    let Some(binary) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have Chromium (.ci/run installs Debian's chromium)"
        );
        eprintln!("SKIPPED: no Chromium here (apt-get install chromium); .ci/run installs it");
        return;
    };
    let db = common::migrated_db().await;
    let storage = tempfile::tempdir().unwrap();
    let reactor = start_reactor(
        &db,
        storage.path(),
        &["--admin-token", ADMIN, "--local-delay", "3s"],
    )
    .await;
    reactor.wait_ready().await;
    let mut browser = Browser::launch(&binary).await;
    let dashboard = format!("http://{}/dashboard", reactor.http_addr);

    browser
        .call(
            "Page.navigate",
            json!({"url": format!("{dashboard}#token={ADMIN}")}),
        )
        .await;
    browser
        .wait_for(
            "the dashboard to load",
            "document.getElementById('conn')?.textContent === 'live'",
        )
        .await;
    browser.eval("window.__sameDocument = 'yes'").await;

    let mut client = db.client().await;
    let owner = user_with_profile(&client).await;
    common::as_user(&mut client, owner, &format!("insert into generation_jobs (owner_id, mode, prompt) values ('{owner}', 'imagine', 'a bright hall')")).await.unwrap();
    let id: uuid::Uuid = client
        .query_one("select id from generation_jobs", &[])
        .await
        .unwrap()
        .get(0);
    let status = format!("document.querySelector('tr[data-job=\"{id}\"] .status')?.textContent");
    browser
        .wait_for(
            "the job in flight",
            &format!("['starting', 'processing'].includes({status})"),
        )
        .await;
    browser
        .wait_for("the job succeeded", &format!("{status} === 'succeeded'"))
        .await;
    assert_eq!(
        browser.eval("window.__sameDocument").await,
        json!("yes"),
        "no reload happened"
    );

    browser
        .call(
            "Page.navigate",
            json!({"url": format!("{dashboard}?again#token=wrong-token")}),
        )
        .await;
    browser
        .wait_for(
            "the refusal",
            "document.getElementById('error')?.textContent.includes('Unauthorized')",
        )
        .await;
    assert_eq!(
        browser
            .eval("document.getElementById('main').style.display")
            .await,
        json!("none"),
        "nothing shown without the right token"
    );
    reactor.stop().await;
}
