-- Deleting a render variant (directly, or by the cascade of a render or job
-- delete) queues its stored objects in reactor.deleted_objects; the reactor's
-- deleted_objects handler removes them from storage. A render a community item
-- names keeps its objects (held) until the last such item goes.

-- The work hint for one queued object, on channel "reactor", or in the outbox
-- in outbox mode (the mode lookup of triggers/165_notify_settings.sql). WAL
-- mode sends none: deletions are rare, and the sweep finds the row.
create or replace function reactor.hint_deleted_object(object_id bigint) returns void
language plpgsql security definer set search_path = pg_catalog, public as $$
declare
  payload text := '{"table":"deleted_objects","op":"INSERT","id":"' || object_id::text
    || '","owner_id":null,"status":null,"old_status":null}';
  mode text := coalesce(nullif(current_setting('reactor.notify_mode', true), ''),
                        (select s.notify_mode from reactor.settings s limit 1));
begin
  if mode = 'outbox' then
    insert into reactor.outbox (payload, to_status) values (payload, false);
  elsif mode is distinct from 'wal' then
    perform pg_notify('reactor', payload);
  end if;
end
$$;

-- Security definer: the client deleting its render may not write the queue itself.
create or replace function reactor.queue_variant_objects() returns trigger
language plpgsql security definer set search_path = pg_catalog, public as $$
declare
  is_held boolean := exists (select 1 from public.community_items c
                             where c.render_id = old.render_id);
  object_id bigint;
begin
  for object_id in
    insert into reactor.deleted_objects (render_id, path, held)
    select old.render_id, p, is_held
    from unnest(array[old.image_path, old.thumb_path]) p
    where p is not null
    returning id
  loop
    if not is_held then
      perform reactor.hint_deleted_object(object_id);
    end if;
  end loop;
  return null;
end
$$;

drop trigger if exists reactor_queue_variant_objects on public.render_variants;
create trigger reactor_queue_variant_objects
  after delete on public.render_variants
  for each row execute function reactor.queue_variant_objects();

-- A community item naming a render holds the render's queued objects; when
-- the last one goes (deleted, or pointed elsewhere) they are released.
create or replace function reactor.hold_render_objects(render uuid) returns void
language plpgsql security definer set search_path = pg_catalog, public as $$
declare
  linked boolean := exists (select 1 from public.community_items c where c.render_id = render);
  object_id bigint;
begin
  for object_id in
    update reactor.deleted_objects d set held = linked
    where d.render_id = render and d.held <> linked
    returning d.id
  loop
    if not linked then
      perform reactor.hint_deleted_object(object_id);
    end if;
  end loop;
end
$$;

create or replace function reactor.community_item_holds() returns trigger
language plpgsql security definer set search_path = pg_catalog, public as $$
begin
  if tg_op in ('UPDATE', 'DELETE') and old.render_id is not null then
    perform reactor.hold_render_objects(old.render_id);
  end if;
  if tg_op in ('INSERT', 'UPDATE') and new.render_id is not null then
    perform reactor.hold_render_objects(new.render_id);
  end if;
  return null;
end
$$;

drop trigger if exists reactor_community_item_holds on public.community_items;
create trigger reactor_community_item_holds
  after insert or delete or update of render_id on public.community_items
  for each row execute function reactor.community_item_holds();

revoke execute on function reactor.hint_deleted_object(bigint), reactor.hold_render_objects(uuid),
  reactor.queue_variant_objects(), reactor.community_item_holds()
  from public, anon, authenticated;
