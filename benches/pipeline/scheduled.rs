//! Scheduled release: N jobs due at 09:00 local in 24 zones (one a UTC hour apart from the
//! next), all waiting at once; the bridge's clock, and the simulator's with it, jump to one
//! second before each due time, and the figures are how long after its due time each zone's
//! jobs started and finished going out, and that none went early.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::setup::{bench_device, certs, database_url, drop_database, Simulator};

/// The 24 zones, `Etc/GMT-12` (UTC+12) to `Etc/GMT+11` (UTC-11): 09:00 local is a different
/// UTC hour in each.
fn zones() -> Vec<String> {
    (-12..=11)
        .map(|h: i32| match h {
            0 => "Etc/GMT".to_string(),
            h if h < 0 => format!("Etc/GMT{h}"),
            h => format!("Etc/GMT+{h}"),
        })
        .collect()
}

/// One zone's release.
pub struct Release {
    /// Jobs due at this instant.
    pub jobs: u64,
    /// From the due time to the first delivery counted, ms.
    pub first_ms: u64,
    /// From the due time to the last, ms.
    pub last_ms: u64,
}

/// A scheduled-release run's figures.
pub struct ScheduledResult {
    /// Jobs in all.
    pub jobs: u64,
    /// Seconds the fan-out took to write them all (waiting).
    pub fanout_secs: f64,
    /// Per due instant, in time order.
    pub releases: Vec<Release>,
    /// Deliveries counted before their zone's due time (must be 0).
    pub early: u64,
}

/// Delivered sends so far, from the bridge's own metrics.
fn delivered(running: &pushbridge::Running) -> u64 {
    let text = running
        .state
        .metrics
        .encode(pushbridge::metrics::ExpositionFormat::Classic);
    text.lines()
        .filter(|l| {
            l.starts_with("pushbridge_deliveries_total") && l.contains("outcome=\"delivered\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Moves the bridge's and the simulator's clocks by `secs`.
async fn shift(
    clock: &pushbridge::clock::Clock,
    sim: &Simulator,
    client: &reqwest::Client,
    secs: i64,
) -> anyhow::Result<()> {
    clock.shift(secs);
    let resp = client
        .post(format!("{}/sim/clock", sim.fcm_url))
        .json(&json!({"shift_secs": secs}))
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "shifting the simulator's clock");
    Ok(())
}

/// `n` devices over the 24 zones, one event with `deliver_at_local: "09:00"`, then each due
/// time in turn.
pub async fn scheduled(backend: &str, n: u64) -> anyhow::Result<ScheduledResult> {
    let dir = tempfile::tempdir()?;
    let sim = Simulator::start()?;
    let db_url = database_url(backend, dir.path()).await?;
    let clock = pushbridge::clock::Clock::system();
    let running = crate::setup::bridge_on_clock(db_url.clone(), &sim, clock.clone()).await?;
    let store = running.state.store.clone();
    let app = store.create_app("scheduled").await?;
    let zones = zones();
    let mut start = 0;
    while start < n {
        let end = (start + 20_000).min(n);
        let slice: Vec<_> = (start..end)
            .map(|i| {
                let (token, mut reg) = bench_device(i, "en-US");
                reg.timezone = Some(zones[(i % 24) as usize].clone());
                (token, reg)
            })
            .collect();
        store.import_devices(&app.app.id, &slice).await?;
        start = end;
    }
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(
            certs().join("ca.pem"),
        )?)?)
        .build()?;
    let base = format!("http://{}", running.addr);
    let started = Instant::now();
    let resp = client
        .post(format!("{base}/v1/notifications"))
        .bearer_auth(&app.server_key)
        .json(&json!({"to": {"devices": {}}, "deliver_at_local": "09:00",
            "template": {"title": "Good morning {{ user.first_name }}", "body": "today's digest"}}))
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 202, "send failed: {}", resp.text().await?);
    let event_id = resp.json::<serde_json::Value>().await?["event_id"]
        .as_str()
        .context("event id")?
        .to_string();
    let posted_at = clock.unix_millis();
    loop {
        let event = store
            .get_event(&app.app.id, &event_id)
            .await?
            .context("event")?;
        if event.status != pushbridge::model::EventStatus::Received {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(3600),
            "fan-out timed out"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let fanout_secs = started.elapsed().as_secs_f64();
    // Each zone's next 09:00 after the send, in time order.
    let mut dues: Vec<(i64, u64)> = zones
        .iter()
        .enumerate()
        .map(|(z, zone)| {
            let tz = jiff::tz::TimeZone::get(zone)?;
            let today = tz
                .to_datetime(jiff::Timestamp::from_millisecond(posted_at)?)
                .date();
            let mut nine = today
                .at(9, 0, 0, 0)
                .in_tz(zone)?
                .timestamp()
                .as_millisecond();
            if nine < posted_at {
                nine = today
                    .tomorrow()?
                    .at(9, 0, 0, 0)
                    .in_tz(zone)?
                    .timestamp()
                    .as_millisecond();
            }
            let jobs = (0..n).filter(|i| i % 24 == z as u64).count() as u64;
            Ok((nine, jobs))
        })
        .collect::<anyhow::Result<_>>()?;
    dues.sort_unstable();
    let (mut releases, mut early, mut done) = (Vec::new(), 0, 0u64);
    for (due, jobs) in dues {
        let now = clock.unix_millis();
        shift(&clock, &sim, &client, (due - 1000 - now).div_euclid(1000)).await?;
        // Until the due time (by the bridge's clock), nothing of this zone may go out.
        while clock.unix_millis() < due {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        early += delivered(&running).saturating_sub(done);
        let (mut first_ms, target) = (None, done + jobs);
        loop {
            let count = delivered(&running);
            let since = (clock.unix_millis() - due).max(0) as u64;
            if first_ms.is_none() && count > done {
                first_ms = Some(since);
            }
            if count >= target {
                releases.push(Release {
                    jobs,
                    first_ms: first_ms.unwrap_or(since),
                    last_ms: since,
                });
                break;
            }
            anyhow::ensure!(since < 600_000, "zone due at {due} did not drain");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        done = target;
    }
    running.shutdown().await?;
    drop_database(backend, &db_url).await?;
    Ok(ScheduledResult {
        jobs: n,
        fanout_secs,
        releases,
        early,
    })
}
