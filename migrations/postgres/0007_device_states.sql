-- Devices are no longer deleted on a provider's word alone.
--
-- * `state`: `active` (sent to), `suspect` (the provider refused the token without saying it
--   is gone, e.g. APNs BadDeviceToken or FCM SENDER_ID_MISMATCH: not sent to, kept, and
--   restorable) or `pruned` (the provider said the token is gone: kept for
--   `worker.pruned_retention_days`, then swept; restorable until then).
-- * `state_reason`, `state_at`: the provider's reason and when the state was set.
-- A new registration of the token makes it `active` again. Every existing device is active.
ALTER TABLE devices ADD COLUMN state TEXT NOT NULL DEFAULT 'active'
  CHECK (state IN ('active', 'suspect', 'pruned'));
ALTER TABLE devices ADD COLUMN state_reason TEXT;
ALTER TABLE devices ADD COLUMN state_at BIGINT;
CREATE INDEX devices_state ON devices(app_id, state, token);
CREATE INDEX devices_swept ON devices(state, state_at);
