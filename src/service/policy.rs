//! Delivery policy use cases: an app's policy and its users' preferences, validated and
//! stored, and the short-lived cache of app policies that fan-out and sends read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{ApiError, Result};
use crate::model::policy::{AppPolicy, UserPreferences};
use crate::store::{Store, StoredPolicy};

/// How long a cached app policy is used before it is read again: a change made through
/// another instance applies here within this time; one made here, at once.
const POLICY_TTL: Duration = Duration::from_secs(2);

/// App policies as fan-out and sends read them, cached for [`POLICY_TTL`].
#[derive(Debug, Default)]
pub struct AppPolicies {
    entries: Mutex<HashMap<String, (Instant, Arc<StoredPolicy>)>>,
}

impl AppPolicies {
    /// The app's policy (the empty policy for an app that no longer exists).
    pub async fn get(&self, store: &Store, app_id: &str) -> anyhow::Result<Arc<StoredPolicy>> {
        if let Some(hit) = self.cached(app_id) {
            return Ok(hit);
        }
        let fresh = Arc::new(store.app_policy(app_id).await?.unwrap_or_default());
        self.lock()
            .insert(app_id.to_string(), (Instant::now(), fresh.clone()));
        Ok(fresh)
    }

    /// Drops the app's cached policy (it was just changed here).
    pub fn forget(&self, app_id: &str) {
        self.lock().remove(app_id);
    }

    fn cached(&self, app_id: &str) -> Option<Arc<StoredPolicy>> {
        let entries = self.lock();
        let (at, policy) = entries.get(app_id)?;
        (at.elapsed() < POLICY_TTL).then(|| policy.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Arc<StoredPolicy>)>> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Validates and stores an app's policy.
pub async fn put_app_policy(
    store: &Store,
    policies: &AppPolicies,
    app_id: &str,
    policy: &AppPolicy,
) -> Result<()> {
    policy.validate().map_err(ApiError::from)?;
    if !store.put_app_policy(app_id, policy).await? {
        return Err(ApiError::NotFound("app"));
    }
    policies.forget(app_id);
    Ok(())
}

/// Validates and stores a user's preferences.
pub async fn put_user_preferences(
    store: &Store,
    policies: &AppPolicies,
    app_id: &str,
    user_id: &str,
    preferences: &UserPreferences,
) -> Result<()> {
    check_user_id(user_id)?;
    preferences.validate().map_err(ApiError::from)?;
    store
        .put_user_preferences(app_id, user_id, preferences)
        .await?;
    policies.forget(app_id);
    Ok(())
}

/// A user id in a path: 1-256 characters.
pub fn check_user_id(user_id: &str) -> Result<()> {
    if user_id.is_empty() || user_id.chars().count() > 256 {
        return Err(ApiError::field("user_id", "must be 1-256 characters"));
    }
    Ok(())
}
