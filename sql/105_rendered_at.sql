-- When the renders handler made the job's render. "Rendered" is a fact about
-- the job, not "a render row exists": owners may delete their renders (seed
-- 004 section 6) and a deleted render must not come back.
alter table public.generation_jobs add column if not exists rendered_at timestamptz;
update public.generation_jobs j set rendered_at = r.created_at
  from public.renders r
  where r.job_id = j.id and j.rendered_at is null;
