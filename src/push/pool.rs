//! A small pool of HTTP/2 connections to one provider endpoint.
//!
//! Each pooled object is one TLS + HTTP/2 connection. A send checks a connection out only long
//! enough to clone its `SendRequest`, so many requests run as concurrent streams on at most
//! `size` TCP connections; hyper queues requests beyond the server's MAX_CONCURRENT_STREAMS.
//! A connection is replaced once it is closed (GOAWAY, reset, keep-alive failure) or after a
//! connection-level error on one of its streams.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use deadpool::managed::{self, Metrics, Pool, QueueMode, RecycleError, RecycleResult};
use http::{HeaderMap, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

/// Provider responses are small JSON documents; anything bigger is not a provider talking.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(60);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// `https://host[:port]`; any path is ignored.
    pub endpoint: String,
    /// Maximum number of connections.
    pub size: usize,
    /// Limit for a whole send: checkout, connect if needed, request and response body.
    pub request_timeout: Duration,
    /// PEM files with extra trusted roots (added to the web PKI roots).
    pub extra_root_certs: Vec<PathBuf>,
    /// Ping idle connections to keep them open (providers want long-lived connections; a
    /// token endpoint used once an hour does not).
    pub keep_idle_connections: bool,
    /// The cap on open connections this pool shares with others, if any.
    pub cap: Option<ConnectionCap>,
}

/// A cap on open provider connections shared by many pools: each open connection holds one
/// of its permits until it closes. A pool that needs a connection while the cap is reached
/// waits (within the request timeout) for one to close.
#[derive(Clone, Debug)]
pub struct ConnectionCap(Arc<Semaphore>);

impl ConnectionCap {
    /// A cap of `max` connections.
    pub fn new(max: usize) -> Self {
        Self(Arc::new(Semaphore::new(max)))
    }

    /// How many more connections may open now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }
}

/// Why a request got no HTTP response. All of these are worth retrying later.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// TCP connect or TLS/HTTP/2 handshake failed.
    #[error("connecting to {endpoint} failed: {message}")]
    Connect {
        /// The endpoint's authority.
        endpoint: String,
        /// What went wrong.
        message: String,
    },
    /// The request did not complete within the request timeout.
    #[error("request timed out after {0:?}")]
    Timeout(Duration),
    /// The connection or stream failed mid-request (reset, GOAWAY, closed).
    #[error("connection error: {0}")]
    Connection(String),
}

impl TransportError {
    /// Whether the connection died under the request, so the attempt says nothing about it.
    /// (The request timing out on a connection that then answers a ping is not that.)
    pub fn connection_lost(&self) -> bool {
        false
    }

    /// A short machine-readable reason for outcomes and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "ConnectFailed",
            Self::Timeout(_) => "Timeout",
            Self::Connection(_) => "ConnectionError",
        }
    }
}

/// A provider's HTTP response, body fully read.
#[derive(Clone, Debug)]
pub struct ProviderResponse {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// Response body (empty for APNs successes).
    pub body: Bytes,
}

/// Point-in-time pool counters, for metrics.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections established since the pool was created.
    pub connections_opened: u64,
    /// Connections currently open (including ones draining after GOAWAY).
    pub connections_open: u64,
    /// Requests currently waiting for a response.
    pub in_flight: u64,
}

#[derive(Debug, Default)]
struct Counters {
    opened: AtomicU64,
    open: AtomicU64,
    in_flight: AtomicU64,
}

/// Counts one in-flight request for as long as it lives.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One pooled HTTP/2 connection.
pub struct H2Connection {
    id: u64,
    sender: SendRequest<Full<Bytes>>,
    broken: Arc<AtomicBool>,
}

/// Creates and vets connections for deadpool.
pub struct Connector {
    authority: String,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    connect_timeout: Duration,
    keep_idle: bool,
    counters: Arc<Counters>,
    next_id: AtomicU64,
    cap: Option<ConnectionCap>,
}

