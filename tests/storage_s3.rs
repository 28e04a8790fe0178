//! Renders stored in a real S3 API on loopback (moto's server, from PyPI:
//! `pip install 'moto[server]'`; `.ci/run` installs it): the keys (not
//! derivable from the job id), the thumbnails, the Content-Type and
//! Cache-Control each object is served with, objects removed when their
//! render is deleted (after a crash mid-delete too, never a live render's),
//! and presigned input URLs that fetch the input.
mod common;

use common::{count, eventually};
use std::time::Duration;

/// moto's S3 server on a free loopback port; stopped when dropped.
struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Moto {
    async fn start() -> Moto {
        let port = common::free_port();
        let child = std::process::Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (pip install 'moto[server]')");
        let endpoint = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        eventually("moto answers", Duration::from_secs(30), || async {
            http.get(&endpoint).send().await.is_ok()
        })
        .await;
        Moto { child, endpoint }
    }

    /// moto accepts unsigned requests: set-up goes straight over HTTP.
    async fn put(&self, path: &str, body: &'static [u8]) {
        let response = reqwest::Client::new()
            .put(format!("{}/{path}", self.endpoint))
            .body(body)
            .send()
            .await
            .expect("PUT to moto");
        assert!(
            response.status().is_success(),
            "PUT {path}: {}",
            response.status()
        );
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn renders_land_in_s3_with_their_content_type_and_cache_control_and_inputs_presign() {
    let moto = Moto::start().await;
    moto.put("public", b"").await;
    moto.put("private", b"").await;
    let owner = uuid::Uuid::new_v4();
    let input = format!("private/{owner}/inputs/room.jpg");
    moto.put(&input, &common::JPEG).await;
    // The only test in this binary: the process environment is its own.
    for (name, value) in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
    ] {
        std::env::set_var(name, value);
    }

    // Inputs: a presigned GET of bucket/key fetches the object.
    let signer = reactor::providers::storage::InputSigner::for_storage_url("s3://public").unwrap();
    let url = signer
        .sign(&input, owner, Duration::from_secs(600))
        .await
        .unwrap();
    let fetched = reqwest::get(&url).await.unwrap();
    assert!(fetched.status().is_success(), "{url}: {}", fetched.status());
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), &common::JPEG[..]);

    // Outputs: a JPEG and a PNG rendered into the public bucket.
    let db = common::migrated_db().await;
    let images = common::image_server().await;
    let scratch = tempfile::tempdir().unwrap();
    let reactor =
        common::start_reactor(&db, scratch.path(), &["--storage-url", "s3://public"]).await;
    let client = db.client().await;
    let user = common::user_with_profile(&client).await;
    let job = common::succeeded_job(
        &client,
        user,
        &[images.url("/ok/a.jpg"), images.url("/png/b.png")],
    )
    .await;
    eventually("two render variants", Duration::from_secs(30), || async {
        count(&client, &format!(
            "select count(*) from render_variants v join renders r on r.id = v.render_id where r.job_id = '{job}'"
        ))
        .await
            == 2
    })
    .await;
    let kept_job = common::succeeded_job(&client, user, &[images.url("/ok/c.jpg")]).await;
    eventually("the second render", Duration::from_secs(30), || async {
        count(
            &client,
            &format!("select count(*) from renders where job_id = '{kept_job}'"),
        )
        .await
            == 1
    })
    .await;
    reactor.stop().await;

    let paths = common::texts(
        &client,
        "select p from render_variants v join renders r on r.id = v.render_id,
           unnest(array[v.image_path, v.thumb_path]) p
         where r.job_id = $1 order by p",
        &[&job],
    )
    .await;
    let kept_paths = common::texts(
        &client,
        "select p from render_variants v join renders r on r.id = v.render_id,
           unnest(array[v.image_path, v.thumb_path]) p
         where r.job_id = $1 order by p",
        &[&kept_job],
    )
    .await;
    let render: uuid::Uuid = client
        .query_one("select id from renders where job_id = $1", &[&job])
        .await
        .unwrap()
        .get(0);
    assert_ne!(render, common::guessable_render_id(job));
    assert_eq!(
        paths,
        [
            format!("renders/{render}/0.jpg"),
            format!("renders/{render}/0_thumb.webp"),
            format!("renders/{render}/1.png"),
            format!("renders/{render}/1_thumb.webp"),
        ]
    );
    // As a browser gets them (the bucket is private in moto: through a
    // presigned GET of the public bucket, signed here with object_store).
    use object_store::signer::Signer as _;
    let public = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name("public")
        .with_allow_http(true)
        .build()
        .unwrap();
    let get = |path: String| {
        let public = &public;
        async move {
            let url = public
                .signed_url(
                    reqwest::Method::GET,
                    &object_store::path::Path::from(path.as_str()),
                    Duration::from_secs(600),
                )
                .await
                .unwrap();
            reqwest::get(url).await.unwrap()
        }
    };
    for (path, content_type) in
        paths
            .iter()
            .zip(["image/jpeg", "image/webp", "image/png", "image/webp"])
    {
        let got = get(path.clone()).await;
        assert!(got.status().is_success(), "GET {path}: {}", got.status());
        let header = |name: &str| {
            got.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        assert_eq!(header("content-type"), content_type, "{path}");
        assert_eq!(
            header("cache-control"),
            reactor::providers::storage::RENDER_CACHE_CONTROL,
            "{path}"
        );
        let body = got.bytes().await.unwrap();
        if content_type == "image/jpeg" {
            assert_eq!(body.as_ref(), &common::JPEG[..]);
        }
        if content_type == "image/webp" {
            let thumb = image::load_from_memory(&body).unwrap();
            assert_eq!(
                thumb.width().max(thumb.height()),
                512.min(common::IMAGE_SIZE.0)
            );
        }
    }

    // The owner deletes the first render while no reactor runs; a reactor is
    // then killed after removing its first object, before dropping its queue
    // row. The next reactor removes the rest; the other render keeps its own.
    let mut client = client;
    common::as_user(
        &mut client,
        user,
        &format!("delete from renders where id = '{render}'"),
    )
    .await
    .unwrap();
    let first = client
        .query_one(
            "select id, path from reactor.deleted_objects order by id limit 1",
            &[],
        )
        .await
        .unwrap();
    let (first_id, first_path): (i64, String) = (first.get(0), first.get(1));
    use object_store::ObjectStore as _;
    public
        .delete(&object_store::path::Path::from(first_path.as_str()))
        .await
        .unwrap();
    common::lease_of_a_killed_reactor(&client, "deleted_objects", &first_id.to_string()).await;
    let reactor =
        common::start_reactor(&db, scratch.path(), &["--storage-url", "s3://public"]).await;
    eventually(
        "the deleted objects queue drains",
        Duration::from_secs(30),
        || async { count(&client, "select count(*) from reactor.deleted_objects").await == 0 },
    )
    .await;
    reactor.stop().await;
    for path in &paths {
        let got = get(path.clone()).await;
        assert_eq!(
            got.status(),
            reqwest::StatusCode::NOT_FOUND,
            "{path} deleted"
        );
    }
    for path in &kept_paths {
        let got = get(path.clone()).await;
        assert!(
            got.status().is_success(),
            "{path} of the live render: {}",
            got.status()
        );
    }
}
