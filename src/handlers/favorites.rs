//! A new profile gets its owner's default "My Favorites" collection.
//!
//! Pending: a profile with no default favorites collection. Effect: one
//! set-based insert; `uniq_owner_default_fav` makes it exactly one per owner
//! even with several reactors (a concurrent duplicate is `DO NOTHING`).
use crate::handler::{Action, Handler, KeyType, Spec};

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
            pending: "not exists (select 1 from public.collections c
                       where c.owner_id = t.id and c.is_default_favorites)"
                .into(),
            statuses: None,
        },
        action: Action::Sql {
            effect: format!(
                "insert into public.collections (owner_id, name, is_default_favorites)
                 select id, '{COLLECTION_NAME}', true from picked
                 on conflict (owner_id) where is_default_favorites do nothing"
            ),
        },
    }
}
