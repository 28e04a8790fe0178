//! Render objects on the filesystem backend: paths nobody computes from a job
//! id, a WebP thumbnail beside every variant, and deleting a render deleting
//! its pictures (after a crash too, never another render's, and not while the
//! community showcase names it). S3: tests/storage_s3.rs.
mod common;

use common::{count, count_with, eventually, texts};
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// Where the filesystem backend keeps `path` of the public bucket.
fn stored(storage: &Path, path: &str) -> PathBuf {
    storage.join("public").join(path)
}

/// What every test here starts from: a migrated database, a picture server,
/// a storage folder, a reactor storing there, and a user with a profile.
struct Rendering {
    db: common::TestDb,
    images: common::ImageServer,
    storage: tempfile::TempDir,
    reactor: common::InProcess,
    client: tokio_postgres::Client,
    user: Uuid,
}

async fn rendering(flags: &[&str]) -> Rendering {
    let db = common::migrated_db().await;
    let images = common::image_server().await;
    let storage = tempfile::tempdir().unwrap();
    let reactor = common::start_reactor(&db, storage.path(), flags).await;
    let client = db.client().await;
    let user = common::user_with_profile(&client).await;
    Rendering {
        db,
        images,
        storage,
        reactor,
        client,
        user,
    }
}

async fn render_of(client: &tokio_postgres::Client, job: Uuid) -> Uuid {
    eventually("the job's render", WAIT, || async {
        count_with(
            client,
            "select count(*) from renders where job_id = $1",
            &[&job],
        )
        .await
            == 1
    })
    .await;
    client
        .query_one("select id from renders where job_id = $1", &[&job])
        .await
        .unwrap()
        .get(0)
}

/// Every stored path (originals and thumbnails) of a render's variants.
async fn object_paths(client: &tokio_postgres::Client, render: Uuid) -> Vec<String> {
    texts(
        client,
        "select p from render_variants v, unnest(array[v.image_path, v.thumb_path]) p
         where v.render_id = $1 and p is not null order by p",
        &[&render],
    )
    .await
}

async fn path_key(client: &tokio_postgres::Client) -> Vec<u8> {
    client
        .query_one("select key from reactor.render_path_key", &[])
        .await
        .unwrap()
        .get(0)
}

async fn wait_queue_empty(client: &tokio_postgres::Client) {
    eventually("the deleted objects queue drains", WAIT, || async {
        count(client, "select count(*) from reactor.deleted_objects").await == 0
    })
    .await;
}

#[tokio::test]
async fn render_objects_are_not_at_a_path_derivable_from_the_job_id() {
    let Rendering {
        db: _db,
        images,
        storage,
        reactor,
        mut client,
        user,
    } = rendering(&[]).await;
    let job = common::succeeded_job(&client, user, &[images.url("/ok/a.jpg")]).await;
    let render = render_of(&client, job).await;
    reactor.stop().await;

    // What an attacker who knows the job id computes finds nothing.
    let guessed = common::guessable_render_id(job);
    assert_ne!(render, guessed);
    assert!(!stored(storage.path(), &format!("renders/{guessed}")).exists());
    assert_eq!(
        object_paths(&client, render).await,
        [
            format!("renders/{render}/0.jpg"),
            format!("renders/{render}/0_thumb.webp")
        ]
    );
    assert!(stored(storage.path(), &format!("renders/{render}/0.jpg")).is_file());
    // The key is the reactor's: no client reads it (nor the deletion queue).
    for table in ["reactor.render_path_key", "reactor.deleted_objects"] {
        let err = common::as_user(&mut client, user, &format!("select count(*) from {table}"))
            .await
            .expect_err(table);
        assert_eq!(common::sqlstate(&err), "42501", "{table}: {err}");
    }
    // Another database (another key) gives the same job id another render id.
    let other = common::migrated_db().await;
    let other_client = other.client().await;
    let (a, b) = (path_key(&client).await, path_key(&other_client).await);
    assert_eq!(a.len(), 32);
    assert_ne!(a, b, "every database makes its own key at migrate time");
}

