-- Delivery pipeline: rules, templates, delivery jobs with attempts, pruning log, callbacks.
ALTER TABLE apps ADD COLUMN callback_url TEXT;
ALTER TABLE apps ADD COLUMN callback_secret TEXT;

-- Direct sends carry their own audience and template; webhook events use the app's rules.
ALTER TABLE events ADD COLUMN direct_rule TEXT;
ALTER TABLE events ADD COLUMN lease_owner TEXT;
ALTER TABLE events ADD COLUMN lease_until BIGINT;
CREATE INDEX events_pending ON events(status, lease_until);

CREATE TABLE templates (
    id          TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (app_id, name)
);

CREATE TABLE rules (
    id          TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    spec        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (app_id, name)
);

CREATE TABLE delivery_jobs (
    id              TEXT PRIMARY KEY,
    app_id          TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    event_id        TEXT NOT NULL REFERENCES events(id) ON DELETE CASCADE,
    rule            TEXT,
    platform        TEXT NOT NULL,
    token           TEXT NOT NULL,
    status          TEXT NOT NULL,
    job             TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    lease_owner     TEXT,
    lease_until     BIGINT,
    last_reason     TEXT,
    provider_id     TEXT,
    event_at        BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX delivery_jobs_ready ON delivery_jobs(status, next_attempt_at);
CREATE INDEX delivery_jobs_event ON delivery_jobs(event_id, status);
CREATE INDEX delivery_jobs_app ON delivery_jobs(app_id, status, updated_at);

-- `attempt` counts within one retry cycle; a replayed dead letter starts a new cycle at 1.
CREATE TABLE delivery_attempts (
    id          TEXT PRIMARY KEY,
    job_id      TEXT NOT NULL REFERENCES delivery_jobs(id) ON DELETE CASCADE,
    app_id      TEXT NOT NULL,
    platform    TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    outcome     TEXT NOT NULL,
    reason      TEXT,
    provider_id TEXT,
    latency_ms  BIGINT NOT NULL,
    at          BIGINT NOT NULL
);
CREATE INDEX delivery_attempts_job ON delivery_attempts(job_id, at);
CREATE INDEX delivery_attempts_app_at ON delivery_attempts(app_id, at);
CREATE INDEX delivery_attempts_at ON delivery_attempts(at);

CREATE TABLE pruned_tokens (
    id           TEXT PRIMARY KEY,
    app_id       TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    platform     TEXT NOT NULL,
    token        TEXT NOT NULL,
    reason       TEXT NOT NULL,
    provider_ts  BIGINT,
    pruned       BIGINT NOT NULL,
    at           BIGINT NOT NULL
);
CREATE INDEX pruned_tokens_app ON pruned_tokens(app_id, at);

CREATE TABLE callback_outbox (
    id              TEXT PRIMARY KEY,
    app_id          TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    body            TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    created_at      BIGINT NOT NULL
);
CREATE INDEX callback_outbox_ready ON callback_outbox(status, next_attempt_at);
