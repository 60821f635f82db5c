//! Fan-out writes: an event's delivery jobs, committed one slice at a time together with the
//! cursor that says how far the fan-out got, under the event's lease.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use sqlx::AnyConnection;

use super::rollups::Rollup;
use super::statement::Statement;
use super::{ClaimedJob, Event, Store};
use crate::model::{JobStatus, Platform};

/// A job produced by fan-out.
#[derive(Clone, Debug)]
pub struct NewJob {
    /// Rule name that produced it.
    pub rule: Option<String>,
    /// The device's platform.
    pub platform: Platform,
    /// Device token.
    pub token: String,
    /// Serialized job payload (versioned).
    pub job: String,
    /// `Queued`, or `Dead` when rendering failed.
    pub status: JobStatus,
    /// Why it is dead, if it is.
    pub last_reason: Option<String>,
    /// When it is due, and why it waits until then; `None`: due at once.
    pub due: Option<(i64, crate::model::policy::Hold)>,
    /// It is never sent after this time.
    pub expires_at: Option<i64>,
    /// A newer job for the same device with this key supersedes this one while it waits.
    pub collapse_key: Option<String>,
    /// The device's user, for frequency caps.
    pub user_id: Option<String>,
    /// Its frequency-cap category.
    pub category: Option<String>,
}

/// How far an event's fan-out got: rules are written in name order, and within a rule the
/// devices in token order. Every rule named before `rule` is done; so is `rule` itself when
/// `after` is `None`, else its devices up to and including token `after`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FanOutCursor {
    /// The rule being written (`direct` for a direct send).
    pub rule: String,
    /// The last token written, while the rule is unfinished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

/// A committed slice: how many jobs the event has after it, and how many waiting jobs of
/// older events its jobs superseded.
#[derive(Clone, Copy, Debug)]
pub struct SliceWritten {
    /// The event's jobs after this slice.
    pub jobs_after: i64,
    /// Older waiting jobs its jobs collapsed.
    pub superseded: u64,
}

/// One committed step of a fan-out: jobs and the cursor after them.
pub struct FanOutSlice<'a> {
    /// Jobs to write, numbered from the event's `fanout_jobs` on.
    pub jobs: &'a [NewJob],
    /// Progress once they are written.
    pub cursor: &'a FanOutCursor,
}

impl Store {
    /// Writes one slice of an event's fan-out in its own transaction: the jobs, the cursor, and
    /// a renewed event lease. Workers can send these jobs at once. `Ok(None)`, with nothing
    /// written, when this instance no longer holds the event's lease; otherwise what it
    /// wrote.
    ///
    /// A job's id is its event's id and its sequence number, so an event's jobs are appended
    /// side by side to the primary-key B-tree instead of landing at random places in it. The
    /// numbers cannot collide: they continue from the event's committed `fanout_jobs`, and a
    /// slice commits only while its writer holds the lease.
    pub async fn write_fan_out_slice(
        &self,
        event: &Event,
        owner: &str,
        lease_ms: i64,
        first_seq: i64,
        slice: FanOutSlice<'_>,
    ) -> anyhow::Result<Option<SliceWritten>> {
        let cursor = serde_json::to_string(slice.cursor)?;
        let jobs_after = first_seq + slice.jobs.len() as i64;
        let open = slice
            .jobs
            .iter()
            .filter(|j| j.status == JobStatus::Queued)
            .count() as i64;
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let mut tx = turn.begin().await?;
        // The lease check comes first, so a writer that lost the event writes nothing.
        let held = sqlx::query(
            "UPDATE events SET fanout_cursor = $1, fanout_jobs = $2, lease_until = $3, \
             updated_at = $4, open_jobs = open_jobs + $8 WHERE id = $5 AND status = 'received' \
             AND lease_owner = $6 AND fanout_jobs = $7",
        )
        .bind(&cursor)
        .bind(jobs_after)
        .bind(now + lease_ms)
        .bind(now)
        .bind(&event.id)
        .bind(owner)
        .bind(first_seq)
        .bind(open)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if held == 0 {
            tx.rollback().await?;
            return Ok(None);
        }
        let event_part = event.id.strip_prefix("evt_").unwrap_or(&event.id);
        let rows: Vec<JobRow<'_>> = slice
            .jobs
            .iter()
            .zip(first_seq + 1..)
            .map(|(job, seq)| JobRow {
                id: format!("job_{event_part}_{seq:08}"),
                event,
                job,
                lease: None,
            })
            .collect();
        let superseded = self.insert_jobs(&mut tx, &rows, now).await?;
        tx.commit().await?;
        Ok(Some(SliceWritten {
            jobs_after,
            superseded,
        }))
    }
}

