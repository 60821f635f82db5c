//! TLS client settings for provider connections: web PKI roots plus operator-supplied CAs.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use rustls::{ClientConfig, RootCertStore};

/// A client config that trusts the web PKI roots and every certificate in `extra_root_certs`,
/// offering only ALPN `h2` (both APNs and FCM speak HTTP/2).
pub fn client_config(extra_root_certs: &[PathBuf]) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in extra_root_certs {
        for cert in crate::tls::load_certs(path)? {
            roots
                .add(cert)
                .with_context(|| format!("adding a root certificate from {}", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("selecting TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}
