//! A small pool of HTTP/2 connections to one provider endpoint.
//!
//! Each pooled object is one TLS + HTTP/2 connection ([`connection`]). A send checks a
//! connection out only long enough to clone its `SendRequest`, so many requests run as
//! concurrent streams on at most `size` TCP connections; h2 queues requests beyond the
//! server's MAX_CONCURRENT_STREAMS. A connection is replaced once it is closed (GOAWAY, reset,
//! unanswered PING) or after a connection-level error on one of its streams. A request that
//! times out makes the pool PING its connection at once; a connection that does not answer
//! is closed and its requests are sent again on a fresh one.
//!
//! The pool also knows how many concurrent streams its open connections' servers allow
//! ([`PoolStats::streams_allowed`]): the worker sizes its sends in flight from it.

mod connection;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use deadpool::managed::{self, Metrics, Pool, QueueMode, RecycleError, RecycleResult};
use http::{HeaderMap, StatusCode, Uri};
use rustls::pki_types::ServerName;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

pub use self::connection::H2Connection;
/// Sends in flight assumed possible before any server's SETTINGS have been seen.
pub use self::connection::FIRST_GUESS_STREAMS;
use self::connection::{Health, RequestFailure};

/// Provider responses are small JSON documents; anything bigger is not a provider talking.
/// Times a request the server provably did not process is sent, on fresh connections.
const MAX_UNPROCESSED_ATTEMPTS: u32 = 3;
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// How long a connection whose request timed out gets to answer a PING before it is declared
/// dead. A PING is answered by the peer's HTTP/2 layer, not by its application, so a slow
/// provider still answers quickly; only a dead path stays silent.
pub const DEAD_CONNECTION_PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// `https://host[:port]`; any path is ignored.
    pub endpoint: String,
    /// Maximum number of connections.
    pub size: usize,
    /// Limit for one attempt of a send: checkout, connect if needed, request and response
    /// body. A send whose connection is proven dead gets one more attempt, so a send takes
    /// at most [`H2Pool::send_deadline`].
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
    /// The request's connection was proven dead (its PING went unanswered) and sending it
    /// again on a fresh connection failed too. Says nothing about the request itself.
    #[error("the connection died and the resend failed: {0}")]
    DeadConnection(String),
}

impl TransportError {
    /// Whether the connection died under the request, so the attempt says nothing about it.
    /// (The request timing out on a connection that then answers a ping is not that.)
    pub fn connection_lost(&self) -> bool {
        matches!(self, Self::DeadConnection(_))
    }

    /// A short machine-readable reason for outcomes and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "ConnectFailed",
            Self::Timeout(_) => "Timeout",
            Self::Connection(_) => "ConnectionError",
            Self::DeadConnection(_) => "DeadConnection",
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
    /// Concurrent streams the servers of the open, usable connections allow, summed
    /// (their current SETTINGS_MAX_CONCURRENT_STREAMS; 0 with no connection open).
    pub streams_allowed: u64,
}

#[derive(Debug, Default)]
struct Counters {
    opened: AtomicU64,
    open: AtomicU64,
    in_flight: AtomicU64,
    /// Kept by the connections themselves (see [`connection::Health`]).
    streams_allowed: Arc<AtomicU64>,
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
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let counters = self.counters.clone();
        let on_end = move || {
            // The connection holds its place under the cap until it ends.
            drop(permit);
            counters.open.fetch_sub(1, Ordering::Relaxed);
        };
        // Counted before the driver starts, so its end never comes first.
        self.counters.open.fetch_add(1, Ordering::Relaxed);
        let allowed = self.counters.streams_allowed.clone();
        let conn = connection::handshake(
            tls,
            id,
            self.authority.clone(),
            self.keep_idle,
            allowed,
            on_end,
        )
        .await
        .map_err(|e| {
            self.counters.open.fetch_sub(1, Ordering::Relaxed);
            fail(format!("HTTP/2 handshake: {e}"))
        })?;
        self.counters.opened.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(endpoint = %self.authority, conn = id, "connection opened");
        Ok(conn)
    }
}

impl managed::Manager for Connector {
    type Type = H2Connection;
    type Error = TransportError;

    async fn create(&self) -> Result<H2Connection, TransportError> {
        // Boxed: a connect (TCP, TLS and HTTP/2 handshakes) is rare, and inline it would make
        // every checkout's future, and so every send's, some 16 KB larger.
        Box::pin(self.connect()).await
    }

