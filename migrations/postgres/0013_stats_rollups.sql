-- Per-minute delivery figures, added to as results are recorded, so the stats windows read
-- at most a day of minutes per app however many deliveries there were. A final state counts
-- in the minute it was reached, an attempt in the minute the provider answered.
CREATE TABLE stats_minutes (
    app_id             TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    minute             BIGINT NOT NULL,
    delivered          BIGINT NOT NULL DEFAULT 0,
    dead               BIGINT NOT NULL DEFAULT 0,
    invalid            BIGINT NOT NULL DEFAULT 0,
    capped             BIGINT NOT NULL DEFAULT 0,
    superseded         BIGINT NOT NULL DEFAULT 0,
    expired            BIGINT NOT NULL DEFAULT 0,
    cancelled          BIGINT NOT NULL DEFAULT 0,
    attempts           BIGINT NOT NULL DEFAULT 0,
    delivered_attempts BIGINT NOT NULL DEFAULT 0,
    latency_sum_ms     BIGINT NOT NULL DEFAULT 0,
    pruned             BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (app_id, minute)
);
CREATE INDEX stats_minutes_minute ON stats_minutes(minute);

-- Round trips of delivered attempts as a histogram: `le_ms` is a bucket's upper bound.
CREATE TABLE stats_latency_minutes (
    app_id TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    minute BIGINT NOT NULL,
    le_ms  BIGINT NOT NULL,
    count  BIGINT NOT NULL,
    PRIMARY KEY (app_id, minute, le_ms)
);
CREATE INDEX stats_latency_minutes_minute ON stats_latency_minutes(minute);

-- Failed attempts by outcome and provider reason ('' when none).
CREATE TABLE stats_failure_minutes (
    app_id  TEXT NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
    minute  BIGINT NOT NULL,
    outcome TEXT NOT NULL,
    reason  TEXT NOT NULL,
    count   BIGINT NOT NULL,
    PRIMARY KEY (app_id, minute, outcome, reason)
);
CREATE INDEX stats_failure_minutes_minute ON stats_failure_minutes(minute);

-- A job's last provider answer: when it came and its round trip. A delivery that succeeds at
-- its first try has no attempt row: its job holds the attempt.
ALTER TABLE delivery_jobs ADD COLUMN answered_at BIGINT;
ALTER TABLE delivery_jobs ADD COLUMN latency_ms BIGINT;

-- The stats' list of the latest dead letters across every app reads them newest first.
CREATE INDEX delivery_jobs_dead_recent ON delivery_jobs(updated_at) WHERE status = 'dead';

-- The last 25 hours as they were recorded before this migration, so that the windows do not
-- start empty after an upgrade.
INSERT INTO stats_minutes (app_id, minute, delivered, dead, invalid, capped, superseded,
                           expired, cancelled)
SELECT app_id, (updated_at / 60000) * 60000,
       SUM(CASE WHEN status = 'delivered' THEN 1 ELSE 0 END),
       SUM(CASE WHEN status = 'dead' THEN 1 ELSE 0 END),
       SUM(CASE WHEN status = 'invalid' THEN 1 ELSE 0 END),
       SUM(CASE WHEN status = 'capped' THEN 1 ELSE 0 END),
       SUM(CASE WHEN status = 'superseded' THEN 1 ELSE 0 END),
       SUM(CASE WHEN status = 'expired' THEN 1 ELSE 0 END),
       SUM(CASE WHEN status = 'cancelled' THEN 1 ELSE 0 END)
FROM delivery_jobs
WHERE updated_at >= (CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT) - 90000000) AND app_id IN (SELECT id FROM apps)
  AND status IN ('delivered', 'dead', 'invalid', 'capped', 'superseded', 'expired', 'cancelled')
GROUP BY app_id, (updated_at / 60000) * 60000;

INSERT INTO stats_minutes (app_id, minute, attempts, delivered_attempts, latency_sum_ms)
SELECT app_id, (at / 60000) * 60000, COUNT(*),
       SUM(CASE WHEN outcome = 'delivered' THEN 1 ELSE 0 END),
       SUM(CASE WHEN outcome = 'delivered' THEN latency_ms ELSE 0 END)
FROM delivery_attempts
WHERE at >= (CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT) - 90000000) AND app_id IN (SELECT id FROM apps)
GROUP BY app_id, (at / 60000) * 60000
ON CONFLICT (app_id, minute) DO UPDATE SET attempts = excluded.attempts,
    delivered_attempts = excluded.delivered_attempts, latency_sum_ms = excluded.latency_sum_ms;

INSERT INTO stats_minutes (app_id, minute, pruned)
SELECT app_id, (at / 60000) * 60000, COUNT(*)
FROM pruned_tokens
WHERE at >= (CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT) - 90000000) AND pruned = 1 AND app_id IN (SELECT id FROM apps)
GROUP BY app_id, (at / 60000) * 60000
ON CONFLICT (app_id, minute) DO UPDATE SET pruned = excluded.pruned;

-- The bounds are the bridge's own (store/rollups.rs); a longer round trip counts in the last.
WITH bounds(le) AS (VALUES (1),(2),(3),(4),(5),(6),(7),(8),(9),(10),(12),(15),(20),(25),(30),(40),(50),(60),(80),(100),(120),(150),(200),(250),(300),(400),(500),(600),(800),(1000),(1200),(1500),(2000),(2500),(3000),(4000),(5000),(6000),(8000),(10000),(12000),(15000),(20000),(30000),(60000))
INSERT INTO stats_latency_minutes (app_id, minute, le_ms, count)
SELECT app_id, minute, le, COUNT(*) FROM (
    SELECT a.app_id AS app_id, (a.at / 60000) * 60000 AS minute,
           COALESCE((SELECT MIN(b.le) FROM bounds b WHERE b.le >= a.latency_ms), 60000) AS le
    FROM delivery_attempts a
    WHERE a.outcome = 'delivered' AND a.at >= (CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT) - 90000000) AND a.app_id IN (SELECT id FROM apps)
) AS x
GROUP BY app_id, minute, le;

INSERT INTO stats_failure_minutes (app_id, minute, outcome, reason, count)
SELECT app_id, (at / 60000) * 60000, outcome, COALESCE(reason, ''), COUNT(*)
FROM delivery_attempts
WHERE at >= (CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT) - 90000000) AND outcome <> 'delivered' AND app_id IN (SELECT id FROM apps)
GROUP BY app_id, (at / 60000) * 60000, outcome, COALESCE(reason, '');
