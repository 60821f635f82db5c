-- Idempotency keys: a client's `Idempotency-Key` on a POST, per app, with a hash of the
-- request it came with and, once the request was handled, the answer it got. A retry with the
-- same key is answered from here instead of being handled again. `status` is NULL while the
-- first request is still being handled. Rows are deleted once past `expires_at`.
CREATE TABLE idempotency_keys (
    app_id        TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    idem_key      TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status        BIGINT,
    content_type  TEXT,
    response_body TEXT,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    PRIMARY KEY (app_id, idem_key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys(expires_at);