#[tokio::test]
async fn every_variant_gets_a_decodable_webp_thumbnail_of_the_configured_size() {
    let Rendering {
        db: _db,
        images,
        storage,
        reactor,
        client,
        user,
    } = rendering(&["--thumbnail-size", "48"]).await;
    let job = common::succeeded_job(
        &client,
        user,
        &[images.url("/ok/a.jpg"), images.url("/png/b.png")],
    )
    .await;
    let render = render_of(&client, job).await;
    reactor.stop().await;

    let thumbs = texts(
        &client,
        "select thumb_path from render_variants where render_id = $1 order by idx",
        &[&render],
    )
    .await;
    assert_eq!(
        thumbs,
        [
            format!("renders/{render}/0_thumb.webp"),
            format!("renders/{render}/1_thumb.webp")
        ]
    );
    let (width, height) = common::IMAGE_SIZE;
    for thumb in &thumbs {
        let bytes = std::fs::read(stored(storage.path(), thumb)).unwrap();
        assert_eq!(
            image::guess_format(&bytes).unwrap(),
            image::ImageFormat::WebP,
            "{thumb}"
        );
        // Lossy WebP: a VP8 chunk (after a VP8X header when there is alpha), no VP8L.
        let chunk = |fourcc: &[u8]| bytes.windows(4).any(|w| w == fourcc);
        assert!(chunk(b"VP8 ") && !chunk(b"VP8L"), "{thumb} is lossy WebP");
        let decoded = image::load_from_memory(&bytes).unwrap();
        // The longest side is the setting, the aspect ratio the original's.
        assert_eq!(
            (decoded.width(), decoded.height()),
            (48, 48 * height / width),
            "{thumb}"
        );
    }
}

#[test]
fn a_thumbnail_quality_out_of_range_is_refused_at_start_naming_the_setting() {
    for bad in ["0", "101", "eighty"] {
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_reactor"))
            .arg("run")
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("REACTOR_THUMBNAIL_QUALITY", bad)
            .output()
            .expect("reactor");
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(2), "{bad}: a usage error: {err}");
        assert!(
            err.contains("REACTOR_THUMBNAIL_QUALITY") && err.contains("1 to 100"),
            "{bad}: {err}"
        );
    }
}

