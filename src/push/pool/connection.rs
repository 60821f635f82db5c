//! One pooled HTTP/2 connection, on the `h2` crate directly: connecting it, sending one
//! request on it, and knowing whether it is still alive.
//!
//! hyper's HTTP/2 client can only ping on a fixed keep-alive schedule; a connection whose
//! network path silently died (TCP up, nothing answered) would swallow every send until that
//! ping fails. Owning the `PingPong` lets the pool ask "is this connection alive?" right after
//! a request timed out, and close it at once when the PING goes unanswered.
//!
//! Each connection also reports how many concurrent streams its server currently allows
//! (SETTINGS_MAX_CONCURRENT_STREAMS, which APNs lowers and raises while the connection
//! lives) into its pool's total, so that the worker can size its sends in flight from it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Ping, PingPong, Reason};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use tokio::sync::{Mutex, Notify};

use super::{ProviderResponse, TransportError, MAX_RESPONSE_BYTES};

const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(60);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams assumed open to a server whose SETTINGS have not arrived yet: RFC 9113 advises
/// servers to allow no fewer than 100, and h2 holds requests beyond it until they arrive.
pub const FIRST_GUESS_STREAMS: u64 = 100;
/// A server that sets no stream limit is counted as allowing this many (h2 reports
/// `usize::MAX`, which would overflow any total).
const UNLIMITED_STREAMS: u64 = u32::MAX as u64;

/// What is known about one connection, shared by its sends, its driver and its keep-alive.
pub(super) struct Health {
    pub(super) id: u64,
    /// No new requests may use it: it ended, got GOAWAY or failed.
    broken: AtomicBool,
    /// A PING went unanswered: nothing sent on it will ever be answered.
    dead: AtomicBool,
    /// Requests currently waiting on it.
    streams: AtomicU64,
    /// The concurrent streams its server allows, as last seen; what it adds to `allowed`.
    advertised: AtomicU64,
    /// Its pool's total of `advertised` over the open connections. Changed only under
    /// `ended`'s lock, so an update racing the connection's end cannot leave a stale share.
    allowed: Arc<AtomicU64>,
    /// Set once the connection ended or broke and its share left `allowed`.
    ended: StdMutex<bool>,
    /// `None` once the connection ended (h2 hands the `PingPong` out once).
    ping: Mutex<Option<PingPong>>,
    close: Notify,
}

impl Health {
    fn new(id: u64, ping: Option<PingPong>, allowed: Arc<AtomicU64>) -> Self {
        Self {
            id,
            broken: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            streams: AtomicU64::new(0),
            advertised: AtomicU64::new(0),
            allowed,
            ended: StdMutex::new(false),
            ping: Mutex::new(ping),
            close: Notify::new(),
        }
    }

    /// Records the stream limit `sender`'s server advertises now, keeping the pool's total
    /// in step. Cheap when it did not change (the usual case).
    fn learn(&self, sender: &SendRequest<Bytes>) {
        let now = match sender.current_max_send_streams() {
            usize::MAX => UNLIMITED_STREAMS,
            n => (n as u64).min(UNLIMITED_STREAMS),
        };
        if self.advertised.load(Ordering::Relaxed) == now {
            return;
        }
        let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        if *ended {
            return;
        }
        let before = self.advertised.swap(now, Ordering::Relaxed);
        self.allowed.fetch_add(now, Ordering::Relaxed);
        self.allowed.fetch_sub(before, Ordering::Relaxed);
    }

    /// Takes this connection's share out of the pool's total, for good.
    fn end(&self) {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        if !*ended {
            *ended = true;
            let before = self.advertised.swap(0, Ordering::Relaxed);
            self.allowed.fetch_sub(before, Ordering::Relaxed);
        }
    }

    pub(super) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// No new request may use it; its streams no longer count in the pool's total.
    pub(super) fn mark_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
        self.end();
    }

    /// True once a PING on this connection went unanswered.
    pub(super) fn is_dead(&self) -> bool {
        self.dead.load(Ordering::Relaxed)
    }

    /// Sends a PING and waits up to `timeout` for its ACK. False, and the connection is
    /// closed (failing every request still waiting on it), when none came. Callers that
    /// queue behind a check in progress share its verdict.
    pub(super) async fn check(&self, timeout: Duration) -> bool {
        let mut ping = self.ping.lock().await;
        if self.is_dead() {
            return false;
        }
        let answered = match ping.as_mut() {
            Some(ping) => matches!(
                tokio::time::timeout(timeout, ping.ping(Ping::opaque())).await,
                Ok(Ok(_))
            ),
            None => false,
        };
        if !answered {
            self.dead.store(true, Ordering::Relaxed);
            self.mark_broken();
            self.close.notify_one();
        }
        answered
    }
}

/// One connection as the pool holds it.
pub struct H2Connection {
    pub(super) sender: SendRequest<Bytes>,
    pub(super) health: Arc<Health>,
}

