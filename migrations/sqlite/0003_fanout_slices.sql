-- Fan-out progress. A large audience is written in slices that commit on their own, so
-- delivery starts while the rest is still being written, and a fan-out cut short (crash, lost
-- lease) resumes after the last committed slice instead of starting over.
ALTER TABLE events ADD COLUMN fanout_cursor TEXT;
ALTER TABLE events ADD COLUMN fanout_jobs BIGINT NOT NULL DEFAULT 0;

-- Claims walk events_status (status, received_at) in arrival order; this index served no
-- query, and every lease taken or cleared had to move an entry in it.
DROP INDEX events_pending;
