//! rustls settings in one place: PEM loading, the server config used by the API listener and
//! the provider simulator, and the client config used for provider connections. The accept
//! loops themselves belong to `server::serve` and the simulator.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsAcceptor;

/// ALPN id of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN id of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate in {}", path.display());
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .with_context(|| format!("parsing key in {}", path.display()))?
        .with_context(|| format!("no private key in {}", path.display()))
}

/// A TLS acceptor for `cert` and `key` offering `alpn`. Clients that send no ALPN at all are
/// accepted too (rustls only refuses a client whose offer shares nothing with `alpn`).
pub fn server_acceptor(cert: &Path, key: &Path, alpn: &[&[u8]]) -> anyhow::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .context("building the TLS server config")?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The API listener's acceptor, offering HTTP/2 and HTTP/1.1.
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    server_acceptor(cert, key, &[ALPN_H2, ALPN_HTTP1])
}

/// A client config that trusts the web PKI roots and every certificate in `extra_root_certs`,
/// offering only ALPN `h2` (both APNs and FCM speak HTTP/2).
pub fn client_config(extra_root_certs: &[PathBuf]) -> anyhow::Result<Arc<ClientConfig>> {
    client_config_offering(extra_root_certs, &[ALPN_H2])
}

/// A client config that trusts the web PKI roots and `extra_root_certs`, offering `alpn`.
pub fn client_config_offering(
    extra_root_certs: &[PathBuf],
    alpn: &[&[u8]],
) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in extra_root_certs {
        for cert in load_certs(path)? {
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
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