impl Connector {
    async fn connect(&self) -> Result<H2Connection, TransportError> {
        let fail = |message: String| TransportError::Connect {
            endpoint: self.authority.clone(),
            message,
        };
        let permit = match &self.cap {
            None => None,
            Some(cap) => Some(
                cap.0
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| fail("the provider connection cap is closed".into()))?,
            ),
        };
        let tcp = tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| fail("TCP connect timed out".into()))?
        .map_err(|e| fail(format!("TCP connect: {e}")))?;
        // Provider requests are small; don't let Nagle hold them back.
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| fail(format!("TLS handshake: {e}")))?;
        if let Some(alpn) = tls.get_ref().1.alpn_protocol() {
            if alpn != b"h2" {
                return Err(fail(format!(
                    "server chose ALPN {:?} instead of h2",
                    String::from_utf8_lossy(alpn)
                )));
            }
        }
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(self.keep_idle)
            .handshake(TokioIo::new(tls))
            .await
            .map_err(|e| fail(format!("HTTP/2 handshake: {e}")))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let broken = Arc::new(AtomicBool::new(false));
        self.counters.opened.fetch_add(1, Ordering::Relaxed);
        self.counters.open.fetch_add(1, Ordering::Relaxed);
        let counters = self.counters.clone();
        let closed = broken.clone();
        let authority = self.authority.clone();
        tokio::spawn(async move {
            // The connection holds its place under the cap until it ends.
            let _permit = permit;
            match connection.await {
                Ok(()) => tracing::debug!(endpoint = %authority, conn = id, "connection closed"),
                Err(e) => {
                    tracing::info!(endpoint = %authority, conn = id, error = %e, "connection failed")
                }
            }
            closed.store(true, Ordering::Relaxed);
            counters.open.fetch_sub(1, Ordering::Relaxed);
        });
        tracing::debug!(endpoint = %self.authority, conn = id, "connection opened");
        Ok(H2Connection { id, sender, broken })
    }
}

impl managed::Manager for Connector {
    type Type = H2Connection;
    type Error = TransportError;

    async fn create(&self) -> Result<H2Connection, TransportError> {
        self.connect().await
    }

    async fn recycle(&self, conn: &mut H2Connection, _: &Metrics) -> RecycleResult<TransportError> {
        if conn.broken.load(Ordering::Relaxed) || conn.sender.is_closed() {
            return Err(RecycleError::message("connection closed"));
        }
        Ok(())
    }
}

/// A pool of HTTP/2 connections to one endpoint.
pub struct H2Pool {
    pool: Pool<Connector>,
    counters: Arc<Counters>,
    authority: String,
    request_timeout: Duration,
}

