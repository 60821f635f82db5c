//! One request as the simulated endpoints see it, and their answer: the types shared by the
//! connection handling in `server` and the endpoints in `apns`, `fcm` and `oauth`.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::record::Side;

/// A request with its body read.
pub(super) struct Received {
    pub method: http::Method,
    pub path: String,
    pub version: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    /// A header's value, when present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// What an endpoint decided.
pub(super) enum Reply {
    Respond(Response<Full<Bytes>>),
    /// Close the connection without answering.
    Reset,
}

/// An endpoint's answer plus what to record about it.
pub(super) struct Handled {
    pub side: Side,
    pub token: Option<String>,
    pub body: serde_json::Value,
    pub reply: Reply,
}

/// A JSON response.
pub(super) fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
