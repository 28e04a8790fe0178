-- When a row's current run of failed attempts began. Outages (transient failures) are
-- retried for a time budget measured from here, not for a number of attempts.
-- A nullable column without a default: adding it rewrites nothing.
alter table reactor.handler_state add column if not exists first_failed_at timestamptz;
