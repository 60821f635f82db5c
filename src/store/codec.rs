//! How the vocabulary of `crate::model` is stored: each closed set of values is a text
//! column holding its `as_str` name. Decoding a name outside the set fails with the value
//! and its column, so a corrupt or future row is an error rather than a guess.
//!
//! These are `sqlx` impls for the `Any` driver, kept here so the model stays free of IO.
//! Implementing `Decode` (rather than reading text and converting afterwards) lets every row
//! struct derive `FromRow` with typed fields, and the same impls serve SQLite and PostgreSQL.

use sqlx::any::{Any, AnyTypeInfo};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::{Database, Decode, Encode, Type};

use crate::model::device::DeviceState;
use crate::model::event_type::{EndpointOutcome, EventType, MessageStatus};
use crate::model::policy::Hold;
use crate::model::{ApnsEnvironment, AttemptOutcome, EventStatus, JobStatus, Platform};

/// Stores `$ty` as the text its `as_str` returns and reads it back through its `FromStr`.
macro_rules! text_column {
    ($($ty:ty),+ $(,)?) => {$(
        impl Type<Any> for $ty {
            fn type_info() -> AnyTypeInfo {
                <String as Type<Any>>::type_info()
            }

            fn compatible(ty: &AnyTypeInfo) -> bool {
                <String as Type<Any>>::compatible(ty)
            }
        }

        impl<'q> Encode<'q, Any> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut <Any as Database>::ArgumentBuffer<'q>,
            ) -> Result<IsNull, BoxDynError> {
                <&str as Encode<'q, Any>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> Decode<'r, Any> for $ty {
            fn decode(value: <Any as Database>::ValueRef<'r>) -> Result<Self, BoxDynError> {
                let text = <String as Decode<'r, Any>>::decode(value)?;
                Ok(text.parse::<$ty>()?)
            }
        }
    )+};
}

text_column!(
    Platform,
    ApnsEnvironment,
    JobStatus,
    EventStatus,
    AttemptOutcome,
    DeviceState,
    Hold,
    EventType,
    MessageStatus,
    EndpointOutcome
);

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::model::device::DeviceRegistration;
    use crate::model::{ApnsEnvironment, Platform};
    use crate::store::Store;

    /// A migrated in-memory store holding one app with one APNs device.
    async fn store_with_device() -> (Store, String, String) {
        // One connection: an in-memory database exists once per connection.
        let keyring =
            crate::secrets::keyring_for(&Default::default(), "sqlite::memory:").expect("keyring");
        let store = Store::connect("sqlite::memory:", 1, keyring)
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        let app = store.create_app("codec").await.expect("app").app.id;
        let token = "ab".repeat(32);
        let reg = DeviceRegistration {
            platform: Platform::Apns,
            user_id: None,
            locale: None,
            timezone: None,
            app_version: None,
            environment: Some(ApnsEnvironment::Sandbox),
            topic: None,
            attributes: json!({"plan": "pro"}),
            tags: vec!["beta".into()],
        };
        let (device, _) = store
            .upsert_device(&app, &token, &reg)
            .await
            .expect("device");
        assert_eq!(
            (device.platform, device.environment),
            (Platform::Apns, Some(ApnsEnvironment::Sandbox))
        );
        (store, app, token)
    }

    async fn corrupt(store: &Store, column: &str, value: &str) {
        sqlx::query(&format!("UPDATE devices SET {column} = $1"))
            .bind(value)
            .execute(&store.pool)
            .await
            .expect("corrupt the row");
    }

    #[tokio::test]
    async fn an_unknown_stored_platform_is_an_error_naming_the_value() {
        let (store, app, token) = store_with_device().await;
        // The devices table checks its platform; the pruned-token log does not.
        sqlx::query(
            "INSERT INTO pruned_tokens (id, app_id, platform, token, reason, provider_ts, \
             pruned, at) VALUES ('prn_1', $1, 'web', $2, 'Unregistered', NULL, 1, 0)",
        )
        .bind(&app)
        .bind(&token)
        .execute(&store.pool)
        .await
        .expect("insert");
        let err = store
            .recent_pruned(Some(&app), 10)
            .await
            .expect_err("unknown platform");
        let message = format!("{err:#}");
        assert!(
            message.contains("platform") && message.contains("\"web\""),
            "{message}"
        );
    }

    #[tokio::test]
    async fn an_unknown_stored_event_status_is_an_error_naming_the_value() {
        let (store, app, _) = store_with_device().await;
        let new = crate::store::NewEvent {
            app_id: &app,
            source_id: None,
            external_id: None,
            event_type: "t",
            payload: "{}",
            direct_rule: None,
            traceparent: None,
        };
        let crate::store::EventInsert::Accepted(id) =
            store.insert_event(&new).await.expect("event")
        else {
            panic!("a new event is accepted");
        };
        sqlx::query("UPDATE events SET status = 'archived'")
            .execute(&store.pool)
            .await
            .expect("corrupt the row");
        let err = store
            .get_event(&app, &id)
            .await
            .expect_err("unknown status");
        assert!(format!("{err:#}").contains("\"archived\""), "{err:#}");
    }

    #[tokio::test]
    async fn an_unknown_stored_environment_is_an_error_naming_the_value() {
        let (store, app, token) = store_with_device().await;
        corrupt(&store, "environment", "staging").await;
        let err = store
            .get_device(&app, &token)
            .await
            .expect_err("unknown environment");
        assert!(format!("{err:#}").contains("\"staging\""), "{err:#}");
    }

    #[tokio::test]
    async fn corrupt_device_attributes_are_an_error_naming_the_field_not_an_empty_object() {
        let (store, app, token) = store_with_device().await;
        corrupt(&store, "attributes", "[1, 2]").await;
        let err = store
            .get_device(&app, &token)
            .await
            .expect_err("attributes");
        let message = format!("{err:#}");
        assert!(message.contains("attributes"), "{message}");
        assert!(
            !message.contains(&token),
            "the full token stays out: {message}"
        );
        corrupt(&store, "attributes", "{}").await;
        corrupt(&store, "tags", "not json").await;
        let err = store.get_device(&app, &token).await.expect_err("tags");
        assert!(format!("{err:#}").contains("tags"), "{err:#}");
    }
}
