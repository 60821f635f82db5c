//! Outbound callbacks to the app's backend (Standard Webhooks format), e.g. the list of
//! tokens pruned after provider feedback, so the app can clean up its own records.

use std::time::Duration;

use tokio::sync::watch;

use super::Worker;
use crate::signature::sign;
use crate::store::{now_ms, Scheme};

/// Attempts before a callback is given up.
const MAX_CALLBACK_ATTEMPTS: i64 = 10;

impl Worker {
    pub(crate) async fn callback_loop(self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            match self.store.claim_callbacks(30_000, 32).await {
                Ok(rows) if !rows.is_empty() => {
                    for row in rows {
                        self.send_callback(&row).await;
                    }
                }
                Ok(_) => {
                    tokio::select! {
                        () = tokio::time::sleep(self.poll_interval()) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "claiming callbacks failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn send_callback(&self, row: &crate::store::CallbackRow) {
        let target = match self.store.callback_target(&row.app_id).await {
            Ok(Some(t)) => t,
            Ok(None) => {
                // The app removed its callback URL meanwhile: nothing to deliver to.
                let _ = self
                    .store
                    .finish_callback(&row.id, false, None, Some("no callback url"))
                    .await;
                return;
            }
            Err(e) => {
                tracing::error!(error = %e, "loading callback target failed");
                return;
            }
        };
        let (url, secret) = target;
        let headers = sign(
            Scheme::StandardWebhooks,
            &secret,
            row.body.as_bytes(),
            &row.id,
            now_ms() / 1000,
        );
        let mut request = self
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(row.body.clone());
        for (k, v) in headers {
            request = request.header(k, v);
        }
        let error = match request.send().await {
            Ok(resp) if resp.status().is_success() => None,
            Ok(resp) => Some(format!("HTTP {}", resp.status().as_u16())),
            Err(e) => Some(format!("request failed: {}", e.without_url())),
        };
        let result = match &error {
            None => {
                tracing::info!(app = %row.app_id, callback = %row.id, "callback delivered");
                self.store.finish_callback(&row.id, true, None, None).await
            }
            Some(err) => {
                let attempts = row.attempts + 1;
                let retry_at = (attempts < MAX_CALLBACK_ATTEMPTS).then(|| {
                    let step = 1000i64 << attempts.min(12);
                    now_ms() + rand::Rng::gen_range(&mut rand::thread_rng(), step / 2..=step)
                });
                tracing::warn!(app = %row.app_id, callback = %row.id, error = %err, attempts, "callback failed");
                self.store
                    .finish_callback(&row.id, false, retry_at, Some(err))
                    .await
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "recording callback result failed");
        }
    }
}
