//! What the simulator remembers about each request: which side answered, what came in, and
//! what went out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which simulated service answered.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// APNs.
    Apns,
    /// FCM messages.
    Fcm,
    /// The OAuth2 token endpoint (on the FCM port).
    Token,
    /// The simulator's control requests (on the FCM port, under `/sim/`).
    Admin,
}

/// One request the simulator received, and what it answered.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RecordedRequest {
    /// Service that answered.
    pub side: Side,
    /// Request method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// `HTTP/2.0` or `HTTP/1.1`.
    pub version: String,
    /// `authorization`, `content-type` and every `apns-*` header.
    pub headers: BTreeMap<String, String>,
    /// The body as JSON (form fields as an object for the token endpoint; `null` if neither).
    pub body: serde_json::Value,
    /// Device token addressed, if any.
    pub token: Option<String>,
    /// Status answered (0 when the connection was closed instead).
    pub status: u16,
    /// Connection the request arrived on (numbered from 1 in accept order).
    pub connection_id: u64,
}
