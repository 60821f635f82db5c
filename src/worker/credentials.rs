//! Keeps this instance's provider senders in step with the database: app credentials
//! changed through any instance are used from the next send on, removed ones stop being
//! used, and the breakers other instances opened or closed are known here. It also closes
//! provider connections that have been idle for `providers.idle_close_secs`.

use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::Worker;
use crate::push::Providers;
use crate::store::Store;

/// Loads every app credential into `providers`; returns the epoch it read them at.
pub async fn load_credentials(store: &Store, providers: &Providers) -> anyhow::Result<i64> {
    let (epoch, all) = store.all_credentials().await?;
    let (installed, removed) = providers.sync(&all);
    if installed + removed > 0 {
        tracing::info!(installed, removed, "provider credentials updated");
    }
    Ok(epoch)
}

impl Worker {
    pub(crate) async fn credentials_loop(self, mut stop: watch::Receiver<bool>) {
        let period = Duration::from_millis(self.providers_config.credentials_refresh_ms);
        let idle = Duration::from_secs(self.providers_config.idle_close_secs);
        let mut epoch: Option<i64> = None;
        let mut swept = Instant::now();
        loop {
            match self.store.credential_epoch().await {
                Ok(current) if Some(current) == epoch => {}
                Ok(_) => match load_credentials(&self.store, &self.providers).await {
                    Ok(read) => epoch = Some(read),
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "loading provider credentials failed")
                    }
                },
                Err(e) => tracing::error!(error = %e, "reading the credential epoch failed"),
            }
            match self.store.breakers().await {
                Ok(all) => self.breakers.replace_all(all),
                Err(e) => tracing::error!(error = %e, "reading provider breakers failed"),
            }
            if swept.elapsed() >= idle / 4 {
                swept = Instant::now();
                let closed = self.providers.close_idle(idle);
                if closed > 0 {
                    tracing::debug!(closed, "closed idle provider connections");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(period) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}
