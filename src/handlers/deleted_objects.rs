//! A deleted render's pictures leave storage: deleting a `render_variants`
//! row (directly, or by the cascade of its render or job) queues its objects
//! in `reactor.deleted_objects` (triggers/250_render_objects.sql), and this
//! handler removes each object from storage, then its queue row.
//!
//! One queue row per object, each its own leased attempt: a reactor killed
//! after deleting object 1 of 2 leaves rows whose next attempt deletes the
//! rest (an object already gone is success). The pending query is the queue's
//! partial index: O(objects waiting), never a scan of renders or the bucket.
//! Rows held for a community item (`held`) are not pending until released.
use crate::job::handler::{Action, Handler, HandlerError, KeyType, LeasedWork, Outcome, Spec};
use crate::job::lease::Lease;
use crate::providers::storage::Storage;
use crate::store::db::param;
use async_trait::async_trait;
use std::sync::Arc;
use uuid::Uuid;

pub const NAME: &str = "deleted_objects";

/// The rows the handler works on.
pub fn spec() -> Spec {
    Spec {
        name: NAME.into(),
        table: "reactor.deleted_objects".into(),
        notify_table: "deleted_objects".into(),
        key: "id".into(),
        key_type: KeyType::Bigint,
        pending: "not t.held".into(),
        statuses: None,
    }
}

pub fn handler(storage: Storage) -> Handler {
    Handler {
        spec: spec(),
        action: Action::Leased(Arc::new(DeletedObjects { storage })),
        limits: Default::default(),
    }
}

struct DeletedObjects {
    storage: Storage,
}

/// Why `path` is not a render object the reactor may delete (None: it is).
/// Queue rows come from `render_variants`, which only the reactor writes;
/// this keeps a bad row from reaching outside `renders/`.
fn path_problem(path: &str) -> Option<&'static str> {
    let Some(rest) = path.strip_prefix("renders/") else {
        return Some("is not under renders/");
    };
    if rest.split('/').any(|s| matches!(s, "" | "." | ".."))
        || path
            .chars()
            .any(|c| matches!(c, '\\' | '%') || c.is_control())
    {
        return Some("has an empty, \".\" or \"..\" segment, a backslash or a %");
    }
    None
}

#[async_trait]
impl LeasedWork for DeletedObjects {
    async fn run(
        &self,
        pool: &deadpool_postgres::Pool,
        lease: &Lease,
    ) -> Result<Outcome, HandlerError> {
        let id: i64 = lease.row_id.parse().map_err(|e| {
            HandlerError::permanent(format!("row id {:?} is not a number: {e}", lease.row_id))
        })?;
        // Whether a live variant still names the path (a render made again
        // for the same job, say): then the object stays and only the queue
        // row goes. Probed through the variants of one render.
        let row = lease
            .on_db(pool, async |client| {
                Ok(client
                    .query_typed_opt(
                        "select d.render_id, d.path,
                                exists (select 1 from public.render_variants v
                                        where v.render_id = d.render_id
                                          and (v.image_path = d.path or v.thumb_path = d.path)) as in_use
                         from reactor.deleted_objects d where d.id = $1 and not d.held",
                        &[param(&id)],
                    )
                    .await?)
            })
            .await?;
        let Some(row) = row else {
            return Ok(Outcome::Finished);
        };
        let render_id: Uuid = row.get("render_id");
        let path: String = row.get("path");
        if let Some(problem) = path_problem(&path) {
            return Err(HandlerError::permanent(format!(
                "object {path:?} of deleted render {render_id} {problem}: not deleted"
            )));
        }
        if !row.get::<_, bool>("in_use") {
            self.storage
                .delete_public(&path)
                .await
                .map_err(HandlerError::retryable)?;
        }
        lease
            .on_db(pool, async |client| {
                let tx = lease.begin(client).await?;
                tx.execute("delete from reactor.deleted_objects where id = $1", &[&id])
                    .await?;
                tx.finish().await
            })
            .await?;
        tracing::info!(render_id = %render_id, path = %path, "deleted render object removed from storage");
        Ok(Outcome::Released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_under_renders_are_deleted() {
        let render = Uuid::new_v4();
        assert_eq!(path_problem(&format!("renders/{render}/0.jpg")), None);
        assert_eq!(
            path_problem(&format!("renders/{render}/0_thumb.webp")),
            None
        );
        for bad in [
            "private/u/inputs/room.jpg",
            "renders/../private/u/x.jpg",
            "renders//x.jpg",
            "renders/a/%2e%2e/x",
            "renders/a\\..\\x",
            "/renders/a/0.jpg",
        ] {
            assert!(path_problem(bad).is_some(), "{bad}");
        }
    }
}