#[tokio::test]
async fn a_picture_that_does_not_decode_fails_the_attempt_and_stores_nothing() {
    let Rendering {
        db: _db,
        images,
        storage,
        reactor,
        client,
        user,
    } = rendering(&[]).await;
    let job = common::succeeded_job(
        &client,
        user,
        &[images.url("/ok/a.jpg"), images.url("/corrupt/b.jpg")],
    )
    .await;
    eventually("the renders attempts end", WAIT, || async {
        count_with(
            &client,
            "select count(*) from reactor.handler_state
             where handler = 'renders' and row_id = $1::text and dead_at is not null",
            &[&job.to_string()],
        )
        .await
            == 1
    })
    .await;
    reactor.stop().await;
    let error: String = client
        .query_one(
            "select last_error from reactor.handler_state where handler = 'renders' and row_id = $1",
            &[&job.to_string()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        error.contains("output image 1") && error.contains("cannot be decoded"),
        "{error}"
    );
    assert_eq!(count(&client, "select count(*) from renders").await, 0);
    assert!(
        !stored(storage.path(), "renders").exists(),
        "nothing stored, not even the good picture"
    );
}

#[tokio::test]
async fn deleting_a_render_removes_its_pictures_and_leaves_other_renders_alone() {
    let Rendering {
        db: _db,
        images,
        storage,
        reactor,
        mut client,
        user,
    } = rendering(&[]).await;
    let output = [images.url("/ok/a.jpg"), images.url("/png/b.png")];
    let deleted = render_of(&client, common::succeeded_job(&client, user, &output).await).await;
    let kept = render_of(&client, common::succeeded_job(&client, user, &output).await).await;
    let (gone, stay) = (
        object_paths(&client, deleted).await,
        object_paths(&client, kept).await,
    );
    assert_eq!((gone.len(), stay.len()), (4, 4));

    common::as_user(
        &mut client,
        user,
        &format!("delete from renders where id = '{deleted}'"),
    )
    .await
    .unwrap();
    eventually("the deleted render's objects are gone", WAIT, || async {
        gone.iter().all(|p| !stored(storage.path(), p).exists())
    })
    .await;
    wait_queue_empty(&client).await;
    reactor.stop().await;
    for path in &stay {
        assert!(
            stored(storage.path(), path).is_file(),
            "{path} of the live render"
        );
    }
    assert_eq!(
        count(&client, "select count(*) from generation_jobs").await,
        2
    );
}

#[tokio::test]
async fn a_reactor_killed_mid_delete_leaves_the_rest_to_the_next_attempt() {
    let Rendering {
        db,
        images,
        storage,
        reactor,
        mut client,
        user,
    } = rendering(&[]).await;
    let output = [images.url("/ok/a.jpg"), images.url("/ok/b.jpg")];
    let render = render_of(&client, common::succeeded_job(&client, user, &output).await).await;
    let paths = object_paths(&client, render).await;
    reactor.stop().await;

    // The render is deleted while no reactor runs; then a reactor is killed
    // after removing the first object from storage, before dropping its queue
    // row, holding that row's lease.
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
    assert_eq!(
        count(&client, "select count(*) from reactor.deleted_objects").await,
        4
    );
    std::fs::remove_file(stored(storage.path(), &first_path)).unwrap();
    common::lease_of_a_killed_reactor(&client, "deleted_objects", &first_id.to_string()).await;

    let reactor = common::start_reactor(&db, storage.path(), &[]).await;
    wait_queue_empty(&client).await;
    eventually("the killed reactor's lease is gone", WAIT, || async {
        count(
            &client,
            "select count(*) from reactor.handler_state where handler = 'deleted_objects'",
        )
        .await
            == 0
    })
    .await;
    reactor.stop().await;
    for path in &paths {
        assert!(!stored(storage.path(), path).exists(), "{path}");
    }
}

#[tokio::test]
async fn a_render_in_the_community_showcase_keeps_its_pictures_until_the_item_goes() {
    let Rendering {
        db: _db,
        images,
        storage,
        reactor,
        mut client,
        user,
    } = rendering(&[]).await;
    let output = [images.url("/ok/a.jpg")];
    let shown = render_of(&client, common::succeeded_job(&client, user, &output).await).await;
    let plain = render_of(&client, common::succeeded_job(&client, user, &output).await).await;
    let (shown_paths, plain_paths) = (
        object_paths(&client, shown).await,
        object_paths(&client, plain).await,
    );
    let item: Uuid = client
        .query_one(
            "with c as (insert into community_collections (title) values ('Showcase') returning id)
             insert into community_items (collection_id, render_id) select id, $1 from c returning id",
            &[&shown],
        )
        .await
        .unwrap()
        .get(0);

    // Both deleted in one go; the unlinked one's objects go, which proves the
    // reactor has looked at the queue, and the showcased one's stay.
    common::as_user(
        &mut client,
        user,
        &format!("delete from renders where id in ('{shown}', '{plain}')"),
    )
    .await
    .unwrap();
    eventually("the unlinked render's objects are gone", WAIT, || async {
        plain_paths
            .iter()
            .all(|p| !stored(storage.path(), p).exists())
    })
    .await;
    assert_eq!(
        count(
            &client,
            "select count(*) from reactor.deleted_objects where held"
        )
        .await,
        2
    );
    for path in &shown_paths {
        assert!(
            stored(storage.path(), path).is_file(),
            "{path} is showcased"
        );
    }

    // The showcase lets go: the objects follow the render.
    client
        .execute("delete from community_items where id = $1", &[&item])
        .await
        .unwrap();
    eventually("the showcased render's objects are gone", WAIT, || async {
        shown_paths
            .iter()
            .all(|p| !stored(storage.path(), p).exists())
    })
    .await;
    wait_queue_empty(&client).await;
    reactor.stop().await;
}
