//! One pooled HTTP/2 connection, on the `h2` crate directly: connecting it, sending one
//! request on it, and knowing whether it is still alive.
//!
//! hyper's HTTP/2 client can only ping on a fixed keep-alive schedule; a connection whose
//! network path silently died (TCP up, nothing answered) would swallow every send until that
//! ping fails. Owning the `PingPong` lets the pool ask "is this connection alive?" right after
//! a request timed out, and close it at once when the PING goes unanswered.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{Ping, PingPong, Reason};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use tokio::sync::{Mutex, Notify};

use super::{ProviderResponse, TransportError, MAX_RESPONSE_BYTES};

const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(60);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// What is known about one connection, shared by its sends, its driver and its keep-alive.
pub(super) struct Health {
    pub(super) id: u64,
    /// No new requests may use it: it ended, got GOAWAY or failed.
    broken: AtomicBool,
    /// A PING went unanswered: nothing sent on it will ever be answered.
    dead: AtomicBool,
    /// Requests currently waiting on it.
    streams: AtomicU64,
    /// `None` once the connection ended (h2 hands the `PingPong` out once).
    ping: Mutex<Option<PingPong>>,
    close: Notify,
}

impl Health {
    fn new(id: u64, ping: Option<PingPong>) -> Self {
        Self {
            id,
            broken: AtomicBool::new(false),
            dead: AtomicBool::new(false),
            streams: AtomicU64::new(0),
            ping: Mutex::new(ping),
            close: Notify::new(),
        }
    }

    pub(super) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    pub(super) fn mark_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
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
/// and keep it alive. `on_end` runs once when the connection is gone.
pub(super) async fn handshake<T>(
    io: T,
    id: u64,
    authority: String,
    keep_idle: bool,
    on_end: impl FnOnce() + Send + 'static,
) -> Result<H2Connection, h2::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, mut connection) = h2::client::Builder::new()
        // Many small responses arrive at once; don't make them wait for WINDOW_UPDATEs.
        .initial_connection_window_size(1 << 20)
        .handshake::<_, Bytes>(io)
        .await?;
    let health = Arc::new(Health::new(id, connection.ping_pong()));
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
