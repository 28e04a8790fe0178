-- Render objects: paths nobody can compute from a job id, and a queue of the
-- objects of deleted renders for the reactor to remove from storage.

-- The secret render ids (and so render object paths) are keyed with:
-- render id = HMAC-SHA256(key, job id), truncated to a UUID. Generated once,
-- here, at migrate time; kept in the database so every reactor derives the same
-- id on every retry (one render per job, no orphan objects), and read by the
-- reactor only. 32 random bytes from gen_random_uuid (the server's strong
-- random source; core PostgreSQL since 13, no extension needed).
create table if not exists reactor.render_path_key (
  id boolean primary key default true check (id),
  key bytea not null check (length(key) >= 16)
);
insert into reactor.render_path_key (key)
  values (decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'))
  on conflict (id) do nothing;

-- One row per stored object of a deleted render variant (original and
-- thumbnail), written by triggers/250_render_objects.sql, deleted by the
-- reactor's deleted_objects handler once the object is gone from storage.
-- held: a community item still names the render (the showcase keeps its
-- picture); the row waits, out of the pending index, until that link goes.
create table if not exists reactor.deleted_objects (
  id bigint generated always as identity primary key,
  render_id uuid not null,
  path text not null,
  held boolean not null default false,
  created_at timestamptz not null default now()
);
-- The handler's pending rows: O(objects waiting), never a scan of renders or the bucket.
create index if not exists idx_deleted_objects_pending on reactor.deleted_objects (id)
  where not held;
-- Holding and releasing a render's queued objects.
create index if not exists idx_deleted_objects_render on reactor.deleted_objects (render_id);
-- Whether a community item names a render (checked on every variant delete).
create index if not exists idx_comm_items_render on public.community_items (render_id)
  where render_id is not null;

-- Neither table is for clients (on Supabase, default privileges may grant them).
revoke all on table reactor.render_path_key, reactor.deleted_objects from public, anon, authenticated;
