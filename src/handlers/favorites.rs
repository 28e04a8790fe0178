//! A new profile gets its owner's default "My Favorites" collection.
//!
//! Pending: a profile whose `favorites_at` marker is null and that the
//! handler has not given up on (`favorites_dead_at` null; served by the
//! partial index `idx_profiles_favorites_workable`). Effect: one set-based
//! insert; `uniq_owner_default_fav` makes it exactly one per owner even with
//! several reactors (a concurrent or earlier duplicate is `DO NOTHING`), and
//! the same statement sets `favorites_at`, so the marker always means "the
//! collection exists". Deleting the collection clears the marker
//! (triggers/170_pending_markers.sql): the next sweep re-creates it.
use crate::job::handler::{Action, Handler, KeyType, Spec};

pub const NAME: &str = "favorites";
pub const COLLECTION_NAME: &str = "My Favorites";

pub fn handler() -> Handler {
    Handler {
        spec: Spec {
            name: NAME.into(),
            table: "public.profiles".into(),
            notify_table: "profiles".into(),
            key: "id".into(),
            key_type: KeyType::Uuid,
            pending: "t.favorites_at is null and t.favorites_dead_at is null".into(),
            statuses: None,
        },
        action: Action::Sql {
            effect: format!(
                "insert into public.collections (owner_id, name, is_default_favorites)
                 select id, '{COLLECTION_NAME}', true from picked
                 on conflict (owner_id) where is_default_favorites do nothing"
            ),
            mark: Some("favorites_at = now()".into()),
            dead: Some("favorites_dead_at".into()),
        },
        limits: Default::default(),
    }
}