    async fn recycle(&self, conn: &mut H2Connection, _: &Metrics) -> RecycleResult<TransportError> {
        if conn.health.is_broken() {
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
    ping_timeout: Duration,
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
            ping_timeout: DEAD_CONNECTION_PING_TIMEOUT,
        })
    }

    /// The longest a send takes: one attempt, a PING of its connection, and one resend when
    /// that PING went unanswered.
    pub fn send_deadline(&self) -> Duration {
        self.request_timeout * 2 + self.ping_timeout
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
            streams_allowed: self.counters.streams_allowed.load(Ordering::Relaxed),
        }
    }

    /// POSTs `body` to `path` (with query) and reads the whole response, within the request
    /// timeout. A request the server provably did not process (refused stream, beyond a
    /// GOAWAY's last stream id, or never written) is sent again on another connection (up
    /// to three times in all), and one whose connection turns out dead is sent again on a
    /// fresh one.
    pub async fn post(
        &self,
        path: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<ProviderResponse, TransportError> {
        let uri: Uri = format!("https://{}{}", self.authority, path)
            .parse()
            .map_err(|e| TransportError::Connection(format!("invalid request path: {e}")))?;
        let deadline = Instant::now() + self.send_deadline();
        let mut used = None;
        let error = match self
            .attempt(self.request_timeout, &uri, headers, &body, &mut used)
            .await
        {
            Ok(response) => return Ok(response),
            Err(error) => error,
        };
        let Some(health) = used else {
            return Err(error);
        };
        // A request that timed out may still have been delivered: resending it could notify
        // the device twice (APNs drops a repeated apns-id, FCM does not). Only a connection
        // that cannot even answer a PING proves that nothing on it reached the provider's
        // HTTP/2 layer in time to be answered, and nothing ever will; then a fresh
        // connection is the only way the notification gets out. A request that failed
        // because such a check closed its connection is in the same position.
        let dead = match &error {
            TransportError::Timeout(_) => !health.check(self.ping_timeout).await,
            TransportError::Connection(_) => health.is_dead(),
            _ => false,
        };
        if !dead {
            return Err(error);
        }
        tracing::info!(endpoint = %self.authority, conn = health.id,
            "the connection did not answer a PING; sending the request again on a new one");
        let left = deadline.saturating_duration_since(Instant::now());
        let limit = left.min(self.request_timeout);
        if limit.is_zero() {
            return Err(TransportError::DeadConnection(
                "no time was left for a resend".into(),
            ));
        }
        // Boxed, being rare: inline, a second attempt would double this future's size.
        Box::pin(self.attempt(limit, &uri, headers, &body, &mut None))
            .await
            .map_err(|e| TransportError::DeadConnection(e.to_string()))
    }

    /// One attempt within `limit`; `used` learns the connection it was last sent on.
    async fn attempt(
        &self,
        limit: Duration,
        uri: &Uri,
        headers: &HeaderMap,
        body: &Bytes,
        used: &mut Option<Arc<Health>>,
    ) -> Result<ProviderResponse, TransportError> {
        tokio::time::timeout(limit, self.post_with_retry(uri, headers, body, used))
            .await
            .map_err(|_| TransportError::Timeout(limit))?
    }

    async fn post_with_retry(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        body: &Bytes,
        used: &mut Option<Arc<Health>>,
    ) -> Result<ProviderResponse, TransportError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (sender, health) = self.checkout().await?;
            *used = Some(health.clone());
            let _in_flight = InFlight::new(&self.counters.in_flight);
            match connection::post(sender, &health, uri, headers, body.clone()).await {
                Ok(response) => return Ok(response),
                // The server provably did not act on it (refused, or beyond a GOAWAY's last
                // stream id): sending it again cannot duplicate it. A few times, since a
                // burst of requests can meet one closing connection after another.
                Err(RequestFailure { unprocessed, .. })
                    if unprocessed && attempt < MAX_UNPROCESSED_ATTEMPTS => {}
                Err(RequestFailure { error, .. }) => return Err(error),
            }
        }
    }

    async fn checkout(
        &self,
    ) -> Result<(h2::client::SendRequest<Bytes>, Arc<Health>), TransportError> {
        let conn = self.pool.get().await.map_err(|e| match e {
            managed::PoolError::Backend(e) => e,
            other => TransportError::Connection(format!("connection pool: {other}")),
        })?;
        // The object goes back to the pool when `conn` drops; the cloned sender keeps using
        // the same connection, which is what lets many streams share it.
        Ok((conn.sender.clone(), conn.health.clone()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_future_stays_small() {
        let pool = H2Pool::new(&PoolConfig {
            endpoint: "https://127.0.0.1:9".into(),
            size: 1,
            request_timeout: Duration::from_secs(1),
            extra_root_certs: Vec::new(),
            keep_idle_connections: false,
            cap: None,
        })
        .expect("pool");
        let headers = HeaderMap::new();
        // Built, never polled: its size is what every send in flight holds for it. With the
        // connect and the resend inline it was ~64 KB (and each caller doubles what it
        // awaits), which made a send's task ~500 KB.
        let post = pool.post("/3/device/00", &headers, Bytes::new());
        let size = std::mem::size_of_val(&post);
        assert!(size < 8 * 1024, "H2Pool::post's future is {size} bytes");
    }
}
