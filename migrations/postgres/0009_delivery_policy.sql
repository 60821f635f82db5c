-- Delivery policy: scheduled and local-time sends, quiet hours, frequency caps, collapse,
-- expiry and cancel.
--
-- * A job waiting for a later due time keeps `next_attempt_at` as that time (the due index
--   already orders by it, so a waiting job costs nothing until it is due) and says why it
--   waits in `hold`: `scheduled` (send_at, delay, deliver_at_local) or `quiet_hours`.
-- * `expires_at`: the job is never sent after it; it ends `expired`.
-- * `collapse_key`: a newer job for the same device and key supersedes a waiting one.
-- * `user_id` and `category`: what frequency caps count.
-- * An event's `cancelled_at`: its unsent jobs ended `cancelled`, and its fan-out stopped.
ALTER TABLE delivery_jobs ADD COLUMN hold TEXT;
ALTER TABLE delivery_jobs ADD COLUMN expires_at BIGINT;
ALTER TABLE delivery_jobs ADD COLUMN collapse_key TEXT;
ALTER TABLE delivery_jobs ADD COLUMN user_id TEXT;
ALTER TABLE delivery_jobs ADD COLUMN category TEXT;
CREATE INDEX delivery_jobs_collapse ON delivery_jobs(app_id, token, collapse_key)
  WHERE status = 'queued' AND collapse_key IS NOT NULL;
ALTER TABLE events ADD COLUMN cancelled_at BIGINT;

-- An app's policy (default zone, quiet hours, frequency caps) as JSON, and each user's own
-- preferences (their quiet hours).
ALTER TABLE apps ADD COLUMN policy TEXT NOT NULL DEFAULT '{}';
CREATE TABLE user_preferences (
    app_id      TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL,
    preferences TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (app_id, user_id)
);

-- Frequency caps count, per user and category, the sends let through in the rolling window.
-- `frequency_counters` has one row per user and category, taken in each admitting
-- transaction, so two instances admitting the same user's sends take turns and the count is
-- exact.
CREATE TABLE frequency_counters (
    app_id    TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    user_id   TEXT NOT NULL,
    category  TEXT NOT NULL,
    touched   BIGINT NOT NULL,
    PRIMARY KEY (app_id, user_id, category)
);
CREATE TABLE frequency_sends (
    app_id    TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    user_id   TEXT NOT NULL,
    category  TEXT NOT NULL,
    at        BIGINT NOT NULL
);
CREATE INDEX frequency_sends_user ON frequency_sends(app_id, user_id, category, at);
