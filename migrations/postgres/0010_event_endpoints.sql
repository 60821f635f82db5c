-- Event endpoints: an app's subscriptions to signed outbound webhooks, the outbox of messages
-- to them, and the log of every attempt.
--
-- * `events` is the JSON list of event types the endpoint subscribed to.
-- * `secret` signs every message; during a rotation `previous_secret` signs too, until
--   `previous_secret_expires_at`. Both are sealed under the master key.
-- * `failing_since`: when the endpoint's current run of failed attempts began (NULL while it
--   succeeds); after `endpoints.disable_after_failing_secs` of it the endpoint is disabled.
-- * `legacy_callback`: the endpoint `PUT /v1/app/callback` manages (at most one per app).
--   The callbacks stored in `apps.callback_url/callback_secret` and the messages still
--   queued in `callback_outbox` move here at start-up (their secret must be sealed again
--   for its new column, which SQL cannot do).
CREATE TABLE event_endpoints (
    id                        TEXT PRIMARY KEY,
    app_id                    TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    url                       TEXT NOT NULL,
    description               TEXT,
    events                    TEXT NOT NULL,
    enabled                   BIGINT NOT NULL DEFAULT 1,
    disabled_reason           TEXT,
    secret                    TEXT NOT NULL,
    previous_secret           TEXT,
    previous_secret_expires_at BIGINT,
    failing_since             BIGINT,
    legacy_callback           BIGINT NOT NULL DEFAULT 0,
    created_at                BIGINT NOT NULL,
    updated_at                BIGINT NOT NULL
);
CREATE INDEX event_endpoints_app ON event_endpoints(app_id, created_at);
CREATE UNIQUE INDEX event_endpoints_legacy ON event_endpoints(app_id) WHERE legacy_callback = 1;

-- One row per message to one endpoint; `id` is the Standard Webhooks `webhook-id`, the same
-- on every attempt. `status`: pending, delivered or failed.
CREATE TABLE endpoint_messages (
    id              TEXT PRIMARY KEY,
    endpoint_id     TEXT NOT NULL REFERENCES event_endpoints(id) ON DELETE CASCADE,
    app_id          TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    event_type      TEXT NOT NULL,
    body            TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    finished_at     BIGINT
);
CREATE INDEX endpoint_messages_due ON endpoint_messages(status, next_attempt_at);
CREATE INDEX endpoint_messages_endpoint ON endpoint_messages(endpoint_id, created_at);

-- Every attempt to deliver a message: `outcome` succeeded or failed, the HTTP status when
-- there was one, the first bytes of the answer, and how long it took.
CREATE TABLE endpoint_attempts (
    id            TEXT PRIMARY KEY,
    message_id    TEXT NOT NULL REFERENCES endpoint_messages(id) ON DELETE CASCADE,
    endpoint_id   TEXT NOT NULL REFERENCES event_endpoints(id) ON DELETE CASCADE,
    at            BIGINT NOT NULL,
    outcome       TEXT NOT NULL,
    response_code BIGINT,
    response_body TEXT,
    error         TEXT,
    duration_ms   BIGINT NOT NULL
);
CREATE INDEX endpoint_attempts_endpoint ON endpoint_attempts(endpoint_id, at);
CREATE INDEX endpoint_attempts_message ON endpoint_attempts(message_id, at);

-- Items of high-volume types (`delivery.succeeded`) gathered until a batch is full
-- (`endpoints.batch_max_items`) or its oldest item has waited `endpoints.batch_max_wait_secs`:
-- one row per recorded batch of deliveries, written in that batch's transaction; taken and
-- turned into messages in one transaction.
CREATE TABLE endpoint_gathering (
    id          TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    event_type  TEXT NOT NULL,
    items       TEXT NOT NULL,
    item_count  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX endpoint_gathering_app ON endpoint_gathering(app_id, event_type, created_at);

-- Whether `event.completed` was written for the event's completion (once per completion; a
-- replay that reopens the event clears it).
ALTER TABLE events ADD COLUMN completion_told BIGINT NOT NULL DEFAULT 0;