impl H2Pool {
    /// Builds the pool; connections are opened on first use.
    pub fn new(config: &PoolConfig) -> anyhow::Result<Self> {
        let uri: Uri = config
            .endpoint
            .parse()
            .with_context(|| format!("endpoint {:?} is not a URL", config.endpoint))?;
        anyhow::ensure!(
            uri.scheme_str() == Some("https"),
            "endpoint {:?} must use https",
            config.endpoint
        );
        let authority = uri
            .authority()
            .with_context(|| format!("endpoint {:?} has no host", config.endpoint))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = authority.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone())
            .with_context(|| format!("endpoint host {host:?} is not a valid server name"))?;
        anyhow::ensure!(config.size > 0, "pool size must be at least 1");
        let counters = Arc::new(Counters::default());
        let connector = Connector {
            authority: authority.to_string(),
            host,
            port,
            server_name,
            tls: TlsConnector::from(crate::tls::client_config(&config.extra_root_certs)?),
            connect_timeout: config.request_timeout,
            keep_idle: config.keep_idle_connections,
            counters: counters.clone(),
            next_id: AtomicU64::new(1),
            cap: config.cap.clone(),
        };
        let pool = Pool::builder(connector)
            .max_size(config.size)
            // Rotate through the connections so streams spread over all of them.
            .queue_mode(QueueMode::Fifo)
            .build()
            .context("building the connection pool")?;
        Ok(Self {
            pool,
            counters,
            authority: authority.to_string(),
            request_timeout: config.request_timeout,
        })
    }

    /// The endpoint's `host:port`.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// Drops the connections no send has used for `idle`; returns how many. A stream still
    /// running on one finishes first: the connection closes when its last user lets go.
    pub fn close_idle(&self, idle: Duration) -> usize {
        self.pool
            .retain(|_, metrics| metrics.last_used() < idle)
            .removed
            .len()
    }

    /// Current counters.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            connections_opened: self.counters.opened.load(Ordering::Relaxed),
            connections_open: self.counters.open.load(Ordering::Relaxed),
            in_flight: self.counters.in_flight.load(Ordering::Relaxed),
        }
    }

    /// POSTs `body` to `path` (with query) and reads the whole response, within the request
    /// timeout. A request the server provably did not process (refused stream, beyond a
    /// GOAWAY's last stream id, or never written) is retried once on another connection.
    pub async fn post(
        &self,
        path: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<ProviderResponse, TransportError> {
        let uri: Uri = format!("https://{}{}", self.authority, path)
            .parse()
            .map_err(|e| TransportError::Connection(format!("invalid request path: {e}")))?;
        tokio::time::timeout(
            self.request_timeout,
            self.post_with_retry(uri, headers, body),
        )
        .await
        .map_err(|_| TransportError::Timeout(self.request_timeout))?
    }

    async fn post_with_retry(
        &self,
        uri: Uri,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<ProviderResponse, TransportError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (conn_id, mut sender, broken) = self.checkout().await?;
            let mut request = Request::new(Full::new(body.clone()));
            *request.method_mut() = Method::POST;
            *request.uri_mut() = uri.clone();
            *request.headers_mut() = headers.clone();
            let _in_flight = InFlight::new(&self.counters.in_flight);
            let response = match sender.send_request(request).await {
                Ok(response) => response,
                Err(e) => {
                    let class = classify(&e);
                    if class.connection_level {
                        broken.store(true, Ordering::Relaxed);
                    }
                    tracing::debug!(endpoint = %self.authority, conn = conn_id, error = %e,
                        unprocessed = class.unprocessed, "request failed");
                    if class.unprocessed && attempt == 1 {
                        continue;
                    }
                    return Err(TransportError::Connection(e.to_string()));
                }
            };
            let (parts, incoming) = response.into_parts();
            let body = Limited::new(incoming, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| TransportError::Connection(format!("reading the response: {e}")))?
                .to_bytes();
            return Ok(ProviderResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            });
        }
    }

    async fn checkout(
        &self,
    ) -> Result<(u64, SendRequest<Full<Bytes>>, Arc<AtomicBool>), TransportError> {
        let conn = self.pool.get().await.map_err(|e| match e {
            managed::PoolError::Backend(e) => e,
            other => TransportError::Connection(format!("connection pool: {other}")),
        })?;
        // The object goes back to the pool when `conn` drops; the cloned sender keeps using
        // the same connection, which is what lets many streams share it.
        Ok((conn.id, conn.sender.clone(), conn.broken.clone()))
    }
}

struct ErrorClass {
    /// The connection is unusable for new streams.
    connection_level: bool,
    /// The server did not act on the request, so resending cannot duplicate it.
    unprocessed: bool,
}

fn classify(e: &hyper::Error) -> ErrorClass {
    if e.is_canceled() {
        // hyper never handed the request to the connection.
        return ErrorClass {
            connection_level: true,
            unprocessed: true,
        };
    }
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            let refused = h2.reason() == Some(h2::Reason::REFUSED_STREAM);
            let beyond_goaway = h2.is_go_away() && h2.is_remote();
            return ErrorClass {
                // A reset of one stream leaves the connection usable.
                connection_level: !h2.is_reset(),
                unprocessed: refused || beyond_goaway,
            };
        }
        source = err.source();
    }
    ErrorClass {
        connection_level: true,
        unprocessed: false,
    }
}

/// Checks that a settings field holds an `https://host` URL.
pub(crate) fn check_endpoint(field: &str, url: &str) -> Result<(), String> {
    match url.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("https") && uri.host().is_some() => Ok(()),
        _ => Err(format!("{field}: must be an https:// URL")),
    }
}

/// Checks a provider's pool size and request timeout.
pub(crate) fn check_pool(prefix: &str, size: usize, timeout_ms: u64) -> Result<(), String> {
    if !(1..=64).contains(&size) {
        return Err(format!("{prefix}.pool_size: must be between 1 and 64"));
    }
    if timeout_ms == 0 {
        return Err(format!("{prefix}.request_timeout_ms: must be positive"));
    }
    Ok(())
}
