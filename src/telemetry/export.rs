//! The HTTP client the OTLP exporter posts spans with: HTTP/1.1 over hyper, with rustls for
//! an https collector, one connection per export (a batch every few seconds at most).
//!
//! The exporter's batch processor runs on a thread of its own, outside the async runtime,
//! so each request is spawned onto the runtime and awaited from there. The collector is the
//! operator's own address, so unlike event endpoints it passes no address guard.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use opentelemetry_http::{HttpClient, HttpError};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// The most of a collector's answer read (it is a small protobuf message).
const ANSWER_LIMIT: usize = 64 * 1024;

/// Posts export requests to the collector on the bridge's runtime.
#[derive(Clone)]
pub(super) struct CollectorClient {
    runtime: tokio::runtime::Handle,
    tls: TlsConnector,
    timeout: Duration,
}

impl std::fmt::Debug for CollectorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl CollectorClient {
    /// A client trusting the web PKI roots and `extra_root_certs`.
    pub(super) fn new(
        runtime: tokio::runtime::Handle,
        extra_root_certs: &[std::path::PathBuf],
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let config =
            crate::tls::client_config_offering(extra_root_certs, &[crate::tls::ALPN_HTTP1])?;
        Ok(Self {
            runtime,
            tls: TlsConnector::from(config),
            timeout,
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for CollectorClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (tls, timeout) = (self.tls.clone(), self.timeout);
        let exchange = async move {
            match tokio::time::timeout(timeout, post(tls, request)).await {
                Ok(answer) => answer,
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis()).into()),
            }
        };
        self.runtime.spawn(exchange).await?
    }
}

/// One request over a new connection to the request's host.
async fn post(tls: TlsConnector, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    let uri = request.uri().clone();
    let host = uri.host().ok_or("the collector URL has no host")?;
    let secure = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = tokio::net::TcpStream::connect((bare_host.as_str(), port)).await?;
    let _ = tcp.set_nodelay(true);
    let (mut parts, body) = request.into_parts();
    let authority = uri.authority().map(|a| a.as_str().to_string());
    parts.uri = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()?;
    if let Some(authority) = authority {
        parts.headers.insert(http::header::HOST, authority.parse()?);
    }
    let request = Request::from_parts(parts, Full::new(body));
    if secure {
        let name = ServerName::try_from(bare_host)?;
        let stream = tls.connect(name, tcp).await?;
        exchange(TokioIo::new(stream), request).await
    } else {
        exchange(TokioIo::new(tcp), request).await
    }
}

async fn exchange<IO>(io: IO, request: Request<Full<Bytes>>) -> Result<Response<Bytes>, HttpError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    // The connection task ends when the answer is read or the sender is dropped.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, ANSWER_LIMIT).collect().await?.to_bytes();
    Ok(Response::from_parts(parts, body))
}