/// A job row to insert: its id, its event and the job; leased (`Some`: written in flight,
/// leased to this owner until this time, for the writer's own sender) or queued.
struct JobRow<'a> {
    id: String,
    event: &'a Event,
    job: &'a NewJob,
    lease: Option<(&'a str, i64)>,
}

/// How many of the due jobs a whole fan-out writes leased to the writer itself, already in
/// flight, for its own sender to send at once instead of claiming them back.
#[derive(Clone, Copy, Debug, Default)]
pub struct Handing {
    /// At most this many jobs (0: none; all are queued).
    pub max: usize,
    /// Their lease, from the write on.
    pub lease_ms: i64,
}

/// What a write of whole fan-outs did.
#[derive(Debug, Default)]
pub struct WholeWritten {
    /// Per fan-out, whether it was written (its event was still leased to the writer).
    pub written: Vec<bool>,
    /// Older waiting jobs its jobs collapsed.
    pub superseded: u64,
    /// The jobs written leased to the writer, to send now (see [`Handing`]).
    pub handed: Vec<ClaimedJob>,
}

/// A small event's whole fan-out, rendered at once (its audience is one page): written with
/// other small events' in one transaction that also marks each dispatched.
pub struct WholeFanOut<'a> {
    /// The leased event.
    pub event: &'a Event,
    /// All its jobs.
    pub jobs: &'a [NewJob],
}

