//! The integration tests, in one binary so the crate is linked once: each module checks one
//! area of the bridge through its public surface (HTTP API, the real binary, the simulator),
//! all on the shared [`harness`].

#[macro_use]
mod harness;

mod bad_input;
mod connections;
mod crash;
mod credentials;
mod credentials_local;
mod dashboard;
mod devices;
mod endpoints;
mod endpoints_cli;
mod endpoints_durability;
mod faults;
mod goaway;
mod idempotency;
mod import;
mod isolation;
mod load;
mod logs;
mod metrics;
mod multi_instance;
mod openapi;
mod payloads;
mod pipeline;
mod policy;
mod policy_figures;
mod preview;
mod preview_cli;
mod provider_identities;
mod queries;
mod render_limits;
mod replay;
mod retention;
mod safe_pruning;
mod secrets;
mod send_limit;
mod stats_rollups;
mod telemetry;
mod transport;
mod user_auth;
mod webhooks;
mod webhooks_v2;
