//! Setting and removing an app's provider credentials, for the HTTP API and the CLI: the
//! upload is checked (the key parses and signs), its private part stored sealed, and every
//! instance uses it from its next send on.

use std::sync::Arc;

use crate::error::{ApiError, Result};
use crate::model::Platform;
use crate::push::{ApnsCredential, AppCredential, CredentialKey, FcmCredential, Providers};
use crate::store::Store;
use crate::worker::{Breakers, Wake};

/// Told about every credential stored through this instance (the simulator of
/// `serve --simulator` learns the uploaded keys this way).
pub trait CredentialObserver: Send + Sync {
    /// `credential` was just stored.
    fn saved(&self, credential: &AppCredential);
}

/// A credential as uploaded.
#[derive(Debug)]
pub enum Upload {
    /// An APNs key with its ids.
    Apns(ApnsCredential),
    /// An FCM service-account key file, as JSON.
    Fcm(serde_json::Value),
}

/// Checks `upload` and stores it as `app_id`'s credential for its provider, replacing any,
/// and closes that provider's breaker for the app. Other instances pick it up within
/// `providers.credentials_refresh_ms`; [`apply_locally`] makes this one use it at once.
pub async fn put(store: &Store, app_id: &str, upload: Upload) -> Result<AppCredential> {
    let (key, fingerprint) = match upload {
        Upload::Apns(key) => {
            let fingerprint = key.validate()?;
            (CredentialKey::Apns(key), fingerprint)
        }
        Upload::Fcm(file) => {
            let (credential, fingerprint) = FcmCredential::from_key_file(&file)?;
            (CredentialKey::Fcm(credential), fingerprint)
        }
    };
    if store.get_app(app_id).await?.is_none() {
        return Err(ApiError::NotFound("app"));
    }
    let stored = store.put_credential(app_id, &key, &fingerprint).await?;
    tracing::info!(app = %app_id, provider = key.platform().as_str(), fingerprint = %fingerprint,
        "provider credential stored");
    Ok(stored)
}

/// Removes `app_id`'s own credential for `provider`; its sends use the config file's key
/// again. Not found when it had none.
pub async fn delete(store: &Store, app_id: &str, provider: Platform) -> Result<()> {
    if !store.delete_credential(app_id, provider).await? {
        return Err(ApiError::NotFound("credential"));
    }
    tracing::info!(app = %app_id, provider = provider.as_str(), "provider credential removed");
    Ok(())
}

/// What this instance does at once after a change it made: use the new credential (or stop
/// using the removed one), forget the breaker, wake the delivery loop for the jobs it held,
/// and tell the observer.
pub struct Local<'a> {
    /// The senders.
    pub providers: &'a Providers,
    /// The breakers this instance knows of.
    pub breakers: &'a Breakers,
    /// The delivery loop's wake-up.
    pub wake: &'a Wake,
    /// Who else wants to know.
    pub observer: Option<&'a Arc<dyn CredentialObserver>>,
}

/// Applies a stored (`Some`) or removed (`None`) credential to this instance.
pub fn apply_locally(
    local: &Local<'_>,
    app_id: &str,
    provider: Platform,
    stored: Option<&AppCredential>,
) {
    match stored {
        Some(credential) => {
            local.providers.install(credential);
            if let Some(observer) = local.observer {
                observer.saved(credential);
            }
        }
        None => {
            local.providers.remove(app_id, provider);
        }
    }
    local.breakers.clear(app_id, provider);
    local.wake.jobs.notify_one();
}
