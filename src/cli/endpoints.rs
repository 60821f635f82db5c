//! `pushbridge endpoints`: an app's event endpoints (signed outbound webhooks), their
//! messages and attempts, replay, test sends and secret rotation, through the same use cases
//! as `/v1/endpoints`.

use std::str::FromStr;

use clap::Subcommand;

use crate::config::Config;
use crate::model::event_type::EventType;
use crate::service::endpoints::{self as service, EndpointRequest};
use crate::store::{rfc3339, Endpoint, EndpointChange, Store};

/// What to do with an app's event endpoints.
#[derive(Subcommand)]
pub enum EndpointsCommand {
    /// Create an endpoint; prints its whsec_ secret (shown only now).
    Create {
        /// App id.
        app_id: String,
        /// The https URL messages are posted to.
        #[arg(long)]
        url: String,
        /// Event types, comma-separated (e.g. delivery.failed,device.pruned).
        #[arg(long, value_delimiter = ',', required = true)]
        events: Vec<EventType>,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
    },
    /// List the app's endpoints.
    List {
        /// App id.
        app_id: String,
    },
    /// Change an endpoint's URL or event types, or enable or disable it.
    Update {
        /// App id.
        app_id: String,
        /// Endpoint id.
        id: String,
        /// New URL.
        #[arg(long)]
        url: Option<String>,
        /// New event types, comma-separated.
        #[arg(long, value_delimiter = ',')]
        events: Option<Vec<EventType>>,
        /// Enable (true) or disable (false).
        #[arg(long)]
        enabled: Option<bool>,
    },
    /// Delete an endpoint with its messages.
    Delete {
        /// App id.
        app_id: String,
        /// Endpoint id.
        id: String,
    },
    /// Replace the signing secret; the old one signs too for the grace period.
    RotateSecret {
        /// App id.
        app_id: String,
        /// Endpoint id.
        id: String,
        /// Seconds the old secret goes on signing.
        #[arg(long, default_value_t = 0)]
        grace_secs: u64,
    },
    /// Queue an example message of a type to the endpoint.
    Test {
        /// App id.
        app_id: String,
        /// Endpoint id.
        id: String,
        /// The example's type.
        #[arg(long, default_value = "device.pruned")]
        event_type: EventType,
    },
    /// Queue again every failed message created since a time (RFC 3339).
    Recover {
        /// App id.
        app_id: String,
        /// Endpoint id.
        id: String,
        /// RFC 3339 time.
        #[arg(long)]
        since: String,
    },
    /// Print the endpoint's latest messages and attempts.
    Log {
        /// App id.
        app_id: String,
        /// Endpoint id.
        id: String,
        /// Rows of each.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

/// Runs an `endpoints` subcommand.
pub async fn run(command: EndpointsCommand, config: &Config) -> anyhow::Result<()> {
    let store = crate::open_store(config).await?;
    let result = execute(command, &store, config).await;
    store.close().await;
    result
}

async fn execute(command: EndpointsCommand, store: &Store, config: &Config) -> anyhow::Result<()> {
    let settings = &config.endpoints;
    match command {
        EndpointsCommand::Create {
            app_id,
            url,
            events,
            description,
        } => {
            ensure_app(store, &app_id).await?;
            let request = EndpointRequest {
                url,
                events,
                description,
            };
            let (endpoint, secret) = service::create(store, settings, &app_id, &request).await?;
            print_endpoint(&endpoint);
            println!("secret {secret} (shown only now)");
        }
        EndpointsCommand::List { app_id } => {
            ensure_app(store, &app_id).await?;
            for endpoint in store.endpoints(&app_id).await? {
                print_endpoint(&endpoint);
            }
        }
        EndpointsCommand::Update {
            app_id,
            id,
            url,
            events,
            enabled,
        } => {
            let change = EndpointChange {
                url: url.as_deref(),
                description: None,
                events: events.as_deref(),
                enabled,
            };
            print_endpoint(&service::update(store, settings, &app_id, &id, change).await?);
        }
        EndpointsCommand::Delete { app_id, id } => {
            anyhow::ensure!(
                store.delete_endpoint(&app_id, &id).await?,
                "no endpoint {id} in app {app_id}"
            );
            println!("deleted endpoint {id}");
        }
        EndpointsCommand::RotateSecret {
            app_id,
            id,
            grace_secs,
        } => {
            let secret = service::rotate_secret(store, &app_id, &id, grace_secs).await?;
            println!("secret {secret} (shown only now); the old one signs for {grace_secs} s more");
        }
        EndpointsCommand::Test {
            app_id,
            id,
            event_type,
        } => {
            let message = service::send_test(store, &app_id, &id, event_type).await?;
            println!("queued {message} ({})", event_type.as_str());
        }
        EndpointsCommand::Recover { app_id, id, since } => {
            endpoint(store, &app_id, &id).await?;
            let since = jiff::Timestamp::from_str(&since)
                .map_err(|e| anyhow::anyhow!("--since must be an RFC 3339 time: {e}"))?;
            let n = store.recover_messages(&id, since.as_millisecond()).await?;
            println!("queued {n} failed messages again");
        }
        EndpointsCommand::Log { app_id, id, limit } => {
            endpoint(store, &app_id, &id).await?;
            for m in store.endpoint_messages(&id, None, limit).await? {
                println!(
                    "message {} {} {} attempts {} created {}{}",
                    m.id,
                    m.event_type.as_str(),
                    m.status.as_str(),
                    m.attempts,
                    rfc3339(m.created_at),
                    m.last_error
                        .map(|e| format!(" last error: {e}"))
                        .unwrap_or_default()
                );
            }
            for a in store.endpoint_attempts(&id, None, limit).await? {
                println!(
                    "attempt {} message {} {} {} {} ms{}",
                    rfc3339(a.at),
                    a.message_id,
                    a.outcome.as_str(),
                    a.response_code.map_or("-".to_string(), |c| c.to_string()),
                    a.duration_ms,
                    a.error.map(|e| format!(" {e}")).unwrap_or_default()
                );
            }
        }
    }
    Ok(())
}

async fn ensure_app(store: &Store, app_id: &str) -> anyhow::Result<()> {
    anyhow::ensure!(store.get_app(app_id).await?.is_some(), "no app {app_id}");
    Ok(())
}

async fn endpoint(store: &Store, app_id: &str, id: &str) -> anyhow::Result<Endpoint> {
    store
        .endpoint(app_id, id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no endpoint {id} in app {app_id}"))
}

fn print_endpoint(e: &Endpoint) {
    let events: Vec<&str> = e.events.iter().map(|t| t.as_str()).collect();
    let state = match (&e.disabled_reason, e.enabled, e.failing_since) {
        (_, true, None) => "enabled".to_string(),
        (_, true, Some(since)) => format!("enabled, failing since {}", rfc3339(since)),
        (Some(reason), false, _) => format!("disabled: {reason}"),
        (None, false, _) => "disabled".to_string(),
    };
    println!("{} {} [{}] {state}", e.id, e.url, events.join(","));
}
