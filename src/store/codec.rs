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

use super::queue::AttemptOutcome;
use crate::model::{ApnsEnvironment, EventStatus, JobStatus, Platform};

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
    AttemptOutcome
);
