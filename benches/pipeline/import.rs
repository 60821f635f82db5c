//! Import: N device registrations posted as one NDJSON body to `POST /v1/devices/import`
//! of a real bridge, timed from the first byte sent to the answer; then the same body again
//! (every line unchanged: nothing written).

use std::time::Instant;

use crate::setup::{database_url, drop_database};

/// One import measurement.
pub struct ImportResult {
    /// Seconds for the first import (every line new).
    pub first_secs: f64,
    /// Seconds for the same body again (every line unchanged).
    pub again_secs: f64,
    /// Lines created by the first import.
    pub created: u64,
    /// Lines counted unchanged by the second.
    pub unchanged: u64,
    /// Body size, MB.
    pub body_mb: f64,
}

/// A body of `n` lines: half APNs, half FCM devices, each with a user, locale and tag.
fn body(n: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n as usize * 180);
    for i in 0..n {
        let line = if i % 2 == 0 {
            format!(
                r#"{{"token":"{i:064x}","platform":"apns","user_id":"u{i}","locale":"fr-CA","timezone":"Europe/Paris","tags":["imported"]}}"#
            )
        } else {
            format!(
                r#"{{"token":"imp-{i:0>10}:{}","platform":"fcm","user_id":"u{i}","locale":"en-US","attributes":{{"plan":"pro"}}}}"#,
                "A".repeat(110)
            )
        };
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: Vec<u8>,
) -> anyhow::Result<(f64, serde_json::Value)> {
    let started = Instant::now();
    let resp = client
        .post(url)
        .bearer_auth(key)
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 200, "import answered {}", resp.status());
    let report: serde_json::Value = resp.json().await?;
    Ok((started.elapsed().as_secs_f64(), report))
}

/// Imports `n` devices into a fresh bridge on `backend`, twice.
pub async fn import(backend: &str, n: u64) -> anyhow::Result<ImportResult> {
    let dir = tempfile::tempdir()?;
    let db_url = database_url(backend, dir.path()).await?;
    let mut config = pushbridge::config::Config {
        database_url: db_url.clone(),
        ..Default::default()
    };
    // A million lines take longer to arrive than an ordinary body may.
    config.http.body_read_timeout_secs = 600;
    if backend == "postgres" {
        config.secrets.master_key = Some(pushbridge::secrets::MasterKey::generate());
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let running = pushbridge::start(config, listener).await?;
    let app = running.state.store.create_app("import bench").await?;
    let url = format!("http://{}/v1/devices/import", running.addr);
    let client = reqwest::Client::new();
    let body = body(n);
    let body_mb = body.len() as f64 / 1e6;
    let (first_secs, first) = post(&client, &url, &app.server_key, body.clone()).await?;
    let (again_secs, again) = post(&client, &url, &app.server_key, body).await?;
    running.shutdown().await?;
    drop_database(backend, &db_url).await?;
    Ok(ImportResult {
        first_secs,
        again_secs,
        created: first["created"].as_u64().unwrap_or(0),
        unchanged: again["unchanged"].as_u64().unwrap_or(0),
        body_mb,
    })
}

/// Prints the import table for `n` devices on each backend.
pub async fn report(backends: &[&str], n: u64) -> anyhow::Result<()> {
    println!("\n## Import: N devices as one NDJSON body to POST /v1/devices/import, then again\n");
    println!("| backend | devices | body MB | first import s | devices/s | created | same body again s | unchanged |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for backend in backends {
        let r = import(backend, n).await?;
        println!(
            "| {backend} | {n} | {:.0} | {:.1} | {:.0} | {} | {:.1} | {} |",
            r.body_mb,
            r.first_secs,
            n as f64 / r.first_secs,
            r.created,
            r.again_secs,
            r.unchanged
        );
    }
    Ok(())
}
