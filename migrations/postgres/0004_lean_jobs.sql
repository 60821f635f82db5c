-- A leaner job lifecycle. Every job is inserted, claimed and recorded once; each of those
-- writes used to move the job's entries in three indexes keyed by status, and recording also
-- counted the event's unfinished jobs through one of them to see whether the event was done.
--
-- * An event keeps the number of its jobs still to send (`open_jobs`): fan-out adds the queued
--   jobs of each slice, recording subtracts the jobs that reached a final status, a replay of
--   dead letters adds them back. The event completes when the count reaches zero after its
--   fan-out ended, so the jobs need no unfinished-by-event index.
-- * Status indexes are partial: a job is in `delivery_jobs_due` only while queued, in
--   `delivery_jobs_leased` only while in flight, in `delivery_jobs_dead` only as a dead letter.
--   A delivered job leaves them all.
-- * The event and app indexes hold columns that a claim does not change (a claim no longer
--   touches `updated_at`, which is the time of the last recorded outcome).
ALTER TABLE events ADD COLUMN open_jobs BIGINT NOT NULL DEFAULT 0;
UPDATE events SET open_jobs = (SELECT COUNT(*) FROM delivery_jobs j
    WHERE j.event_id = events.id AND j.status IN ('queued', 'in_flight'))
  WHERE status IN ('received', 'dispatched');

DROP INDEX delivery_jobs_ready;
DROP INDEX delivery_jobs_event;
DROP INDEX delivery_jobs_app;
CREATE INDEX delivery_jobs_due ON delivery_jobs(next_attempt_at) WHERE status = 'queued';
CREATE INDEX delivery_jobs_leased ON delivery_jobs(lease_owner, lease_until)
  WHERE status = 'in_flight';
CREATE INDEX delivery_jobs_dead ON delivery_jobs(app_id, updated_at) WHERE status = 'dead';
CREATE INDEX delivery_jobs_event ON delivery_jobs(event_id, id);
CREATE INDEX delivery_jobs_app ON delivery_jobs(app_id, updated_at);

-- Attempts are read by job, app and time, never by an id of their own.
ALTER TABLE delivery_attempts DROP COLUMN id;
