//! `pushbridge webhooks send`: a test webhook, signed with the source's own scheme and newest
//! secret (read from the store), posted to a running bridge, so trying a source or a rule
//! locally is one command instead of a hand-computed HMAC.

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Subcommand;
use serde_json::{Map, Value};

use crate::config::Config;
use crate::outbound::{AddressGuard, WebhookClient};
use crate::signature::{sign, Scheme};

/// What to do with webhooks.
#[derive(Subcommand)]
pub enum WebhooksCommand {
    /// Sign a test webhook as SOURCE's sender would and post it to the running bridge.
    Send {
        /// App id.
        app_id: String,
        /// Source name.
        source: String,
        /// Event type, put where the source reads it (its `event_type_path`, or the
        /// `X-GitHub-Event` header for `github`).
        #[arg(long = "type")]
        event_type: String,
        /// The event's JSON object.
        #[arg(long, default_value = "{}")]
        data: String,
        /// Event id (deduplication); a new one when absent.
        #[arg(long)]
        id: Option<String>,
        /// Base URL of the bridge; the configured listen address when absent.
        #[arg(long)]
        url: Option<String>,
    },
}

/// Runs a `webhooks` subcommand.
pub async fn run(command: WebhooksCommand, config: &Config) -> anyhow::Result<()> {
    match command {
        WebhooksCommand::Send {
            app_id,
            source,
            event_type,
            data,
            id,
            url,
        } => {
            let store = crate::open_store(config).await?;
            let found = store
                .get_source(&app_id, &source)
                .await?
                .with_context(|| format!("app {app_id} has no webhook source {source}"))?;
            let secret = found
                .secrets
                .iter()
                .max_by_key(|s| s.created_at)
                .with_context(|| format!("source {source} has no active secret"))?;
            let data: Value = serde_json::from_str(&data).context("--data is not JSON")?;
            let Value::Object(data) = data else {
                bail!("--data must be a JSON object");
            };
            let id = id.unwrap_or_else(|| crate::store::new_id("evt"));
            let body = body_for(
                found.scheme,
                found.event_type_path.as_deref(),
                &event_type,
                &id,
                data,
            )?;
            let mut headers = sign(
                found.scheme,
                &secret.secret,
                body.as_bytes(),
                &id,
                store.now() / 1000,
            )
            .context("the source's secret cannot sign for its scheme")?;
            if found.scheme == Scheme::Github {
                headers.push(("x-github-event".into(), event_type));
            }
            let base = url.unwrap_or_else(|| default_url(config));
            let target = format!(
                "{}/v1/webhooks/{app_id}/{source}",
                base.trim_end_matches('/')
            );
            post(config, &target, headers, body).await
        }
    }
}

/// The body the source expects: `data` with the event type at the source's path (unless the
/// scheme sends it as a header) and, for Stripe, which has no id header, the id as `id`.
fn body_for(
    scheme: Scheme,
    type_path: Option<&str>,
    event_type: &str,
    id: &str,
    mut data: Map<String, Value>,
) -> anyhow::Result<String> {
    if scheme != Scheme::Github {
        let path = type_path.unwrap_or(crate::service::webhooks::DEFAULT_TYPE_PATH);
        let mut keys = path.split('.').peekable();
        let mut here = &mut data;
        while let Some(key) = keys.next() {
            if keys.peek().is_none() {
                here.insert(key.to_string(), Value::String(event_type.to_string()));
                break;
            }
            let next = here
                .entry(key.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            here = next.as_object_mut().with_context(|| {
                format!("--data has a non-object `{key}` on the type path `{path}`")
            })?;
        }
    }
    if scheme == Scheme::Stripe {
        data.entry("id")
            .or_insert_with(|| Value::String(id.to_string()));
    }
    Ok(serde_json::to_string(&data)?)
}

/// `http(s)://` and the listen address, a wildcard address replaced by loopback.
fn default_url(config: &Config) -> String {
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{addr}")
}

/// Posts with the bridge's own outbound client. The operator names the bridge, so the
/// address guard that keeps event endpoints off private networks does not apply here.
async fn post(
    config: &Config,
    target: &str,
    headers: Vec<(String, String)>,
    body: String,
) -> anyhow::Result<()> {
    let anywhere = AddressGuard {
        allow_insecure: true,
        allowed_private_cidrs: vec!["0.0.0.0/0".parse()?, "::/0".parse()?],
    };
    // A bridge serving TLS with its own certificate is trusted as configured.
    let roots: Vec<std::path::PathBuf> = config.tls.iter().map(|t| t.cert_path.clone()).collect();
    let client = WebhookClient::new(anywhere, &roots, Duration::from_secs(30))?;
    let posted = client.post(target, &headers, body.into()).await;
    let answer = posted
        .result
        .map_err(|e| anyhow::anyhow!("posting to {target}: {e}"))?;
    println!("{} {}", answer.status, answer.excerpt);
    if !(200..300).contains(&answer.status) {
        bail!("the bridge refused the webhook with {}", answer.status);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn the_type_goes_where_the_source_reads_it() {
        let data = object(json!({"amount": 5}));
        let body = body_for(
            Scheme::GenericV2,
            None,
            "payment.completed",
            "e1",
            data.clone(),
        )
        .expect("body");
        assert_eq!(body, r#"{"amount":5,"type":"payment.completed"}"#);
        let body =
            body_for(Scheme::Generic, Some("meta.kind"), "x", "e1", data.clone()).expect("body");
        assert_eq!(body, r#"{"amount":5,"meta":{"kind":"x"}}"#);
        let body = body_for(Scheme::Github, None, "push", "e1", data.clone()).expect("body");
        assert_eq!(body, r#"{"amount":5}"#);
        let body = body_for(Scheme::Stripe, None, "charge", "e1", data).expect("body");
        assert_eq!(body, r#"{"amount":5,"id":"e1","type":"charge"}"#);
        let clash = object(json!({"meta": 1}));
        assert!(body_for(Scheme::Generic, Some("meta.kind"), "x", "e1", clash).is_err());
    }
}
