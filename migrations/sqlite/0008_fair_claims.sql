-- Claims take every app and platform with work due in turn. The due index is now keyed by app
-- and platform first: the apps with queued jobs are found by skipping from one app to the next
-- through it, and each app and platform's oldest due jobs are at the front of its own range,
-- so a claim reads a few rows per app, never another app's backlog. (With the old index on the
-- due time alone beside it, PostgreSQL would pick that one and walk a large app's due jobs to
-- find a small app's first.)
DROP INDEX delivery_jobs_due;
CREATE INDEX delivery_jobs_due ON delivery_jobs(app_id, platform, next_attempt_at)
  WHERE status = 'queued';
