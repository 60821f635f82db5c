//! Use cases: what a caller of the bridge can do, written once for the HTTP API and the CLI.
//! Each function validates with the model, persists through the store and answers with the
//! API's one error type, so both front ends refuse the same input with the same words.

pub mod credentials;
pub mod device_import;
pub mod endpoints;
pub mod policy;
pub mod preview;
pub mod sends;
pub mod specs;
pub mod stats;
pub mod webhooks;