impl Store {
    /// Writes the whole fan-outs of many small events in one transaction: each event still
    /// leased by `owner` gets its jobs and is marked dispatched (and completed at once when
    /// none of its jobs is left to send); one whose lease was lost gets nothing. Returns, per
    /// event, whether it was written. A stream of small events thus costs one write per batch
    /// rather than two per event.
    ///
    /// Up to `handing.max` of the jobs due at once are written in flight, leased to `owner`,
    /// and returned: the writer's sender takes them without a claim of its own. A job that
    /// another job of the batch could collapse (the same device and collapse key) stays
    /// queued, so that the newer one still supersedes it.
    pub async fn write_whole_fan_outs(
        &self,
        owner: &str,
        fan_outs: &[WholeFanOut<'_>],
        handing: Handing,
    ) -> anyhow::Result<WholeWritten> {
        let mut turn = self.write_turn().await?;
        let now = self.now();
        let mut tx = turn.begin().await?;
        let backend = self.backend();
        let ids: Vec<&str> = fan_outs.iter().map(|f| f.event.id.as_str()).collect();
        super::lifecycle::lock_events(&mut tx, backend, &ids).await?;
        let open = |f: &WholeFanOut<'_>| {
            f.jobs
                .iter()
                .filter(|j| j.status == JobStatus::Queued)
                .count() as i64
        };
        // Each event still leased by `owner`, at the job count it was claimed with, becomes
        // dispatched with its jobs counted.
        let mut held: std::collections::HashSet<String> = Default::default();
        for chunk in fan_outs.chunks(super::lifecycle::EVENTS_PER_STATEMENT) {
            let mut sql = Statement::new(
                backend,
                "UPDATE events SET status = 'dispatched', fanout_jobs = v.column2, \
                 open_jobs = open_jobs + v.column3, fanout_cursor = NULL, lease_owner = NULL, \
                 lease_until = NULL, updated_at = ",
            );
            sql.bind(now)
                .push(" FROM (VALUES ")
                .rows(chunk, |row, f| {
                    let first_seq = f.event.fanout_jobs;
                    row.bind_as(f.event.id.as_str(), "TEXT")
                        .bind_as(first_seq + f.jobs.len() as i64, "BIGINT")
                        .bind_as(open(f), "BIGINT")
                        .bind_as(first_seq, "BIGINT");
                })
                .push(
                    ") AS v WHERE events.id = v.column1 AND status = 'received' \
                     AND fanout_jobs = v.column4 AND lease_owner = ",
                )
                .bind(owner)
                .push(" RETURNING id");
            let (text, args) = sql.finish()?;
            held.extend(
                sqlx::query_as_with::<_, (String,), _>(&text, args)
                    .fetch_all(&mut *tx)
                    .await?
                    .into_iter()
                    .map(|(id,)| id),
            );
        }
        let mut written = Vec::with_capacity(fan_outs.len());
        // Every job of every event still held.
        let mut rows: Vec<JobRow<'_>> = Vec::new();
        // Held events none of whose jobs is left to send: completed once their jobs exist.
        let mut nothing_to_send: Vec<(&str, i64)> = Vec::new();
        for f in fan_outs {
            let is_held = held.contains(&f.event.id);
            written.push(is_held);
            if !is_held {
                continue;
            }
            if open(f) == 0 {
                nothing_to_send.push((f.event.id.as_str(), 0));
            }
            let first_seq = f.event.fanout_jobs;
            let event_part = f.event.id.strip_prefix("evt_").unwrap_or(&f.event.id);
            for (i, job) in f.jobs.iter().enumerate() {
                let seq = first_seq + i as i64 + 1;
                rows.push(JobRow {
                    id: format!("job_{event_part}_{seq:08}"),
                    event: f.event,
                    job,
                    lease: None,
                });
            }
        }
        let handed = lease_due(&mut rows, owner, handing, now);
        let superseded = self.insert_jobs(&mut tx, &rows, now).await?;
        super::lifecycle::complete_events_if_done(&mut tx, backend, &nothing_to_send, now).await?;
        tx.commit().await?;
        Ok(WholeWritten {
            written,
            superseded,
            handed,
        })
    }
}

/// Marks up to `handing.max` of `rows` leased to `owner` (each due at once, queued, and not
/// collapsible by another row) and returns them as claimed jobs.
fn lease_due<'a>(
    rows: &mut [JobRow<'a>],
    owner: &'a str,
    handing: Handing,
    now: i64,
) -> Vec<ClaimedJob> {
    if handing.max == 0 {
        return Vec::new();
    }
    let mut keys: HashMap<(&str, &str, &str), usize> = HashMap::new();
    for r in rows.iter() {
        if let Some(key) = &r.job.collapse_key {
            *keys
                .entry((r.event.app_id.as_str(), r.job.token.as_str(), key.as_str()))
                .or_default() += 1;
        }
    }
    let until = now + handing.lease_ms;
    let mut handed = Vec::new();
    for r in rows.iter_mut() {
        if handed.len() == handing.max {
            break;
        }
        let collapsible = r.job.collapse_key.as_ref().is_some_and(|key| {
            keys.get(&(r.event.app_id.as_str(), r.job.token.as_str(), key.as_str()))
                .is_some_and(|n| *n > 1)
        });
        if r.job.status != JobStatus::Queued || r.job.due.is_some() || collapsible {
            continue;
        }
        r.lease = Some((owner, until));
        handed.push(ClaimedJob {
            id: r.id.clone(),
            app_id: r.event.app_id.clone(),
            event_id: r.event.id.clone(),
            platform: r.job.platform,
            token: r.job.token.clone(),
            job: r.job.job.clone(),
            attempts: 0,
            created_at: now,
            event_at: r.event.received_at,
            expires_at: r.job.expires_at,
            user_id: r.job.user_id.clone(),
            category: r.job.category.clone(),
        });
    }
    handed
}

