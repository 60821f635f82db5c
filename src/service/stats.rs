//! Delivery statistics over the fixed windows that the stats API, the dashboard and the CLI
//! all show.

use crate::store::{Store, WindowStats};

/// The windows every stats answer carries: name and length in seconds.
pub const WINDOWS: [(&str, i64); 3] = [("5m", 300), ("1h", 3600), ("24h", 86_400)];

/// Figures for each of [`WINDOWS`] ending at `now` (unix ms), for one app or all.
pub async fn windows(
    store: &Store,
    app_id: Option<&str>,
    now: i64,
) -> anyhow::Result<Vec<(&'static str, WindowStats)>> {
    let mut out = Vec::with_capacity(WINDOWS.len());
    for (name, secs) in WINDOWS {
        out.push((name, store.window_stats(app_id, now, secs).await?));
    }
    Ok(out)
}
