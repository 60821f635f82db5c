//! Raw clients for the tests that must control every byte on the wire: plain TCP to the
//! bridge's listener, TLS trusting the test CA, and a minimal HTTP/1.1 response reader.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpStream;

use super::{certs_dir, TestApp};

/// Generous bound for "closed promptly" on a noisy two-core machine.
pub const PROMPTLY: Duration = Duration::from_secs(8);

/// A plain TCP connection to the app's listener.
pub async fn connect(t: &TestApp) -> TcpStream {
    TcpStream::connect(t.running().addr).await.expect("connect")
}

/// A TLS connection to `addr` trusting the test CA, offering `alpn` (maybe nothing).
pub async fn tls_connect(
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(certs_dir().join("ca.pem")).expect("ca");
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("cert")).expect("add");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// Reads until the peer closes; returns everything read and how long it took, or None if the
/// connection was still open after `limit`.
pub async fn read_until_closed<S: AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Option<(Vec<u8>, Duration)> {
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((out, started.elapsed())),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns status, lowercased head and
/// body.
pub async fn read_response<S: AsyncRead + Unpin>(stream: &mut S) -> (u16, String, Vec<u8>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(split) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if out.len() >= split + 4 + length {
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .expect("status");
                return (status, head, out[split + 4..split + 4 + length].to_vec());
            }
        }
        let n = tokio::time::timeout(PROMPTLY, stream.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        assert!(
            n > 0,
            "closed before a full response: {:?}",
            String::from_utf8_lossy(&out)
        );
        out.extend_from_slice(&buf[..n]);
    }
}

/// The `error.code` of a JSON error body.
pub fn error_code(body: &[u8]) -> String {
    let json: Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("JSON error body: {:?}", String::from_utf8_lossy(body)));
    json["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}
