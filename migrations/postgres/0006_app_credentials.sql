-- Provider credentials per app, and the circuit breaker per app and provider.
--
-- * `app_credentials`: at most one APNs and one FCM credential per app. `settings` holds the
--   public part as JSON (key id, team id, topic, environment; project id, client email, token
--   URI); `private_key` holds the private key sealed under the master key (never plaintext).
--   An app without a row uses the config file's key for that provider.
-- * `credential_epoch`: one row, bumped in the same transaction as every change to
--   `app_credentials`, so every instance notices a change with one cheap read.
-- * `provider_breakers`: an app's sends to a provider are paused while its row exists; its
--   queued jobs wait until `probe_at`, when one of them is sent as a probe.
CREATE TABLE app_credentials (
    id          TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    provider    TEXT NOT NULL CHECK (provider IN ('apns', 'fcm')),
    settings    TEXT NOT NULL,
    private_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (app_id, provider)
);

CREATE TABLE credential_epoch (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    epoch BIGINT NOT NULL
);
INSERT INTO credential_epoch (id, epoch) VALUES (1, 0);

CREATE TABLE provider_breakers (
    app_id   TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    provider TEXT NOT NULL CHECK (provider IN ('apns', 'fcm')),
    reason   TEXT NOT NULL,
    since    BIGINT NOT NULL,
    probe_at BIGINT NOT NULL,
    PRIMARY KEY (app_id, provider)
);