impl Store {
    /// Inserts fan-out jobs, each `(id, its event, the job)`, in multi-row statements; then
    /// every waiting job of an earlier event that one of them collapses ends `superseded`, and
    /// the jobs that end here count in the per-minute stats. Returns how many were superseded.
    async fn insert_jobs(
        &self,
        conn: &mut AnyConnection,
        rows: &[JobRow<'_>],
        now: i64,
    ) -> anyhow::Result<u64> {
        for chunk in rows.chunks(self.rows_per_statement()) {
            let mut sql = Statement::new(
                self.backend(),
                "INSERT INTO delivery_jobs (id, app_id, event_id, rule, platform, token, status, job, \
                 attempts, next_attempt_at, last_reason, event_at, created_at, updated_at, hold, \
                 expires_at, collapse_key, user_id, category, lease_owner, lease_until) VALUES ",
            );
            sql.rows(chunk, |row, r| {
                let (event, j) = (r.event, r.job);
                let status = match r.lease {
                    Some(_) => JobStatus::InFlight,
                    None => j.status,
                };
                row.bind(r.id.as_str())
                    .bind(event.app_id.as_str())
                    .bind(event.id.as_str())
                    .bind(j.rule.as_deref())
                    .bind(j.platform)
                    .bind(j.token.as_str())
                    .bind(status)
                    .bind(j.job.as_str())
                    .raw("0")
                    .bind(j.due.map_or(now, |(at, _)| at.max(now)))
                    .bind(j.last_reason.as_deref())
                    .bind(event.received_at)
                    .bind(now)
                    .bind(now)
                    .bind(j.due.map(|(_, hold)| hold.as_str()))
                    .bind(j.expires_at)
                    .bind(j.collapse_key.as_deref())
                    .bind(j.user_id.as_deref())
                    .bind(j.category.as_deref())
                    .bind(r.lease.map(|(owner, _)| owner))
                    .bind(r.lease.map(|(_, until)| until));
            });
            let (text, args) = sql.finish()?;
            sqlx::query_with(&text, args).execute(&mut *conn).await?;
        }
        // Jobs written final (a template that would not render) count as they are written.
        let mut rollup = Rollup::default();
        for r in rows {
            rollup.finished(&r.event.app_id, now, r.job.status, 1);
        }
        let superseded = supersede_collapsed(conn, self.backend(), rows, now, &mut rollup).await?;
        rollup.write(self, conn).await?;
        Ok(superseded)
    }
}

/// Ends `superseded` every job still waiting for a device under a collapse key that one of
/// `rows` carries, when it belongs to an older event (received earlier; the event id breaks
/// a tie), and counts them off their events. Returns how many it ended.
async fn supersede_collapsed(
    conn: &mut AnyConnection,
    backend: super::Backend,
    rows: &[JobRow<'_>],
    now: i64,
    rollup: &mut Rollup,
) -> anyhow::Result<u64> {
    let mut ended: std::collections::BTreeMap<String, i64> = Default::default();
    for JobRow { event, job, .. } in rows {
        let Some(key) = &job.collapse_key else {
            continue;
        };
        if job.status != JobStatus::Queued {
            continue;
        }
        let superseded: Vec<(String,)> = sqlx::query_as(
            "UPDATE delivery_jobs SET status = 'superseded', updated_at = $1, \
             last_reason = 'a newer notification with the same collapse key replaced it' \
             WHERE app_id = $2 AND token = $3 AND collapse_key = $4 AND status = 'queued' \
             AND (event_at < $6 OR (event_at = $6 AND event_id < $5)) RETURNING event_id",
        )
        .bind(now)
        .bind(&event.app_id)
        .bind(&job.token)
        .bind(key)
        .bind(&event.id)
        .bind(event.received_at)
        .fetch_all(&mut *conn)
        .await?;
        rollup.finished(
            &event.app_id,
            now,
            JobStatus::Superseded,
            superseded.len() as i64,
        );
        for (event_id,) in superseded {
            *ended.entry(event_id).or_default() += 1;
        }
    }
    let total = ended.values().sum::<i64>() as u64;
    let ended: Vec<(&str, i64)> = ended.iter().map(|(id, n)| (id.as_str(), *n)).collect();
    super::lifecycle::complete_events_if_done(conn, backend, &ended, now).await?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewEvent;

    fn job(token: &str, collapse_key: Option<&str>) -> NewJob {
        NewJob {
            rule: None,
            platform: Platform::Fcm,
            token: token.into(),
            job: "{}".into(),
            status: JobStatus::Queued,
            last_reason: None,
            due: None,
            expires_at: None,
            collapse_key: collapse_key.map(Into::into),
            user_id: None,
            category: None,
        }
    }

    /// Handed jobs are written in flight under the writer's lease, so no claim takes them
    /// again; the rest are queued: beyond the room, held for later, or collapsible by a newer
    /// job of the same batch (which then supersedes them as before).
    #[tokio::test]
    async fn handed_jobs_are_written_leased_and_the_rest_queued() {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("db.sqlite").display()
        );
        let keyring = crate::secrets::keyring_for(&Default::default(), &url).expect("keyring");
        let store = Store::connect(&url, 2, keyring).await.expect("connect");
        store.migrate().await.expect("migrate");
        let app = store.create_app("a").await.expect("app").app.id;
        for _ in 0..2 {
            store
                .insert_event(&NewEvent {
                    app_id: &app,
                    source_id: None,
                    external_id: None,
                    event_type: "t",
                    payload: "{}",
                    direct_rule: None,
                    traceparent: None,
                })
                .await
                .expect("event");
        }
        let mut events = store.claim_events("me", 60_000, 10).await.expect("claim");
        events.sort_by_key(|e| e.id.clone());
        let held = NewJob {
            due: Some((store.now() + 60_000, crate::model::policy::Hold::QuietHours)),
            ..job("held", None)
        };
        let first = [job("a", None), held, job("same", Some("k")), job("b", None)];
        let second = [job("same", Some("k")), job("c", None)];
        let fan_outs = [
            WholeFanOut {
                event: &events[0],
                jobs: &first,
            },
            WholeFanOut {
                event: &events[1],
                jobs: &second,
            },
        ];
        let written = store
            .write_whole_fan_outs(
                "me",
                &fan_outs,
                Handing {
                    max: 3,
                    lease_ms: 60_000,
                },
            )
            .await
            .expect("write");
        assert_eq!(written.written, [true, true]);
        let handed: Vec<&str> = written.handed.iter().map(|j| j.token.as_str()).collect();
        assert_eq!(
            handed,
            ["a", "b", "c"],
            "due, not collapsible, three at most"
        );
        assert!(written.handed.iter().all(|j| j.attempts == 0));
        let rows: Vec<(String, String, Option<String>)> =
            sqlx::query_as("SELECT token, status, lease_owner FROM delivery_jobs ORDER BY id")
                .fetch_all(&store.pool)
                .await
                .expect("rows");
        let by_token = |t: &str| -> Vec<(String, Option<String>)> {
            rows.iter()
                .filter(|r| r.0 == t)
                .map(|r| (r.1.clone(), r.2.clone()))
                .collect()
        };
        let leased = ("in_flight".to_string(), Some("me".to_string()));
        assert_eq!(by_token("a"), std::slice::from_ref(&leased));
        assert_eq!(by_token("c"), [leased]);
        assert_eq!(by_token("held"), [("queued".to_string(), None)]);
        assert_eq!(
            by_token("same"),
            [
                ("superseded".to_string(), None),
                ("queued".to_string(), None)
            ],
            "the older collapsible job stayed queued and was superseded"
        );
        // A claim finds only the queued job that is due.
        let claimed = store
            .claim_jobs("me", 60_000, 10, &[])
            .await
            .expect("claim");
        let tokens: Vec<&str> = claimed.iter().map(|j| j.token.as_str()).collect();
        assert_eq!(tokens, ["same"]);
    }
}
