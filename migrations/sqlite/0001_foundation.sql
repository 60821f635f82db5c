-- Apps, API keys, devices, webhook sources and received events.
-- Times are unix milliseconds; JSON is stored as text so both backends share one SQL dialect.
CREATE TABLE apps (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('server', 'client')),
    secret_hash TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX api_keys_app ON api_keys(app_id);

CREATE TABLE devices (
    app_id      TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    token       TEXT NOT NULL,
    platform    TEXT NOT NULL CHECK (platform IN ('apns', 'fcm')),
    user_id     TEXT,
    locale      TEXT,
    timezone    TEXT,
    app_version TEXT,
    environment TEXT,
    topic       TEXT,
    attributes  TEXT NOT NULL DEFAULT '{}',
    tags        TEXT NOT NULL DEFAULT '[]',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (app_id, token)
);
CREATE INDEX devices_user ON devices(app_id, user_id, token);

CREATE TABLE webhook_sources (
    id              TEXT PRIMARY KEY,
    app_id          TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    scheme          TEXT NOT NULL,
    secrets         TEXT NOT NULL,
    event_type_path TEXT,
    allowed_cidrs   TEXT NOT NULL DEFAULT '[]',
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    UNIQUE (app_id, name)
);

CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    source_id   TEXT REFERENCES webhook_sources(id) ON DELETE SET NULL,
    external_id TEXT,
    event_type  TEXT NOT NULL,
    payload     TEXT NOT NULL,
    status      TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE UNIQUE INDEX events_dedupe ON events(source_id, external_id);
CREATE INDEX events_app ON events(app_id, received_at, id);
CREATE INDEX events_status ON events(status, received_at);