/// Completes the HTTP/2 handshake on `io` and spawns the tasks that drive the connection
/// and keep it alive. The streams its server allows are counted in `allowed` while it is
/// open. `on_end` runs once when the connection is gone.
pub(super) async fn handshake<T>(
    io: T,
    id: u64,
    authority: String,
    keep_idle: bool,
    allowed: Arc<AtomicU64>,
    on_end: impl FnOnce() + Send + 'static,
) -> Result<H2Connection, h2::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, mut connection) = h2::client::Builder::new()
        // Many small responses arrive at once; don't make them wait for WINDOW_UPDATEs.
        .initial_connection_window_size(1 << 20)
        // Until the server's SETTINGS say otherwise (h2 would assume no limit at all).
        .initial_max_send_streams(FIRST_GUESS_STREAMS as usize)
        .handshake::<_, Bytes>(io)
        .await?;
    let health = Arc::new(Health::new(id, connection.ping_pong(), allowed));
    health.learn(&sender);
    {
        let health = health.clone();
        tokio::spawn(async move {
            tokio::select! {
                result = &mut connection => match result {
                    Ok(()) => tracing::debug!(endpoint = %authority, conn = id, "connection closed"),
                    Err(e) => tracing::info!(endpoint = %authority, conn = id, error = %e,
                        "connection failed"),
                },
                // Dropping the connection fails every stream still waiting on it.
                () = health.close.notified() => tracing::info!(endpoint = %authority, conn = id,
                    "connection closed: a PING went unanswered"),
            }
            health.mark_broken();
            // Release the PingPong so checks queued behind this see a dead connection.
            health.ping.lock().await.take();
            on_end();
        });
    }
    tokio::spawn(keep_alive(health.clone(), keep_idle));
    Ok(H2Connection { sender, health })
}

/// Pings every [`KEEP_ALIVE_INTERVAL`] (only while requests wait, unless `keep_idle`), so
/// that middleboxes keep the connection open and a dead one is noticed between sends.
async fn keep_alive(health: Arc<Health>, keep_idle: bool) {
    loop {
        tokio::time::sleep(KEEP_ALIVE_INTERVAL).await;
        if health.is_broken() {
            return;
        }
        let busy = health.streams.load(Ordering::Relaxed) > 0;
        if (keep_idle || busy) && !health.check(KEEP_ALIVE_TIMEOUT).await {
            return;
        }
    }
}

/// Why one request on one connection failed.
pub(super) struct RequestFailure {
    pub(super) error: TransportError,
    /// The server provably did not act on it (never sent, refused, beyond GOAWAY).
    pub(super) unprocessed: bool,
}

/// Counts a request on its connection for as long as it lives.
struct OnConnection<'a>(&'a AtomicU64);

impl<'a> OnConnection<'a> {
    fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for OnConnection<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// POSTs `body` to `uri` on the connection behind `sender` and reads the whole response.
pub(super) async fn post(
    sender: SendRequest<Bytes>,
    health: &Health,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<ProviderResponse, RequestFailure> {
    let _on_connection = OnConnection::new(&health.streams);
    // Until the request is handed to h2 nothing reached the server.
    let unsent = |e: h2::Error| {
        health.mark_broken();
        RequestFailure {
            error: TransportError::Connection(e.to_string()),
            unprocessed: true,
        }
    };
    let mut sender = sender.ready().await.map_err(unsent)?;
    // The server's SETTINGS arrive after the handshake and may change at any time.
    health.learn(&sender);
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri.clone();
    *request.headers_mut() = headers.clone();
    request
        .headers_mut()
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    let (response, mut stream) = sender
        .send_request(request, body.is_empty())
        .map_err(unsent)?;
    if !body.is_empty() {
        stream
            .send_data(body, true)
            .map_err(|e| failed(health, &e))?;
    }
    let response = response.await.map_err(|e| failed(health, &e))?;
    // By now the server's first SETTINGS have surely been read.
    health.learn(&sender);
    let (parts, mut incoming) = response.into_parts();
    let mut body = Vec::new();
    while let Some(chunk) = incoming.data().await {
        let chunk = chunk.map_err(|e| RequestFailure {
            error: TransportError::Connection(format!("reading the response: {e}")),
            unprocessed: false,
        })?;
        // Hand the window back so later responses on this connection are not held up.
        let _ = incoming.flow_control().release_capacity(chunk.len());
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(RequestFailure {
                error: TransportError::Connection("the response is too large".into()),
                unprocessed: false,
            });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(ProviderResponse {
        status: parts.status,
        headers: parts.headers,
        body: Bytes::from(body),
    })
}

/// Classifies an error on a request h2 already sent.
fn failed(health: &Health, e: &h2::Error) -> RequestFailure {
    let refused = e.reason() == Some(Reason::REFUSED_STREAM);
    let beyond_goaway = e.is_go_away() && e.is_remote();
    // A reset of one stream leaves the connection usable.
    if !e.is_reset() || beyond_goaway {
        health.mark_broken();
    }
    tracing::debug!(conn = health.id, error = %e, unprocessed = refused || beyond_goaway,
        "request failed");
    RequestFailure {
        error: TransportError::Connection(e.to_string()),
        unprocessed: refused || beyond_goaway,
    }
}
