-- User identity verification. A client key ships inside every copy of a mobile app, so a
-- registration made with it proves nothing about the user; an app's backend vouches for the
-- user id instead, with a proof made from the app's user-auth secret or a private key whose
-- public half the app registered here.
--
-- * `user_auth_secret` is random, so SQL cannot produce it portably: the bridge fills it in
--   for every app that lacks one when it migrates, and again on first use (an app created by
--   an instance that predates this migration).
-- * `client_user_ids`: existing apps keep accepting client-key registrations without proof
--   (`unverified`), since forcing proofs on upgrade would break every installed mobile app;
--   the bridge warns about them at start-up. The bridge creates new apps `verified`,
--   naming the value on every insert, so the column default only ever applies to the apps
--   that exist now.
ALTER TABLE apps ADD COLUMN user_auth_secret TEXT;
ALTER TABLE apps ADD COLUMN client_user_ids TEXT NOT NULL DEFAULT 'unverified'
  CHECK (client_user_ids IN ('verified', 'unverified'));

CREATE TABLE user_auth_keys (
    id          TEXT PRIMARY KEY,
    app_id      TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    algorithm   TEXT NOT NULL CHECK (algorithm IN ('ES256', 'RS256')),
    public_key  TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX user_auth_keys_app ON user_auth_keys(app_id, created_at);
