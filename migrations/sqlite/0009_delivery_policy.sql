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
